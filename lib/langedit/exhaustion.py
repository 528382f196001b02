"""Null-space exhaustion: how a null-space method's projector P evolves as edited keys accumulate.

The paper warns that LangEdit's dynamic null space "shrinks as the number of edits increases,
potentially resulting in null-space exhaustion" and never measures it. Per batch and edited layer,
three numbers say what P still allows (all key-only, no value targets needed):

* ``null_dimension`` – dim range(P), what an update dW = X P can still touch;
* ``writable``       – ||P K_new||_F / ||K_new||_F for the batch's own keys: 0 means the batch can no
                       longer be written (dW k = X P k = 0), 1 means P does not stand in its way;
* ``leak_room``      – ||P K_prev||_F / ||K_prev||_F for all earlier edited keys: the share of them a
                       projected update can reach (0: earlier edits fully protected by P; the solve's
                       own K_p term, AlphaEdit's and LangEdit-released's, protects beyond P);
* ``c0_room``        – tr(P C0) / tr(C0): the share of the preserved keys' energy P lets through.

`simulate` runs the methods' own projector rules (the AlphaEdit / LangEdit classes of
editing/methods/linear.py) on given keys through a stand-in for the Editor, so the numbers are
exactly those of a real run whose keys were these (in a real run the keys of a later batch are read
from the edited model; with one edited layer, or keys read on the unedited model, they are the same).
`predict` writes down what the spectrum of C0 alone predicts, before any key is seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .editing.hparams import Hparams
from .editing.nullspace import eigenvalue_cutoff, null_dimension
from .editing.stats import KeyMoment

#: the projector rules simulated: AlphaEdit's static P, and LangEdit's three variants
RULES: tuple[str, ...] = ("alphaedit", "langedit:paper", "langedit:released", "langedit:incremental")


def _parse_rule(rule: str) -> tuple[str, str | None]:
    if rule not in RULES:
        raise ValueError(f"unknown projector rule {rule!r}; choose from {', '.join(RULES)}")
    method, _, variant = rule.partition(":")
    return method, variant or None


class _KeysOnlyEditor:
    """The part of an Editor a null-space method reads: hparams, C0, the edited keys so far."""

    def __init__(self, hparams: Hparams, cov0: Mapping[int, KeyMoment], device: str) -> None:
        self.hparams = hparams
        self._cov0 = dict(cov0)
        self.lm = SimpleNamespace(device=device)
        self.edited_kk: dict[int, torch.Tensor] = {}
        self.n_edited = 0
        self.n_batches = 0

    def cov0(self, layer: int) -> KeyMoment:
        return self._cov0[layer]


def _share(projector: torch.Tensor, kk: torch.Tensor) -> float:
    """||P K||_F / ||K||_F for the keys behind kk = K^T K: sqrt(tr(P kk P) / tr(kk)), and tr(P kk P) =
    tr(P kk) = sum(P * kk) for an orthogonal projector (every rule's P is one), O(d^2) instead of O(d^3)."""
    total = float(torch.trace(kk))
    if total <= 0:
        return float("nan")
    inside = float((projector * kk).sum())
    return float(np.sqrt(max(inside, 0.0) / total))


def simulate(rule: str, hparams: Hparams, cov0: Mapping[int, KeyMoment],
             key_batches: Sequence[Mapping[int, torch.Tensor]], device: str = "cpu",
             progress: bool = False) -> pd.DataFrame:
    """Per batch and layer: the projector the method would use for that batch, and what it allows.

    `key_batches[t][layer]` are batch t's keys [B, d_key] at `layer` (every layer of hparams.layers).
    One row per (batch, layer): batch, edits_before, layer, null_dimension, writable, leak_room,
    c0_room, and the layer's eigenvalue cutoff."""
    from tqdm.auto import tqdm

    from .editing.methods import make_method

    method_name, variant = _parse_rule(rule)
    if not key_batches:
        raise ValueError("no key batches to simulate")
    hp = hparams.with_overrides(langedit_variant=variant) if variant else hparams
    layers = tuple(hp.layers)
    missing = [l for l in layers if l not in cov0]
    if missing:
        raise ValueError(f"no C0 for layer(s) {missing} (have {sorted(cov0)})")
    editor = _KeysOnlyEditor(hp, cov0, device)
    method = make_method(method_name, editor)
    c0 = {l: cov0[l].moment.to(device).double() for l in layers}
    rows = []
    for index, batch in enumerate(tqdm(key_batches, desc=rule, disable=not progress, unit="batch")):
        absent = [l for l in layers if l not in batch]
        if absent:
            raise ValueError(f"batch {index} has no keys for layer(s) {absent}")
        method.prepare()
        for layer in layers:
            keys = batch[layer].to(device).double()
            if keys.ndim != 2 or keys.shape[0] == 0:
                raise ValueError(f"batch {index}, layer {layer}: keys must be a non-empty [B, d_key] matrix")
            # the projector the batch's solve uses (LangEdit.projector updates its running state once per batch)
            projector = method.projector(layer) if method_name == "langedit" else method.projectors[layer]
            method.projectors[layer] = projector
            previous = editor.edited_kk.get(layer)
            rows.append({"rule": rule, "batch": index, "edits_before": editor.n_edited, "layer": layer,
                         "null_dimension": null_dimension(projector),
                         "writable": _share(projector, keys.T @ keys),
                         "leak_room": float("nan") if previous is None else _share(projector, previous),
                         "c0_room": float((projector * c0[layer]).sum() / torch.trace(c0[layer])),
                         "cutoff": method.cutoff(layer)})
        keys_by_layer = {layer: batch[layer].to(device).double() for layer in layers}
        for layer, keys in keys_by_layer.items():       # the Editor's bookkeeping after a batch
            kk = keys.T @ keys
            editor.edited_kk[layer] = kk if layer not in editor.edited_kk else editor.edited_kk[layer] + kk
        method.after_batch(keys_by_layer)
        editor.n_edited += len(next(iter(keys_by_layer.values())))
        editor.n_batches += 1
    return pd.DataFrame(rows)


def unedited_keys(lm, requests: Sequence, layers: Sequence[int], templates, batch_size: int = 100,
                  progress: bool = False) -> list[dict[int, torch.Tensor]]:
    """The keys [B, d_key] (template-averaged, at the subject's last token) of consecutive batches of
    `requests` at every layer in `layers`, all read in one forward pass per chunk on the model as it
    is (call it on the unedited model). `templates`: a callable request -> its templates (e.g. an
    Editor's ``templates_for``, one request at a time)."""
    from tqdm.auto import tqdm

    from .editing.activations import keys_at_layers

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not requests:
        raise ValueError("no requests to read keys of")
    out = []
    for start in tqdm(range(0, len(requests), batch_size), desc="keys", disable=not progress, unit="batch"):
        batch = list(requests[start:start + batch_size])
        by_language: dict[str, list[int]] = {}
        for index, request in enumerate(batch):      # a language's requests share its templates
            by_language.setdefault(getattr(request, "language", "en"), []).append(index)
        keys: dict[int, torch.Tensor] = {}
        for indices in by_language.values():
            group = [batch[i] for i in indices]
            found = keys_at_layers(lm.model, lm.tokenizer, lm.arch, group, layers, templates(group))
            for layer, values in found.items():
                keys.setdefault(layer, torch.zeros(len(batch), values.shape[1]))[indices] = values
        out.append(keys)
    return out


@dataclass(frozen=True)
class Prediction:
    """What C0's spectrum predicts for one layer, assumptions stated in `predict`."""
    layer: int
    cutoff: float
    null_dimension_c0: int          # N0 = #{eigenvalues of C0 below the cutoff}
    frame: pd.DataFrame             # per rule and batch: the predicted null_dimension


def released_c0_scale(n_batches: int, prior_weight: float = 100000.0, batch_weight: float = 100.0) -> float:
    """The factor the released recursion has multiplied C0 by after `n_batches` further batches:
    prod_{t=1..T} w0 / (w0 + t w1) (nullspace.released_cov_update, applied once per batch)."""
    t = np.arange(1, n_batches + 1, dtype=float)
    return float(np.prod(prior_weight / (prior_weight + t * batch_weight)))


def predict(eigenvalues: torch.Tensor, kind: str, value: float, n_batches: int, batch_size: int,
            n0_tokens: int, key_energy: float, layer: int = -1) -> Prediction:
    """Null-space dimension per rule and batch from C0's spectrum alone (written before a run).

    Assumptions (each tested by `simulate` on real keys): edited keys are in general position and
    each has squared norm `key_energy` (E|k|^2 = tr C0 for keys distributed as C0's):

    * alphaedit: P never changes: N0.
    * paper: an edited key adds |k|^2 / (n0 + n) to the covariance along its own direction; a direction
      leaves the null space only once that lifts its eigenvalue over the cutoff, so each key removes at
      most one direction, and only one within that amount under the cutoff:
      N0 - min(edits, #{c - |k|^2/(n0+n) <= lambda < c}) (about N0 when the lift is small: inert).
    * released: every edited key's weight in the running covariance is at least w1/(w0 + t w1) |k|^2
      (~ |k|^2 / 1000), far over the cutoff, so each edited key removes one dimension; meanwhile C0 is
      scaled by `released_c0_scale(t)`, so its eigenvalues under c / scale return to the null space:
      #{lambda < c / scale(t)} - edits so far, floored at 0.
    * incremental: exactly one dimension per edited key in general position: N0 - edits, floored at 0.
    """
    ascending = torch.sort(eigenvalues.double().clamp_min(0)).values.cpu().numpy()
    cutoff = eigenvalue_cutoff(torch.from_numpy(ascending), kind, value)
    n0_dim = int((ascending < cutoff).sum())
    rows = []
    for t in range(n_batches):
        edits = t * batch_size
        lift = key_energy / (n0_tokens + edits)
        near = int(((ascending >= cutoff - lift) & (ascending < cutoff)).sum())
        paper = n0_dim - min(edits, near)          # one key lifts one direction, and only a near one
        scale = released_c0_scale(t)
        released = max(0, int((ascending * scale < cutoff).sum()) - edits)
        rows += [{"rule": "alphaedit", "batch": t, "edits_before": edits, "null_dimension": n0_dim},
                 {"rule": "langedit:paper", "batch": t, "edits_before": edits, "null_dimension": paper},
                 {"rule": "langedit:released", "batch": t, "edits_before": edits, "null_dimension": released},
                 {"rule": "langedit:incremental", "batch": t, "edits_before": edits,
                  "null_dimension": max(0, n0_dim - edits)}]
    return Prediction(layer, cutoff, n0_dim, pd.DataFrame(rows))


def exhaustion_point(frame: pd.DataFrame, column: str = "null_dimension", level: float = 0.0) -> pd.DataFrame:
    """Per rule and layer: the first edits_before at which `column` is <= `level` (NaN: never)."""
    rows = []
    for (rule, layer), part in frame.groupby(["rule", "layer"], sort=False):
        hit = part[part[column] <= level]
        rows.append({"rule": rule, "layer": layer,
                     f"edits_at_{column}_le_{level:g}": float(hit["edits_before"].iloc[0]) if len(hit) else float("nan")})
    return pd.DataFrame(rows)
