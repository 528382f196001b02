"""Random-weight models of named real configurations, for measuring cost where the checkpoint
cannot be downloaded (Llama-3-8B, Qwen2.5-7B, GPT-J-6B).

Layer count, widths, attention (heads, grouped key/value heads, RoPE), norms, activations and
vocabulary size are those of each model's released ``config.json``; the weights are random
(transformers' own initialisation, seeded). Time and memory of editing such a model are those of
the real one; anything about what it says (Efficacy, ...) means nothing.

The tokenizer is the default model's (Gemma-3) restricted to the configuration's vocabulary size:
every single character and byte-fallback token is kept, then the multi-character tokens of lowest
id (Gemma's ids follow its merge order) fill the rest; merges that would produce or use a dropped
token are dropped. It needs no download, and English prompts come out about 4 % longer (128,256
tokens) or 16 % longer (50,400) than with the full Gemma vocabulary.

    lm = build_named_model("llama3-8b", device="cuda")                             # 8.03 B parameters, bf16
    lm = build_named_model("llama3-8b", device="cpu", n_layers=2, width_divisor=8)  # same kernels, small
"""
from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from pathlib import Path

import torch

from .architecture import architecture_of
from .loading import LoadedModel, _resolve_dtype, ensure_default_model

#: Each entry: transformers model_type and the fields of the model's config.json that shape it.
NAMED_CONFIGS: dict[str, dict] = {
    "llama3-8b": dict(  # meta-llama/Meta-Llama-3-8B
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0, attention_bias=False, mlp_bias=False, tie_word_embeddings=False),
    "qwen2.5-7b": dict(  # Qwen/Qwen2.5-7B
        model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=131072,
        rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False, max_window_layers=28,
        tie_word_embeddings=False),
    "gpt-j-6b": dict(  # EleutherAI/gpt-j-6b
        model_type="gptj", vocab_size=50400, n_embd=4096, n_layer=28, n_head=16, n_inner=None, rotary_dim=64,
        n_positions=2048, activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=False),
}

#: Per model_type: (layers field, width fields divided by `width_divisor`, head-count fields divided too).
_SHAPE_FIELDS = {
    "llama": ("num_hidden_layers", ("hidden_size", "intermediate_size"), ("num_attention_heads", "num_key_value_heads")),
    "qwen2": ("num_hidden_layers", ("hidden_size", "intermediate_size"), ("num_attention_heads", "num_key_value_heads")),
    "gptj": ("n_layer", ("n_embd",), ("n_head",)),  # d_ff = 4 d_model (n_inner None) follows n_embd
}


def named_config(name: str, n_layers: int | None = None, width_divisor: int = 1, **overrides):
    """The transformers config of `name`, optionally scaled down: `n_layers` blocks, widths and
    head counts divided by `width_divisor` (head size, RoPE and vocabulary unchanged, so the same
    kernels run on smaller matrices); `overrides` set any other config field."""
    from transformers import AutoConfig

    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown model configuration {name!r}; known: {sorted(NAMED_CONFIGS)}")
    fields = dict(NAMED_CONFIGS[name])
    model_type = fields.pop("model_type")
    layers_field, width_fields, head_fields = _SHAPE_FIELDS[model_type]
    if n_layers is not None:
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        fields[layers_field] = n_layers
    if width_divisor < 1 or any(fields[f] % width_divisor for f in width_fields + head_fields):
        raise ValueError(f"width_divisor={width_divisor} must divide {name}'s "
                         + ", ".join(f"{f}={fields[f]}" for f in width_fields + head_fields))
    for field in width_fields + head_fields:
        fields[field] //= width_divisor
    fields.update(overrides)
    return AutoConfig.for_model(model_type, **fields)


def count_parameters(config) -> int:
    """Parameters of a model of `config`, built on the meta device (no memory allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def build_named_model(name: str, device: str | torch.device, dtype: str | torch.dtype = torch.bfloat16, seed: int = 0,
                      tokenizer=None, n_layers: int | None = None, width_divisor: int = 1,
                      **overrides) -> LoadedModel:
    """A randomly initialised model of the named configuration on `device`, in eval mode with
    gradients off, and a tokenizer of its vocabulary (default: :func:`clipped_tokenizer`). The
    weights depend only on `seed` (and the device's random generator)."""
    from transformers import AutoModelForCausalLM

    config = named_config(name, n_layers, width_divisor, **overrides)
    if tokenizer is None:
        tokenizer = clipped_tokenizer(config.vocab_size)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than {name}'s vocabulary of {config.vocab_size}")
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it will run: an 8B model never passes through CPU memory
        model = AutoModelForCausalLM.from_config(config, dtype=_resolve_dtype(dtype))
    model.eval().requires_grad_(False)
    scaled = "" if n_layers is None and width_divisor == 1 and not overrides else " (scaled)"
    return LoadedModel(model=model, tokenizer=tokenizer, arch=architecture_of(model), name=f"random {name}{scaled}")


def clipped_tokenizer(vocab_size: int, source: str | os.PathLike | None = None):
    """The tokenizer in folder `source` (default: the embedded default model's, Gemma-3) cut down
    to `vocab_size` ids: all single characters and byte tokens, then multi-character tokens by
    ascending id; ids renumbered 0..vocab_size-1 in the original order (Gemma's special tokens,
    the lowest ids, keep theirs). Right padding, as the suite expects."""
    folder = Path(source) if source is not None else ensure_default_model()
    return copy.deepcopy(_clipped_tokenizer(str(folder), vocab_size))  # callers may change padding, BOS


@lru_cache(maxsize=4)
def _clipped_tokenizer(folder: str, vocab_size: int):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(folder)
    if not getattr(original, "is_fast", False):
        raise ValueError(f"{folder}: cutting down a vocabulary needs a fast (tokenizers) tokenizer")
    spec = _clip_spec(json.loads(original.backend_tokenizer.to_str()), vocab_size, folder)
    specials = {k: v for k, v in original.special_tokens_map.items() if isinstance(v, str)}
    clipped = type(original)(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **specials)
    clipped.padding_side = "right"
    if clipped.pad_token is None:
        clipped.pad_token = clipped.eos_token
    if len(clipped) != vocab_size:  # a special token that was cut would have been appended
        raise ValueError(f"{folder}: cut to {vocab_size} ids the tokenizer has {len(clipped)} (a special token was cut?)")
    return clipped


def _clip_spec(spec: dict, vocab_size: int, where: str) -> dict:
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{where}: can only cut down a BPE tokenizer, this one is {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    if vocab_size > len(vocab):
        raise ValueError(f"{where} has {len(vocab)} tokens, fewer than the {vocab_size} asked for")
    is_byte = lambda token: len(token) == 6 and token.startswith("<0x") and token.endswith(">")
    needed = lambda token: len(token) == 1 or is_byte(token)  # without them some text could not be tokenised
    n_needed = sum(map(needed, vocab))
    if n_needed > vocab_size:
        raise ValueError(f"{where}: {vocab_size} ids cannot hold its {n_needed} single characters and bytes")
    ranked = sorted(vocab, key=lambda token: (not needed(token), vocab[token]))
    new_id = {token: index for index, token in enumerate(sorted(ranked[:vocab_size], key=vocab.__getitem__))}
    model["vocab"] = new_id
    model["merges"] = [m for m in model["merges"] if all(part in new_id for part in (*_merge_parts(m), "".join(_merge_parts(m))))]
    spec["added_tokens"] = [dict(t, id=new_id[t["content"]]) for t in spec["added_tokens"] if t["content"] in new_id]
    _renumber_special_tokens(spec.get("post_processor"), new_id)
    return spec


def _renumber_special_tokens(processor, new_id: dict[str, int]) -> None:
    """Template post-processors name the ids of the tokens they add (BOS): give them the new ids."""
    if isinstance(processor, dict):
        for special in processor.get("special_tokens", {}).values():
            special["ids"] = [new_id[token] for token in special["tokens"]]
        for inner in processor.get("processors", []):
            _renumber_special_tokens(inner, new_id)


def _merge_parts(merge) -> tuple[str, str]:
    """A merge as written in tokenizer.json: ["a", "b"] (newer) or "a b" (older files)."""
    if isinstance(merge, str):
        left, right = merge.split(" ", 1)
        return left, right
    return merge[0], merge[1]
