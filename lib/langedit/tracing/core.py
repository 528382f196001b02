"""The tracing engine: clean run, corrupted runs, and batched restorations for one fact.

Corruption adds Gaussian noise to the *output of the embedding module* at the subject tokens (for
Gemma that output is already scaled by sqrt(d), so the noise scale is estimated on the same
output). Restoring copies a clean activation into the corrupted rows.

Speed on CPU comes from three things:

* restorations are batched: for one token t, every layer (x every noise sample) is one row;
* positions before t are identical in all those rows (attention is causal), so they are run once
  per noise sample and shared as a KV cache; only tokens t.. are recomputed;
* only the last position's hidden state goes through the unembedding (Gemma-3's vocabulary has
  262k entries), and the forward stops at the final norm.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..hooks import TraceDict
from ..models.architecture import Architecture, UnsupportedArchitectureError, architecture_of, get_module
from .facts import EncodedFact

KINDS = ("hidden", "mlp", "attn")

#: Families whose attention branch is normalised again before it joins the residual stream.


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
    return torch.cat([logits.log_softmax(-1)[:, answer_id].exp() for logits in _last_logits(model, arch, hidden)])


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


def _prefix_cache(model: nn.Module, arch: Architecture, fact: EncodedFact, noise: torch.Tensor, length: int,
                  repeats: int):
    """KV cache of the corrupted prompt's first `length` tokens, one per noise sample, each repeated."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = fact.input_ids[:length].to(_device(model))[None].expand(noise.shape[0], -1)
    _final_hidden(model, arch, ids, noise=noise, subject_range=fact.subject_range, past=cache)
    cache.batch_repeat_interleave(repeats)
    return cache


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
    positions: Iterable[int], window: int = 10, max_rows: int = 256,
) -> np.ndarray:
    """Mean restored answer probability ``[n_tokens, n_layers]`` (NaN where not computed).

    One row per (layer, noise sample) for each token position; the prompt before that position is
    shared through a KV cache of the corrupted run.
    """
    arch = architecture_of(model)
    device, n_samples = _device(model), noise.shape[0]
    names = state_names(arch, kind, n_layers_of(model, arch))
    noise = noise.to(device)
    scores = np.full((fact.n_tokens, len(names)), np.nan)
    per_chunk = max(1, max_rows // n_samples)
    for position in sorted(set(positions)):
        for first in range(0, len(names), per_chunk):
            layers = list(range(first, min(first + per_chunk, len(names))))
            n_rows = n_samples * len(layers)
            past = _prefix_cache(model, arch, fact, noise, position, len(layers)) if position > 0 else None
            ids = fact.input_ids[position:].to(device)[None].expand(n_rows, -1)
            patches = _grid_patches(kind, names, layers, window, n_samples, clean, position, device)
            hidden, _ = _final_hidden(model, arch, ids, noise=noise.repeat_interleave(len(layers), 0),
                                      subject_range=fact.subject_range, offset=position, patches=patches,
                                      past=past)
            probs = _answer_probs(model, arch, hidden, answer_id).view(n_samples, len(layers))
            scores[position, layers] = probs.mean(0).cpu().numpy()
    return scores


def check_supported(model: nn.Module, kinds: Sequence[str]) -> None:
    """Fail early, naming the module, if a kind's hook point does not exist in this model."""
    arch = architecture_of(model)
    for kind in kinds:
        for name in state_names(arch, kind, 1):
            try:
                get_module(model, name)
            except UnsupportedArchitectureError as error:
                raise UnsupportedArchitectureError(f"cannot trace kind={kind!r}: {error}") from None
