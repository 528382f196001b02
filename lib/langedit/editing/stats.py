"""Preserved-knowledge statistics: the uncentered second moment C0 = E[k k^T] of W_out's input
over the tokens of a text corpus, per layer.

How the tokens are read (``StatsSettings``, hyperparameters ``stats_*``): the corpus's texts in
order, each tokenized without special tokens and cut into *windows* of at most ``window``
positions, each window starting with the tokenizer's own prefix (BOS for Gemma / Llama, none for
GPT-2), as the model sees a document start. A text longer than a window continues in the next
window (``overflow="windows"``) or is cut off (``"truncate"``, what the reference implementations
do at the model's context length). Tokens (every position, BOS included) are counted until
``n_tokens``; ``n_texts`` caps the number of texts read (the references' ``mom2_n_samples``).
Windows are sorted by length within buffers of ``SORT_BUFFER_BATCHES`` batches (less padding;
a sum does not depend on order) and run right-padded, ``batch_tokens`` padded positions per
forward pass. The window is at most the model's context length. Accumulated in float32 (as the
reference code).

Cached on disk keyed by the model's weights up to the layer, the corpus identity (its texts, its
files' bytes or the hub revision), the settings and a protocol version (bumped whenever this
computation changes), and written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.corpus import Corpus, open_corpus
from ..hooks import TraceDict
from ..models.architecture import get_module
from ..paths import cache_dir

#: Version of the statistics' computation; part of the cache key. 3: windows, sorted batches, text budgets.
STATS_PROTOCOL = 3
OVERFLOW_POLICIES: tuple[str, ...] = ("windows", "truncate")
#: Windows are sorted by length within this many batches' worth of tokens. Bounds the look-ahead
#: of a streamed corpus; part of the protocol (it changes the batches, hence float sums).
SORT_BUFFER_BATCHES = 16
#: Texts tokenized per tokenizer call (speed only; tokenization does not depend on it).
_TOKENIZE_CHUNK = 256


@dataclass
class KeyMoment:
    moment: torch.Tensor   # [d_key, d_key] float32, the mean of k k^T
    n_tokens: int
    n_texts: int = 0       # texts read (the last one possibly in part)
    n_windows: int = 0     # forward sequences, i.e. document starts (each with the tokenizer's prefix)


def _positive_or_none(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


@dataclass(frozen=True)
class StatsSettings:
    """How C0 is read from a corpus; every field is part of the cache key."""
    n_tokens: int | None = 100_000
    n_texts: int | None = None
    window: int = 1024
    overflow: str = "windows"
    batch_tokens: int = 4096

    def __post_init__(self) -> None:
        _positive_or_none("stats_tokens (n_tokens)", self.n_tokens)
        _positive_or_none("stats_texts (n_texts)", self.n_texts)
        for name in ("window", "batch_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"stats {name} must be an int >= 2, got {value!r}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"unknown stats_overflow {self.overflow!r}; choose from {OVERFLOW_POLICIES}")

    @classmethod
    def from_hparams(cls, hp) -> "StatsSettings":
        return cls(n_tokens=hp.stats_tokens, n_texts=hp.stats_texts, window=hp.stats_window,
                   overflow=hp.stats_overflow, batch_tokens=hp.stats_batch_tokens)

    def for_model(self, model) -> "StatsSettings":
        """The window at most the model's context length (the references' window)."""
        config = model.config
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return self if not context or self.window <= context else replace(self, window=int(context))

    def label(self) -> str:
        tokens = "all" if self.n_tokens is None else str(self.n_tokens)
        texts = "" if self.n_texts is None else f"-{self.n_texts}texts"
        return f"{tokens}tok{texts}-w{self.window}{self.overflow[0]}"


def statistics_key(corpus_identity: str, settings: StatsSettings) -> str:
    """What besides the weights determines C0: the corpus, how it is read, the code version."""
    payload = [STATS_PROTOCOL, SORT_BUFFER_BATCHES, corpus_identity, asdict(settings)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ----- tokens -> windows -> batches ---------------------------------------------------------------

def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text (e.g. [BOS]); empty for tokenizers that add none."""
    probe = "knowledge"
    full = list(tokenizer(probe)["input_ids"])
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start]
    raise ValueError(f"cannot tell the special prefix of {type(tokenizer).__name__}: "
                     f"{probe!r} -> {full} with specials, {bare} without")


@dataclass
class Window:
    ids: list[int]
    start: int      # global index of its first position in the token stream (corpus order)


@dataclass
class WindowStream:
    """The corpus as windows, in order, until the budget; counts what it has read."""
    corpus: Iterable[str]
    tokenizer: object
    settings: StatsSettings
    n_tokens: int = 0
    n_texts: int = 0
    n_windows: int = 0
    prefix: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = special_prefix(self.tokenizer)
        if self.settings.window <= len(self.prefix):
            raise ValueError(f"stats window {self.settings.window} leaves no room after the prefix {self.prefix}")

    def _token_lists(self) -> Iterator[list[int]]:
        texts = iter(self.corpus)
        while chunk := [text for _, text in zip(range(_TOKENIZE_CHUNK), texts)]:
            yield from self.tokenizer(chunk, add_special_tokens=False)["input_ids"]

    def _pieces(self, ids: list[int]) -> list[list[int]]:
        width = self.settings.window - len(self.prefix)
        pieces = [ids[i:i + width] for i in range(0, len(ids), width)]
        return pieces[:1] if self.settings.overflow == "truncate" else pieces

    def __iter__(self) -> Iterator[Window]:
        budget, texts = self.settings.n_tokens, self.settings.n_texts
        for ids in self._token_lists():
            if texts is not None and self.n_texts >= texts:
                return
            if not ids:
                continue
            self.n_texts += 1
            for piece in self._pieces(ids):
                window = (self.prefix + piece)[: None if budget is None else budget - self.n_tokens]
                self.n_windows += 1
                yield Window(window, self.n_tokens)
                self.n_tokens += len(window)
                if budget is not None and self.n_tokens >= budget:
                    return

    def check_complete(self, what: str) -> None:
        """A corpus that ends before its budget (the first of the two reached) is an error, not a
        silently smaller sample."""
        tokens, texts = self.settings.n_tokens, self.settings.n_texts
        reached = (tokens is not None and self.n_tokens >= tokens) or (texts is not None and self.n_texts >= texts)
        if not reached and (tokens, texts) != (None, None):
            asked = " or ".join(part for part in (tokens and f"{tokens} tokens", texts and f"{texts} texts") if part)
            raise ValueError(f"corpus {what} holds only {self.n_tokens} tokens in {self.n_texts} texts "
                             f"(windows of {self.settings.window}, {self.settings.overflow}); asked for {asked}. "
                             f"Lower the budget or set stats_tokens to null for the whole corpus.")


def _pack(buffer: list[Window], batch_tokens: int) -> Iterator[list[Window]]:
    """Longest first, as many windows per batch as fit in `batch_tokens` padded positions."""
    ordered = sorted(buffer, key=lambda w: -len(w.ids))
    batch: list[Window] = []
    for window in ordered:
        if batch and (len(batch) + 1) * len(batch[0].ids) > batch_tokens:
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch


def window_batches(windows: Iterable[Window], batch_tokens: int, flush_at: Sequence[int] = ()) -> Iterator[list[Window]]:
    """Batches of windows: buffered, sorted, packed. A buffer also ends before the first window that
    starts at or after a point in `flush_at` (token offsets), so every batch lies on one side of it
    except for the one window that straddles it."""
    capacity = SORT_BUFFER_BATCHES * batch_tokens
    points = sorted(flush_at)
    buffer: list[Window] = []
    held = 0
    for window in windows:
        crosses = any(buffer[0].start < p <= window.start for p in points) if buffer else False
        if buffer and (held + len(window.ids) > capacity or crosses):
            yield from _pack(buffer, batch_tokens)
            buffer, held = [], 0
        buffer.append(window)
        held += len(window.ids)
    yield from _pack(buffer, batch_tokens)


@dataclass
class BatchKeys:
    keys: dict[int, torch.Tensor]   # layer -> [n_valid, d_key] float32, in (window, position) order
    positions: torch.Tensor         # [n_valid] position inside its window
    index: torch.Tensor             # [n_valid] global index in the token stream


@torch.no_grad()
def batch_keys(model, arch, layers: Sequence[int], batch: list[Window], pad_id: int) -> BatchKeys:
    """The inputs of W_out at `layers` for one right-padded batch of windows (stops after the last layer)."""
    device = next(model.parameters()).device
    width = max(len(w.ids) for w in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, window in enumerate(batch):
        ids[row, :len(window.ids)] = torch.tensor(window.ids)
        mask[row, :len(window.ids)] = 1
    valid = mask.bool()
    positions = torch.arange(width).expand(len(batch), width)
    starts = torch.tensor([w.start for w in batch]).unsqueeze(1)
    names = {layer: arch.mlp_out_name(layer) for layer in layers}
    with TraceDict(model, list(names.values()), retain_input=True, retain_output=False, stop=True) as traces:
        model(input_ids=ids.to(device), attention_mask=mask.to(device))
    valid_on_device = valid.to(device)
    keys = {layer: traces[name].input[valid_on_device].float() for layer, name in names.items()}
    return BatchKeys(keys, positions[valid], (starts + positions)[valid])


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0   # right padding under a zero mask: what the padded positions hold never reaches a valid one


# ----- accumulation -------------------------------------------------------------------------------

def accumulate_key_moments(model, tokenizer, arch, layers: Sequence[int], corpus: "Corpus | Sequence[str]",
                           settings: StatsSettings, progress: bool = True) -> dict[int, KeyMoment]:
    """One pass over the corpus (until the budget) collecting E[k k^T] at every layer of `layers`."""
    corpus, settings = open_corpus(corpus), settings.for_model(model)
    if corpus.in_memory and not corpus.texts:
        raise ValueError("no corpus texts to compute key statistics from")
    if corpus.in_memory:   # a finite corpus too small for the budget fails before any forward pass
        dry = WindowStream(corpus, tokenizer, settings)
        for _ in dry:
            pass
        dry.check_complete(repr(corpus.spec))
    stream = WindowStream(corpus, tokenizer, settings)
    sums: dict[int, torch.Tensor] = {}
    pad = _pad_id(tokenizer)
    bar = tqdm(total=settings.n_tokens, desc=f"key statistics, layers {list(layers)}", disable=not progress,
               unit="tok")
    for batch in window_batches(stream, settings.batch_tokens):
        read = batch_keys(model, arch, layers, batch, pad)
        for layer, keys in read.keys.items():
            kk = keys.T @ keys
            sums[layer] = kk if layer not in sums else sums[layer] + kk
        bar.update(len(read.index))
    bar.close()
    stream.check_complete(repr(corpus.spec))
    if not sums:
        raise ValueError(f"corpus {corpus.spec!r} yielded no tokens")
    return {layer: KeyMoment((sums[layer] / stream.n_tokens).cpu(), stream.n_tokens, stream.n_texts,
                             stream.n_windows) for layer in layers}


@dataclass
class BudgetCurve:
    """C0 after each token budget of one pass, and over the positions below each limit (whole pass)."""
    by_budget: dict[int | None, dict[int, KeyMoment]]
    below_position: dict[int, dict[int, KeyMoment]]


def key_moments_by_budget(model, tokenizer, arch, layers: Sequence[int], corpus: "Corpus | Sequence[str]",
                          settings: StatsSettings, budgets: Sequence[int | None],
                          position_limits: Sequence[int] = (), progress: bool = True) -> BudgetCurve:
    """C0 at several token budgets from one pass (analysis; never cached).

    A budget ``None`` is the whole corpus. ``settings.n_tokens`` must be the largest budget (None
    with the whole corpus). Each result equals ``accumulate_key_moments`` at that budget up to
    float32 summation order (here a sort buffer also ends at every budget, so batches differ).
    ``position_limits``: C0 over the tokens at window positions below each limit, over the whole
    pass, i.e. what truncating every window to that length averages (over fewer tokens).
    """
    finite = sorted(set(b for b in budgets if b is not None))
    largest = None if None in budgets else (finite[-1] if finite else None)
    if not budgets:
        raise ValueError("give at least one budget")
    if settings.n_tokens != largest:
        raise ValueError(f"settings.n_tokens must be the largest budget ({largest}), got {settings.n_tokens}")
    corpus, settings = open_corpus(corpus), settings.for_model(model)
    stream = WindowStream(corpus, tokenizer, settings)
    pad = _pad_id(tokenizer)
    running: dict[int, torch.Tensor] = {}
    forked: dict[int, dict[int, torch.Tensor]] = {}    # budgets whose last buffer is being read
    done: dict[int | None, dict[int, KeyMoment]] = {}
    limited: dict[int, dict[int, torch.Tensor]] = {p: {} for p in position_limits}
    limited_count = {p: 0 for p in position_limits}

    def add(target: dict, layer: int, kk: torch.Tensor) -> None:
        target[layer] = kk if layer not in target else target[layer] + kk

    def finish(budget: int, sums: dict[int, torch.Tensor]) -> None:
        done[budget] = {layer: KeyMoment((sums[layer] / budget).cpu(), budget) for layer in layers}

    bar = tqdm(total=largest, desc=f"key statistics by budget, layers {list(layers)}", disable=not progress,
               unit="tok")
    for batch in window_batches(stream, settings.batch_tokens, flush_at=finite):
        first = min(w.start for w in batch)
        for budget in [b for b in forked if first >= b]:    # a later buffer: that budget is complete
            finish(budget, forked.pop(budget))
        for budget in [b for b in finite if b not in done and first >= b]:   # it fell between two windows
            finish(budget, running)
        read = batch_keys(model, arch, layers, batch, pad)
        end = int(read.index.max()) + 1
        forking = [b for b in finite if b not in done and b not in forked and first < b < end]
        for budget in forking:
            forked[budget] = {}
        for layer, keys in read.keys.items():
            kk = keys.T @ keys
            for budget, sums in forked.items():
                below = read.index < budget
                part = kk if bool(below.all()) else keys[below].T @ keys[below]
                if budget in forking:   # everything before this batch, plus this batch's share
                    sums[layer] = running[layer] + part if layer in running else part
                else:
                    sums[layer] = sums[layer] + part
            add(running, layer, kk)
            for limit in position_limits:
                chosen = read.positions < limit
                add(limited[limit], layer, keys[chosen].T @ keys[chosen])
        for limit in position_limits:
            limited_count[limit] += int((read.positions < limit).sum())
        bar.update(len(read.index))
    bar.close()
    stream.check_complete(repr(corpus.spec))
    for budget in list(forked):
        finish(budget, forked.pop(budget))
    if not running:
        raise ValueError(f"corpus {corpus.spec!r} yielded no tokens")
    for budget in finite:
        if budget not in done and budget == stream.n_tokens:   # the pass ended exactly there
            finish(budget, running)
    if None in budgets:
        done[None] = {layer: KeyMoment((running[layer] / stream.n_tokens).cpu(), stream.n_tokens, stream.n_texts,
                                       stream.n_windows) for layer in layers}
    missing = [b for b in finite if b not in done]
    if missing:
        raise ValueError(f"corpus {corpus.spec!r} ended at {stream.n_tokens} tokens, before budgets {missing}")
    below = {limit: {layer: KeyMoment((limited[limit][layer] / limited_count[limit]).cpu(), limited_count[limit])
                     for layer in layers} for limit in position_limits}
    return BudgetCurve(done, below)


# ----- cache --------------------------------------------------------------------------------------

def model_fingerprint(model, arch, upto_layer: int) -> str:
    """Hash of the weights that produce the keys of `upto_layer` (a strided sample, cheap and stable)."""
    digest = hashlib.sha256(str(getattr(model.config, "_name_or_path", "")).encode())
    names = [arch.embed] + [arch.layer_name(l) for l in range(upto_layer + 1)]
    for name in names:
        for pname, param in sorted(get_module(model, name).named_parameters()):
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            digest.update(pname.encode() + str(tuple(param.shape)).encode())
            digest.update(flat[::step].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")[:40] or "corpus"


def _cache_file(root: Path, fingerprint: str, layer: int, corpus: Corpus, settings: StatsSettings, key: str) -> Path:
    return root / "stats" / fingerprint / f"{_slug(corpus.spec)}-{settings.label()}-{key}" / f"layer{layer}.safetensors"


def _atomic_save(tensors: dict, metadata: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)


_COUNTS = ("n_tokens", "n_texts", "n_windows")


def key_moments(model, tokenizer, arch, layers: Sequence[int], corpus: "Corpus | Sequence[str] | str",
                settings: StatsSettings, cache: str | os.PathLike | None = None,
                progress: bool = True) -> dict[int, KeyMoment]:
    """C0 per layer, from the disk cache when present; computes (in one pass) the missing layers."""
    corpus, settings = open_corpus(corpus), settings.for_model(model)
    root = cache_dir(cache)
    key = statistics_key(corpus.identity, settings)
    paths = {layer: _cache_file(root, model_fingerprint(model, arch, layer), layer, corpus, settings, key)
             for layer in layers}
    found, missing = {}, []
    for layer in layers:
        if paths[layer].exists():
            data = load_file(str(paths[layer]))
            found[layer] = KeyMoment(data["moment"], *(int(data[name].item()) for name in _COUNTS))
        else:
            missing.append(layer)
    if missing:
        computed = accumulate_key_moments(model, tokenizer, arch, missing, corpus, settings, progress=progress)
        for layer, stat in computed.items():
            counts = {name: torch.tensor(getattr(stat, name)) for name in _COUNTS}
            _atomic_save({"moment": stat.moment.contiguous(), **counts},
                         {"layer": layer, "corpus": corpus.spec, "corpus_identity": corpus.identity,
                          "settings": asdict(settings), "protocol": STATS_PROTOCOL}, paths[layer])
            found[layer] = stat
    return {layer: found[layer] for layer in layers}
