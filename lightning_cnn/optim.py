"""torch optimizers that take the same steps as Keras 3's, built from a recipe.

Where torch's built-in optimizer computes the same update as Keras's, it is used as is (fast foreach kernels)
with Keras's hyper-parameters; where the formula differs, the difference is made up here:
- Adam: Keras adds epsilon to the *uncorrected* sqrt(v) and folds both bias corrections into the step size
  (lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)); torch adds it to the bias-corrected
  sqrt(v / (1 - beta2**t)). The two agree when torch gets eps / sqrt(1 - beta2**t) at step t (31.6 * eps at
  step 1, tending to eps), which gives exactly Keras's update.
- RMSprop: Keras divides by sqrt(v + eps), torch by sqrt(v) + eps; torch has no switch for that, so KerasRMSprop
  implements Keras's formula.
- Adadelta and SGD with momentum: same formulas; only the defaults differ (epsilon 1e-7, Keras 3 lr 0.001).
"""

from __future__ import annotations

import math

import torch

from .coexist import make_safe_for_tensorflow
from .specs import Recipe, optimizer_settings


class KerasAdam(torch.optim.Adam):
    """``torch.optim.Adam`` with Keras's epsilon placement."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-7, **kwargs):
        super().__init__(params, lr=lr, betas=betas, eps=eps, **kwargs)
        for group in self.param_groups:
            group.setdefault("keras_eps", eps)
        self._unsettled_found_inf = None

    @torch.no_grad()
    def step(self, closure=None):
        # The step count lives in the param group as a Python int (saved with the optimizer's state): reading it back
        # from torch's per-parameter step tensors would cost a device sync per step on CUDA.
        self._settle_skipped_step()
        for group in self.param_groups:
            group["keras_step"] = group.get("keras_step", 0) + 1
            group["eps"] = group["keras_eps"] / math.sqrt(1 - group["betas"][1] ** group["keras_step"])
        # Under float16 loss scaling, torch's GradScaler hands the fused kernel its inf/NaN flag as ``found_inf``;
        # the kernel then skips the update (and un-counts its own step tensors), as Keras's LossScaleOptimizer does.
        self._unsettled_found_inf = getattr(self, "found_inf", None)
        return super().step(closure)

    def _settle_skipped_step(self):
        """Un-counts the last step if the fused kernel skipped it. Read one step late: by then the flag has long been
        computed, so on CUDA this does not stall the queue of work the way reading it right away would."""
        found_inf, self._unsettled_found_inf = self._unsettled_found_inf, None
        if found_inf is not None and found_inf.item():
            for group in self.param_groups:
                group["keras_step"] -= 1

    def state_dict(self):
        self._settle_skipped_step()
        return super().state_dict()

    def load_state_dict(self, state_dict):
        self._unsettled_found_inf = None  # a flag about steps the loaded state replaces
        super().load_state_dict(state_dict)


class KerasRMSprop(torch.optim.Optimizer):
    """RMSprop as Keras 3 computes it: v = rho*v + (1-rho)*g^2; w -= lr*g / sqrt(v + eps) (optional momentum)."""

    def __init__(self, params, lr=1e-3, rho=0.9, eps=1e-7, momentum=0.0):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if not self.state[p]:
                    self.state[p]["square_avg"] = torch.zeros_like(p)
                    if group["momentum"] > 0:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            square_avgs = [self.state[p]["square_avg"] for p in params]
            torch._foreach_mul_(square_avgs, group["rho"])
            torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - group["rho"])
            denominators = torch._foreach_add(square_avgs, group["eps"])
            torch._foreach_sqrt_(denominators)
            increments = torch._foreach_div(grads, denominators)
            torch._foreach_mul_(increments, group["lr"])
            if group["momentum"] > 0:
                buffers = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, increments)
                increments = buffers
            torch._foreach_sub_(params, increments)
        return loss


def _fused_kernels_apply(params: list[torch.Tensor]) -> bool:
    """torch's fused Adam/SGD kernels (one kernel for all parameters) run on CPU and CUDA floating-point tensors.

    torch only picks them by itself on CUDA; on CPU it would loop over the parameters one by one, which at batch
    32 costs a visible share of each step of these small models.
    """
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def make_optimizer(params, recipe: Recipe, *, fused: bool = True) -> torch.optim.Optimizer:
    """The recipe's optimizer with Keras-equivalent settings (see the module docstring).

    ``fused=False`` leaves the kernel choice to torch (``Speed(fused_optimizers=False)``). Makes sure torch and
    TensorFlow can share the process first (``coexist``): the optimizer's first step is where torch loads triton.
    """
    make_safe_for_tensorflow()
    params = list(params)
    s = optimizer_settings(recipe)
    name = recipe.optimizer
    fused = (fused and _fused_kernels_apply(params)) or None
    if name == "adam":
        return KerasAdam(params, lr=s["learning_rate"], betas=(s["beta_1"], s["beta_2"]), eps=s["epsilon"],
                         fused=fused)
    if name == "rmsprop":
        return KerasRMSprop(params, lr=s["learning_rate"], rho=s["rho"], eps=s["epsilon"], momentum=s["momentum"])
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=s["learning_rate"], rho=s["rho"], eps=s["epsilon"], foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=s["learning_rate"], momentum=s["momentum"], fused=fused)
    raise ValueError(f"unknown optimizer {name!r} in recipe; supported: adam, rmsprop, adadelta, sgd")
