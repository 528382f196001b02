"""One entry point over the seven editing methods.

    editor = Editor(lm, method="langedit")          # hyperparameters from hparams/<family>.json
    report = editor.apply(batch)                    # a list of EditRequest-like objects
    editor.restore()                                # the original weights, bit for bit

Everything that must persist across batches (original weights, key statistics, the running
covariance or null-space basis, the sum of edited keys' outer products, the batch counter, the
context templates) lives on the Editor and can be saved to and loaded from a folder; a state
loaded into a new Editor (a new process) continues bit for bit as the uninterrupted Editor would.

Raw and evaluated weights: editing always continues from the *raw* accumulated weights. A method
may show the model other weights for evaluation (PRUNE: the original plus the restrained raw
update, as the reference restrains the accumulated update once, when the model is evaluated).
Between calls (after apply(), load()) the model holds the evaluation weights, so whatever
evaluates it sees them; apply() puts the raw ones back before editing.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..models.architecture import get_module, w_out, w_out_as_matrix
from ..models.loading import LoadedModel
from ..precision import keep_in_float32
from ..profiling import Measure
from .activations import keys_at_layers
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
    value_steps: list[int] = field(default_factory=list)          # loss evaluations of each request's v* (batch order)

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
        for layer in self.layers:   # edited matrices stay exact, whatever the model's storage dtype
            keep_in_float32(get_module(self.model, self.arch.mlp_out_name(layer)))
        self.original = {layer: w_out(self.model, layer).detach().clone() for layer in self.layers}
        self._cov0: dict[int, KeyMoment] = dict(key_statistics or {})   # given C0 (analysis) or read from the corpus
        self._cov0_digest = ""
        self._raw: dict[int, torch.Tensor] = {}     # raw weights of layers whose evaluation weights differ
        self.edited_kk: dict[int, torch.Tensor] = {}
        self.n_edited = 0
        self.n_batches = 0

    # ----- weights -------------------------------------------------------------------------
    def weight(self, layer: int) -> torch.Tensor:
        """W_out of `layer` as [d_value, d_key] (a view of the model's parameter)."""
        return w_out_as_matrix(self.model, layer)

    def original_matrix(self, layer: int) -> torch.Tensor:
        """The unedited W_out of `layer` as [d_value, d_key]."""
        original = self.original[layer]
        return original.T if self.arch.mlp_out_transposed else original

    def raw_weight(self, layer: int) -> torch.Tensor:
        """W_out of `layer` as [d_value, d_key] with the raw accumulated update (what editing continues
        from); the model's own weight where the method shows the raw weights for evaluation."""
        raw = self._raw.get(layer)
        if raw is None:
            return self.weight(layer).detach()
        return raw.T if self.arch.mlp_out_transposed else raw

    def raw_update(self, layer: int) -> torch.Tensor:
        """The raw accumulated update of `layer`, [d_value, d_key]."""
        return self.raw_weight(layer) - self.original_matrix(layer)

    def add_update(self, layer: int, update: torch.Tensor) -> None:
        with torch.no_grad():
            weight = self.weight(layer)
            weight.add_(update.to(weight.dtype).to(weight.device))

    def add_raw_updates(self, updates: Mapping[int, torch.Tensor]) -> None:
        """Add updates ([d_value, d_key], by layer) computed elsewhere to the raw weights, then show
        the model the method's evaluation weights (the summed mode adds languages' updates so)."""
        self._use_raw_weights()
        for layer, update in updates.items():
            self.add_update(layer, update)
        self._show_evaluation_weights()

    @contextmanager
    def raw_weights(self) -> Iterator[None]:
        """Within: the model holds the raw accumulated weights (what editing continues from); after:
        the evaluation weights again. The same as outside for every method but PRUNE."""
        self._use_raw_weights()
        try:
            yield
        finally:
            self._show_evaluation_weights()

    def _use_raw_weights(self) -> None:
        """Put the raw weights into the model (editing continues from them)."""
        with torch.no_grad():
            for layer, raw in self._raw.items():
                w_out(self.model, layer).copy_(raw)
        self._raw = {}

    def _show_evaluation_weights(self) -> None:
        """Keep the raw weights aside and give the model the method's evaluation weights."""
        shown = self.method.evaluation_weights()
        with torch.no_grad():
            for layer, matrix in shown.items():
                self._raw[layer] = w_out(self.model, layer).detach().clone()
                self.weight(layer).copy_(matrix.to(self._raw[layer].dtype))

    def restore(self) -> None:
        """Put every edited W_out back exactly as it was when the Editor was made."""
        self._raw = {}
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
                raise RuntimeError("key statistics must be computed before the first edit (they describe the unedited "
                                   "model); a state saved without them (older code) cannot be continued")
            missing = [l for l in self.layers if l not in self._cov0]
            moments = key_moments(self.model, self.tokenizer, self.arch, missing, self.corpus(),
                                  StatsSettings.from_hparams(self.hparams), self.cache, self.progress)
            self._cov0.update(moments)
            self._cov0_digest = moments_digest(self._cov0)
        return self._cov0[layer]

    def prepare(self) -> None:
        """Compute what the method needs before the first edit (statistics, projections)."""
        self.method.prepare()

    # ----- editing -------------------------------------------------------------------------
    def templates_for(self, requests: Sequence[Request]) -> list[list[list[str]]]:
        return [self.templates(request_language(r)) for r in requests]

    def apply(self, requests: Sequence[Request], values: torch.Tensor | None = None) -> BatchReport:
        """Edit all `requests` as one batch; returns timings, update norms and diagnostics.

        `values`: value targets v* [B, d] (request order) computed elsewhere, e.g. once for several
        solver settings (benchmarks/diagnose_batch_size.py); only valid for a model in the state they
        were computed on. Multi-layer methods only; by default v* is optimised here."""
        if len(requests) == 0:
            raise ValueError("Editor.apply got an empty batch of requests")
        if values is not None:
            if not self.method.accepts_values:
                raise ValueError(f"method {self.method_name!r} optimises its own targets; it takes no given values")
            if values.shape[0] != len(requests):
                raise ValueError(f"{values.shape[0]} value targets for {len(requests)} requests")
        for request in requests:
            check_request(request)
            request_language(request)
        self.prepare()
        self._use_raw_weights()
        before = {layer: self.weight(layer).detach().double().clone() for layer in self.layers}
        previous_kk = {layer: kk.clone() for layer, kk in self.edited_kk.items()}
        report = BatchReport(n_edits=len(requests), seconds=0.0, peak_memory_bytes=0)
        with Measure(self.lm.device if hasattr(self.lm, "device") else "cpu") as measured:
            self.method.apply(list(requests), report, values)
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
        self._show_evaluation_weights()
        return report

    def record_edited_keys(self, requests: Sequence[Request]) -> None:
        """Add k k^T of this batch's keys, read from the edited model, to the running sum."""
        templates = self.templates_for(requests)
        known = self.method.keys_of_batch()
        missing = [layer for layer in self.layers if layer not in known]
        if missing:      # one forward pass for all the layers the method did not read during its edit
            known = {**known, **keys_at_layers(self.model, self.tokenizer, self.arch, requests, missing, templates)}
        keys_by_layer = {}
        for layer in self.layers:
            keys = known[layer].double()
            kk = keys.T @ keys
            self.edited_kk[layer] = kk if layer not in self.edited_kk else self.edited_kk[layer] + kk
            keys_by_layer[layer] = keys
        self.method.after_batch(keys_by_layer)

    # ----- persistence ---------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> None:
        """Raw weights of the edited layers and all editor state (safetensors + JSON, no pickle).

        state.json is the commit point: it names the tensor files of its state, which are written
        (under new names) before it is replaced, so an interruption at any moment leaves either the
        old state or the new one. The key statistics C0 (large, fixed for the Editor's life) have
        their own file, named by their digest and written once."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        statistics = self._save_key_statistics(folder)
        raw = {l: self._raw.get(l, w_out(self.model, l).detach()) for l in self.layers}
        tensors = {f"weight.{l}": t.contiguous().cpu() for l, t in raw.items()}
        tensors.update({f"original.{l}": t.contiguous().cpu() for l, t in self.original.items()})
        tensors.update({f"edited_kk.{l}": t.contiguous().cpu() for l, t in self.edited_kk.items()})
        tensors.update({f"method.{k}": v.contiguous().cpu() for k, v in self.method.state().items()})
        name = f"state-{self.n_batches}-{uuid.uuid4().hex[:8]}.safetensors"
        _atomic_save_file(tensors, folder / name)
        meta = {"method": self.method_name, "n_edited": self.n_edited, "n_batches": self.n_batches,
                "hparams": {k: v for k, v in asdict(self.hparams).items()}, "templates": self.templates.state(),
                "tensors": name, "key_statistics": statistics}
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1))
        os.replace(tmp, folder / "state.json")
        for stale in [*folder.glob("state*.safetensors"), *folder.glob("key_statistics-*.safetensors")]:
            if stale.name not in (name, statistics):
                stale.unlink()

    def _save_key_statistics(self, folder: Path) -> str:
        """The file name of this Editor's key statistics in `folder` (written if absent); "" if none."""
        if not self._cov0:
            return ""
        name = f"key_statistics-{self._cov0_digest}.safetensors"
        if not (folder / name).exists():
            tensors = {f"moment.{l}": m.moment.contiguous().cpu() for l, m in self._cov0.items()}
            tensors.update({f"n_tokens.{l}": torch.tensor(m.n_tokens) for l, m in self._cov0.items()})
            _atomic_save_file(tensors, folder / name)
        return name

    def _load_key_statistics(self, path: Path) -> None:
        tensors = load_file(str(path))
        moments = {int(k.split(".")[1]): KeyMoment(v, int(tensors["n_tokens." + k.split(".")[1]].item()))
                   for k, v in tensors.items() if k.startswith("moment.")}
        digest = moments_digest(moments)
        if path.name != f"key_statistics-{digest}.safetensors":
            raise ValueError(f"{path} does not hold the key statistics its name promises (digest {digest})")
        self._cov0, self._cov0_digest = moments, digest

    def load(self, folder: str | os.PathLike) -> None:
        """Continue from a saved state: afterwards the next apply() edits exactly as the saved Editor's
        would have (same raw weights, key statistics, method state, templates, counters)."""
        folder = Path(folder)
        meta = json.loads((folder / "state.json").read_text())
        if meta["method"] != self.method_name:
            raise ValueError(f"{folder} holds a {meta['method']!r} editor, this one is {self.method_name!r}")
        tensors = load_file(str(folder / meta.get("tensors", "state.safetensors")))
        for layer in self.layers:
            if not torch.equal(tensors[f"original.{layer}"], self.original[layer].cpu()):
                raise ValueError(f"{folder} was edited from other original weights of layer {layer} than this "
                                 "Editor's model holds; load a state into an Editor made on the unedited model")
        if meta.get("key_statistics"):
            self._load_key_statistics(folder / meta["key_statistics"])
        self._raw = {}
        with torch.no_grad():
            for layer in self.layers:
                w_out(self.model, layer).copy_(tensors[f"weight.{layer}"])
        device = self.lm.device
        self.edited_kk = {int(k.split(".")[1]): v.to(device) for k, v in tensors.items() if k.startswith("edited_kk.")}
        self.method.load_state({k[len("method."):]: v.to(device) for k, v in tensors.items() if k.startswith("method.")})
        self.n_edited, self.n_batches = meta["n_edited"], meta["n_batches"]
        self.templates.load_state(meta["templates"])
        self._show_evaluation_weights()


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def moments_digest(moments: Mapping[int, KeyMoment]) -> str:
    """SHA-256 over the layers, token counts and exact bytes of the key statistics."""
    digest = hashlib.sha256()
    for layer in sorted(moments):
        moment = moments[layer].moment.detach().contiguous().cpu()
        digest.update(f"{layer}:{moments[layer].n_tokens}:{moment.dtype}:{tuple(moment.shape)}".encode())
        digest.update(moment.reshape(-1).view(torch.uint8).numpy())     # the exact bytes, any dtype
    return digest.hexdigest()[:16]


def leakage(update: torch.Tensor, kk: torch.Tensor) -> float:
    """||dW K||_F / (||dW||_F ||K||_F) for the keys K behind kk = K^T K (rows = keys)."""
    update, kk = update.double(), kk.double().to(update.device)
    numerator = torch.trace(update @ kk @ update.T).clamp_min(0).sqrt()
    denominator = update.norm() * torch.trace(kk).clamp_min(0).sqrt()
    return float(numerator / denominator) if denominator > 0 else 0.0
