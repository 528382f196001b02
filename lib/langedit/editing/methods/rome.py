"""ROME: one rank-one update of a single W_out per edit, one edit at a time (sequentially within a batch)."""
from __future__ import annotations

import time

from ..activations import bare_batch, compute_keys, read_at_lookup
from ..residual import residual_to_value_shift
from ..values import compute_values
from .base import Method
from .solvers import rank_one_update


class Rome(Method):
    name = "rome"

    @property
    def layers(self):
        layer = self.hp.rome_layer if self.hp.rome_layer is not None else self.hp.layers[-1]
        return (layer,)

    def prepare(self):
        self.editor.cov0(self.layers[0])

    def apply(self, requests, report):
        ed, layer = self.editor, self.layers[0]
        hp = self.hp
        settings = hp.value_settings(layer)
        cov = ed.cov0(layer).moment.to(ed.lm.device)
        for request in requests:
            templates = ed.templates_for([request])
            start = time.perf_counter()
            found = compute_values(ed.model, ed.tokenizer, ed.arch, [request], templates, settings, progress=False)
            report.value_seconds += time.perf_counter() - start
            target = found.values
            report.value_steps += found.steps
            key = compute_keys(ed.model, ed.tokenizer, ed.arch, [request], layer, templates)[0]
            names = [ed.arch.layer_name(layer), ed.arch.mlp_out_name(layer)]
            now = read_at_lookup(ed.model, bare_batch(ed.tokenizer, [request]), names)
            resid = residual_to_value_shift(ed.model, ed.arch, layer, now[names[1]], target - now[names[0]],
                                            hp.residual_damping)[0]
            ed.add_update(layer, rank_one_update(key, resid, cov))
