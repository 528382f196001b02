"""Held-out perplexity and agreement (langedit.ability) on tiny random models: against a plain full
forward with cross_entropy, a model against itself and against a perturbed copy, and the texts
against the raw data files."""
import copy
import json
import math

import numpy as np
import pytest
import torch

from langedit import ability
from langedit.models.architecture import w_out
from langedit.models.tiny import build_tiny_model
from langedit.paths import data_dir


@pytest.fixture(scope="module")
def tok():
    """A byte-level tokenizer built in memory (every byte one token: any language, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def texts(tok):
    return ability.heldout_texts("de", n=5, seed=0, max_tokens=40, tokenizer=tok)[:3] + \
        ability.heldout_texts("zh", n=2, seed=0, max_tokens=25, tokenizer=tok)


def plain_nll(model, ids):
    """Mean next-token NLL of one unpadded sequence from a plain full forward."""
    ids = torch.tensor([ids])
    logits = model(input_ids=ids).logits[0].float()
    return float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]))


# ----- texts ---------------------------------------------------------------------------------------

def test_xquad_texts_are_the_raw_files_contexts():
    raw = json.loads((data_dir() / "text" / "xquad.es.json").read_text(encoding="utf-8"))
    contexts = {p["context"].replace("\ufeff", "").strip() for a in raw["data"] for p in a["paragraphs"]}
    everything = ability.heldout_texts("es", n=None)
    assert len(everything) == 240 and set(everything) == contexts
    drawn = ability.heldout_texts("es", n=20, seed=1)
    assert len(set(drawn)) == 20 and set(drawn) <= contexts
    assert drawn == ability.heldout_texts("es", n=20, seed=1)          # deterministic by seed
    assert drawn != ability.heldout_texts("es", n=20, seed=2)


@pytest.mark.parametrize("language", ["nl", "fr"])
def test_dutch_and_french_read_distinct_xnli_premises(language):
    raw = json.loads((data_dir() / "xtreme" / f"xnli_{language}.json").read_text(encoding="utf-8"))
    premises = {x["sentence1"].strip() for x in raw}
    assert ability.default_source(language) == "xnli"
    everything = ability.heldout_texts(language, n=None)
    assert len(everything) == len(set(everything)) == len(premises)
    assert set(ability.heldout_texts(language, n=30, seed=0)) <= premises


def test_bad_language_or_source_is_refused():
    with pytest.raises(ValueError, match="no held-out text for language 'ja'"):
        ability.heldout_texts("ja")
    with pytest.raises(ValueError, match="source 'xquad' has no language 'nl'"):
        ability.heldout_texts("nl", source="xquad")
    with pytest.raises(ValueError, match="unknown held-out text source"):
        ability.heldout_texts("en", source="wiki")
    with pytest.raises(ValueError, match="asked for 500"):
        ability.heldout_texts("en", n=500)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        ability.heldout_texts("en", n=2, max_tokens=10)


def test_max_tokens_cuts_texts_to_token_prefixes(tok):
    full = ability.heldout_texts("zh", n=4, seed=3)
    cut = ability.heldout_texts("zh", n=4, seed=3, max_tokens=31, tokenizer=tok)   # 3 bytes a character
    for whole, part in zip(full, cut):
        assert whole.startswith(part) and 0 < len(tok(part, add_special_tokens=False)["input_ids"]) <= 31
    assert ability.heldout_texts("en", n=2, max_tokens=10_000, tokenizer=tok) == ability.heldout_texts("en", n=2)


# ----- scores --------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_perplexity_is_exp_of_a_plain_cross_entropy(tok, texts, family):
    lm = build_tiny_model(family, tokenizer=tok)
    reference = ability.reference_predictions(lm.model, tok, texts, batch_size=2, chunk_positions=7)
    scores = ability.ability_scores(lm.model, tok, texts, reference, batch_size=3, chunk_positions=16)
    for text, row in zip(texts, scores.itertuples()):
        ids = tok(text)["input_ids"]
        expected = plain_nll(lm.model, ids)
        assert row.tokens == len(ids) - 1
        assert row.nll == pytest.approx(expected, rel=1e-5)
        assert row.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
        assert row.reference_perplexity == pytest.approx(math.exp(expected), rel=1e-5)
        plain_argmax = lm.model(input_ids=torch.tensor([ids])).logits[0, :-1].argmax(-1).tolist()
        assert reference.argmax[row.text] == plain_argmax


def test_a_model_agrees_with_itself_and_not_with_a_perturbed_copy(tok, texts):
    lm = build_tiny_model("gemma3_text", tokenizer=tok)
    reference = ability.reference_predictions(lm.model, tok, texts)
    same = ability.ability_scores(lm.model, tok, texts, reference)
    assert (same["agreement"] == 1.0).all()
    assert np.allclose(same["perplexity"], same["reference_perplexity"])
    perturbed = copy.deepcopy(lm.model)
    with torch.no_grad():
        weight = w_out(perturbed, 1)
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 3 * weight.std())
    moved = ability.ability_scores(perturbed, tok, texts, reference)
    assert moved["agreement"].mean() < 1.0 and (moved["agreement"] >= 0).all()
    assert not np.allclose(moved["perplexity"], moved["reference_perplexity"])
    assert (moved["reference_perplexity"] == same["reference_perplexity"]).all()


def test_batching_and_chunking_do_not_change_the_scores(tok, texts):
    lm = build_tiny_model("llama", tokenizer=tok)
    one = ability.reference_predictions(lm.model, tok, texts, batch_size=1, chunk_positions=1000)
    many = ability.reference_predictions(lm.model, tok, texts, batch_size=5, chunk_positions=3)
    assert one.token_ids == many.token_ids and one.argmax == many.argmax
    assert np.allclose(np.concatenate(one.nll), np.concatenate(many.nll), atol=1e-5)


def test_a_reference_of_other_texts_is_refused(tok, texts):
    lm = build_tiny_model("gemma3_text", tokenizer=tok)
    reference = ability.reference_predictions(lm.model, tok, texts)
    with pytest.raises(ValueError, match="other texts"):
        ability.ability_scores(lm.model, tok, texts[::-1], reference)
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        ability.reference_predictions(lm.model, tok, [""])
    with pytest.raises(TypeError, match="not one string"):
        ability.reference_predictions(lm.model, tok, "one text")
    with pytest.raises(ValueError, match="exceed the model's 256 positions"):
        ability.reference_predictions(lm.model, tok, ability.heldout_texts("en", n=1))


def test_summary_pools_tokens_and_the_probe_scores_every_language(tok):
    lm = build_tiny_model("gemma3_text", tokenizer=tok)
    probe = ability.AbilityProbe(lm.model, tok, ["en", "nl"], n=4, max_tokens=30)
    assert probe.sources == {"en": "xquad", "nl": "xnli"}
    perturbed = copy.deepcopy(lm.model)
    with torch.no_grad():
        w_out(perturbed, 2).mul_(-1.0)
    scores = probe.score(perturbed, tok)
    summary = probe.summary(perturbed, tok, n_resamples=500).set_index("language")
    for language, part in scores.groupby("language"):
        row = summary.loc[language]
        pooled = math.exp((part["nll"] * part["tokens"]).sum() / part["tokens"].sum())
        assert row["perplexity"] == pytest.approx(pooled)
        assert row["perplexity_low"] <= row["perplexity"] <= row["perplexity_high"]
        agreeing = (part["agreement"] * part["tokens"]).sum() / part["tokens"].sum()
        assert row["agreement"] == pytest.approx(agreeing) and row["agreement_low"] <= agreeing <= row["agreement_high"]
        assert row["texts"] == 4 and row["tokens"] == part["tokens"].sum()
    itself = probe.summary(lm.model, tok, n_resamples=200)
    assert (itself["agreement"] == 1.0).all()
    assert np.allclose(itself["perplexity"], itself["reference_perplexity"])
