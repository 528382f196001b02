"""One entry point over the seven editing methods.

    editor = Editor(lm, method="langedit")          # hyperparameters from hparams/<family>.json
    report = editor.apply(batch)                    # a list of EditRequest-like objects
    editor.restore()                                # the original weights, bit for bit

Everything that must persist across batches (original weights, key statistics, the running
covariance or null-space basis, the sum of edited keys' outer products, the batch counter, the
context templates) lives on the Editor and can be saved to and loaded from a folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..models.architecture import w_out, w_out_as_matrix
from ..models.loading import LoadedModel
from ..profiling import Measure
from .activations import compute_keys
from .hparams import Hparams, load_hparams
from .stats import KeyMoment, StatsSettings, key_moments
from .templates import STARTERS, TemplateCache
from .tokens import Request, check_request

FAMILY_OF_MODEL_TYPE = {"gemma3_text": "gemma3", "gemma2": "gemma3", "llama": "llama", "qwen2": "qwen2",
                        "mistral": "llama", "gptj": "gptj", "gpt2": "gpt2"}


@dataclass
class BatchReport:
    """What one call of Editor.apply did."""
    n_edits: int
    seconds: float
    peak_memory_bytes: int
    update_norm: dict[int, float] = field(default_factory=dict)   # ||dW||_F per layer
    leakage: dict[int, float] = field(default_factory=dict)       # ||dW K_prev|| / (||dW|| ||K_prev||)
    null_dimension: dict[int, int] = field(default_factory=dict)  # kept dimension of P, null-space methods
    value_seconds: float = 0.0                                    # of `seconds`: the value-target optimisation
    added_memory_bytes: int = 0                                   # peak minus what was held when the batch began

    def to_dict(self) -> dict:
        return asdict(self)


def family_of(lm: LoadedModel) -> str:
    model_type = lm.model.config.model_type
    if model_type not in FAMILY_OF_MODEL_TYPE:
        raise ValueError(f"no hyperparameter family for model_type={model_type!r}")
    return FAMILY_OF_MODEL_TYPE[model_type]


def request_language(request: Request) -> str:
    language = getattr(request, "language", "en")
    if language not in STARTERS:
        raise ValueError(f"request {request!r} has unknown language {language!r}; known: {sorted(STARTERS)}")
    return language


class Editor:
    def __init__(self, lm: LoadedModel, method: str = "langedit", hparams: Hparams | None = None,
                 corpus_texts: Sequence[str] | None = None, progress: bool = True,
                 cache: str | os.PathLike | None = None, template_seed: int = 0,
                 key_statistics: dict[int, KeyMoment] | None = None, **overrides) -> None:
        from .methods import make_method

        self.lm, self.model, self.tokenizer, self.arch = lm, lm.model, lm.tokenizer, lm.arch
        self.hparams = (hparams or load_hparams(method, family_of(lm))).with_overrides(**overrides)
        self.method_name = method
        self.progress, self.cache = progress, cache
        self.templates = TemplateCache(self.model, self.tokenizer, seed=template_seed)
        self._corpus_texts, self._corpus = corpus_texts, None
        self.method = make_method(method, self)
        self.layers = self.method.layers
        self.original = {layer: w_out(self.model, layer).detach().clone() for layer in self.layers}
        self._cov0: dict[int, KeyMoment] = dict(key_statistics or {})   # given C0 (analysis) or read from the corpus
        self.edited_kk: dict[int, torch.Tensor] = {}
        self.n_edited = 0
        self.n_batches = 0

    # ----- weights -------------------------------------------------------------------------
    def weight(self, layer: int) -> torch.Tensor:
        """W_out of `layer` as [d_value, d_key] (a view of the model's parameter)."""
        return w_out_as_matrix(self.model, layer)

    def add_update(self, layer: int, update: torch.Tensor) -> None:
        with torch.no_grad():
            weight = self.weight(layer)
            weight.add_(update.to(weight.dtype).to(weight.device))

    def restore(self) -> None:
        """Put every edited W_out back exactly as it was when the Editor was made."""
        with torch.no_grad():
            for layer, original in self.original.items():
                w_out(self.model, layer).copy_(original)

    # ----- statistics ----------------------------------------------------------------------
    def corpus(self):
        """The corpus C0 is read from: the caller's texts, else hparams.stats_corpus."""
        from ..data.corpus import open_corpus
        if self._corpus is None:
            self._corpus = open_corpus(self.hparams.stats_corpus if self._corpus_texts is None else self._corpus_texts)
        return self._corpus

    def cov0(self, layer: int) -> KeyMoment:
        """C0 = E[k k^T] of the unedited model's keys at `layer` (disk-cached)."""
        if layer not in self._cov0:
            if self.n_batches:
                raise RuntimeError("key statistics must be computed before the first edit (they describe the unedited model)")
            missing = [l for l in self.layers if l not in self._cov0]
            moments = key_moments(self.model, self.tokenizer, self.arch, missing, self.corpus(),
                                  StatsSettings.from_hparams(self.hparams), self.cache, self.progress)
            self._cov0.update(moments)
        return self._cov0[layer]

    def prepare(self) -> None:
        """Compute what the method needs before the first edit (statistics, projections)."""
        self.method.prepare()

    # ----- editing -------------------------------------------------------------------------
    def templates_for(self, requests: Sequence[Request]) -> list[list[list[str]]]:
        return [self.templates(request_language(r)) for r in requests]

    def apply(self, requests: Sequence[Request]) -> BatchReport:
        """Edit all `requests` as one batch; returns timings, update norms and diagnostics."""
        if len(requests) == 0:
            raise ValueError("Editor.apply got an empty batch of requests")
        for request in requests:
            check_request(request)
            request_language(request)
        self.prepare()
        before = {layer: self.weight(layer).detach().double().clone() for layer in self.layers}
        previous_kk = {layer: kk.clone() for layer, kk in self.edited_kk.items()}
        report = BatchReport(n_edits=len(requests), seconds=0.0, peak_memory_bytes=0)
        with Measure(self.lm.device if hasattr(self.lm, "device") else "cpu") as measured:
            self.method.apply(list(requests), report)
            self.record_edited_keys(list(requests))
        report.seconds, report.peak_memory_bytes = measured.seconds, measured.peak_bytes
        report.added_memory_bytes = measured.added_bytes
        for layer in self.layers:
            update = self.weight(layer).detach().double() - before[layer]
            report.update_norm[layer] = float(update.norm())
            if layer in previous_kk:
                report.leakage[layer] = leakage(update, previous_kk[layer])
        self.n_edited += len(requests)
        self.n_batches += 1
        return report

    def record_edited_keys(self, requests: Sequence[Request]) -> None:
        """Add k k^T of this batch's keys, read from the edited model, to the running sum."""
        templates = self.templates_for(requests)
        known = self.method.keys_of_batch()
        keys_by_layer = {}
        for layer in self.layers:
            keys = known[layer] if layer in known else compute_keys(self.model, self.tokenizer, self.arch, requests,
                                                                    layer, templates)
            keys = keys.double()
            kk = keys.T @ keys
            self.edited_kk[layer] = kk if layer not in self.edited_kk else self.edited_kk[layer] + kk
            keys_by_layer[layer] = keys
        self.method.after_batch(keys_by_layer)

    # ----- persistence ---------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> None:
        """Weights of the edited layers and all editor state (safetensors + JSON, no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"weight.{l}": w_out(self.model, l).detach().contiguous().cpu() for l in self.layers}
        tensors.update({f"original.{l}": t.contiguous().cpu() for l, t in self.original.items()})
        tensors.update({f"edited_kk.{l}": t.contiguous().cpu() for l, t in self.edited_kk.items()})
        tensors.update({f"method.{k}": v.contiguous().cpu() for k, v in self.method.state().items()})
        tmp = folder / "state.safetensors.tmp"
        save_file(tensors, str(tmp))
        meta = {"method": self.method_name, "n_edited": self.n_edited, "n_batches": self.n_batches,
                "hparams": {k: v for k, v in asdict(self.hparams).items()}, "templates": self.templates.state()}
        (folder / "state.json.tmp").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
        os.replace(tmp, folder / "state.safetensors")
        os.replace(folder / "state.json.tmp", folder / "state.json")

    def load(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        meta = json.loads((folder / "state.json").read_text())
        if meta["method"] != self.method_name:
            raise ValueError(f"{folder} holds a {meta['method']!r} editor, this one is {self.method_name!r}")
        tensors = load_file(str(folder / "state.safetensors"))
        with torch.no_grad():
            for layer in self.layers:
                w_out(self.model, layer).copy_(tensors[f"weight.{layer}"])
        device = self.lm.device
        self.edited_kk = {int(k.split(".")[1]): v.to(device) for k, v in tensors.items() if k.startswith("edited_kk.")}
        self.method.load_state({k[len("method."):]: v.to(device) for k, v in tensors.items() if k.startswith("method.")})
        self.n_edited, self.n_batches = meta["n_edited"], meta["n_batches"]
        self.templates.load_state(meta["templates"])


def leakage(update: torch.Tensor, kk: torch.Tensor) -> float:
    """||dW K||_F / (||dW||_F ||K||_F) for the keys K behind kk = K^T K (rows = keys)."""
    update, kk = update.double(), kk.double().to(update.device)
    numerator = torch.trace(update @ kk @ update.T).clamp_min(0).sqrt()
    denominator = update.norm() * torch.trace(kk).clamp_min(0).sqrt()
    return float(numerator / denominator) if denominator > 0 else 0.0
