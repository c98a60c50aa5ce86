"""A ``model.summary()`` in Keras's layout: layer (type), output shape, parameters, totals."""

from __future__ import annotations

import torch
from torch import nn


def summary(model: nn.Module, input_shape: tuple, width: int = 72) -> str:
    """Summary of ``model`` for one NCHW input of ``input_shape`` (C, H, W); output shapes shown as (None, ...)."""
    rows = []
    hooks = [
        child.register_forward_hook(
            lambda module, inputs, output, name=name: rows.append(
                (f"{name} ({type(module).__name__})", "(None, " + ", ".join(map(str, output.shape[1:])) + ")",
                 sum(p.numel() for p in module.parameters()))
            )
        )
        for name, child in model.named_children()
    ]
    try:
        was_training = model.training
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line, thick = "─" * width, "━" * width
    out = [f'Model: "{getattr(getattr(model, "spec", None), "id", type(model).__name__)}"', thick,
           f"{'Layer (type)':<34}{'Output Shape':<24}{'Param #':>14}", thick]
    for i, (layer, shape, params) in enumerate(rows):
        out += [f"{layer:<34}{shape:<24}{params:>14,}", line if i < len(rows) - 1 else thick]
    out += [f" Total params: {total:,}", f" Trainable params: {trainable:,}", f" Non-trainable params: {total - trainable:,}"]
    return "\n".join(out)
