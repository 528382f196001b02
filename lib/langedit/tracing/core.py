"""The tracing engine: clean run, corrupted runs, and batched restorations for one fact.

Corruption adds Gaussian noise to the *output of the embedding module* at the subject tokens (for
Gemma that output is already scaled by sqrt(d), so the noise scale is estimated on the same
output). Restoring copies a clean activation into the corrupted rows.

Every number is exact (the same as a full forward with one patched state and a softmax over the
whole vocabulary; tests/test_tracing.py checks it against such a naive trace). What makes it cheap:

* the answer probability needs only the last position: the forward stops at the final norm and only
  that position goes through the unembedding (Gemma-3's vocabulary has 262k entries), as
  exp(logit_answer - logsumexp(logits));
* positions before the restored token t are the corrupted run's in every restoration (attention is
  causal): they enter as a KV cache, grown token by token, so only tokens t.. are recomputed;
* layers below the first restored one are the corrupted run's as well: they return its cached
  outputs instead of running (one corrupted forward per fact keeps every layer's output);
* restorations are batched: one row per (restored cell, noise sample);
* a batched first pass (:func:`screen_facts`) finds the facts the model answers before any tracing.
"""
from __future__ import annotations

import copy
import zlib
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..hooks import TraceDict
from ..models.architecture import Architecture, UnsupportedArchitectureError, architecture_of, get_module
from .facts import EncodedFact

KINDS = ("hidden", "mlp", "attn")

def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def n_layers_of(model: nn.Module, arch: Architecture | None = None) -> int:
    arch = arch or architecture_of(model)
    return len(get_module(model, arch.layers))


def d_model_of(model: nn.Module) -> int:
    """Width of the embedding module's output (what the noise is added to)."""
    return int(get_module(model, architecture_of(model).embed).weight.shape[-1])


def attn_block_out_name(arch: Architecture, layer: int) -> str:
    """The module whose output the attention branch adds to the residual stream (see Architecture)."""
    return arch.attn_block_out_name(layer)


def state_names(arch: Architecture, kind: str, n_layers: int) -> list[str]:
    """Per layer, the module whose output is restored for `kind` (hidden / mlp / attn)."""
    if kind == "hidden":
        return [arch.layer_name(layer) for layer in range(n_layers)]
    if kind == "mlp":
        return [arch.block_out_name(layer) for layer in range(n_layers)]
    if kind == "attn":
        return [attn_block_out_name(arch, layer) for layer in range(n_layers)]
    raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")


def restored_layers(kind: str, layer: int, window: int, n_layers: int) -> range:
    """Layers restored for one grid cell: the layer itself (hidden), or ROME's window [l - w/2, l + w/2)."""
    if kind == "hidden":
        return range(layer, layer + 1)
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


# --------------------------------------------------------------------------- noise

def embedding_std(model: nn.Module, tokenizer, subjects: Iterable[str]) -> float:
    """Standard deviation of the embedding module's output over the subjects' tokens (ROME's estimate)."""
    arch = architecture_of(model)
    ids = [i for subject in subjects for i in tokenizer(subject, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise ValueError("no subject tokens to estimate the embedding standard deviation from")
    with torch.no_grad():
        embedded = get_module(model, arch.embed)(torch.tensor([ids], device=_device(model)))
    return float(embedded.float().std())


def fact_seed(seed: int, fact: EncodedFact) -> int:
    """Noise seed of one fact: fixed by the global seed and the fact's text, not by its place in a list."""
    # One 32-bit hash of both: torch's CPU generator (mt19937) keeps only a seed's low 32 bits.
    return zlib.crc32(f"{int(seed)}\x00{fact.fact.prompt}\x00{fact.fact.subject}".encode())


def make_noise(fact: EncodedFact, n_samples: int, d_model: int, std: float, seed: int = 0) -> torch.Tensor:
    """``[n_samples, n_subject_tokens, d_model]`` Gaussian noise (float32, CPU, seeded per fact)."""
    generator = torch.Generator().manual_seed(fact_seed(seed, fact))
    start, end = fact.subject_range
    return torch.randn(n_samples, end - start, d_model, generator=generator) * float(std)


# --------------------------------------------------------------------------- engine

@dataclass
class _Patch:
    """Rows and (segment-relative) positions of one module's output to overwrite with `values`."""
    rows: torch.Tensor
    positions: torch.Tensor
    values: torch.Tensor


def _noise_edit(noise: torch.Tensor, subject_range: tuple[int, int], offset: int):
    start, end = subject_range

    def edit(out: torch.Tensor) -> torch.Tensor:
        lo, hi = max(start, offset), min(end, offset + out.shape[1])
        if lo >= hi:
            return out
        out = out.clone()
        out[:, lo - offset:hi - offset] += noise[:, lo - start:hi - start].to(out)
        return out
    return edit


def _patch_edit(patch: _Patch):
    def edit(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[patch.rows, patch.positions] = patch.values.to(out)
        return out
    return edit


def _final_hidden(
    model: nn.Module, arch: Architecture, input_ids: torch.Tensor, *, noise: torch.Tensor | None = None,
    subject_range: tuple[int, int] = (0, 0), offset: int = 0, patches: Mapping[str, _Patch] | None = None,
    past=None, retain: Sequence[str] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run to the final norm (no logits): last-position hidden states ``[B, d]`` and retained outputs."""
    edits = {name: _patch_edit(p) for name, p in (patches or {}).items()}
    if noise is not None:
        if arch.embed in edits:
            raise ValueError("the embedding output cannot be both corrupted and restored")
        edits[arch.embed] = _noise_edit(noise, subject_range, offset)
    names = [*edits, *retain, arch.final_norm]
    with TraceDict(model, names, edit_output=lambda out, name: edits[name](out) if name in edits else out,
                   stop=True) as traces, torch.no_grad():
        model(input_ids=input_ids, past_key_values=past, use_cache=past is not None)
    return traces[arch.final_norm].output[:, -1], {name: traces[name].output for name in retain}


def _last_logits(model: nn.Module, arch: Architecture, hidden: torch.Tensor, chunk: int = 32):
    """Full-vocabulary logits of the last position only, a few rows at a time (262k columns)."""
    head = get_module(model, arch.unembed)
    cap = getattr(model.config, "final_logit_softcapping", None)
    with torch.no_grad():
        for block in hidden.split(chunk):
            logits = head(block).float()
            yield torch.tanh(logits / cap) * cap if cap else logits


def _answer_probs(model: nn.Module, arch: Architecture, hidden: torch.Tensor, answer_id: int) -> torch.Tensor:
    """p(answer) = exp(logit_a - logsumexp(logits)): the full vocabulary is needed only for the normaliser."""
    return torch.cat([(logits[:, answer_id] - logits.logsumexp(-1)).exp() for logits in _last_logits(model, arch, hidden)])


@dataclass
class CleanRun:
    """The uncorrupted forward: answer probability, top-1 token and the states restorations copy."""
    prob: float
    top_id: int
    states: dict[str, torch.Tensor] = field(repr=False)  # name -> [T, d]


def clean_run(model: nn.Module, fact: EncodedFact, names: Sequence[str], answer_id: int | None = None) -> CleanRun:
    """One clean forward keeping the outputs of `names`; the answer defaults to the model's top-1."""
    arch = architecture_of(model)
    ids = fact.input_ids.to(_device(model))[None]
    hidden, states = _final_hidden(model, arch, ids, retain=names)
    logits = next(_last_logits(model, arch, hidden))[0]
    top_id = int(logits.argmax())
    answer_id = top_id if answer_id is None else answer_id
    prob = float(logits.log_softmax(-1)[answer_id].exp())
    return CleanRun(prob, top_id, {name: out[0] for name, out in states.items()})


def answer_is_greedy(model: nn.Module, fact: EncodedFact) -> bool:
    """Whether greedy decoding reproduces every answer token (teacher-forced argmax at each step).

    A stricter "knows the fact" test than the first token: Gemma writes years digit by digit, so a
    first token "1" says little about whether the model knows "1944".
    """
    if not fact.answer_ids:
        raise ValueError(f"fact {fact.fact.prompt!r} has no answer to check")
    arch = architecture_of(model)
    ids = torch.cat([fact.input_ids, torch.tensor(fact.answer_ids[:-1], dtype=torch.long)]).to(_device(model))
    with TraceDict(model, [arch.final_norm], stop=True) as traces, torch.no_grad():
        model(input_ids=ids[None])
    hidden = traces[arch.final_norm].output[0, fact.n_tokens - 1:]
    predicted = torch.cat([logits.argmax(-1) for logits in _last_logits(model, arch, hidden)])
    return predicted.tolist() == list(fact.answer_ids)


def restored_answer_probs(
    model: nn.Module, fact: EncodedFact, noise: torch.Tensor, answer_id: int,
    restore: Mapping[str, Iterable[int]] | None = None, clean: CleanRun | None = None,
) -> torch.Tensor:
    """Answer probability per noise sample ``[S]`` with chosen clean states restored (full sequence).

    `restore` maps a module name to the absolute token positions whose output is copied from the
    clean run. The straightforward, uncached path: used for the corrupted baseline and by tests to
    check the fast grid.
    """
    arch = architecture_of(model)
    restore = {name: sorted(set(map(int, pos))) for name, pos in (restore or {}).items()}
    if clean is None or any(name not in clean.states for name in restore):
        clean = clean_run(model, fact, list(restore), answer_id)
    n_samples, device = noise.shape[0], _device(model)
    patches = {}
    for name, positions in restore.items():
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        rows = torch.arange(n_samples, device=device).repeat_interleave(len(positions))
        patches[name] = _Patch(rows, pos.repeat(n_samples), clean.states[name][pos].repeat(n_samples, 1))
    ids = fact.input_ids.to(device)[None].expand(n_samples, -1)
    hidden, _ = _final_hidden(model, arch, ids, noise=noise.to(device), subject_range=fact.subject_range,
                              patches=patches)
    return _answer_probs(model, arch, hidden, answer_id)


@dataclass
class CorruptedRun:
    """The corrupted forward of one fact: per-sample answer probabilities and every layer's output.

    ``layer_outputs[i]`` is layer i's output ``[S, T, d]`` under the noise. A restoration at layer l
    leaves every state below l (at every position) equal to this run's, so the grid does not
    recompute them: those layers return these tensors instead of running (see :func:`_skip_layers`).
    """
    probs: torch.Tensor                    # [S]
    layer_outputs: list[torch.Tensor] = field(repr=False)
    #: per layer, what its forward returns after the hidden state (None: a bare tensor; GPT-J: a tuple)
    output_tails: list[tuple | None] = field(default_factory=list, repr=False)


def corrupted_run(model: nn.Module, fact: EncodedFact, noise: torch.Tensor, answer_id: int) -> CorruptedRun:
    """One corrupted forward (S rows) keeping every layer's output."""
    arch = architecture_of(model)
    device, n_samples = _device(model), noise.shape[0]
    layers = [arch.layer_name(layer) for layer in range(n_layers_of(model, arch))]
    ids = fact.input_ids.to(device)[None].expand(n_samples, -1)
    tails: dict[str, tuple | None] = {}
    handles = [get_module(model, name).register_forward_hook(
        lambda _m, _i, out, _n=name: tails.__setitem__(_n, tuple(out[1:]) if isinstance(out, tuple) else None))
        for name in layers]
    try:
        hidden, outputs = _final_hidden(model, arch, ids, noise=noise.to(device), subject_range=fact.subject_range,
                                        retain=layers)
    finally:
        for handle in handles:
            handle.remove()
    return CorruptedRun(_answer_probs(model, arch, hidden, answer_id), [outputs[name] for name in layers],
                        [tails[name] for name in layers])


@contextmanager
def _skip_layers(model: nn.Module, arch: Architecture, outputs: Sequence[torch.Tensor],
                 tails: Sequence[tuple | None] = ()):
    """Layers ``0 .. len(outputs)-1`` return the given outputs instead of computing anything.

    `tails` (from :class:`CorruptedRun`) keeps the shape of what each layer returns: a bare tensor, or
    a tuple (GPT-J returns ``(hidden, attention weights)``) whose first item the model's loop reads.

    Forward hooks on those layers still fire (the "hidden" kind patches a skipped layer's output),
    and the model's own loop, masks and position ids are untouched, so this works for any family
    whose decoder layers feed only the next layer (all supported ones).
    """
    modules = [get_module(model, arch.layer_name(layer)) for layer in range(len(outputs))]
    try:
        tails = list(tails) + [None] * (len(outputs) - len(tails))
        for module, output, tail in zip(modules, outputs, tails):
            value = output if tail is None else (output, *tail)
            module.forward = (lambda *args, _value=value, **kwargs: _value)
        yield
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)  # back to the class's forward


class _PrefixCache:
    """KV cache of the corrupted prompt's first t tokens (one row per noise sample), grown token by token.

    Positions are visited in increasing order, so the prefix for position t is the one for the
    previous position plus the tokens in between: the whole prompt is run once in total.
    """

    def __init__(self, model: nn.Module, arch: Architecture, fact: EncodedFact, noise: torch.Tensor) -> None:
        from transformers import DynamicCache

        self.model, self.arch, self.fact, self.noise = model, arch, fact, noise
        self.cache, self.length = DynamicCache(config=model.config), 0

    def advance(self, length: int) -> None:
        if length < self.length:
            raise ValueError(f"the prefix cache only grows: at {self.length} tokens, asked for {length}")
        if length == self.length:
            return
        ids = self.fact.input_ids[self.length:length].to(_device(self.model))[None].expand(self.noise.shape[0], -1)
        _final_hidden(self.model, self.arch, ids, noise=self.noise, subject_range=self.fact.subject_range,
                      offset=self.length, past=self.cache)
        self.length = length

    def repeated(self, repeats: int):
        """A copy with every sample's row repeated `repeats` times (sample-major), for one grid forward."""
        if self.length == 0:
            return None
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(repeats)
        return cache


def first_computed_layer(kind: str, layer: int, window: int, n_layers: int) -> int:
    """Below this layer a grid cell's states equal the corrupted run's, so those layers are skipped.

    hidden: the restored state is layer l's own output, so layers 0..l are skipped (l's cached output
    is patched by its hook); mlp/attn: the first restored layer still runs (its sublayer is patched).
    """
    first = restored_layers(kind, layer, window, n_layers).start
    return first + 1 if kind == "hidden" else first


def _grid_patches(kind: str, names: list[str], layers: Sequence[int], window: int, n_samples: int,
                  clean: CleanRun, position: int, device) -> dict[str, _Patch]:
    """Rows are sample-major (row = sample * len(layers) + cell); every patch is at segment position 0."""
    n_layers, n_cells = len(names), len(layers)
    cells: dict[int, list[int]] = {}
    for cell, layer in enumerate(layers):
        for restored in restored_layers(kind, layer, window, n_layers):
            cells.setdefault(restored, []).append(cell)
    patches = {}
    for restored, members in cells.items():
        rows = (torch.arange(n_samples)[:, None] * n_cells + torch.tensor(members)[None]).flatten().to(device)
        value = clean.states[names[restored]][position]
        patches[names[restored]] = _Patch(rows, torch.zeros_like(rows), value.expand(len(rows), -1))
    return patches


def restoration_grid(
    model: nn.Module, fact: EncodedFact, noise: torch.Tensor, answer_id: int, clean: CleanRun, kind: str,
    positions: Iterable[int], window: int = 10, max_rows: int = 256, corrupted: CorruptedRun | None = None,
    layers_per_forward: int = 1,
) -> np.ndarray:
    """Mean restored answer probability ``[n_tokens, n_layers]`` (NaN where not computed).

    For a token t and a group of `layers_per_forward` consecutive cells, one forward has a row per
    (cell, noise sample) and computes only what differs from the corrupted run:

    * positions before t come from the corrupted prefix's KV cache (attention is causal);
    * layers below the group's first computed layer return the corrupted run's outputs;
    * only the last position goes through the final norm and the unembedding.

    One cell per forward (the default) skips the most layers; more cells per forward mean fewer,
    larger forwards that recompute some corrupted layers (same numbers).
    """
    if layers_per_forward < 1:
        raise ValueError(f"layers_per_forward must be >= 1, got {layers_per_forward}")
    arch = architecture_of(model)
    device, n_samples = _device(model), noise.shape[0]
    n_layers = n_layers_of(model, arch)
    names = state_names(arch, kind, n_layers)
    noise = noise.to(device)
    corrupted = corrupted or corrupted_run(model, fact, noise, answer_id)
    scores = np.full((fact.n_tokens, n_layers), np.nan)
    per_chunk = max(1, min(layers_per_forward, max_rows // n_samples))
    prefix = _PrefixCache(model, arch, fact, noise)
    for position in sorted(set(positions)):
        if not 0 <= position < fact.n_tokens:
            raise ValueError(f"position {position} is outside the prompt's {fact.n_tokens} tokens")
        prefix.advance(position)
        for first in range(0, n_layers, per_chunk):
            layers = list(range(first, min(first + per_chunk, n_layers)))
            skip = min(first_computed_layer(kind, layer, window, n_layers) for layer in layers)
            cached = [out[:, position:].repeat_interleave(len(layers), 0) for out in corrupted.layer_outputs[:skip]]
            ids = fact.input_ids[position:].to(device)[None].expand(n_samples * len(layers), -1)
            patches = _grid_patches(kind, names, layers, window, n_samples, clean, position, device)
            with _skip_layers(model, arch, cached, corrupted.output_tails):
                hidden, _ = _final_hidden(model, arch, ids, noise=noise.repeat_interleave(len(layers), 0),
                                          subject_range=fact.subject_range, offset=position, patches=patches,
                                          past=prefix.repeated(len(layers)))
            probs = _answer_probs(model, arch, hidden, answer_id).view(n_samples, len(layers))
            scores[position, layers] = probs.mean(0).cpu().numpy()
    return scores


def screen_facts(model: nn.Module, facts: Sequence[EncodedFact], answer_ids: Sequence[int | None],
                 batch_size: int = 16) -> list[tuple[int, float]]:
    """Cheap first pass: ``(top-1 token, probability of the answer)`` at each prompt's last position.

    Prompts are right-padded into batches: with causal attention a real token never sees the padding
    after it, so each row's last real position is exactly its unpadded forward. ``answer_id=None``
    gives the top-1's own probability.
    """
    if len(facts) != len(answer_ids):
        raise ValueError(f"{len(facts)} facts but {len(answer_ids)} answer ids")
    arch = architecture_of(model)
    device, results = _device(model), []
    for first in range(0, len(facts), batch_size):
        batch = facts[first:first + batch_size]
        lengths = [fact.n_tokens for fact in batch]
        ids = torch.zeros(len(batch), max(lengths), dtype=torch.long)
        for row, fact in enumerate(batch):
            ids[row, :fact.n_tokens] = fact.input_ids
        with TraceDict(model, [arch.final_norm], stop=True) as traces, torch.no_grad():
            model(input_ids=ids.to(device))
        hidden = traces[arch.final_norm].output[torch.arange(len(batch)), torch.tensor(lengths) - 1]
        logits = torch.cat(list(_last_logits(model, arch, hidden)))
        log_probs = logits - logits.logsumexp(-1, keepdim=True)
        for row, answer in enumerate(answer_ids[first:first + batch_size]):
            top = int(logits[row].argmax())
            results.append((top, float(log_probs[row, top if answer is None else answer].exp())))
    return results


def check_supported(model: nn.Module, kinds: Sequence[str]) -> None:
    """Fail early, naming the module, if a kind's hook point does not exist in this model."""
    arch = architecture_of(model)
    for kind in kinds:
        for name in state_names(arch, kind, 1):
            try:
                get_module(model, name)
            except UnsupportedArchitectureError as error:
                raise UnsupportedArchitectureError(f"cannot trace kind={kind!r}: {error}") from None
