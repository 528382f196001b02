"""Helpers the notebooks share: parameters, summary tables, the paired tests, edited-model loading."""
import json
import math
from dataclasses import dataclass

import numpy as np

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


def test_best_baseline():
    assert ns.best_baseline(ns.summary_table(RUNS)) == "memit"


@dataclass(frozen=True)
class Fact:
    case_id: int
    paraphrase: str | None = "p"
    locality_prompt: str | None = "l"


def run_with_facts(folder, method, seed, per_language):
    """A finished run whose evals_per_fact.jsonl holds, per language, the given per-fact efficacy
    (fractions; generality = efficacy / 2, the last fact without a paraphrase) after steps en, de."""
    from langedit.editing.sequential import PER_FACT_FILE, per_fact_record

    folder.mkdir(parents=True)
    lines = []
    for after in ("pre-edit", "en", "de"):
        for language, values in per_language.items():
            facts = [Fact(case_id=10 + i, paraphrase=None if i == len(values) - 1 else "p") for i in range(len(values))]
            final = after == "de"
            scores = {"efficacy": [v if final else 0.0 for v in values],
                      "generality": [v / 2 if final else 0.0 for v in values[:-1]]}
            lines.append(json.dumps(per_fact_record(after, language, facts, scores)))
    (folder / PER_FACT_FILE).write_text("\n".join(lines) + "\n")
    evals_rows = [{"after": "pre-edit", "language": lang, "n": len(v), "efficacy": 0.0, "generality": 0.0}
                  for lang, v in per_language.items()]
    evals_rows += [{"after": "de", "language": lang, "n": len(v), "efficacy": 100 * np.mean(v),
                    "generality": 100 * np.mean(v[:-1]) / 2} for lang, v in per_language.items()]
    return ns.RunResult(pd.DataFrame(evals_rows), pd.DataFrame(), folder, method, "multilingual", {})


def test_per_fact_records_align_scores_with_their_facts(tmp_path):
    from langedit.editing.sequential import per_fact_record, read_per_fact

    run = run_with_facts(tmp_path / "r", "memit", 0, {"en": [1.0, 0.5, 0.0]})
    facts = read_per_fact(run.folder)
    final = facts[facts["after"] == "de"].set_index("case_id")
    assert final.loc[11, "efficacy"] == 50.0 and final.loc[10, "generality"] == 50.0
    assert np.isnan(final.loc[12, "generality"])             # no paraphrase: no generality score
    with pytest.raises(ValueError, match="2 scores for 3 requests"):
        per_fact_record("en", "en", [Fact(1), Fact(2), Fact(3)], {"efficacy": [1.0, 0.0]})
    # an evaluation written twice (interrupted between its two files) is read once, the last copy
    path = run.folder / "evals_per_fact.jsonl"
    path.write_text(path.read_text() + json.dumps(per_fact_record("de", "en", [Fact(10), Fact(11), Fact(12)],
                                                                  {"efficacy": [0.0, 0.0, 0.0]})) + "\n")
    again = read_per_fact(run.folder)
    assert len(again) == 9 and (again[again["after"] == "de"]["efficacy"] == 0.0).all()


def test_paired_tests_bootstrap_over_facts_with_fewer_than_three_seeds(tmp_path):
    from langedit.statistics import paired_bootstrap

    values = {"en": [1.0, 0.5, 0.0, 1.0], "de": [1.0, 1.0, 0.0, 0.5]}
    better = {"en": [1.0, 1.0, 0.5, 1.0], "de": [1.0, 1.0, 1.0, 0.5]}
    runs = {(0, "memit"): run_with_facts(tmp_path / "m", "memit", 0, values),
            (0, "langedit"): run_with_facts(tmp_path / "l", "langedit", 0, better)}
    tests = ns.paired_tests(runs, "langedit", "memit", metrics=("efficacy", "generality", "specificity"),
                            n_resamples=2000).set_index("metric")
    efficacy = tests.loc["efficacy"]
    assert efficacy["test"] == "paired bootstrap over facts" and efficacy["n"] == 8 and efficacy["clusters"] == 4
    # independently: the same pairs, clustered by fact id (a fact moves with both its languages)
    a = [100 * v for lang in ("en", "de") for v in better[lang]]
    b = [100 * v for lang in ("en", "de") for v in values[lang]]
    expected = paired_bootstrap(a, b, 2000, clusters=[10, 11, 12, 13] * 2)
    assert efficacy["mean_difference"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert (efficacy["low"], efficacy["high"]) == pytest.approx((expected.low, expected.high))
    assert np.isnan(efficacy["p_value"]) and "no p-value below 3 seeds" in efficacy["note"]     # one run
    assert tests.loc["generality", "n"] == 6                  # facts without a paraphrase are not paired
    assert tests.loc["specificity", "n"] == 0 and np.isnan(tests.loc["specificity", "p_value"])
    assert "no per-fact scores" in tests.loc["specificity", "note"]
    with pytest.raises(ValueError, match="no seed has runs of both"):
        ns.paired_tests(runs, "langedit", "rome")


def test_paired_tests_over_seeds_with_three_seeds(tmp_path):
    from scipy import stats

    runs, per_seed = {}, {"memit": [], "langedit": []}
    for seed in (0, 1, 2):
        for method, shift in (("memit", 0.0), ("langedit", 0.1 * (seed + 1))):
            values = {"en": [0.2 + shift, 0.4], "de": [0.6, 0.3 + shift / 2]}
            runs[(seed, method)] = run_with_facts(tmp_path / f"{method}{seed}", method, seed, values)
            per_seed[method].append(np.mean([100 * np.mean(v) for v in values.values()]))
    tests = ns.paired_tests(runs, "langedit", "memit", metrics=("efficacy",)).set_index("metric")
    row = tests.loc["efficacy"]
    reference = stats.ttest_rel(per_seed["langedit"], per_seed["memit"])
    assert row["test"] == "paired t-test over seeds" and row["n"] == 3
    assert row["statistic"] == pytest.approx(reference.statistic) and row["p_value"] == pytest.approx(reference.pvalue)
    two = ns.paired_tests({k: v for k, v in runs.items() if k[0] < 2}, "langedit", "memit", metrics=("efficacy",))
    assert two.loc[0, "test"] == "paired bootstrap over facts" and two.loc[0, "n"] == 8


def test_edited_model_refuses_a_run_without_state(tmp_path):
    run = ns.RunResult(pd.DataFrame(), pd.DataFrame(), tmp_path, "memit", "multilingual", {})
    with pytest.raises(FileNotFoundError, match="holds no editor state"):
        with ns.edited_model(None, run):
            pass


def test_a_real_sequential_run_keeps_per_fact_scores_whose_means_are_its_evals(tmp_path):
    """A tiny sequential run (the resume test's set-up): evals_per_fact.jsonl averages to evals.jsonl."""
    import resume_worker

    tokenizer = resume_worker.word_tokenizer()
    runs = {}
    for method in ("memit", "alphaedit"):
        run = resume_worker.make_run(tmp_path / method, method, {}, tokenizer)
        evals = run.run()
        facts = run.per_fact()
        assert len(facts) == sum(len(resume_worker.REQUESTS[lang]) for lang in ("en", "en", "de", "en", "de"))
        means = facts.groupby(["after", "language"])[["efficacy", "generality", "specificity",
                                                      "locality_agreement"]].mean()
        for row in evals.itertuples():
            for metric in ("efficacy", "generality", "specificity", "locality_agreement"):
                assert means.loc[(row.after, row.language), metric] == pytest.approx(getattr(row, metric))
        assert sorted(facts["case_id"].unique()) == [0, 1]
        runs[(0, method)] = ns.RunResult(evals, run.batches(), run.out_dir, method, "multilingual", {})
    tests = ns.paired_tests(runs, "alphaedit", "memit").set_index("metric")
    assert (tests["test"] == "paired bootstrap over facts").all() and (tests["n"] == 3).all()


def test_radar_draws_each_method_in_its_own_style_and_refuses_missing_values():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from langedit.notebook_support import METHOD_LINESTYLES, METHOD_MARKERS, radar

    fig, ax = plt.subplots(subplot_kw={"polar": True})
    radar(ax, ["a", "b", "c"], {"alphaedit": [1, 2, 3], "langedit": [1, 2, 3]})
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["AlphaEdit"].get_marker() != lines["LangEdit"].get_marker()
    assert list(lines["LangEdit"].get_ydata()) == [1, 2, 3, 1]          # closed polygon, values as given
    assert len(set(map(str, METHOD_LINESTYLES.values()))) == len(METHOD_LINESTYLES)
    assert len(set(METHOD_MARKERS.values())) == len(METHOD_MARKERS)
    with pytest.raises(ValueError, match="no NaN"):
        radar(ax, ["a", "b", "c"], {"rect": [1, float("nan"), 3]})
    with pytest.raises(ValueError, match="at least 3 axes"):
        radar(ax, ["a", "b"], {"rect": [1, 2]})
    plt.close(fig)


def test_ours_beside_paper_stacks_our_means_above_the_papers_rows():
    import pandas as pd
    import langedit.notebook_support as ns
    ours = pd.DataFrame({"method": ["pre-edit", "langedit"], "efficacy_mean": [10.0, 90.0], "efficacy_std": [1.0, 2.0]})
    paper = pd.DataFrame({"model": ["Llama3-8B"] * 3, "method": ["Pre-edited", "LangEdit", "ROME"],
                          "efficacy": [31.0, 82.5, 0.4], "source": ["paper"] * 3})
    both = ns.ours_beside_paper(ours, paper, "tiny")
    assert list(both["model"]) == ["tiny (ours, measured)"] * 2 + ["Llama3-8B"] * 3
    assert list(both["method"]) == ["Pre-edited", "LangEdit", "Pre-edited", "LangEdit", "ROME"]
    assert list(both["efficacy"]) == [10.0, 90.0, 31.0, 82.5, 0.4] and "source" not in both
    assert list(ns.ours_beside_paper(ours, paper, "tiny", only_our_methods=True)["method"]) == [
        "Pre-edited", "LangEdit", "Pre-edited", "LangEdit"]


def test_batch_of_100_seconds_reads_the_fast_path_benchmark(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGEDIT_RESULTS_DIR", str(tmp_path))
    assert ns.batch_of_100_seconds() is None                  # not benchmarked here
    (tmp_path / "benchmarks").mkdir()
    pd.DataFrame({"method": ["alphaedit", "langedit", "alphaedit"], "batch_size": [100, 100, 100],
                  "dtype": ["float32", "float32", "bfloat16"], "seconds_per_batch": [700.0, 770.0, 350.0]}).to_csv(
        tmp_path / "benchmarks" / "fast_path.csv", index=False)
    seconds = ns.batch_of_100_seconds()
    assert seconds.to_dict() == {"alphaedit": 700.0, "langedit": 770.0}
    assert ns.batch_of_100_seconds("bfloat16").to_dict() == {"alphaedit": 350.0}
    with pytest.raises(ValueError, match="float16"):
        ns.batch_of_100_seconds("float16")


def test_sequential_run_folder_is_named_by_the_runs_parameters(tmp_path, monkeypatch, default_tokenizer):
    """The folder scheme the committed results/runs/ were written under: changing it would re-edit them all."""
    from langedit.editing.sequential import resolved_hparams
    from langedit.models.tiny import build_tiny_model
    from edit_requests import LanguageReq

    monkeypatch.setenv("LANGEDIT_RESULTS_DIR", str(tmp_path))
    lm = build_tiny_model("gemma3_text", tokenizer=default_tokenizer)
    requests = {"en": [LanguageReq("Where is {}?", "Rome", "Italy", "en", 4)],
                "de": [LanguageReq("Wo liegt {}?", "Rom", "Italien", "de", 4)]}
    folder = ns.sequential_run_folder(lm, "memit", requests, ["en", "de"], 1)
    by_hand = ns.run_folder("seq", "memit", "multilingual", lm.name, dict(
        order=["en", "de"], n=1, batch_size=1, shuffle_seed=None, portability=False,
        case_ids={"en": [4], "de": [4]}, overrides={}, hparams=resolved_hparams(lm, "memit")))
    assert folder == by_hand and folder.parent == tmp_path / "runs" and folder.name.startswith("seq-")
    queried = ns.sequential_run_folder(lm, "memit", {"en": requests["en"], "de": requests["de"]}, ["en"], 1,
                                       query_languages=["de"])
    assert queried != ns.sequential_run_folder(lm, "memit", {"en": requests["en"]}, ["en"], 1)
