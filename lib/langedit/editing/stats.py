"""Preserved-knowledge statistics: the uncentered second moment C0 = E[k k^T] of W_out's input
over the tokens of a text corpus, per layer. Accumulated in float32 (as the reference code),
cached on disk keyed by the model's weights up to the layer, the corpus texts themselves, the token
count, the batching and a protocol version (bumped whenever this computation changes), and written
atomically. An earlier key (model, layer, corpus name, token count) let statistics computed by older
code be reused silently.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..hooks import TraceDict
from ..models.architecture import get_module
from ..paths import cache_dir


@dataclass
class KeyMoment:
    moment: torch.Tensor   # [d_key, d_key] float32, the mean of k k^T
    n_tokens: int


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


#: Version of the statistics' computation; part of the cache key.
STATS_PROTOCOL = 2


def statistics_key(texts: Sequence[str], n_tokens: int, max_length: int, batch_size: int) -> str:
    """What besides the weights determines C0: the texts, the token budget, the batching, the code version."""
    digest = hashlib.sha256(json.dumps([STATS_PROTOCOL, n_tokens, max_length, batch_size]).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:12]


def _cache_file(root: Path, fingerprint: str, layer: int, corpus: str, n_tokens: int, key: str) -> Path:
    return root / "stats" / fingerprint / f"{corpus}-{n_tokens}tok-{key}" / f"layer{layer}.safetensors"


def _atomic_save(tensors: dict, metadata: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)


@torch.no_grad()
def accumulate_key_moments(model, tokenizer, arch, layers: Sequence[int], texts: Sequence[str], n_tokens: int,
                           max_length: int = 128, batch_size: int = 8, progress: bool = True) -> dict[int, KeyMoment]:
    """One pass over `texts` (until `n_tokens` non-pad tokens) collecting E[k k^T] at every layer."""
    if not texts:
        raise ValueError("no corpus texts to compute key statistics from")
    device = next(model.parameters()).device
    names = {layer: arch.mlp_out_name(layer) for layer in layers}
    sums = {layer: None for layer in layers}
    seen = 0
    bar = tqdm(total=n_tokens, desc=f"key statistics, layers {list(layers)}", disable=not progress, unit="tok")
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        with TraceDict(model, list(names.values()), retain_input=True, retain_output=False, stop=True) as traces:
            model(**enc)
        valid = enc["attention_mask"].bool()
        take = min(int(valid.sum()), n_tokens - seen)
        for layer, name in names.items():
            keys = traces[name].input[valid][:take].float()
            kk = keys.T @ keys
            sums[layer] = kk if sums[layer] is None else sums[layer] + kk
        seen += take
        bar.update(take)
        if seen >= n_tokens:
            break
    bar.close()
    return {layer: KeyMoment((sums[layer] / seen).cpu(), seen) for layer in layers}


def key_moments(model, tokenizer, arch, layers: Sequence[int], texts: Sequence[str], corpus: str, n_tokens: int,
                cache: str | os.PathLike | None = None, progress: bool = True, max_length: int = 128,
                batch_size: int = 8) -> dict[int, KeyMoment]:
    """C0 per layer, from the disk cache when present; computes (in one pass) the missing layers."""
    root = cache_dir(cache)
    key = statistics_key(texts, n_tokens, max_length, batch_size)
    found, missing = {}, []
    for layer in layers:
        path = _cache_file(root, model_fingerprint(model, arch, layer), layer, corpus, n_tokens, key)
        if path.exists():
            data = load_file(str(path))
            found[layer] = KeyMoment(data["moment"], int(data["n_tokens"].item()))
        else:
            missing.append(layer)
    if missing:
        computed = accumulate_key_moments(model, tokenizer, arch, missing, texts, n_tokens, max_length, batch_size,
                                          progress=progress)
        for layer, stat in computed.items():
            path = _cache_file(root, model_fingerprint(model, arch, layer), layer, corpus, n_tokens, key)
            _atomic_save({"moment": stat.moment.contiguous(), "n_tokens": torch.tensor(stat.n_tokens)},
                         {"layer": layer, "corpus": corpus}, path)
            found[layer] = stat
    return {layer: found[layer] for layer in layers}
