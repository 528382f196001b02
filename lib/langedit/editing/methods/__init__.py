"""The seven editing methods, by name."""
from __future__ import annotations

from .base import Method
from .ft import FineTune
from .linear import AlphaEdit, LangEdit, Memit, Prune, Rect
from .rome import Rome

METHOD_CLASSES: dict[str, type[Method]] = {
    "ft": FineTune, "rome": Rome, "memit": Memit, "prune": Prune, "rect": Rect,
    "alphaedit": AlphaEdit, "langedit": LangEdit,
}


def make_method(name: str, editor) -> Method:
    if name not in METHOD_CLASSES:
        raise ValueError(f"unknown editing method {name!r}; choose from {sorted(METHOD_CLASSES)}")
    return METHOD_CLASSES[name](editor)
