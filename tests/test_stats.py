"""Key statistics C0 = E[k k^T]: equal to a direct per-window computation (no padding, no batching,
no sorting) under every reading setting; budgets from one pass; cached by everything they depend on."""
from __future__ import annotations

import pytest
import torch

import langedit.editing.stats as stats
from langedit.data.corpus import open_corpus
from langedit.editing import Editor
from langedit.editing.hparams import load_hparams
from langedit.editing.stats import (StatsSettings, accumulate_key_moments, key_moments, key_moments_by_budget,
                                    special_prefix)
from langedit.models import get_module
from langedit.models.tiny import build_tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France, on the Seine.",
         "Hamlet was written by William Shakespeare around 1600.", "Short one.",
         "Gemma is a family of open models; this sentence is a little longer than the others.",
         "Rivers of Europe: the Danube, the Rhine, the Elbe, the Loire and the Vistula flow into four seas."]


def direct_keys(lm, tokenizer, layer: int, texts, window: int, overflow: str, n_texts=None):
    """Every window run alone; keys with their position in the window, in corpus order."""
    prefix = tokenizer("x")["input_ids"][:-len(tokenizer("x", add_special_tokens=False)["input_ids"])]
    captured = []
    module = get_module(lm.model, lm.arch.mlp_out_name(layer))
    handle = module.register_forward_hook(lambda mod, inputs, output: captured.append(inputs[0][0]))
    keys, positions = [], []
    try:
        with torch.no_grad():
            for text in texts[:n_texts]:
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                width = window - len(prefix)
                pieces = [ids[i:i + width] for i in range(0, len(ids), width)]
                for piece in pieces[:1] if overflow == "truncate" else pieces:
                    lm.model(input_ids=torch.tensor([prefix + piece]))
                    keys.append(captured.pop())
                    positions.append(torch.arange(len(prefix) + len(piece)))
    finally:
        handle.remove()
    return torch.cat(keys).double(), torch.cat(positions)


def mean_outer(keys: torch.Tensor) -> torch.Tensor:
    return (keys.T @ keys / len(keys)).float()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return bool((a - b).norm() / b.norm() < tol)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("overflow", ["windows", "truncate"])
def test_key_moments_equal_a_direct_computation(default_tokenizer, family, overflow):
    lm = build_tiny_model(family, tokenizer=default_tokenizer)
    # windows of 9 positions cut most texts; 30 padded positions per batch force several sorted
    # batches; the budget stops inside a window (6 truncated windows hold 49 tokens)
    budget = 70 if overflow == "windows" else 40
    settings = StatsSettings(n_tokens=budget, window=9, overflow=overflow, batch_tokens=30)
    moments = accumulate_key_moments(lm.model, default_tokenizer, lm.arch, [1, 2], TEXTS, settings, progress=False)
    for layer in (1, 2):
        keys, _ = direct_keys(lm, default_tokenizer, layer, TEXTS, 9, overflow)
        assert len(keys) > budget and moments[layer].n_tokens == budget
        assert close(moments[layer].moment, mean_outer(keys[:budget]))
        assert not close(moments[layer].moment, mean_outer(keys[:budget - 10]), 1e-3)   # the budget matters
    other, _ = direct_keys(lm, default_tokenizer, 1, TEXTS, 9, "truncate" if overflow == "windows" else "windows")
    assert not close(moments[1].moment, mean_outer(other[:budget]), 1e-3)   # and so does the policy


def test_text_budget_and_whole_corpus(default_tokenizer):
    lm = build_tiny_model("llama", tokenizer=default_tokenizer)
    by_texts = accumulate_key_moments(lm.model, default_tokenizer, lm.arch, [2], TEXTS,
                                      StatsSettings(n_tokens=None, n_texts=3, window=11), progress=False)[2]
    keys, _ = direct_keys(lm, default_tokenizer, 2, TEXTS, 11, "windows", n_texts=3)
    assert (by_texts.n_texts, by_texts.n_tokens) == (3, len(keys))
    assert by_texts.n_windows > 3   # some of the first three texts span two windows
    assert close(by_texts.moment, mean_outer(keys))
    whole = accumulate_key_moments(lm.model, default_tokenizer, lm.arch, [2], TEXTS,
                                   StatsSettings(n_tokens=None, window=16), progress=False)[2]
    all_keys, _ = direct_keys(lm, default_tokenizer, 2, TEXTS, 16, "windows")
    assert whole.n_tokens == len(all_keys) and close(whole.moment, mean_outer(all_keys))


def test_budgets_from_one_pass_equal_separate_computations(default_tokenizer):
    lm = build_tiny_model("gemma3_text", tokenizer=default_tokenizer)
    settings = StatsSettings(n_tokens=None, window=10, batch_tokens=24)
    curve = key_moments_by_budget(lm.model, default_tokenizer, lm.arch, [1, 3], TEXTS, settings,
                                  budgets=[25, 57, None], position_limits=[4], progress=False)
    for layer in (1, 3):
        keys, positions = direct_keys(lm, default_tokenizer, layer, TEXTS, 10, "windows")
        for budget in (25, 57):
            assert curve.by_budget[budget][layer].n_tokens == budget
            assert close(curve.by_budget[budget][layer].moment, mean_outer(keys[:budget]))
        assert close(curve.by_budget[None][layer].moment, mean_outer(keys))
        short = curve.below_position[4][layer]
        assert short.n_tokens == int((positions < 4).sum())
        assert close(short.moment, mean_outer(keys[positions < 4]))
    limited = key_moments_by_budget(lm.model, default_tokenizer, lm.arch, [1], TEXTS,
                                    StatsSettings(n_tokens=40, window=10, batch_tokens=24), budgets=[13, 40],
                                    progress=False)
    keys, _ = direct_keys(lm, default_tokenizer, 1, TEXTS, 10, "windows")
    assert close(limited.by_budget[13][1].moment, mean_outer(keys[:13]))
    assert close(limited.by_budget[40][1].moment, mean_outer(keys[:40]))
    with pytest.raises(ValueError, match="largest budget"):
        key_moments_by_budget(lm.model, default_tokenizer, lm.arch, [1], TEXTS, settings, budgets=[10, 20])


def test_a_corpus_smaller_than_the_budget_fails_before_any_forward_pass(default_tokenizer, monkeypatch):
    lm = build_tiny_model("llama", tokenizer=default_tokenizer)
    calls = []
    monkeypatch.setattr(stats, "batch_keys", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"holds only \d+ tokens in 6 texts.*asked for 100000 tokens"):
        accumulate_key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, StatsSettings(n_tokens=100_000),
                               progress=False)
    with pytest.raises(ValueError, match="asked for 7 texts"):
        accumulate_key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS,
                               StatsSettings(n_tokens=None, n_texts=7), progress=False)
    with pytest.raises(ValueError, match="no corpus texts"):
        accumulate_key_moments(lm.model, default_tokenizer, lm.arch, [1], ["", "  "], StatsSettings(), progress=False)
    assert not calls


@pytest.mark.parametrize("kwargs, match", [
    (dict(overflow="cut"), "unknown stats_overflow 'cut'"), (dict(window=1), "window must be an int >= 2"),
    (dict(n_tokens=0), "stats_tokens"), (dict(n_texts=2.5), "stats_texts"), (dict(batch_tokens=True), "batch_tokens"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StatsSettings(**kwargs)


class _Tokenizer:
    """Whitespace tokenizer with an optional prefix, to check how the prefix is found."""
    def __init__(self, prefix):
        self.prefix = prefix

    def __call__(self, text, add_special_tokens=True):
        ids = [len(word) + 10 for word in text.split()]
        return {"input_ids": (self.prefix if add_special_tokens else []) + ids}


def test_special_prefix(default_tokenizer):
    assert special_prefix(default_tokenizer) == [default_tokenizer.bos_token_id]
    assert special_prefix(_Tokenizer([])) == []
    assert special_prefix(_Tokenizer([5, 6])) == [5, 6]


def test_cache_is_reused_only_for_the_same_corpus_and_settings(default_tokenizer, tmp_path, monkeypatch):
    lm = build_tiny_model("llama", tokenizer=default_tokenizer)
    base = StatsSettings(n_tokens=30, window=12, batch_tokens=40)
    first = key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, base, cache=tmp_path, progress=False)
    calls = []
    real = stats.accumulate_key_moments
    monkeypatch.setattr(stats, "accumulate_key_moments", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, base, cache=tmp_path, progress=False)
    assert not calls and torch.equal(again[1].moment, first[1].moment)
    assert (again[1].n_tokens, again[1].n_texts, again[1].n_windows) == (first[1].n_tokens, first[1].n_texts,
                                                                         first[1].n_windows)
    other_texts = key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS[::-1], base, cache=tmp_path,
                              progress=False)
    assert len(calls) == 1 and not torch.allclose(other_texts[1].moment, first[1].moment)
    variants = [dict(window=8), dict(overflow="truncate"), dict(batch_tokens=24), dict(n_texts=5), dict(n_tokens=31)]
    for number, change in enumerate(variants, start=2):
        settings = StatsSettings(**{**base.__dict__, **change})
        key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, settings, cache=tmp_path, progress=False)
        assert len(calls) == number, change
    monkeypatch.setattr(stats, "STATS_PROTOCOL", stats.STATS_PROTOCOL + 1)
    key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, base, cache=tmp_path, progress=False)
    assert len(calls) == len(variants) + 2   # a new version of the computation never reads old files


def test_file_corpus_key_follows_the_bytes(default_tokenizer, tmp_path, monkeypatch):
    lm = build_tiny_model("llama", tokenizer=default_tokenizer)
    corpus_file = tmp_path / "texts.txt"
    corpus_file.write_text("\n".join(TEXTS), encoding="utf-8")
    calls = []
    real = stats.accumulate_key_moments
    monkeypatch.setattr(stats, "accumulate_key_moments", lambda *a, **k: calls.append(1) or real(*a, **k))
    settings = StatsSettings(n_tokens=40, window=16)
    spec = f"text:{tmp_path}/*.txt"
    from_file = key_moments(lm.model, default_tokenizer, lm.arch, [1], spec, settings, cache=tmp_path / "c",
                            progress=False)[1]
    in_memory = accumulate_key_moments(lm.model, default_tokenizer, lm.arch, [1], TEXTS, settings, progress=False)[1]
    assert torch.equal(from_file.moment, in_memory.moment)
    key_moments(lm.model, default_tokenizer, lm.arch, [1], spec, settings, cache=tmp_path / "c", progress=False)
    assert len(calls) == 1   # the file read once, then the cache
    corpus_file.write_text("\n".join(TEXTS[::-1]), encoding="utf-8")
    key_moments(lm.model, default_tokenizer, lm.arch, [1], spec, settings, cache=tmp_path / "c", progress=False)
    assert len(calls) == 2   # same path, other bytes: another key


def test_editor_reads_statistics_as_its_hyperparameters_say(default_tokenizer, tmp_path, monkeypatch):
    lm = build_tiny_model("llama", tokenizer=default_tokenizer)
    seen = []
    import langedit.editing.editor as editor_module
    monkeypatch.setattr(editor_module, "key_moments",
                        lambda model, tok, arch, layers, corpus, settings, cache, progress:
                        seen.append((list(layers), corpus, settings)) or
                        {l: stats.KeyMoment(torch.eye(lm.model.config.intermediate_size), 1) for l in layers})
    hp = load_hparams("memit", "gemma3", layers=[1, 2], stats_tokens=50, stats_window=16, stats_overflow="truncate",
                      stats_texts=4, stats_batch_tokens=64)
    editor = Editor(lm, method="memit", hparams=hp, corpus_texts=TEXTS, progress=False, cache=tmp_path)
    editor.prepare()
    layers, corpus, settings = seen[0]
    assert layers == [1, 2] and corpus.texts == TEXTS
    assert settings == StatsSettings(n_tokens=50, n_texts=4, window=16, overflow="truncate", batch_tokens=64)
    given = {1: stats.KeyMoment(2 * torch.eye(lm.model.config.intermediate_size), 1)}
    partly_given = Editor(lm, method="memit", hparams=hp, corpus_texts=TEXTS, progress=False, key_statistics=given)
    partly_given.prepare()
    assert seen[1][0] == [2] and partly_given.cov0(1) is given[1]


def test_corpus_object_identity_is_the_texts():
    assert open_corpus(TEXTS).identity == open_corpus(list(TEXTS)).identity
    assert open_corpus(TEXTS).identity != open_corpus(TEXTS[:-1]).identity


def test_window_is_at_most_the_model_context(default_tokenizer):
    lm = build_tiny_model("gpt2", tokenizer=default_tokenizer)   # 256 positions
    assert StatsSettings(window=1024).for_model(lm.model).window == 256
    assert StatsSettings(window=100).for_model(lm.model).window == 100
    long_text = [" ".join(["word"] * 300)]
    moment = accumulate_key_moments(lm.model, default_tokenizer, lm.arch, [1], long_text,
                                    StatsSettings(n_tokens=None, window=1024), progress=False)[1]
    keys, _ = direct_keys(lm, default_tokenizer, 1, long_text, 256, "windows")
    assert moment.n_windows == 2 and moment.n_tokens == len(keys) and close(moment.moment, mean_outer(keys))
