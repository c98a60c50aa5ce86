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
  SGD with nesterov=True too: Keras's w += m*v - lr*g with v = m*v - lr*g is torch's nesterov step.
- weight_decay (any Keras optimizer, AdamW's default 0.004): Keras shrinks each variable by lr * wd * w *before*
  the update, decoupled from the gradient; ``add_keras_weight_decay`` does exactly that in a step pre-hook (torch's
  own ``weight_decay`` of SGD/Adam is an L2 term in the gradient, a different thing).

``make_keras_optimizer`` builds these from a Keras optimizer config (``model.get_compile_config()["optimizer"]``).
"""

from __future__ import annotations

import math

import torch

from ..coexist import make_safe_for_tensorflow
from ..errors import UserError
from ..specs import Recipe, optimizer_settings


class UnsupportedOptimizerError(ValueError, UserError):
    """A Keras optimizer (or one of its settings) that has no Keras-equivalent torch optimizer here."""


class KerasAdam(torch.optim.Adam):
    """``torch.optim.Adam`` with Keras's epsilon placement."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-7, **kwargs):
        super().__init__(params, lr=lr, betas=betas, eps=eps, **kwargs)
        for group in self.param_groups:
            group.setdefault("keras_eps", eps)
        self._unsettled_found_inf = None
        # A step pre-hook rather than an overridden step() calling super().step(): torch wraps each optimizer class's
        # step() in its hook runner once an instance exists, so after any plain Adam in the process an override's
        # super().step() ran every step hook twice (Keras's weight decay applied twice a step).
        self.register_step_pre_hook(KerasAdam._keras_epsilon)

    @staticmethod
    def _keras_epsilon(optimizer, args, kwargs):
        # The step count lives in the param group as a Python int (saved with the optimizer's state): reading it back
        # from torch's per-parameter step tensors would cost a device sync per step on CUDA.
        optimizer._settle_skipped_step()
        for group in optimizer.param_groups:
            group["keras_step"] = group.get("keras_step", 0) + 1
            group["eps"] = group["keras_eps"] / math.sqrt(1 - group["betas"][1] ** group["keras_step"])
        # Under float16 loss scaling, torch's GradScaler hands the fused kernel its inf/NaN flag as ``found_inf``;
        # the kernel then skips the update (and un-counts its own step tensors), as Keras's LossScaleOptimizer does.
        optimizer._unsettled_found_inf = getattr(optimizer, "found_inf", None)

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


def add_keras_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> torch.optim.Optimizer:
    """Keras's decoupled weight decay: before each step, w -= lr * weight_decay * w for every parameter."""

    def decay(opt, args, kwargs):
        with torch.no_grad():
            for group in opt.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    torch._foreach_mul_(params, 1.0 - group["lr"] * weight_decay)

    optimizer.register_step_pre_hook(decay)
    return optimizer


# Keras optimizer class -> (name in KERAS_OPTIMIZER_DEFAULTS / make_optimizer, the config keys it takes).
KERAS_OPTIMIZER_CLASSES = {
    "SGD": ("sgd", ("learning_rate", "momentum", "nesterov")),
    "Adam": ("adam", ("learning_rate", "beta_1", "beta_2", "epsilon")),
    "AdamW": ("adam", ("learning_rate", "beta_1", "beta_2", "epsilon")),
    "RMSprop": ("rmsprop", ("learning_rate", "rho", "momentum", "epsilon")),
    "Adadelta": ("adadelta", ("learning_rate", "rho", "epsilon")),
}
# Settings that change what a step does and have no counterpart here: refused unless at their neutral value.
_NEUTRAL_SETTINGS = {"clipnorm": None, "global_clipnorm": None, "clipvalue": None, "use_ema": False,
                     "loss_scale_factor": None, "gradient_accumulation_steps": None, "amsgrad": False,
                     "centered": False}


# Keras optimizer settings and the values that make sense: (lowest, highest, lowest allowed, highest allowed).
KERAS_OPTIMIZER_RANGES = {
    "learning_rate": (0.0, math.inf, False, False),
    "beta_1": (0.0, 1.0, True, False),
    "beta_2": (0.0, 1.0, True, False),
    "epsilon": (0.0, math.inf, True, False),
    "rho": (0.0, 1.0, True, False),
    "momentum": (0.0, 1.0, True, True),  # Keras's own check for SGD
    "weight_decay": (0.0, math.inf, True, False),
}
_BOOLEAN_SETTINGS = ("nesterov", "amsgrad", "centered", "use_ema")


def _interval(low, high, low_in, high_in) -> str:
    return f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def read_keras_optimizer(keras_config, where: str = "the compile config") -> tuple[str, dict]:
    """(Keras class name, its config) of a serialized Keras optimizer (a dict, or a name like "adam"), every
    setting checked: the class and its settings must be supported and each value of the right type and range,
    else an ``UnsupportedOptimizerError`` naming ``where`` and the field."""
    if isinstance(keras_config, str):
        keras_config = {"class_name": {"sgd": "SGD", "adamw": "AdamW", "rmsprop": "RMSprop"}.get(
            keras_config.lower(), keras_config.capitalize()), "config": {}}
    if not isinstance(keras_config, dict) or not isinstance(keras_config.get("config") or {}, dict):
        raise UnsupportedOptimizerError(f"{where}: optimizer is {keras_config!r}; expected a Keras optimizer name "
                                        "or a serialized optimizer (an object with class_name and config)")
    class_name, config = keras_config.get("class_name"), dict(keras_config.get("config") or {})
    if class_name not in KERAS_OPTIMIZER_CLASSES:
        raise UnsupportedOptimizerError(
            f"{where}: Keras optimizer {class_name!r} is not supported for training the twin; supported: "
            f"{', '.join(KERAS_OPTIMIZER_CLASSES)} (recompile the model with one of them)")
    for key, neutral in _NEUTRAL_SETTINGS.items():
        if config.get(key, neutral) != neutral:
            raise UnsupportedOptimizerError(
                f"{where}: Keras optimizer {class_name} has {key}={config[key]!r}, which is not supported for "
                f"training the twin (only {key}={neutral!r}); recompile the model without it")
    if isinstance(config.get("learning_rate"), dict):
        raise UnsupportedOptimizerError(
            f"{where}: Keras optimizer {class_name} has a learning-rate schedule ({config['learning_rate']!r}); "
            "only a constant learning rate is supported (use a Lightning LR scheduler callback for schedules)")
    for key, (low, high, low_in, high_in) in KERAS_OPTIMIZER_RANGES.items():
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                (low < value or (low_in and value == low)) and (value < high or (high_in and value == high))):
            raise UnsupportedOptimizerError(
                f"{where}: optimizer field {key} is {value!r}; Keras's {class_name} takes a number in "
                f"{_interval(low, high, low_in, high_in)} (fix the file, or convert the model again)")
    for key in _BOOLEAN_SETTINGS:
        if key in config and not isinstance(config[key], bool):
            raise UnsupportedOptimizerError(f"{where}: optimizer field {key} is {config[key]!r}; expected true or "
                                            "false")
    return class_name, config


def make_keras_optimizer(params, keras_config: dict | str) -> torch.optim.Optimizer:
    """The torch optimizer that takes Keras's steps for a serialized Keras optimizer (dict or a name like "adam")."""
    class_name, config = read_keras_optimizer(keras_config)
    name, keys = KERAS_OPTIMIZER_CLASSES[class_name]
    args = {key: config[key] for key in keys if config.get(key) is not None}
    nesterov = bool(args.pop("nesterov", False))
    recipe = Recipe(optimizer=name, optimizer_args=args)
    params = list(params)
    s = optimizer_settings(recipe)
    if nesterov and s["momentum"] > 0:  # Keras's nesterov without momentum is plain SGD
        optimizer = torch.optim.SGD(params, lr=s["learning_rate"], momentum=s["momentum"], nesterov=True,
                                    fused=_fused_kernels_apply(params) or None)
    else:
        optimizer = make_optimizer(params, recipe)
    weight_decay = config.get("weight_decay") or (0.004 if class_name == "AdamW" else 0.0)
    return add_keras_weight_decay(optimizer, float(weight_decay)) if weight_decay else optimizer
