"""On-disk cache of evaluation results, keyed by what the numbers depend on.

An edited model must never be served the unedited model's scores, so the key starts with a
fingerprint of the weights that changes when any single parameter element changes; the rest of
the key is the tokenizer, task, language, subset and protocol. Entries are JSON, written
atomically (temporary file + ``os.replace``) so concurrent runs never read half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from ..paths import cache_dir as _cache_dir

_CHUNK = 1 << 21  # elements per step: bounds the int64 temporaries to a few tens of MB
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_PROBE = "The capital of France is Paris. Der Hund schläft. ¿Qué tal? 北京是中国的首都。"


def _as_integers(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as a flat integer tensor (numpy has no bfloat16)."""
    flat = tensor.detach().reshape(-1)
    if flat.dtype.is_floating_point or flat.dtype.is_complex:
        flat = flat.view(_INT_VIEW[flat.element_size()])
    return flat


def _device_checksum(tensor: torch.Tensor) -> str:
    """A position-weighted sum of the bit patterns modulo 2**64, computed on the tensor's device.

    Used for accelerator tensors, to avoid copying the model to the host. Integer arithmetic makes
    it exact and independent of reduction order; odd, position-dependent weights make any changed
    element (even one bit) or any swap of two elements change the sum.
    """
    flat = _as_integers(tensor)
    total = torch.zeros((), dtype=torch.int64, device=flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start:start + _CHUNK].to(torch.int64)
        index = torch.arange(start, start + chunk.numel(), dtype=torch.int64, device=flat.device)
        total += (chunk * ((index * 0x9E3779B1 + 0x7F4A7C15) | 1)).sum()
    return f"sum64:{int(total.item())}"


def _tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of the raw bytes for CPU tensors (exact, ~2 GB/s); a device checksum otherwise."""
    if tensor.device.type != "cpu":
        return _device_checksum(tensor)
    data = _as_integers(tensor).contiguous().numpy()
    return "sha256:" + hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hex digest of every parameter (names, shapes, dtypes, exact values) of `model`.

    Changing any single element changes it. Cost is one read of the weights (about 0.5 s for
    Gemma-3-270M on CPU). Shared (tied) parameters are counted once.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            digest.update(f"{name}|{tuple(param.shape)}|{param.dtype}|{_tensor_digest(param)};".encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of the tokenizer's behaviour: its class, size, special ids and a multilingual probe."""
    parts = [type(tokenizer).__name__, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
             tokenizer.pad_token_id, tokenizer(_PROBE)["input_ids"]]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def cache_key(parts: dict) -> str:
    """A digest of a JSON-serialisable description of an evaluation."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def default_cache_root(override: str | os.PathLike | None = None) -> Path:
    return Path(override) if override is not None else _cache_dir() / "xtreme"


def entry_path(root: Path, fingerprint: str, task: str, language: str, key: str) -> Path:
    """<root>/<weights fingerprint>/<task>_<language>_<key>.json."""
    return root / fingerprint[:24] / f"{task}_{language}_{key[:24]}.json"


def read_entry(path: Path, key: str) -> dict | None:
    """The cached entry at `path` if it exists, parses, and was stored under the same full key."""
    try:
        with open(path, encoding="utf-8") as handle:
            entry = json.load(handle)
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("key") == key else None


def write_entry(path: Path, entry: dict) -> None:
    """Write `entry` as JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=".tmp-",
                                     suffix=".json", delete=False) as handle:
        json.dump(entry, handle, ensure_ascii=False)
    os.replace(handle.name, path)
