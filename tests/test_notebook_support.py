"""Helpers the notebooks share: parameters, summary tables, the paired t-test, edited-model loading."""
import math

import pandas as pd
import pytest

from langedit import notebook_support as ns


def evals(method_scores):
    rows = []
    for after, language, eff in method_scores:
        rows.append({"after": after, "language": language, "n": 2, "efficacy": eff, "generality": eff / 2,
                     "specificity": 50.0})
    return pd.DataFrame(rows)


RUNS = {
    (0, "memit"): ns.RunResult(evals([("pre-edit", "en", 10), ("pre-edit", "de", 20), ("en", "en", 90),
                                      ("de", "en", 60), ("de", "de", 80)]), pd.DataFrame(), None, "memit", "multilingual", {}),
    (0, "langedit"): ns.RunResult(evals([("pre-edit", "en", 10), ("pre-edit", "de", 20), ("en", "en", 90),
                                         ("de", "en", 85), ("de", "de", 95)]), pd.DataFrame(), None, "langedit", "multilingual", {}),
}


def test_resolve_prefers_given_parameters_and_refuses_unknown_ones():
    settings = ns.resolve("smoke", n_per_language=7, languages=["en"], seeds=None)
    assert settings["n_per_language"] == 7 and settings["languages"] == ("en",)
    assert settings["seeds"] == ns.PROFILES["smoke"]["seeds"]
    with pytest.raises(ValueError, match="unknown notebook parameter"):
        ns.resolve("smoke", n_per_langauge=3)
    with pytest.raises(ValueError, match="unknown profile"):
        ns.resolve("huge")


def test_summary_takes_the_last_step_and_the_pre_edit_rows():
    summary = ns.summary_table(RUNS, {(0, "memit"): 30.0, (0, "langedit"): 31.0, (0, "pre-edit"): 32.0})
    row = summary.set_index("method")
    assert row.loc["memit", "efficacy"] == pytest.approx(70.0)        # (60 + 80) / 2 after the last language
    assert row.loc["langedit", "efficacy"] == pytest.approx(90.0)
    assert row.loc["pre-edit", "efficacy"] == pytest.approx(15.0)
    assert list(summary["method"]) == ["pre-edit", "memit", "langedit"]   # the suite's method order
    assert row.loc["pre-edit", "xtreme_f1"] == 32.0
    table = ns.mean_std(summary)
    assert math.isnan(table.set_index("method").loc["memit", "efficacy_std"])  # one seed: no spread


def test_language_steps_count_edits_so_far():
    steps = ns.language_steps(RUNS[(0, "memit")].evals, ["en", "de"])
    assert steps.set_index(["after", "language"]).loc[("de", "en"), "edits_so_far"] == 4
    assert set(steps["step"]) == {1, 2}


def test_paired_t_test_matches_the_formula():
    a, b = [3.0, 5.0, 4.0, 8.0], [1.0, 2.0, 4.0, 5.0]
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    t, p = ns.paired_t_test(a, b)
    assert t == pytest.approx(mean / (sd / math.sqrt(len(diffs))))
    assert 0 < p < 1
    assert all(math.isnan(v) for v in ns.paired_t_test([1.0], [2.0]))
    with pytest.raises(ValueError, match="different sizes"):
        ns.paired_t_test([1.0, 2.0], [1.0])


def test_best_baseline_and_paired_tests_over_languages():
    summary = ns.summary_table(RUNS)
    assert ns.best_baseline(summary) == "memit"
    tests = ns.paired_tests(ns.per_language_final(RUNS), "langedit", "memit").set_index("metric")
    assert tests.loc["efficacy", "pairs"] == 2
    assert tests.loc["efficacy", "mean_difference"] == pytest.approx(20.0)   # (85-60 + 95-80) / 2


def test_edited_model_refuses_a_run_without_state(tmp_path):
    run = ns.RunResult(pd.DataFrame(), pd.DataFrame(), tmp_path, "memit", "multilingual", {})
    with pytest.raises(FileNotFoundError, match="holds no editor state"):
        with ns.edited_model(None, run):
            pass
