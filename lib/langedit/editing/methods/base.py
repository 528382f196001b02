"""What every editing method provides to the Editor."""
from __future__ import annotations

from typing import Sequence

import torch

from ..tokens import Request


class Method:
    """A method edits the model's W_out matrices in place; state beyond the Editor's is its own."""

    name = "base"

    def __init__(self, editor) -> None:
        self.editor = editor
        self.hp = editor.hparams

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.hp.layers)

    def prepare(self) -> None:
        """Called before every batch; compute statistics / projections the first time."""

    #: whether apply() accepts value targets v* computed elsewhere (Editor.apply(..., values=...))
    accepts_values = False

    def apply(self, requests: Sequence[Request], report, values=None) -> None:
        raise NotImplementedError

    def keys_of_batch(self) -> dict[int, torch.Tensor]:
        """Keys [B, d_key] of the batch just applied, by layer, where apply read them at a point the
        rest of the edit cannot change (the editor reads the others again from the edited model)."""
        return {}

    def after_batch(self, keys_by_layer: dict[int, torch.Tensor]) -> None:
        """Called with the batch's keys, read from the edited model (already added to editor.edited_kk)."""

    def evaluation_weights(self) -> dict[int, torch.Tensor]:
        """Weights [d_value, d_key] by layer that evaluation should see instead of the raw accumulated
        ones the model holds now (read them with editor.raw_weight); empty: the raw weights are evaluated.
        Editing always continues from the raw weights (the Editor swaps them back)."""
        return {}

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass
