"""Read and patch activations of named submodules, as context managers.

    with Trace(model, "model.layers.4.mlp.down_proj", retain_input=True) as t:
        model(**batch)
    keys = t.input            # what went into W_out

    with Trace(model, name, edit_output=lambda out: out + delta):
        model(**batch)        # the forward pass sees the patched output

Hooks are removed on exit, also when the body raises. No global state.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable, Iterable

import torch
from torch import nn

from .models.architecture import get_module

OutputEdit = Callable[[torch.Tensor], torch.Tensor]


def _first_tensor(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _replace_first(value, tensor: torch.Tensor):
    if isinstance(value, tuple):
        return (tensor, *value[1:])
    if isinstance(value, list):
        return [tensor, *value[1:]]
    return tensor


class StopForward(Exception):
    """Raised by a Trace with ``stop=True`` to skip the rest of the forward pass."""


class Trace:
    """Hook one submodule: keep its input and/or output, optionally rewrite its output."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        retain_input: bool = False,
        retain_output: bool = True,
        edit_output: OutputEdit | None = None,
        detach: bool = True,
        stop: bool = False,
        after_hook: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._after = after_hook
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._retain_input, self._retain_output = retain_input, retain_output
        self._edit, self._detach, self._stop = edit_output, detach, stop
        self._handle = get_module(model, name).register_forward_hook(self._hook)

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach() if self._detach else tensor

    def _hook(self, module: nn.Module, inputs: tuple, output):
        if self._retain_input:
            self.input = self._keep(_first_tensor(inputs))
        if self._edit is not None:
            output = _replace_first(output, self._edit(_first_tensor(output)))
        if self._retain_output:
            self.output = self._keep(_first_tensor(output))
        if self._stop:
            raise StopForward
        if self._after is not None:
            self._after()
        return output

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "Trace":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is StopForward  # a deliberate early stop is not an error


class TraceDict(dict):
    """Several Traces at once, keyed by module name. ``stop=True`` stops the forward pass as soon
    as every traced module has run (whatever order they run in)."""

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        retain_input: bool = False,
        retain_output: bool = True,
        edit_output: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
        detach: bool = True,
        stop: bool = False,
    ) -> None:
        super().__init__()
        names = list(dict.fromkeys(names))
        self._stack = ExitStack()
        self._fired: set[str] = set()
        try:
            for name in names:
                edit = None if edit_output is None else (lambda out, _n=name: edit_output(out, _n))
                after = (lambda _n=name: self._mark(_n, len(names))) if stop else None
                self[name] = self._stack.enter_context(Trace(
                    model, name, retain_input, retain_output, edit, detach, after_hook=after))
        except Exception:
            self._stack.close()  # a bad name must not leave the earlier hooks on the model
            raise

    def _mark(self, name: str, total: int) -> None:
        self._fired.add(name)
        if len(self._fired) == total:
            raise StopForward

    def __enter__(self) -> "TraceDict":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stack.close()
        return exc_type is StopForward
