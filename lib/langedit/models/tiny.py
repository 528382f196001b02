"""Tiny randomly initialised models of each supported family, for tests and quick experiments.

No download: each is built from a config. They share the same small shape so a test can loop
over families.
"""
from __future__ import annotations

import torch

from .architecture import architecture_of
from .loading import LoadedModel

TINY_FAMILIES = ("llama", "qwen2", "gemma3_text", "gptj", "gpt2")


def tiny_config(model_type: str, vocab_size: int = 512, n_layers: int = 4, d_model: int = 64):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, bos_token_id=min(2, vocab_size - 1), eos_token_id=min(1, vocab_size - 1), pad_token_id=0)
    if model_type in ("llama", "qwen2", "gemma3_text"):
        extra = dict(hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        if model_type == "gemma3_text":
            extra.update(head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
        if model_type == "qwen2":
            extra.update(use_sliding_window=False)
    elif model_type == "gptj":
        extra = dict(n_embd=d_model, n_layer=n_layers, n_head=4, rotary_dim=8, n_positions=256)
    elif model_type == "gpt2":
        extra = dict(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256)
    else:
        raise ValueError(f"no tiny config for model_type={model_type!r}; choose from {TINY_FAMILIES}")
    return AutoConfig.for_model(model_type, **common, **extra)


def build_tiny_model(model_type: str, tokenizer=None, seed: int = 0, **config_overrides) -> LoadedModel:
    """A random model of `model_type` in eval mode (float32, CPU). With a tokenizer, its vocabulary size."""
    from transformers import AutoModelForCausalLM

    if tokenizer is not None:
        config_overrides.setdefault("vocab_size", len(tokenizer))
    config = tiny_config(model_type, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # Gemma's norms start at zero weight (gain 1): randomise them so they matter
        for name, param in model.named_parameters():
            if "norm" in name or "ln" in name:
                param.add_(0.3 * torch.randn_like(param))
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=architecture_of(model), name=f"tiny-{model_type}")
