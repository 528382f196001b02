"""XTREME evaluation: F1s against hand-computed cases, golden prompts, splits, cache, real-model runs."""
from __future__ import annotations

import pickle
from collections import OrderedDict

import pandas as pd
import pytest
import torch

from langedit.xtreme import (binary_f1, build_prompt, entity_f1, evaluate_xtreme, f1_average, macro_f1,
                             mean_squad_f1, parse_choice, parse_entities, select_split, squad_f1,
                             weights_fingerprint)
from langedit.xtreme.cache import entry_path, read_entry, write_entry
from langedit.xtreme.evaluate import f1_table, method_for
from langedit.xtreme.inference import choice_logprobs
from langedit.xtreme.scoring import answer_complete, entities_complete
from langedit.xtreme.tasks import _restricted_unpickle, load_task


# --- classification F1 ----------------------------------------------------------------------

def test_binary_and_macro_f1_hand_computed():
    golds = [1, 1, 0, 0, 1]
    preds = [1, 0, 0, 1, -1]  # the last generation could not be parsed
    # class 1: tp=1 fp=1 fn=2 -> 2/5; class 0: tp=1 fp=1 fn=1 -> 2/4
    assert binary_f1(golds, preds) == pytest.approx(40.0)
    assert binary_f1(golds, preds, positive=0) == pytest.approx(50.0)
    assert macro_f1(golds, preds) == pytest.approx(45.0)


def test_macro_f1_only_averages_classes_that_occur():
    assert macro_f1([1, 1], [1, 1]) == pytest.approx(100.0)
    assert macro_f1([1, 0], [0, 1]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        macro_f1([1], [1, 0])


@pytest.mark.parametrize("text, yes, no, expected", [
    (" Yes\n", "Yes", "No", 1),
    (" No, because", "Yes", "No", 0),
    (" Not sure", "Yes", "No", -1),      # 'No' must stand alone
    (" no yes", "Yes", "No", 0),         # the first label word wins
    ("\nNein\n", "Ja", "Nein", 0),
    (" Sí.", "Sí", "No", 1),
    (" 是的", "是", "否", 1),
    (" 否", "是", "否", 0),
    (" Maybe\nYes", "Yes", "No", -1),    # only the first line is read
])
def test_parse_choice(text, yes, no, expected):
    assert parse_choice(text, yes, no) == expected


# --- MLQA token F1 --------------------------------------------------------------------------

@pytest.mark.parametrize("pred, gold, lang, expected", [
    ("the Eiffel Tower", "Eiffel Tower!", "en", 100.0),        # articles and punctuation dropped
    ("Paris France", "Paris", "en", 200 / 3),                   # P=1/2, R=1
    ("der Hund", "Hund", "de", 100.0),                          # German article
    ("28 de mayo de 1738", "28 de mayo", "es", 75.0),           # P=3/5, R=1
    ("Brazilië", "brazilië", "en", 100.0),                      # non-ASCII letters kept
    ("北京市", "北京", "zh", 80.0),                              # by character: P=2/3, R=1
    ("2013年3月", "2013年", "zh", 200 / 3),                       # 2013 / 年 / 3 / 月 vs 2013 / 年: P=1/2
    ("", "Paris", "en", 0.0),
    ("London", "Paris", "en", 0.0),
])
def test_squad_f1(pred, gold, lang, expected):
    assert squad_f1(pred, gold, lang) == pytest.approx(expected)


def test_mean_squad_f1():
    assert mean_squad_f1(["Paris", "x"], ["Paris", "Rome"], "en") == pytest.approx(50.0)
    with pytest.raises(ValueError):
        mean_squad_f1(["a"], ["a", "b"], "en")


# --- WikiANN entity F1 ----------------------------------------------------------------------

def test_parse_entities():
    assert parse_entities(" PER: Ann Lee@Bo\nLOC: Rome\n\nExtract entities ...") == [
        ("PER", "Ann Lee"), ("PER", "Bo"), ("LOC", "Rome")]
    assert parse_entities(" ORG: A\nsomething else\nPER: B") == [("ORG", "A")]
    assert parse_entities("\nPER: late") == []
    assert parse_entities("no entities") == []
    assert parse_entities("LOC: 慕 尼 黑\n") == [("LOC", "慕尼黑")]


def test_entity_f1_hand_computed():
    golds = [[("PER", "A"), ("LOC", "B"), ("LOC", "C")], [("ORG", "D")]]
    preds = [[("PER", "A"), ("ORG", "B")], [("ORG", "D"), ("LOC", "E")]]
    # tp=2 (PER A, ORG D), fp=2 (ORG B, LOC E), fn=2 (LOC B, LOC C) -> 4/8
    assert entity_f1(preds, golds) == pytest.approx(50.0)
    assert entity_f1([[("LOC", "慕尼黑")]], [[("LOC", "慕 尼 黑")]]) == pytest.approx(100.0)
    assert entity_f1([[]], [[("PER", "A")]]) == pytest.approx(0.0)
    assert entity_f1([[]], [[]]) == pytest.approx(100.0)


def test_stop_rules_match_parsers():
    assert not answer_complete(" Paris")
    assert not answer_complete("\n")             # a leading newline is not an answer yet
    assert answer_complete(" Paris\n")
    assert not entities_complete(" PER: A\nLOC: B")
    assert entities_complete(" PER: A\n\n")
    assert entities_complete(" PER: A\nText: x\n")


def test_f1_average_and_table():
    df = pd.DataFrame({"task": ["xnli", "xnli", "mlqa"], "language": ["en", "de", "en"], "f1": [50.0, 70.0, 20.0]})
    assert f1_average(df) == pytest.approx(40.0)           # mean of task means (60, 20)
    assert f1_average(df, by="row") == pytest.approx(140 / 3)
    table = f1_table(df)
    assert list(table.index) == ["xnli", "mlqa"] and table.loc["xnli", "avg"] == pytest.approx(60.0)
    with pytest.raises(ValueError):
        f1_average(df.iloc[:0])


# --- prompts --------------------------------------------------------------------------------

XNLI_DEMOS = [{"sentence1": "A man sleeps.", "sentence2": "A man is awake.", "label": "not_entailment"},
              {"sentence1": "A dog runs.", "sentence2": "An animal moves.", "label": "entailment"}]
XNLI_ITEM = {"sentence1": "She sings.", "sentence2": "She makes sound.", "label": "entailment"}


def test_golden_prompt_xnli():
    assert build_prompt("xnli", "en", XNLI_DEMOS, XNLI_ITEM) == (
        "A man sleeps. entails the A man is awake. Yes or No? Answer: No\n"
        "A dog runs. entails the An animal moves. Yes or No? Answer: Yes\n"
        "She sings. entails the She makes sound. Yes or No? Answer:")


def test_golden_prompt_pawsx_german():
    demos = [{"sentence1": "A", "sentence2": "B", "label": "0"}, {"sentence1": "C", "sentence2": "D", "label": "1"}]
    assert build_prompt("pawsx", "de", demos, {"sentence1": "E", "sentence2": "F", "label": "1"}) == (
        "Sind die Sätze Paraphrasen voneinander.\nSatz 1: A\nSatz 2: B\nAntwort: Nein\n"
        "Sind die Sätze Paraphrasen voneinander.\nSatz 1: C\nSatz 2: D\nAntwort: Ja\n"
        "Sind die Sätze Paraphrasen voneinander.\nSatz 1: E\nSatz 2: F\nAntwort:")


def test_golden_prompt_mlqa_and_wikiann():
    demo = {"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"}
    item = {"context": "Rome is in Italy.", "question": "Where is Rome?", "answer": "Italy"}
    head = "Answer the following questions based on the provided context.\n"
    assert build_prompt("mlqa", "en", [demo], item) == (
        f"{head}Context: Paris is in France.\nQuestion: Where is Paris?\nAnswer: France\n"
        f"{head}Context: Rome is in Italy.\nQuestion: Where is Rome?\nAnswer:")
    demo = {"text": "Anna wohnt in Wien", "label": "PER: Anna\nLOC: Wien\n"}
    head = ("Entitäten aus dem gegebenen Text extrahieren. Zu erkennende Entitäten sind: "
            "Person, Ort, Organisation.\n")
    assert build_prompt("wikiann", "de", [demo], {"text": "Bonn", "label": "LOC: Bonn\n"}) == (
        f"{head}Text: Anna wohnt in Wien\nAntwort: PER: Anna\nLOC: Wien\n\n{head}Text: Bonn\nAntwort:")


# --- data and splits ------------------------------------------------------------------------

@pytest.mark.parametrize("task, language", [("xnli", "zh"), ("pawsx", "fr"), ("mlqa", "de"), ("wikiann", "nl")])
def test_split_is_seeded_disjoint_and_balanced(task, language):
    items = load_task(task, language)
    split = select_split(items, task, language, 50, seed=0)
    assert split == select_split(items, task, language, 50, seed=0)
    assert split.test != select_split(items, task, language, 50, seed=1).test
    assert len(set(split.test)) == 50 and not set(split.test) & set(split.demos)
    demos = [items[i] for i in split.demos]
    if task == "xnli":
        assert [d["label"] for d in demos] == ["not_entailment", "entailment"]
    if task == "pawsx":
        assert [d["label"] for d in demos] == ["0", "1"]
    if task == "wikiann":
        assert all(f"{t}:" in d["label"] for t, d in zip(("ORG", "PER", "LOC"), demos))
    assert len(demos) == len(set(split.demos)) == {"xnli": 2, "pawsx": 2, "mlqa": 2, "wikiann": 3}[task]


def test_unknown_names_raise_value_error_naming_them():
    with pytest.raises(ValueError, match="squad"):
        evaluate_xtreme(torch.nn.Linear(1, 1), tokenizer=object(), tasks=("xnli", "squad"))
    with pytest.raises(ValueError, match="'ja'"):
        evaluate_xtreme(torch.nn.Linear(1, 1), tokenizer=object(), languages=("en", "ja"))
    with pytest.raises(ValueError, match="sample"):
        method_for("xnli", "sample")
    with pytest.raises(ValueError, match="nl"):
        load_task("pawsx", "nl")
    with pytest.raises(ValueError, match="n_per_task"):
        select_split(load_task("mlqa", "zh"), "mlqa", "zh", 10_000, seed=0)
    assert method_for("mlqa", "loglik") == "generate" and method_for("pawsx", "loglik") == "loglik"


def test_restricted_unpickle_only_allows_plain_data():
    assert _restricted_unpickle(pickle.dumps([{"text": "a", "label": 1}])) == [{"text": "a", "label": 1}]
    with pytest.raises(pickle.UnpicklingError):
        _restricted_unpickle(pickle.dumps(OrderedDict(a=1)))


def test_cache_entries_are_json_and_checked_by_key(tmp_path):
    path = entry_path(tmp_path, "f" * 64, "xnli", "en", "k" * 64)
    write_entry(path, {"key": "k" * 64, "f1": 12.5})
    assert read_entry(path, "k" * 64) == {"key": "k" * 64, "f1": 12.5}
    assert read_entry(path, "other") is None
    assert read_entry(tmp_path / "missing.json", "k") is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


# --- inference on a tiny random model -------------------------------------------------------

def test_choice_logprobs_batched_equals_unpadded_full_forward():
    from langedit.models.tiny import build_tiny_model

    model = build_tiny_model("gemma3_text").model
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 500, (n,), generator=gen).tolist() for n in (5, 12, 9)]
    choices = [[[7], [8, 9]], [[10, 11, 12], [13]], [[14], [15]]]
    batched = choice_logprobs(model, prompts, choices, pad=0, batch_size=3, progress=False)
    for p, cs, got in zip(prompts, choices, batched):
        for c, value in zip(cs, got):
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
            expected = sum(logprobs[len(p) - 1 + k, t].item() for k, t in enumerate(c))
            assert value == pytest.approx(expected, abs=1e-4)


def test_shared_prefix_length_leaves_every_sequence_a_token():
    from langedit.xtreme.inference import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2   # the shorter keeps its last token
    assert shared_prefix_length([[1, 2], [9, 2]]) == 0
    assert shared_prefix_length([[4, 5, 6]]) == 2


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gptj", "gpt2"])
def test_choice_logprobs_with_shared_prefix_equal_full_forward(family):
    from langedit.models.tiny import build_tiny_model

    model = build_tiny_model(family).model
    gen = torch.Generator().manual_seed(1)
    demos = torch.randint(3, 500, (11,), generator=gen).tolist()  # what few-shot prompts have in common
    prompts = [demos + torch.randint(3, 500, (n,), generator=gen).tolist() for n in (1, 6, 3, 9)]
    choices = [[[7], [8, 9]], [[10, 11, 12], [13]], [[14], [15]], [[16, 17], [18]]]
    shared = choice_logprobs(model, prompts, choices, pad=0, batch_size=3, progress=False)
    whole = choice_logprobs(model, prompts, choices, pad=0, batch_size=3, progress=False, share_prefix=False)
    for p, cs, got, plain in zip(prompts, choices, shared, whole):
        for c, value, value_plain in zip(cs, got, plain):
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
            expected = sum(logprobs[len(p) - 1 + k, t].item() for k, t in enumerate(c))
            assert value == pytest.approx(expected, abs=1e-4)
            assert value_plain == pytest.approx(expected, abs=1e-4)


# --- the real default model -----------------------------------------------------------------

@pytest.fixture
def one_thread():
    """The real-model runs are much faster on a shared 2-core machine with one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_fingerprint_tracks_w_out_edits(default_model):
    model = default_model.model
    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before
    weight = model.model.layers[3].mlp.down_proj.weight
    old = weight[11, 22].item()
    try:
        with torch.no_grad():
            weight[11, 22] += 1e-3
        assert weights_fingerprint(model) != before
    finally:
        with torch.no_grad():
            weight[11, 22] = old
    assert weights_fingerprint(model) == before


@pytest.mark.slow
def test_default_model_run_is_bounded_deterministic_and_cached(default_model, tmp_path, one_thread):
    kwargs = dict(tasks=("xnli", "pawsx", "mlqa", "wikiann"), languages=("en",), n_per_task=2, seed=3,
                  batch_size=2, progress=False)
    first = evaluate_xtreme(default_model, cache_dir=tmp_path, **kwargs)
    assert list(first["task"]) == ["xnli", "pawsx", "mlqa", "wikiann"] and (first["n"] == 2).all()
    assert first["f1"].between(0, 100).all() and not first["cached"].any()
    again = evaluate_xtreme(default_model, cache=False, **kwargs)
    pd.testing.assert_series_equal(first["f1"], again["f1"])
    cached = evaluate_xtreme(default_model, cache_dir=tmp_path, **kwargs)
    assert cached["cached"].all()
    pd.testing.assert_series_equal(first["f1"], cached["f1"])
    assert 0 <= f1_average(first) <= 100


# --- XTREME as a per-step probe of a sequential run --------------------------------------------

def test_xtreme_probe_refuses_bad_settings_before_any_work():
    from langedit.xtreme import XtremeProbe

    with pytest.raises(ValueError, match="nosuchtask"):
        XtremeProbe(tasks=("xnli", "nosuchtask"))
    with pytest.raises(ValueError, match="at least one task"):
        XtremeProbe(tasks=())
    with pytest.raises(ValueError, match="n_per_task"):
        XtremeProbe(tasks="xnli", n_per_task=0)
    with pytest.raises(ValueError, match="steps must be"):
        XtremeProbe(tasks="xnli", steps="last")
    a, b = XtremeProbe("xnli", n_per_task=5), XtremeProbe("xnli", n_per_task=6)
    assert a.signature == XtremeProbe(("xnli",), n_per_task=5).signature != b.signature
    # a final-only probe is another probe (its records never stand in for an every-step one's)
    final = XtremeProbe("xnli", n_per_task=5, steps="final")
    assert final.steps == "final" and final.signature != a.signature
    assert a.signature == XtremeProbe("xnli", n_per_task=5, steps="every").signature


def test_f1_by_step_averages_languages_within_a_task_then_tasks():
    from langedit.xtreme import f1_by_step

    probes = pd.DataFrame([
        {"after": "pre-edit", "task": "xnli", "language": "en", "f1": 30.0},
        {"after": "pre-edit", "task": "xnli", "language": "de", "f1": 50.0},
        {"after": "pre-edit", "task": "pawsx", "language": "en", "f1": 70.0},
        {"after": "en", "task": "xnli", "language": "en", "f1": 10.0},
        {"after": "en", "task": "xnli", "language": "de", "f1": 20.0},
        {"after": "en", "task": "pawsx", "language": "en", "f1": 45.0},
    ])
    by_step = f1_by_step(probes)
    assert list(by_step["after"]) == ["pre-edit", "en"]
    assert by_step["f1"].tolist() == pytest.approx([(40 + 70) / 2, (15 + 45) / 2])
    with pytest.raises(ValueError, match="no XTREME probe"):
        f1_by_step(pd.DataFrame())
    with pytest.raises(ValueError, match="not an XTREME probe"):
        f1_by_step(pd.DataFrame([{"after": "en", "norm": 1.0}]))


@pytest.mark.slow
def test_xtreme_probe_scores_what_evaluate_xtreme_scores(default_model, tmp_path, one_thread):
    from langedit.xtreme import XtremeProbe

    probe = XtremeProbe(tasks=("xnli", "pawsx"), languages=("en", "de"), n_per_task=2, seed=1, cache_dir=tmp_path)
    rows = probe.summary(default_model.model, default_model.tokenizer)
    direct = evaluate_xtreme(default_model, tasks=("xnli", "pawsx"), languages=("en", "de"), n_per_task=2, seed=1,
                             cache=False, progress=False)
    assert list(zip(rows["task"], rows["language"])) == list(zip(direct["task"], direct["language"]))
    assert rows["f1"].tolist() == direct["f1"].tolist() and (rows["n"] == 2).all()


def test_constant_guess_f1_is_the_better_constant_on_the_scored_items():
    from langedit.xtreme import constant_guess_f1
    from langedit.xtreme.tasks import gold_label, load_task, select_split

    chance = constant_guess_f1(("xnli", "pawsx", "mlqa"), languages=("en", "de"), n_per_task=20, seed=2)
    row = chance[(chance["task"] == "xnli") & (chance["language"] == "de")].iloc[0]
    items = load_task("xnli", "de")
    golds = [gold_label("xnli", items[i]) for i in select_split(items, "xnli", "de", 20, 2).test]
    positives = sum(golds)
    # by hand: always-yes has F1 2p/(p+n) on the positive class and 0 on the negative, halved by the macro mean
    by_hand = max(100 * positives / (positives + len(golds)), 100 * (len(golds) - positives) / (2 * len(golds) - positives))
    assert row["f1"] == pytest.approx(by_hand)
    assert 30 <= row["f1"] <= 40                                     # balanced items: about 33.3
    assert chance[chance["task"] == "mlqa"]["f1"].eq(0.0).all()


def test_every_task_has_a_label_for_figures():
    from langedit.xtreme.tasks import TASK_LABELS, TASK_NAMES

    assert set(TASK_LABELS) == set(TASK_NAMES) and len(set(TASK_LABELS.values())) == len(TASK_NAMES)
