"""Causal tracing on tiny random models of every family (no download), plus table logic."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from langedit.models.tiny import TINY_FAMILIES, build_tiny_model
from langedit.tracing import (KINDS, EncodedFact, SubjectNotFoundError, TraceFact, as_trace_fact, causal_trace, clean_run,
                              encode_fact, heatmap_frame, make_noise, mlp_effect_by_layer, position_categories,
                              restoration_grid, restored_answer_probs, restored_layers, state_names,
                              suggest_edit_layers, token_effects, trace_fact)

WORDS = ("the capital of France is Paris Eiffel Tower located in city Barack Obama was born Hawaii Danielle "
         "Darrieux mother tongue French Question Answer ? :").split()
FACTS = [
    ("the Eiffel Tower is located in the city of", "Eiffel Tower", "Paris", "en"),
    ("Danielle Darrieux mother tongue is", "Danielle Darrieux", "French", "fr"),
    ("Barack Obama was born in", "Barack Obama", "Hawaii", "en"),
]
N_LAYERS = 4


def word_tokenizer(bos: bool = True):
    """A fast word-level tokenizer (offsets included) with a BOS token, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *dict.fromkeys(WORDS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: thread start-up costs more than it saves, worst on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def tiny(request, tokenizer):
    return build_tiny_model(request.param, tokenizer=tokenizer)


def _noise(model, fact, std=1.0, n=3, seed=0):
    return make_noise(fact, n, model.get_input_embeddings().weight.shape[-1], std, seed)


# ----------------------------------------------------------------- facts and subjects

def test_subject_range_and_answer(tokenizer):
    fact = encode_fact(tokenizer, as_trace_fact(FACTS[0]))
    assert fact.tokens[fact.subject_range[0]:fact.subject_range[1]] == ("Eiffel", "Tower")
    assert tokenizer.convert_ids_to_tokens(fact.answer_id) == "Paris"
    assert fact.tokens[0] == "<bos>"


def test_gemma_tokenizer_spaces_and_cjk():
    """Gemma writes " 2006" as "▁", "2", ...: the space token joins the prompt, "2" is the answer."""
    from langedit.models import default_model_dir
    from transformers import AutoTokenizer

    folder = default_model_dir()
    if not (folder / "tokenizer_config.json").exists():
        pytest.skip("the default model has not been converted on this machine")
    gemma = AutoTokenizer.from_pretrained(folder)
    subject = "IAAF Combined Events Challenge"
    fact = encode_fact(gemma, TraceFact(f"Question: When was {subject} founded?\nAnswer:", subject, "2006"))
    assert fact.tokens[-1] == "▁" and gemma.convert_ids_to_tokens(fact.answer_id) == "2"
    assert "".join(fact.tokens[slice(*fact.subject_range)]).replace("▁", " ").strip() == subject
    zh_subject = "IAAF综合项目挑战赛"
    zh = encode_fact(gemma, TraceFact(f"{zh_subject}的创立时间？答案：", zh_subject, "2006年"))
    assert zh.tokens[-1] == "：" and gemma.convert_ids_to_tokens(zh.answer_id) == "2"


def test_missing_subject_names_subject_and_prompt(tokenizer):
    with pytest.raises(SubjectNotFoundError, match=r"'Big Ben'.*'the capital of France is'"):
        encode_fact(tokenizer, TraceFact("the capital of France is", "Big Ben", "Paris"))


def test_missing_subject_in_causal_trace(tiny, tokenizer):
    facts = [("the capital of France is", "Big Ben", "Paris", "en")]
    with pytest.raises(SubjectNotFoundError, match="Big Ben"):
        causal_trace(tiny.model, tokenizer, facts, noise_std=1.0, progress=False)
    result = causal_trace(tiny.model, tokenizer, facts, noise_std=1.0, progress=False, skip_missing_subject=True)
    assert result.facts["status"].tolist() == ["subject_not_found"] and result.effects.empty


@dataclass
class _Request:  # the shape of langedit.data.EditRequest
    prompt: str
    subject: str
    target: str
    language: str

    @property
    def question(self) -> str:
        return self.prompt.format(self.subject)


def test_adapter_accepts_triples_dicts_and_requests():
    expected = TraceFact("Question: Barack Obama was born in\nAnswer:", "Barack Obama", "Hawaii", "en")
    template = "Question: {}\nAnswer:"
    assert as_trace_fact(FACTS[2], template) == expected
    assert as_trace_fact({"prompt": "{} was born in", "subject": "Barack Obama", "target": "Hawaii",
                          "language": "en"}, template) == expected
    assert as_trace_fact(_Request("{} was born in", "Barack Obama", "Hawaii", "en"), template) == expected
    assert as_trace_fact(("Barack Obama was born in", "Barack Obama")).answer is None


# ----------------------------------------------------------------- the engine, every family

def test_restoring_every_hidden_state_recovers_clean_exactly(tiny, tokenizer):
    model, fact = tiny.model, encode_fact(tokenizer, as_trace_fact(FACTS[0]))
    names = state_names(tiny.arch, "hidden", N_LAYERS)
    clean = clean_run(model, fact, names, fact.answer_id)
    noise = _noise(model, fact, std=3.0)
    corrupted = restored_answer_probs(model, fact, noise, fact.answer_id, clean=clean)
    assert (corrupted - clean.prob).abs().max() > 1e-4  # the noise does something
    everything = {name: range(fact.n_tokens) for name in names}
    restored = restored_answer_probs(model, fact, noise, fact.answer_id, everything, clean=clean)
    assert torch.allclose(restored, torch.full_like(restored, clean.prob), atol=1e-6, rtol=0)
    one_layer = restored_answer_probs(model, fact, noise, fact.answer_id, {names[1]: range(fact.n_tokens)}, clean=clean)
    assert torch.allclose(one_layer, torch.full_like(one_layer, clean.prob), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_grid_matches_full_recomputation(tiny, tokenizer, kind):
    """The grid shares the corrupted prefix as a KV cache; it must equal restoring on the full sequence."""
    model, fact = tiny.model, encode_fact(tokenizer, as_trace_fact(FACTS[1]))
    names = state_names(tiny.arch, kind, N_LAYERS)
    clean = clean_run(model, fact, names, fact.answer_id)
    noise = _noise(model, fact, std=2.0)
    positions = [fact.subject_range[0], fact.subject_range[1] - 1, fact.n_tokens - 1]
    grid = restoration_grid(model, fact, noise, fact.answer_id, clean, kind, positions, window=2, max_rows=7)
    for position in positions:
        for layer in range(N_LAYERS):
            restore = {names[w]: [position] for w in restored_layers(kind, layer, 2, N_LAYERS)}
            direct = restored_answer_probs(model, fact, noise, fact.answer_id, restore, clean=clean).mean()
            assert grid[position, layer] == pytest.approx(float(direct), abs=1e-6)
    assert np.isnan(grid[fact.subject_range[0] - 1]).all()  # not asked for


def test_last_layer_last_token_is_clean(tiny, tokenizer):
    trace = trace_fact(tiny.model, tokenizer, FACTS[0], noise_std=3.0, kinds=("hidden",), n_samples=2)
    assert trace.scores["hidden"][-1, -1] == pytest.approx(trace.p_clean, abs=1e-6)
    before = trace.scores["hidden"][: trace.fact.subject_range[0]]
    assert np.allclose(before, trace.p_corrupt)


def test_zero_noise_has_zero_effect(tiny, tokenizer):
    result = causal_trace(tiny.model, tokenizer, FACTS, noise_std=0.0, n_samples=2, answers="predicted",
                          progress=False)
    assert len(result.traces) == len(FACTS)
    assert result.effects["indirect_effect"].abs().max() < 1e-6
    assert np.allclose(result.effects["p_clean"], result.effects["p_corrupt"], atol=1e-6)
    assert set(result.effects["kind"]) == set(KINDS)


def test_seeded_noise_is_deterministic(tiny, tokenizer):
    def run(seed):
        return trace_fact(tiny.model, tokenizer, FACTS[2], noise_std=3.0, kinds=("mlp",), n_samples=2,
                          seed=seed, categories=("last_subject",)).scores["mlp"]
    first, again, other = run(0), run(0), run(1)
    assert np.array_equal(first, again, equal_nan=True)
    assert not np.array_equal(first, other, equal_nan=True)


def test_start_of_prompt_subject_without_bos(tokenizer):
    """Subject at token 0 (no BOS): the grid runs without a prefix cache."""
    no_bos = word_tokenizer(bos=False)
    model = build_tiny_model("llama", tokenizer=no_bos).model
    fact = encode_fact(no_bos, as_trace_fact(FACTS[1]))
    assert fact.subject_range[0] == 0
    trace = trace_fact(model, no_bos, fact, noise_std=3.0, kinds=("hidden",), n_samples=2)
    assert not np.isnan(trace.scores["hidden"]).any()
    assert trace.scores["hidden"][-1, -1] == pytest.approx(trace.p_clean, abs=1e-6)


def test_only_correct_facts_count(tokenizer):
    model = build_tiny_model("qwen2", tokenizer=tokenizer).model
    probe = clean_run(model, encode_fact(tokenizer, as_trace_fact(FACTS[0])), [])
    right = tokenizer.convert_ids_to_tokens(probe.top_id)
    wrong = next(w for w in WORDS if w != right and w.isalpha())
    facts = [(*FACTS[0][:2], right, "en"), (*FACTS[0][:2], wrong, "de")]
    result = causal_trace(model, tokenizer, facts, kinds=("mlp",), noise_std=3.0, n_samples=2, progress=False,
                          categories=("last_subject",))
    assert result.facts["status"].tolist() == ["counted", "wrong_before_corruption"]
    counts = result.counts().set_index("language")
    assert counts.loc["en", "n_counted"] == 1 and counts.loc["de", "n_counted"] == 0
    assert set(result.effects["language"]) == {"en"}
    assert set(result.effects["position_category"]) == {"last_subject"}


def test_full_answer_criterion_needs_every_token(tokenizer):
    model = build_tiny_model("gpt2", tokenizer=tokenizer).model
    prompt, subject = FACTS[2][:2]
    first_id = clean_run(model, encode_fact(tokenizer, TraceFact(prompt, subject)), []).top_id
    first = tokenizer.convert_ids_to_tokens(first_id)
    second_id = clean_run(model, encode_fact(tokenizer, TraceFact(f"{prompt} {first}", subject)), []).top_id
    second = tokenizer.convert_ids_to_tokens(second_id)
    other = next(w for w in WORDS if w not in (second, first) and w.isalpha())
    facts = [(prompt, subject, f"{first} {second}", "en"), (prompt, subject, f"{first} {other}", "de")]
    kwargs = dict(kinds=("mlp",), noise_std=3.0, n_samples=2, categories=("last_subject",), progress=False)
    loose = causal_trace(model, tokenizer, facts, **kwargs)
    strict = causal_trace(model, tokenizer, facts, criterion="full_answer", **kwargs)
    assert loose.facts["status"].tolist() == ["counted", "counted"]
    assert strict.facts["status"].tolist() == ["counted", "wrong_before_corruption"]


def test_tables_for_heatmaps(tokenizer):
    model = build_tiny_model("gemma3_text", tokenizer=tokenizer).model
    result = causal_trace(model, tokenizer, FACTS, kinds=("hidden", "mlp"), noise_std=3.0, n_samples=2,
                          answers="predicted", progress=False)
    table = result.effects
    assert {"language", "kind", "position_category", "layer", "prob", "indirect_effect", "n_facts",
            "p_clean", "p_corrupt"} <= set(table.columns)
    matrix = heatmap_frame(table, "en", "hidden")
    assert list(matrix.columns) == list(range(N_LAYERS))
    assert list(matrix.index) == ["first_subject", "last_subject", "first_subsequent", "further", "last"]
    assert (table.loc[table.language == "en", "n_facts"] <= 2).all()
    per_token = token_effects(result.traces[0])
    assert len(per_token) == 2 * result.traces[0].fact.n_tokens * N_LAYERS
    curve = mlp_effect_by_layer(table)
    assert set(curve["language"]) == {"en", "fr", "all"} and len(suggest_edit_layers(curve, 2)) == 2


# ----------------------------------------------------------------- pure table logic

def test_position_categories_follow_rome():
    groups = position_categories(10, (2, 6))
    assert groups == {"first_subject": [2], "middle_subject": [3, 4], "last_subject": [5],
                      "first_subsequent": [6], "further": [7, 8], "last": [9]}
    short = position_categories(4, (1, 2))  # one-token subject, one token after it, then the last
    assert short == {"first_subject": [1], "last_subject": [1], "first_subsequent": [2], "last": [3]}
    assert "first_subsequent" not in position_categories(4, (1, 4))


def test_suggest_edit_layers_picks_best_window():
    effects = [0.0, 0.1, 0.5, 0.6, 0.4, 0.1, 0.9, 0.0]
    curve = pd.DataFrame({"language": "all", "layer": range(8), "indirect_effect": effects})
    assert suggest_edit_layers(curve, 3) == [2, 3, 4]
    assert suggest_edit_layers(curve, 1) == [6]
    with pytest.raises(ValueError, match="n_layers"):
        suggest_edit_layers(curve, 9)


def test_mlp_curve_weights_languages_by_facts():
    table = pd.DataFrame({
        "language": ["en", "de"], "kind": "mlp", "position_category": "last_subject", "layer": 0,
        "prob": [0.5, 0.2], "indirect_effect": [0.3, 0.0], "n_facts": [3, 1]})
    curve = mlp_effect_by_layer(table).set_index("language")
    assert curve.loc["all", "indirect_effect"] == pytest.approx(0.225)
    assert curve.loc["all", "n_facts"] == 4


# ----------------------------------------------------------------- the fast trace against a naive one

def _naive_prob(model, arch, fact, answer_id, noise=None, patches=None, keep=()):
    """Independent reference: one unbatched full forward with plain hooks, softmax over the whole vocabulary.

    `noise` [n_subject, d] is added to the embedding output at the subject; `patches` maps a module name
    to {position: value}; `keep` names modules whose outputs are returned (for the clean states).
    """
    from langedit.models.architecture import get_module

    kept, handles = {}, []

    def hook(name):
        def fn(_module, _inputs, out):
            tensor = out[0] if isinstance(out, tuple) else out
            if name == arch.embed and noise is not None:
                tensor = tensor.clone()
                start, end = fact.subject_range
                tensor[0, start:end] += noise
            for position, value in (patches or {}).get(name, {}).items():
                tensor = tensor.clone()
                tensor[0, position] = value
            kept[name] = tensor[0].detach().clone()
            return (tensor, *out[1:]) if isinstance(out, tuple) else tensor
        return fn

    for name in {arch.embed, *(patches or {}), *keep}:
        handles.append(get_module(model, name).register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            logits = model(input_ids=fact.input_ids[None]).logits[0, -1].double()
    finally:
        for handle in handles:
            handle.remove()
    return float(logits.softmax(-1)[answer_id]), kept


@pytest.mark.parametrize("layers_per_forward", [1, 3])
def test_fast_grid_equals_naive_trace(tiny, tokenizer, layers_per_forward):
    """Prefix cache + skipped layers + last-position head == full forward with one patched state."""
    model, arch = tiny.model, tiny.arch
    fact = encode_fact(tokenizer, as_trace_fact(FACTS[0]))
    answer = fact.answer_id
    noise = _noise(model, fact, std=2.0, n=2)
    every = [name for kind in KINDS for name in state_names(arch, kind, N_LAYERS)]
    _, clean_states = _naive_prob(model, arch, fact, answer, keep=every)
    clean = clean_run(model, fact, every, answer)
    corrupted = [_naive_prob(model, arch, fact, answer, noise=noise[s])[0] for s in range(2)]
    positions = [fact.subject_range[0], fact.subject_range[1] - 1, fact.subject_range[1], fact.n_tokens - 1]
    for kind in KINDS:
        names = state_names(arch, kind, N_LAYERS)
        grid = restoration_grid(model, fact, noise, answer, clean, kind, positions, window=2,
                                layers_per_forward=layers_per_forward)
        for position in positions:
            for layer in (0, 1, N_LAYERS - 1):
                patch = {names[w]: {position: clean_states[names[w]][position]}
                         for w in restored_layers(kind, layer, 2, N_LAYERS)}
                naive = np.mean([_naive_prob(model, arch, fact, answer, noise=noise[s], patches=patch)[0]
                                 for s in range(2)])
                assert grid[position, layer] == pytest.approx(naive, abs=1e-5), (kind, position, layer)
    trace = trace_fact(model, tokenizer, fact, noise_std=2.0, kinds=("hidden",), n_samples=2)
    assert trace.p_corrupt == pytest.approx(np.mean(corrupted), abs=1e-5)
    assert trace.p_clean == pytest.approx(_naive_prob(model, arch, fact, answer)[0], abs=1e-5)


def test_indirect_effect_is_restored_minus_corrupted(tokenizer):
    """AIE per (category, layer) = mean over facts of (restored - corrupted), checked against the grid."""
    model = build_tiny_model("llama", tokenizer=tokenizer).model
    result = causal_trace(model, tokenizer, FACTS, kinds=("mlp",), noise_std=3.0, n_samples=2, window=2,
                          answers="predicted", progress=False)
    en = [t for t in result.traces if t.fact.fact.language == "en"]
    assert len(en) == 2
    row = result.effects.query("language == 'en' and kind == 'mlp' and position_category == 'last' and layer == 1")
    expected = np.mean([t.scores["mlp"][-1, 1] - t.p_corrupt for t in en])
    assert float(row["indirect_effect"].iloc[0]) == pytest.approx(expected, abs=1e-9)
    assert float(row["prob"].iloc[0]) - float(row["p_corrupt"].iloc[0]) == pytest.approx(expected, abs=1e-9)
    assert int(row["n_facts"].iloc[0]) == 2


def test_category_aggregation_by_hand():
    """Two synthetic facts of different lengths; categories averaged within a fact, then over facts."""
    from langedit.tracing import FactTrace, position_effects

    def fake(n_tokens, subject_range, scores, p_corrupt):
        ids = torch.zeros(n_tokens, dtype=torch.long)
        fact = EncodedFact(TraceFact("p", "s", "a", "en"), ids, ("t",) * n_tokens, subject_range, 0)
        return FactTrace(fact, 0, "a", "a", 1.0, p_corrupt, True, {"hidden": np.array(scores, dtype=float)[:, None]})

    # fact A: 6 tokens, subject [1, 4): first 1, middle 2, last 3, first subsequent 4, last 5 (no further)
    a = fake(6, (1, 4), [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], p_corrupt=0.1)
    # fact B: 7 tokens, subject [1, 3): first 1, last 2, first subsequent 3, further 4-5, last 6
    b = fake(7, (1, 3), [0.0, 0.2, 0.4, 0.6, 0.7, 0.9, 1.0], p_corrupt=0.2)
    table = position_effects([a, b]).set_index("position_category")
    expected = {  # (mean restored prob, mean AIE, n facts)
        "first_subject": ((0.1 + 0.2) / 2, (0.0 + 0.0) / 2, 2),
        "middle_subject": (0.2, 0.1, 1),
        "last_subject": ((0.3 + 0.4) / 2, (0.2 + 0.2) / 2, 2),
        "first_subsequent": ((0.4 + 0.6) / 2, (0.3 + 0.4) / 2, 2),
        "further": (0.8, 0.6, 1),
        "last": ((0.5 + 1.0) / 2, (0.4 + 0.8) / 2, 2),
    }
    for category, (prob, effect, n) in expected.items():
        assert table.loc[category, "prob"] == pytest.approx(prob)
        assert table.loc[category, "indirect_effect"] == pytest.approx(effect)
        assert table.loc[category, "n_facts"] == n


def test_noise_is_seeded():
    fact = encode_fact(word_tokenizer(), as_trace_fact(FACTS[0]))
    first, again, other = (make_noise(fact, 10, 8, 1.5, seed) for seed in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (10, 2, 8)


def test_restored_window_and_skipped_layers():
    from langedit.tracing import first_computed_layer

    assert list(restored_layers("mlp", 0, 6, 18)) == [0, 1, 2]
    assert list(restored_layers("mlp", 10, 6, 18)) == [7, 8, 9, 10, 11, 12]
    assert list(restored_layers("attn", 17, 6, 18)) == [14, 15, 16, 17]
    assert list(restored_layers("hidden", 5, 6, 18)) == [5]
    assert first_computed_layer("hidden", 5, 6, 18) == 6   # layers 0..5 come from the corrupted run
    assert first_computed_layer("mlp", 10, 6, 18) == 7     # layer 7's MLP is patched: it must run
    assert first_computed_layer("mlp", 1, 6, 18) == 0


def test_screening_matches_single_forwards(tiny, tokenizer):
    """Right-padded batched first pass == one unpadded clean run per fact."""
    from langedit.tracing import screen_facts

    facts = [encode_fact(tokenizer, as_trace_fact(f)) for f in FACTS]
    assert len({f.n_tokens for f in facts}) > 1  # padding is exercised
    screened = screen_facts(tiny.model, facts, [f.answer_id for f in facts], batch_size=3)
    for fact, (top, prob) in zip(facts, screened):
        clean = clean_run(tiny.model, fact, [], fact.answer_id)
        assert top == clean.top_id and prob == pytest.approx(clean.prob, abs=1e-6)
    with pytest.raises(ValueError, match="3 facts but 2"):
        screen_facts(tiny.model, facts, [None, None])


def test_draws_until_enough_correct_per_language(tokenizer):
    model = build_tiny_model("gemma3_text", tokenizer=tokenizer).model
    prompt, subject = FACTS[0][:2]
    right = tokenizer.convert_ids_to_tokens(clean_run(model, encode_fact(tokenizer, TraceFact(prompt, subject)), []).top_id)
    wrong = next(w for w in WORDS if w != right and w.isalpha())
    en = [(prompt, subject, answer, "en") for answer in (wrong, right, wrong, right, right, right)]
    de = [(prompt, subject, answer, "de") for answer in (wrong, right, wrong)]
    result = causal_trace(model, tokenizer, en + de, kinds=("mlp",), noise_std=3.0, n_samples=2, window=2,
                          categories=("last_subject",), max_facts_per_language=2, screen_batch=2, progress=False)
    status = result.facts["status"].tolist()
    assert status[:6] == ["wrong_before_corruption", "counted", "wrong_before_corruption", "counted",
                          "language_full", "language_full"]
    assert status[6:] == ["wrong_before_corruption", "counted", "wrong_before_corruption"]
    counts = result.counts().set_index("language")
    assert counts.loc["en", "n_counted"] == 2 and not counts.loc["en", "pool_exhausted"]
    assert counts.loc["en", "n_seen"] == 4 and counts.loc["en", "n_drawn"] == 6
    assert counts.loc["de", "n_counted"] == 1 and counts.loc["de", "pool_exhausted"]


def test_colour_limits_shared_by_languages():
    from langedit.tracing import colour_limits, facts_per_panel

    table = pd.DataFrame({"language": ["en", "de", "en", "de"], "kind": ["mlp", "mlp", "attn", "attn"],
                          "indirect_effect": [0.3, -0.5, 0.1, 0.05], "prob": [0.4, 0.2, 0.9, 0.1],
                          "n_facts": [3, 2, 3, 2]})
    assert colour_limits(table, "mlp") == (-0.5, 0.5)
    assert colour_limits(table, "attn", "prob") == (0.0, 0.9)
    assert facts_per_panel(table, "de", "mlp") == 2
    with pytest.raises(ValueError, match="hidden"):
        colour_limits(table, "hidden")


@pytest.mark.parametrize("layers_per_forward", [1, 3])
def test_cost_model_counts_what_the_grid_runs(tokenizer, layers_per_forward):
    """grid_cost's layer-token and head-row counts == what a real grid computes (counted by wrapping
    the decoder layer's class forward: a skipped layer's instance forward never reaches it)."""
    from langedit.models.architecture import get_module
    from langedit.tracing import corrupted_run
    from langedit.tracing.cost import grid_cost

    lm = build_tiny_model("gemma3_text", tokenizer=tokenizer)
    fact = encode_fact(tokenizer, as_trace_fact(FACTS[0]))
    noise = _noise(lm.model, fact, std=2.0, n=2)
    positions = list(range(fact.subject_range[0], fact.n_tokens))
    layer_class = type(get_module(lm.model, lm.arch.layer_name(0)))
    original = layer_class.forward
    for kind in KINDS:
        clean = clean_run(lm.model, fact, state_names(lm.arch, kind, N_LAYERS), fact.answer_id)
        corrupted = corrupted_run(lm.model, fact, noise, fact.answer_id)
        layer_tokens, head_rows = [], []

        def counting_forward(self, hidden_states, *args, **kwargs):
            layer_tokens.append(hidden_states.shape[0] * hidden_states.shape[1])
            return original(self, hidden_states, *args, **kwargs)

        layer_class.forward = counting_forward
        head = get_module(lm.model, lm.arch.unembed).register_forward_hook(
            lambda _m, inputs, _out: head_rows.append(inputs[0].shape[0]))
        try:
            restoration_grid(lm.model, fact, noise, fact.answer_id, clean, kind, positions, window=2,
                             corrupted=corrupted, layers_per_forward=layers_per_forward)
        finally:
            layer_class.forward = original
            head.remove()
        expected = grid_cost(kind, fact.n_tokens, positions, N_LAYERS, 2, 2, layers_per_forward)
        assert sum(layer_tokens) == expected.layer_tokens, kind
        assert sum(head_rows) == expected.head_rows, kind


# ----------------------------------------------------------------- resuming from a store

def _answered_facts(model, tokenizer):
    """FACTS with the tiny model's own top-1 as answer, so every fact is counted and traced."""
    facts = []
    for prompt, subject, _, language in FACTS:
        top = clean_run(model, encode_fact(tokenizer, TraceFact(prompt, subject)), []).top_id
        facts.append((prompt, subject, tokenizer.convert_ids_to_tokens(top), language))
    return facts


def test_store_resumes_an_interrupted_trace_with_identical_numbers(tokenizer, tmp_path, monkeypatch):
    import langedit.tracing.run as run_module

    model = build_tiny_model("llama", tokenizer=tokenizer).model
    facts = _answered_facts(model, tokenizer)
    kwargs = dict(kinds=("mlp", "hidden"), noise_std=3.0, n_samples=2, window=2, progress=False)
    plain = causal_trace(model, tokenizer, facts, **kwargs)
    assert (plain.facts["status"] == "counted").all()

    calls, original = [], run_module.trace_fact

    def interrupted_after_two(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(run_module, "trace_fact", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        causal_trace(model, tokenizer, facts, store=tmp_path / "traces", **kwargs)
    assert len(list((tmp_path / "traces").glob("*.npz"))) == 2 and not list((tmp_path / "traces").glob("*.partial*"))

    calls.clear()
    monkeypatch.setattr(run_module, "trace_fact", lambda *a, **kw: (calls.append(1), original(*a, **kw))[1])
    resumed = causal_trace(model, tokenizer, facts, store=tmp_path / "traces", **kwargs)
    assert len(calls) == 1                                   # only the fact the interruption left
    pd.testing.assert_frame_equal(resumed.effects, plain.effects)
    pd.testing.assert_frame_equal(resumed.facts, plain.facts)

    calls.clear()
    again = causal_trace(model, tokenizer, facts, store=tmp_path / "traces", **kwargs)
    assert calls == [] and again.effects.equals(plain.effects)
    other = causal_trace(model, tokenizer, facts, store=tmp_path / "traces", **{**kwargs, "n_samples": 3})
    assert len(calls) == 3 and not other.effects.equals(plain.effects)   # other settings: traced again


def test_store_refuses_a_file_written_for_other_settings(tokenizer, tmp_path):
    from langedit.tracing import TraceStore, model_signature

    model = build_tiny_model("qwen2", tokenizer=tokenizer).model
    fact = encode_fact(tokenizer, as_trace_fact(FACTS[0]))
    trace = trace_fact(model, tokenizer, fact, noise_std=2.0, kinds=("mlp",), n_samples=2, window=2)
    store = TraceStore(tmp_path)
    description = store.describe(fact, {"n_samples": 2}, model_signature(model))
    store.save(trace, description)
    loaded = store.load(fact, description)
    assert loaded.p_corrupt == trace.p_corrupt and np.array_equal(loaded.scores["mlp"], trace.scores["mlp"],
                                                                  equal_nan=True)
    other = store.describe(fact, {"n_samples": 3}, model_signature(model))
    assert store.load(fact, other) is None
    store.path(other).write_bytes(store.path(description).read_bytes())   # a file under the wrong name
    with pytest.raises(ValueError, match="other settings"):
        store.load(fact, other)


def test_model_signature_tells_the_fast_path_from_float32(tokenizer):
    from langedit.models.loading import with_matmul_dtype
    from langedit.tracing import model_signature

    exact = build_tiny_model("gemma3_text", tokenizer=tokenizer)
    fast = with_matmul_dtype(build_tiny_model("gemma3_text", tokenizer=tokenizer), "bfloat16")
    assert model_signature(exact.model)["parameter_dtypes"] == ["torch.float32"]
    assert model_signature(fast.model)["parameter_dtypes"] == ["torch.bfloat16", "torch.float32"]


def test_bfloat16_products_trace_close_to_float32(tokenizer):
    """The fast path (bfloat16 operands, float32 accumulation) moves restored probabilities by
    rounding only: within 5 % of the float32 grid's range of it (Gemma-3-270M: ~3 %, benchmarks/bench_tracing.py),
    yet not identical to it (the fast path did run)."""
    from langedit.models.loading import with_matmul_dtype

    exact = build_tiny_model("gemma3_text", tokenizer=tokenizer)
    fast = with_matmul_dtype(build_tiny_model("gemma3_text", tokenizer=tokenizer), "bfloat16")
    fact = encode_fact(tokenizer, as_trace_fact(FACTS[0]))
    kwargs = dict(noise_std=3.0, kinds=KINDS, n_samples=3, window=2, answers="predicted", layers_per_forward=2)
    reference = trace_fact(exact.model, tokenizer, fact, **kwargs)
    approximate = trace_fact(fast.model, tokenizer, fact, **kwargs)
    assert approximate.answer_id == reference.answer_id
    for kind in KINDS:
        a, b = reference.scores[kind], approximate.scores[kind]
        spread = np.nanmax(a) - np.nanmin(a)
        difference = np.nanmax(np.abs(a - b))
        assert 0 < difference < 0.05 * spread, (kind, difference, spread)


def test_paper_claims_by_hand():
    """Three synthetic facts with 4 layers; early layers 0-1. Each claim's per-fact value by hand, the
    mean over facts, and an interval that contains it."""
    from langedit.tracing import FactTrace, fact_effects, paper_claims

    def fake(language, hidden, mlp, attn, p_corrupt=0.1):
        # 4 tokens, subject [1, 3): the last subject token is position 2; other rows hold noise that must not count
        ids = torch.zeros(4, dtype=torch.long)
        fact = EncodedFact(TraceFact("p", "s", "a", language), ids, ("t",) * 4, (1, 3), 0)
        def grid(at_last_subject):
            scores = np.full((4, 4), 0.9)
            scores[2] = at_last_subject
            return scores
        return FactTrace(fact, 0, "a", "a", 1.0, p_corrupt,
                         True, {"hidden": grid(hidden), "mlp": grid(mlp), "attn": grid(attn)})

    traces = [fake("en", [0.5, 0.3, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]),
              fake("en", [0.3, 0.5, 0.1, 0.1], [0.3, 0.3, 0.1, 0.1], [0.2, 0.1, 0.1, 0.1]),
              fake("de", [0.1, 0.1, 0.3, 0.1], [0.1, 0.1, 0.1, 0.1], [0.3, 0.3, 0.1, 0.1])]
    languages, hidden = fact_effects(traces, "hidden")
    assert languages == ["en", "en", "de"] and hidden[0].tolist() == pytest.approx([0.4, 0.2, 0.0, 0.0])
    claims = paper_claims(traces, early_layers=[0, 1], n_resamples=500).set_index("language")
    # hidden: early mean - late mean of (restored - 0.1): en facts 0.3 - 0.0 and 0.3 - 0.0; de 0.0 - 0.1
    assert claims.loc["en", "hidden_early_minus_late"] == pytest.approx(0.3)
    assert claims.loc["de", "hidden_early_minus_late"] == pytest.approx(-0.1)
    assert claims.loc["all", "hidden_early_minus_late"] == pytest.approx((0.3 + 0.3 - 0.1) / 3)
    # mlp - attn over layers 0-1: en 0.2 and 0.15, de -0.2
    assert claims.loc["en", "mlp_minus_attn"] == pytest.approx(0.175)
    assert claims.loc["all", "mlp_minus_attn"] == pytest.approx((0.2 + 0.15 - 0.2) / 3)
    assert claims.loc["en", "hidden_peak_layer"] == 0 and claims.loc["de", "hidden_peak_layer"] == 2
    assert claims.loc["all", "n_facts"] == 3 and claims.loc["de", "n_facts"] == 1
    low, high = claims.loc["all", ["mlp_minus_attn_low", "mlp_minus_attn_high"]]
    assert low <= claims.loc["all", "mlp_minus_attn"] <= high and low < high
    with pytest.raises(ValueError, match="proper"):
        paper_claims(traces, early_layers=[0, 1, 2, 3])
