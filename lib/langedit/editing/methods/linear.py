"""MEMIT and the methods built on its multi-layer closed-form update: PRUNE, RECT, AlphaEdit, LangEdit.

For a batch: optimise residual targets v* at the last edited layer once; then for each edited
layer l (ascending), read the keys K at l and the residual still missing at the last layer,
give layer l its share (1 / layers left), map it through the post-MLP norm if the family has one,
and solve for dW in closed form. Each method differs only in that solve, except PRUNE and RECT,
which post-process MEMIT's updates as the reference code (AlphaEdit's baselines) does:

* RECT: all layers' dense MEMIT updates first (each layer solved with the earlier layers' dense
  updates in place), then each update masked to its largest relative changes |dW / W|; the
  masked updates are what the batch adds (memit/memit_rect_main.py).
* PRUNE: editing is plain MEMIT on the raw accumulated weights; only the weights the model is
  evaluated with restrain the accumulated update W - W0 (experiments/evaluate.py, MEMIT_prune).
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from ..activations import bare_batch, compute_keys, read_at_lookup
from ..nullspace import (IncrementalNullSpace, check_threshold, null_dimension, paper_running_cov,
                         projector_from_cov, reference_projector, released_cov_update)
from ..residual import residual_to_value_shift
from ..tokens import Request
from ..values import ValueSettings, compute_values
from .base import Method
from .solvers import alphaedit_update, langedit_paper_update, memit_update, prune_restrain, rect_sparsify


class MultiLayerMethod(Method):
    def __init__(self, editor) -> None:
        super().__init__(editor)
        self._batch_keys: dict[int, torch.Tensor] = {}

    def prepare(self):  # every solver here needs C0: read it before the first batch, not inside its cost
        for layer in self.layers:
            self.editor.cov0(layer)

    def keys_of_batch(self) -> dict[int, torch.Tensor]:
        # Keys at layer l are read after layers < l are edited; what follows changes W_out of
        # layers >= l, i.e. outputs at l and later, never the input of W_out at l.
        return dict(self._batch_keys)

    def value_settings(self) -> ValueSettings:
        return self.hp.value_settings()

    accepts_values = True

    def apply(self, requests: Sequence[Request], report, values: torch.Tensor | None = None) -> None:
        ed = self.editor
        templates = ed.templates_for(requests)
        if values is None:
            start = time.perf_counter()
            found = compute_values(ed.model, ed.tokenizer, ed.arch, requests, templates, self.value_settings(),
                                   ed.progress)
            report.value_seconds += time.perf_counter() - start
            targets = found.values
            report.value_steps += found.steps
        else:
            targets = values.to(ed.lm.device).float()
        bare = bare_batch(ed.tokenizer, requests)
        last = ed.arch.layer_name(self.hp.value_layer)
        self._batch_keys = {}
        updates = {}
        for index, layer in enumerate(self.layers):
            keys = compute_keys(ed.model, ed.tokenizer, ed.arch, requests, layer, templates)
            self._batch_keys[layer] = keys
            out_name = ed.arch.mlp_out_name(layer)
            now = read_at_lookup(ed.model, bare, [last, out_name])
            share = (targets - now[last]) / (len(self.layers) - index)
            resid = residual_to_value_shift(ed.model, ed.arch, layer, now[out_name], share, self.hp.residual_damping)
            updates[layer] = self.solve(layer, keys, resid)
            ed.add_update(layer, updates[layer])
        self.after_updates(updates)
        self.report_extra(report)

    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_updates(self, updates: dict[int, torch.Tensor]) -> None:
        """Called with every layer's update of the batch (float64), once all are in the model."""

    def report_extra(self, report) -> None:
        pass


class Memit(MultiLayerMethod):
    name = "memit"

    def solve(self, layer, keys, resid):
        return memit_update(keys, resid, self.editor.cov0(layer).moment.to(keys.device), self.hp.mom2_update_weight)


class Rect(Memit):
    """RECT: MEMIT's dense updates of all layers, then only each update's largest relative changes kept.

    The mask is taken after every layer was solved with the earlier layers' *dense* updates in
    place, so no layer compensates for what the mask removes elsewhere (the reference's order).
    The relative change is measured against the weights before the batch."""
    name = "rect"

    def apply(self, requests, report, values=None):
        self._before = {layer: self.editor.weight(layer).detach().clone() for layer in self.layers}
        super().apply(requests, report, values)

    def after_updates(self, updates):
        ed = self.editor
        with torch.no_grad():
            for layer, update in updates.items():
                before = self._before[layer]
                ed.weight(layer).copy_(before)
                ed.add_update(layer, rect_sparsify(update, before, self.hp.rect_keep_fraction))
        self._before = {}

    def keys_of_batch(self):
        # the keys were read with the dense updates of earlier layers in place, not the masked ones
        return {}


class Prune(Memit):
    """PRUNE: MEMIT on the raw weights; evaluation sees W0 + the accumulated update with its singular
    values above max sigma(W0) restrained, computed from the raw accumulated update each time."""
    name = "prune"

    def evaluation_weights(self):
        ed = self.editor
        shown = {}
        for layer in self.layers:
            original = ed.original_matrix(layer).double()
            bound = float(torch.linalg.matrix_norm(original, ord=2))
            total = ed.raw_weight(layer).double() - original
            shown[layer] = original + prune_restrain(total, bound, self.hp.prune_log_base)
        return shown


class NullSpaceMethod(MultiLayerMethod):
    """Shared by AlphaEdit and LangEdit: a projector per layer, recomputed as the method says.

    The threshold is read against C0's spectrum once per layer (`initial_projector`) and fixed there
    as an absolute eigenvalue cutoff; LangEdit's covariances updated with edited keys are cut at that
    same level (why: editing/nullspace.py).
    """

    def __init__(self, editor) -> None:
        super().__init__(editor)
        check_threshold(self.hp.nullspace_threshold_kind, self.hp.nullspace_threshold)
        self.projectors: dict[int, torch.Tensor] = {}
        self.cutoffs: dict[int, float] = {}

    def initial_projector(self, layer: int) -> torch.Tensor:
        """P of C0; fixes the layer's eigenvalue cutoff."""
        cov = self.editor.cov0(layer).moment.to(self.editor.lm.device)
        projector, self.cutoffs[layer] = reference_projector(cov, self.hp.nullspace_threshold_kind,
                                                             self.hp.nullspace_threshold)
        return projector

    def cutoff(self, layer: int) -> float:
        """The absolute eigenvalue cutoff of `layer` (from C0 for the relative kinds)."""
        if layer not in self.cutoffs:
            if self.hp.nullspace_threshold_kind == "absolute":
                return float(self.hp.nullspace_threshold)
            self.initial_projector(layer)
        return self.cutoffs[layer]

    def report_extra(self, report) -> None:
        report.null_dimension.update({layer: null_dimension(p) for layer, p in self.projectors.items()})

    def edited_kk(self, layer: int, like: torch.Tensor) -> torch.Tensor:
        kk = self.editor.edited_kk.get(layer)
        return torch.zeros(like.shape[1], like.shape[1], dtype=torch.float64, device=like.device) if kk is None else kk

    def state(self):
        out = {f"projector.{layer}": p for layer, p in self.projectors.items()}
        out.update({f"cutoff.{layer}": torch.tensor(c, dtype=torch.float64) for layer, c in self.cutoffs.items()})
        return out

    def load_state(self, state):
        self.projectors = {int(k.split(".")[1]): v for k, v in state.items() if k.startswith("projector.")}
        self.cutoffs = {int(k.split(".")[1]): float(v) for k, v in state.items() if k.startswith("cutoff.")}


class AlphaEdit(NullSpaceMethod):
    """AlphaEdit: one static projector from the preserved keys K0, edited keys kept in the solve."""
    name = "alphaedit"

    def prepare(self):
        for layer in self.layers:
            if layer not in self.projectors:
                self.projectors[layer] = self.initial_projector(layer)

    def solve(self, layer, keys, resid):
        return alphaedit_update(keys, resid, self.projectors[layer], self.edited_kk(layer, keys), self.hp.l2)


class LangEdit(NullSpaceMethod):
    """LangEdit: the null space follows the edits (dynamic projector), in one of three variants.

    * ``released`` – the authors' code: their covariance recursion, AlphaEdit's solve (L2, K_p term).
    * ``paper``    – Algorithm 1: count-weighted running covariance of K0 and all edited keys,
                     dW = R K^T P (K K^T P + I)^-1.
    * ``incremental`` – the hard null space of K0's dominant subspace and every edited key, kept as
                     an incrementally updated projector (no eigen-decomposition per batch), with the
                     paper's solve.
    """
    name = "langedit"

    def __init__(self, editor) -> None:
        super().__init__(editor)
        self.variant = self.hp.langedit_variant
        self.released_cov: dict[int, torch.Tensor] = {}
        self.incremental: dict[int, IncrementalNullSpace] = {}

    def projector(self, layer: int) -> torch.Tensor:
        ed = self.editor
        cov0 = ed.cov0(layer)
        device = ed.lm.device
        if self.variant == "incremental":
            if layer not in self.incremental:
                self.incremental[layer] = IncrementalNullSpace(self.initial_projector(layer))
            return self.incremental[layer].projector
        if self.variant == "paper":
            kk = ed.edited_kk.get(layer)
            if kk is None:
                return self.initial_projector(layer)
            cov = paper_running_cov(cov0.moment.to(device), cov0.n_tokens, kk, ed.n_edited)
            return projector_from_cov(cov, self.cutoff(layer))
        # released
        if ed.n_batches == 0 or layer not in self.released_cov:
            self.released_cov[layer] = cov0.moment.to(device).double()
            return self.initial_projector(layer)
        cov = released_cov_update(self.released_cov[layer], ed.edited_kk[layer], ed.n_batches)
        self.released_cov[layer] = cov
        return projector_from_cov(cov, self.cutoff(layer))

    def solve(self, layer, keys, resid):
        self.projectors[layer] = self.projector(layer)
        if self.variant == "released":
            return alphaedit_update(keys, resid, self.projectors[layer], self.edited_kk(layer, keys), self.hp.l2)
        return langedit_paper_update(keys, resid, self.projectors[layer], self.hp.paper_ridge)

    def after_batch(self, keys_by_layer):
        if self.variant == "incremental":
            for layer, keys in keys_by_layer.items():
                self.incremental[layer].add_keys(keys)

    def state(self):
        out = super().state()
        out.update({f"released_cov.{l}": c for l, c in self.released_cov.items()})
        out.update({f"incremental.{l}": n.projector for l, n in self.incremental.items()})
        return out

    def load_state(self, state):
        super().load_state(state)
        self.released_cov = {int(k.split(".")[1]): v for k, v in state.items() if k.startswith("released_cov.")}
        self.incremental = {int(k.split(".")[1]): IncrementalNullSpace(v) for k, v in state.items()
                            if k.startswith("incremental.")}
