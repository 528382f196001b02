"""Finished fact traces on disk, one ``.npz`` per fact, so that a long :func:`causal_trace` resumes.

Tracing 30 facts per language costs hours on a CPU; without a store an interruption loses them all.
A fact's file is named by a hash of everything its numbers depend on: the fact (prompt, subject,
answer, language), the tracing settings, and the model's signature (architecture sizes and the
dtypes of its parameters, which tell the float32 path from the bfloat16 fast path). The weights
themselves are not hashed: use one folder per model (``notebook_support.run_folder`` names it).
Each file also keeps the JSON it was named from; a file whose JSON differs is refused, not used.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from torch import nn

from .facts import EncodedFact


def model_signature(model: nn.Module) -> dict:
    """What identifies a model's numbers short of its weights: type, sizes, parameter dtypes."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", config)
    sizes = {name: getattr(text, name, None)
             for name in ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")}
    dtypes = sorted({str(parameter.dtype) for parameter in model.parameters()})
    return {**sizes, "parameter_dtypes": dtypes, "n_parameters": sum(p.numel() for p in model.parameters())}


def _stable(value):
    """Floats rounded to 10 significant digits: the noise scale is a sum over subjects whose last
    bits may differ between machines; a key must not."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items()}
    return value


class TraceStore:
    """A folder of finished traces (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def describe(self, encoded: EncodedFact, settings: dict, signature: dict) -> str:
        fact = encoded.fact
        return json.dumps(_stable({"fact": [fact.prompt, fact.subject, fact.answer, fact.language],
                                   "settings": settings, "model": signature}), sort_keys=True, default=str)

    def path(self, description: str) -> Path:
        return self.folder / f"{hashlib.sha256(description.encode()).hexdigest()[:16]}.npz"

    def load(self, encoded: EncodedFact, description: str):
        """The stored trace of this fact under these settings, or None if there is none yet."""
        from .run import FactTrace

        path = self.path(description)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            stored = str(data["description"])
            if stored != description:
                raise ValueError(f"{path} was written for other settings or another fact; remove it to trace again")
            kinds = [str(k) for k in data["kinds"]]
            trace = FactTrace(encoded, int(data["answer_id"]), str(data["answer_token"]), str(data["top_token"]),
                              float(data["p_clean"]), float(data["p_corrupt"]), bool(data["correct"]),
                              {kind: data[f"scores_{kind}"].copy() for kind in kinds})
        for kind, scores in trace.scores.items():
            if scores.shape[0] != encoded.n_tokens:
                raise ValueError(f"{path}: the stored {kind} grid has {scores.shape[0]} positions, the prompt "
                                 f"{encoded.n_tokens} tokens (another tokenizer?); remove it to trace again")
        return trace

    def save(self, trace, description: str) -> None:
        """Write atomically (temporary file, then rename): an interruption leaves no half-written trace."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(description)
        partial = path.with_suffix(".partial.npz")
        arrays = {f"scores_{kind}": scores for kind, scores in trace.scores.items()}
        np.savez(partial, description=np.array(description), kinds=np.array(list(trace.scores), dtype=str),
                 answer_id=trace.answer_id, answer_token=np.array(trace.answer_token),
                 top_token=np.array(trace.top_token), p_clean=trace.p_clean, p_corrupt=trace.p_corrupt,
                 correct=trace.correct, **arrays)
        os.replace(partial, path)
