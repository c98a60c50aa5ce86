"""A cheaper ``setattr`` for the attributes Lightning and torchmetrics re-assign on every step.

Lightning writes ``_current_fx_name`` onto the module twice around every hook call (~44 times a training step),
and each torchmetrics update re-assigns its bookkeeping and state tensors (6 times for the accuracy). None of them
is a parameter, buffer or submodule, and a name already in ``__dict__`` is none of those, so storing it directly is
what ``nn.Module.__setattr__`` would end up doing, without ~1.2 µs of checks each time.

Applied to an existing object by giving it a subclass with the fast ``__setattr__`` (as ``torch.nn.utils.
parametrize`` does): the object stays an instance of its class, with the same name, state dict and checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

_PLAIN_TYPES = (torch.Tensor, type(None), bool, int, float, str)  # exact types: a Parameter is a Tensor subclass
_FAST_CLASSES: dict[type, type] = {}


class PlainAttributeFastPath:
    """Mixin: skips ``nn.Module.__setattr__``'s checks when re-assigning an existing plain attribute."""

    def __setattr__(self, name, value):
        if type(value) in _PLAIN_TYPES and name in self.__dict__:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def __reduce_ex__(self, protocol):
        # Pickled (and deep-copied) as its original class, which is importable, then given the fast path again.
        reduced = super().__reduce_ex__(protocol)
        return (_fast_instance, (type(self).__bases__[1],), *reduced[2:])


def _fast_class(cls: type) -> type:
    if issubclass(cls, PlainAttributeFastPath):
        return cls
    if cls not in _FAST_CLASSES:
        _FAST_CLASSES[cls] = type(cls.__name__, (PlainAttributeFastPath, cls),
                                  {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _FAST_CLASSES[cls]


def _fast_instance(cls: type):
    return object.__new__(_fast_class(cls))


def with_attribute_fast_path(module: nn.Module, kinds: tuple[type, ...]) -> nn.Module:
    """Gives ``module`` and each of its submodules that is one of ``kinds`` the fast ``__setattr__``, in place."""
    for child in module.modules():
        if child is module or isinstance(child, kinds):
            child.__class__ = _fast_class(type(child))
    return module
