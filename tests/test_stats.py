"""Key statistics C0 = E[k k^T]: equal to a direct per-text computation; cached by everything they depend on."""
from __future__ import annotations

import pytest
import torch

import langedit.editing.stats as stats
from langedit.editing.stats import accumulate_key_moments, key_moments
from langedit.models import get_module
from langedit.models.tiny import build_tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France, on the Seine.",
         "Hamlet was written by William Shakespeare around 1600.", "Short one.",
         "Gemma is a family of open models; this sentence is a little longer than the others."]


def direct_moment(lm, tokenizer, layer: int, texts, n_tokens: int) -> torch.Tensor:
    """Each text alone (no padding), keys = the input of W_out, the first n_tokens of them in text order."""
    keys = []
    module = get_module(lm.model, lm.arch.mlp_out_name(layer))
    handle = module.register_forward_hook(lambda mod, inputs, output: keys.append(inputs[0][0]))
    try:
        with torch.no_grad():
            for text in texts:
                lm.model(**tokenizer(text, return_tensors="pt"))
    finally:
        handle.remove()
    k = torch.cat(keys)[:n_tokens].double()
    return (k.T @ k / len(k)).float()


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_key_moments_equal_a_direct_computation(default_tokenizer, family):
    lm = build_tiny_model(family, tokenizer=default_tokenizer)
    n_tokens = 40   # stops inside a batch: the budget is counted in tokens, not texts
    moments = accumulate_key_moments(lm.model, default_tokenizer, lm.arch, [1, 2], TEXTS, n_tokens, batch_size=2,
                                     progress=False)
    for layer in (1, 2):
        assert moments[layer].n_tokens == n_tokens
        expected = direct_moment(lm, default_tokenizer, layer, TEXTS, n_tokens)
        assert expected.norm() > 0
        assert (moments[layer].moment - expected).norm() / expected.norm() < 1e-4


def test_cache_is_reused_only_for_the_same_texts_and_settings(default_tokenizer, tmp_path, monkeypatch):
    lm = build_tiny_model("llama", tokenizer=default_tokenizer)
    first = key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, "toy", 30, cache=tmp_path, progress=False)
    calls = []
    real = stats.accumulate_key_moments
    monkeypatch.setattr(stats, "accumulate_key_moments", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, "toy", 30, cache=tmp_path, progress=False)
    assert not calls and torch.equal(again[1].moment, first[1].moment)
    other_texts = key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS[::-1], "toy", 30, cache=tmp_path,
                              progress=False)
    assert len(calls) == 1 and not torch.allclose(other_texts[1].moment, first[1].moment)
    key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, "toy", 30, cache=tmp_path, progress=False,
                batch_size=3)
    assert len(calls) == 2   # another batching is another key (padding can change float sums)
    monkeypatch.setattr(stats, "STATS_PROTOCOL", stats.STATS_PROTOCOL + 1)
    key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, "toy", 30, cache=tmp_path, progress=False)
    assert len(calls) == 3   # a new version of the computation never reads old files
