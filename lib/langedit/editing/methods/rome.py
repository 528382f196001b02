"""ROME as the reference (kmeng01/rome rome_main / compute_u / compute_v; AlphaEdit's copy): one
rank-one update of a single W_out per edit, the edits of a batch one after another.

For an edit at layer L:

* v* = W_out's output at the bare prompt's subject-last token plus a shift delta optimised AT W_out's
  OUTPUT (compute_values with delta_at="mlp_out"; on Gemma-2/3 before the post-feed-forward norm, so
  nothing has to be mapped from the residual stream), with ROME's own steps, lr, clamp, weight decay
  and context templates (`rome_*`).
* u = C0^-1 k_avg / |C0^-1 k_avg|, k_avg the W_out input averaged over ROME's templates
  (`rome_mom2_adjustment`; without it u = k_avg / |k_avg|).
* dW = (v* - W_out(k_bare)) u^T / (u^T k_bare), k_bare the W_out input on the bare prompt, so the
  edited W_out maps k_bare to v* exactly.

ROME's templates are the bare prompt plus, for each (tokens, n) of `rome_template_lengths`, n
generated prefixes of that many tokens (n / 5 per starter word of the language, as AlphaEdit's
copy), all averaged with equal weight (one flat group, as the reference).
"""
from __future__ import annotations

import json
import time

import torch

from ..activations import bare_batch, compute_keys, read_at_lookup
from ..editor import request_language
from ..templates import STARTERS, TemplateCache
from ..values import ValueSettings, compute_values
from .base import Method


def rome_update(key_avg: torch.Tensor, key_bare: torch.Tensor, resid: torch.Tensor,
                cov0: torch.Tensor | None) -> torch.Tensor:
    """dW [d_value, d_key] (float64) = resid u^T / (u^T key_bare), u = C0^-1 key_avg normalised
    (key_avg itself without C0), so dW key_bare = resid exactly and dW is rank one along u."""
    u = key_avg.double() if cov0 is None else torch.linalg.solve(cov0.double(), key_avg.double())
    u = u / u.norm()
    scale = u @ key_bare.double()
    if not torch.isfinite(scale) or scale == 0:
        raise ValueError(f"ROME's left vector is orthogonal to the bare prompt's key (u^T k = {float(scale)})")
    return torch.outer(resid.double(), u) / scale


class Rome(Method):
    name = "rome"

    def __init__(self, editor) -> None:
        super().__init__(editor)
        self._caches = self._template_caches()

    @property
    def layers(self):
        layer = self.hp.rome_layer if self.hp.rome_layer is not None else self.hp.layers[-1]
        return (layer,)

    def _template_caches(self) -> list[TemplateCache]:
        """One generator of one prefix per starter word for every draw; every draw its own seed."""
        n_starters = {len(words) for words in STARTERS.values()}
        if len(n_starters) != 1:
            raise ValueError("ROME's templates need the same number of starter words in every language")
        per_draw = n_starters.pop()
        caches = []
        for n_tokens, n_templates in self.hp.rome_template_lengths:
            if n_tokens < 1 or n_templates < per_draw or n_templates % per_draw:
                raise ValueError(f"rome_template_lengths entry {[n_tokens, n_templates]}: need >= 1 tokens and a "
                                 f"positive multiple of {per_draw} (the starter words) templates")
            for _ in range(n_templates // per_draw):
                caches.append(TemplateCache(self.editor.model, self.editor.tokenizer, n_tokens=n_tokens,
                                            seed=len(caches)))
        return caches

    def templates(self, language: str) -> list[list[str]]:
        """ROME's templates for `language`: one group, the bare prompt first."""
        prefixes = [p for cache in self._caches for p in cache(language)[1]]
        return [["{}", *prefixes]]

    def value_settings(self) -> ValueSettings:
        hp = self.hp
        return ValueSettings(layer=self.layers[0], steps=hp.rome_v_steps, lr=hp.rome_v_lr,
                             clamp_norm_factor=hp.rome_clamp_norm_factor, kl_factor=hp.rome_kl_factor,
                             weight_decay=hp.rome_v_weight_decay, early_stop_loss=hp.early_stop_loss,
                             chunk_requests=1, delta_at="mlp_out")

    def prepare(self):
        if self.hp.rome_mom2_adjustment:
            self.editor.cov0(self.layers[0])

    def apply(self, requests, report, values=None):   # values: refused by the Editor (accepts_values)
        ed, layer = self.editor, self.layers[0]
        cov = ed.cov0(layer).moment.to(ed.lm.device) if self.hp.rome_mom2_adjustment else None
        name = ed.arch.mlp_out_name(layer)
        for request in requests:   # each edit sees the ones before it
            templates = [self.templates(request_language(request))]
            start = time.perf_counter()
            found = compute_values(ed.model, ed.tokenizer, ed.arch, [request], templates, self.value_settings(),
                                   progress=False)
            report.value_seconds += time.perf_counter() - start
            report.value_steps += found.steps
            target = found.values
            key_avg = compute_keys(ed.model, ed.tokenizer, ed.arch, [request], layer, templates)[0]
            bare = bare_batch(ed.tokenizer, [request])
            key_bare = read_at_lookup(ed.model, bare, [name], inputs=True)[name][0]
            out_bare = read_at_lookup(ed.model, bare, [name])[name][0]
            ed.add_update(layer, rome_update(key_avg, key_bare, target[0] - out_bare, cov))

    def state(self) -> dict[str, torch.Tensor]:
        # the generated templates (strings), so a loaded editor does not draw new ones from the edited model
        text = json.dumps([cache.state() for cache in self._caches], ensure_ascii=False)
        return {"templates_json": torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if "templates_json" in state:
            saved = json.loads(bytes(state["templates_json"].cpu().tolist()).decode("utf-8"))
            for cache, languages in zip(self._caches, saved):
                cache.load_state(languages)
