"""Notebook 11's analysis: pre-training volume data, per-language stages, gains, rank correlations with a
bootstrap over facts, retention; checked against hand computations on small synthetic runs."""
import csv
import itertools
import json
import math
import statistics
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from langedit import language_gains as lg
from langedit import notebook_support as ns
from langedit.data import MZSRE_LANGUAGES_ALL


# ----- pre-training volume ------------------------------------------------------------------------

def raw_volume_rows():
    """The CSV read with the csv module, independently of the loader."""
    text = resources.files("langedit.data").joinpath(lg.PRETRAINING_FILE).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def test_pretraining_volume_file_covers_the_twelve_languages_with_positive_cited_numbers():
    rows = raw_volume_rows()
    assert sorted(r["language"] for r in rows) == sorted(MZSRE_LANGUAGES_ALL)
    frame = lg.load_pretraining_volume().set_index("language")
    for row in rows:
        for measure in lg.VOLUME_MEASURES:
            assert float(row[measure]) > 0
            assert frame.loc[row["language"], measure] == float(row[measure])
        assert "arXiv:1911.02116" in row["source"] and "Table 6" in row["source"]
    # MzsRE's Chinese is simplified: the table's simplified row, not the traditional one
    assert frame.loc["zh", "xlmr_table_row"] == "Chinese (Simplified)"


def test_pretraining_volume_in_the_requested_order_and_unknown_languages_refused():
    volume = lg.pretraining_volume(["th", "en"], "cc100_tokens_m")
    by_language = {r["language"]: float(r["cc100_tokens_m"]) for r in raw_volume_rows()}
    assert list(volume.index) == ["th", "en"] and volume.tolist() == [by_language["th"], by_language["en"]]
    with pytest.raises(ValueError, match="no pre-training volume row"):
        lg.pretraining_volume(["en", "xx"])
    with pytest.raises(ValueError, match="unknown volume measure"):
        lg.pretraining_volume(["en"], "bytes")


# ----- synthetic runs -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Fact:
    case_id: int
    paraphrase: str | None = "p"


ORDER = ["en", "de", "th"]
CASES = {"en": [1, 2, 3], "de": [4, 5, 6], "th": [7, 8, 9]}     # disjoint facts


def scores(method, after, language):
    """A deterministic, hand-checkable efficacy (fraction) per fact of `language` after step `after`."""
    base = {"en": 0.6, "de": 0.3, "th": 0.1}[language]
    if after == "pre-edit":
        return [base, base, 0.0]
    boost = {"memit": 0.2, "langedit": 0.3}[method]
    steps_since = ORDER.index(after) - ORDER.index(language)
    forget = {"memit": 0.2, "langedit": 0.05}[method] * steps_since
    return [min(1.0, base + boost + 0.1 * i) - forget for i in range(3)]


def write_run(folder, method):
    from langedit.editing.sequential import PER_FACT_FILE, per_fact_record

    folder.mkdir(parents=True)
    lines, evals = [], []
    for after in ["pre-edit"] + ORDER:
        languages = ORDER if after == "pre-edit" else ORDER[:ORDER.index(after) + 1]
        for language in languages:
            eff = scores(method, after, language)
            facts = [Fact(c) for c in CASES[language]]
            lines.append(json.dumps(per_fact_record(after, language, facts, {"efficacy": eff,
                                                                              "generality": [v / 2 for v in eff]})))
            evals.append({"after": after, "language": language, "n": 3, "efficacy": 100 * np.mean(eff),
                          "generality": 50 * np.mean(eff)})
    (folder / PER_FACT_FILE).write_text("\n".join(lines) + "\n")
    return ns.RunResult(pd.DataFrame(evals), pd.DataFrame(), folder, method, "multilingual", {})


@pytest.fixture()
def runs(tmp_path):
    return {(0, m): write_run(tmp_path / m, m) for m in ("memit", "langedit")}


def hand_mean(method, after, language):
    return 100 * statistics.mean(scores(method, after, language))


def test_language_table_matches_a_hand_computation(runs):
    stages = lg.fact_stages(runs, ORDER)
    assert list(stages.index.get_level_values("language")) == [l for l in ORDER for _ in range(3)]
    table = lg.language_table(stages).set_index(["method", "language"])
    for method in ("memit", "langedit"):
        for position, language in enumerate(ORDER, start=1):
            row = table.loc[(method, language)]
            pre, right, end = (hand_mean(method, "pre-edit", language), hand_mean(method, language, language),
                               hand_mean(method, "th", language))
            assert row["position"] == position and row["n_facts"] == 3
            assert row["efficacy_pre_edit"] == pytest.approx(pre)
            assert row["efficacy_after_edit"] == pytest.approx(right)
            assert row["efficacy_end"] == pytest.approx(end)
            assert row["efficacy_gain"] == pytest.approx(right - pre)
            assert row["efficacy_drop"] == pytest.approx(right - end)
            assert row["generality_end"] == pytest.approx(end / 2)
    # the last language's end is its right-after score: nothing edited after it
    assert table.loc[("memit", "th"), "efficacy_drop"] == pytest.approx(0.0)


def test_quantities_gains_drops_and_advantages(runs):
    q = lg.language_quantities(lg.fact_stages(runs, ORDER))
    for language in ORDER:
        le_end, me_end = hand_mean("langedit", "th", language), hand_mean("memit", "th", language)
        le_right, me_right = hand_mean("langedit", language, language), hand_mean("memit", language, language)
        assert q.loc[language, "efficacy_advantage_end_vs_memit"] == pytest.approx(le_end - me_end)
        assert q.loc[language, "efficacy_advantage_after_vs_memit"] == pytest.approx(le_right - me_right)
        assert q.loc[language, "efficacy_gain_memit"] == pytest.approx(me_right - hand_mean("memit", "pre-edit", language))
    assert "efficacy_advantage_end_vs_langedit" not in q
    assert not any("advantage" in c for c in lg.language_quantities(lg.fact_stages(runs, ORDER), candidate="ft"))


def test_fact_stages_refuse_an_unfinished_run_and_runs_without_per_fact_scores(runs, tmp_path):
    with pytest.raises(ValueError, match="no evaluation of 'en' at stage end"):
        lg.fact_stages(runs, ORDER + ["vi"])
    (tmp_path / "old").mkdir()
    empty = {(0, "memit"): ns.RunResult(pd.DataFrame(), pd.DataFrame(), tmp_path / "old", "memit", "multilingual", {})}
    with pytest.raises(ValueError, match="no per-fact scores"):
        lg.fact_stages(empty, ORDER)


def test_facts_missing_a_score_for_one_method_are_dropped_for_all(runs):
    from langedit.editing.sequential import PER_FACT_FILE

    path = runs[(0, "memit")].folder / PER_FACT_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        if record["language"] == "de":
            record["generality"][0] = None          # case 4 has no paraphrase in memit's run
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    stages = lg.fact_stages(runs, ORDER)
    assert 4 not in stages.xs("de", level="language").index.get_level_values("case_id")
    assert len(stages) == 8


# ----- rank correlation and bootstrap -------------------------------------------------------------

def test_spearman_matches_scipy_with_ties_and_row_wise():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=9).astype(float)           # ties on both sides
    ys = rng.integers(0, 5, size=(6, 9)).astype(float)
    for y in ys:
        assert lg.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert lg.spearman(x, ys) == pytest.approx([stats.spearmanr(x, y).statistic for y in ys])
    assert math.isnan(lg.spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
    with pytest.raises(ValueError, match="at least 2"):
        lg.spearman([1.0], [2.0])


def stages_frame(values_by_stratum):
    """A stages frame with one column ('efficacy', 'm', 'pre_edit') from {(seed, language): [values]}."""
    index = [(s, l, i) for (s, l), values in values_by_stratum.items() for i in range(len(values))]
    data = [v for values in values_by_stratum.values() for v in values]
    return pd.DataFrame({("efficacy", "m", "pre_edit"): data},
                        index=pd.MultiIndex.from_tuples(index, names=["seed", "language", "case_id"]))


def test_language_means_weigh_seeds_equally():
    frame = stages_frame({(0, "en"): [10.0, 20.0], (1, "en"): [40.0, 40.0, 40.0, 40.0], (0, "de"): [0.0]})
    means = lg.language_means(frame)
    assert list(means.index) == ["en", "de"]
    assert means.loc["en"].iloc[0] == pytest.approx((15.0 + 40.0) / 2)      # not the fact-weighted 31.67


def test_bootstrap_resamples_facts_within_each_language():
    rng = np.random.default_rng(0)
    en = rng.normal(50, 10, size=8)
    frame = stages_frame({(0, "en"): list(en), (0, "de"): [30.0] * 5})
    draws = lg.bootstrap_language_means(frame, n_resamples=20_000, seed=1)
    assert draws.shape == (20_000, 2, 1)
    assert (draws[:, 1, 0] == pytest.approx(30.0))                     # a language's draws only use its facts
    # the bootstrap standard error of a mean of n items is the items' population std / sqrt(n)
    assert draws[:, 0, 0].std() == pytest.approx(en.std() / math.sqrt(len(en)), rel=0.03)
    assert draws[:, 0, 0].mean() == pytest.approx(en.mean(), abs=0.1)


def correlation_runs(gains_by_language, spread=0.0):
    """Stages of two methods over languages with the given per-language mean gain of 'langedit' (MEMIT
    gains nothing); each language's facts scatter by +-spread around it."""
    columns = [(m, metric, method, stage) for m in [0] for metric in ("efficacy",)
               for method in ("memit", "langedit") for stage in lg.STAGES]
    rows, index = [], []
    for language, gain in gains_by_language.items():
        for i, offset in enumerate((-spread, 0.0, spread)):
            pre = 20.0
            rows.append([pre, pre, pre, pre, pre + gain + offset, pre + gain + offset])
            index.append((0, language, i))
    return pd.DataFrame(rows, columns=pd.MultiIndex.from_tuples([c[1:] for c in columns],
                                                                names=["metric", "method", "stage"]),
                        index=pd.MultiIndex.from_tuples(index, names=["seed", "language", "case_id"]))


def test_gain_correlations_perfectly_inverse_without_spread():
    volume = pd.Series({"en": 300.0, "de": 60.0, "nl": 30.0, "cs": 15.0})
    stages = correlation_runs({"en": 1.0, "de": 5.0, "nl": 9.0, "cs": 20.0})
    table = lg.gain_correlations(stages, volume, n_resamples=500).set_index(["quantity", "proxy"])
    row = table.loc[("efficacy_gain_langedit", "log_volume")]
    assert row["rho"] == pytest.approx(-1.0) and row["low"] == pytest.approx(-1.0) and row["high"] == pytest.approx(-1.0)
    assert row["n_languages"] == 4 and row["claimed_sign"] == "negative" and not row["shares_term"]
    assert table.loc[("efficacy_advantage_end_vs_memit", "log_volume"), "rho"] == pytest.approx(-1.0)
    # MEMIT's gain is 0 everywhere: no spread, no correlation (NaN, every draw undefined)
    memit = table.loc[("efficacy_gain_memit", "log_volume")]
    assert math.isnan(memit["rho"]) and memit["undefined"] == 500 and math.isnan(memit["low"])
    assert table.loc[("efficacy_gain_langedit", "pre_edit_efficacy"), "shares_term"]


def test_gain_correlations_equal_scipy_on_the_language_means_and_skip_unknown_volume():
    volume = pd.Series({"en": 300.0, "de": 60.0, "nl": float("nan"), "cs": 15.0, "th": 70.0})
    gains = {"en": 4.0, "de": 2.0, "nl": 9.0, "cs": 6.0, "th": 1.0}
    stages = correlation_runs(gains, spread=3.0)
    table = lg.gain_correlations(stages, volume, n_resamples=2000).set_index(["quantity", "proxy"])
    row = table.loc[("efficacy_gain_langedit", "log_volume")]
    known = [l for l in gains if not math.isnan(volume[l])]
    assert row["n_languages"] == 4
    assert row["rho"] == pytest.approx(stats.spearmanr(np.log(volume[known]), [gains[l] for l in known]).statistic)
    assert row["low"] <= row["rho"] <= row["high"] and row["low"] < row["high"]


def test_spearman_null_band_is_the_exact_permutation_distribution_for_five_languages():
    exact = [stats.spearmanr(range(5), p).statistic for p in itertools.permutations(range(5))]
    expected = tuple(np.quantile(exact, [0.025, 0.975]))
    assert lg.spearman_null_band(5, n_resamples=20_000) == pytest.approx(expected)


def test_retention_matrix():
    evals = pd.DataFrame([{"after": "pre-edit", "language": "en", "efficacy": 5.0},
                          {"after": "en", "language": "en", "efficacy": 90.0},
                          {"after": "de", "language": "en", "efficacy": 70.0},
                          {"after": "de", "language": "de", "efficacy": 80.0}])
    matrix = lg.retention_matrix(evals, ["en", "de"])
    assert list(matrix.index) == ["en", "de"] and list(matrix.columns) == ["en", "de"]
    assert matrix.loc["en", "de"] == 70.0 and matrix.loc["de", "de"] == 80.0 and math.isnan(matrix.loc["de", "en"])


def test_forgetting_curve_averages_the_change_since_each_languages_own_step():
    order = ["en", "de", "th"]
    evals = pd.DataFrame([{"after": a, "language": l, "efficacy": v} for a, l, v in [
        ("pre-edit", "en", 1.0), ("en", "en", 90.0), ("de", "en", 80.0), ("th", "en", 60.0),
        ("de", "de", 70.0), ("th", "de", 66.0), ("th", "th", 50.0)]])
    curve = lg.forgetting_curve(evals, order).set_index("later")
    assert curve.loc[0, "change"] == 0.0 and curve.loc[0, "n_languages"] == 3
    assert curve.loc[1, "change"] == pytest.approx(((80 - 90) + (66 - 70)) / 2) and curve.loc[1, "n_languages"] == 2
    assert curve.loc[2, "change"] == pytest.approx(60 - 90) and curve.loc[2, "n_languages"] == 1


# ----- profiles and palette -----------------------------------------------------------------------

def test_twelve_profiles_and_overrides():
    smoke = ns.resolve_section("smoke", "twelve")
    assert smoke["languages"] == ("en", "de", "th") and smoke["n_per_language"] == 1 and smoke["batch_size"] == 1
    assert smoke["methods"] == ("memit", "langedit")
    default = ns.resolve_section("default", "twelve", methods=["langedit"], n_per_language=None)
    assert default["languages"] == ns.TWELVE_LANGUAGES and len(set(default["languages"])) == 12
    assert set(default["languages"]) == set(MZSRE_LANGUAGES_ALL)
    assert default["methods"] == ("langedit",) and default["n_per_language"] == 3 and default["fact_design"] == "disjoint"
    assert default["batch_size"] == default["n_per_language"]          # one batch per language
    assert len(ns.resolve_section("paper", "twelve")["seeds"]) == 3
    with pytest.raises(ValueError, match="unknown notebook parameter"):
        ns.resolve_section("default", "twelve", n_per_langauge=3)
    with pytest.raises(ValueError, match="no section"):
        ns.resolve_section("default", "nothing")


def test_language_colours_are_distinct_and_never_a_method_colour():
    colours = [ns.LANGUAGE_COLOURS[l].lower() for l in MZSRE_LANGUAGES_ALL]
    assert len(set(colours)) == len(colours) == 12
    assert not set(colours) & {c.lower() for c in ns.METHOD_COLOURS.values()}


# ----- a real (tiny) sequential run ---------------------------------------------------------------

def test_stages_of_real_tiny_runs_agree_with_their_evaluations(tmp_path):
    import resume_worker

    tokenizer = resume_worker.word_tokenizer()
    runs = {}
    for method in ("memit", "langedit"):
        run = resume_worker.make_run(tmp_path / method, method, {}, tokenizer)
        evals = run.run()
        runs[(0, method)] = ns.RunResult(evals, run.batches(), run.out_dir, method, "multilingual", {})
    order = list(resume_worker.ORDER)
    table = lg.language_table(lg.fact_stages(runs, order)).set_index(["method", "language"])
    for (_, method), run in runs.items():
        evals = run.evals.set_index(["after", "language"])
        for language in order:
            row = table.loc[(method, language)]
            assert row["efficacy_pre_edit"] == pytest.approx(evals.loc[("pre-edit", language), "efficacy"])
            assert row["efficacy_after_edit"] == pytest.approx(evals.loc[(language, language), "efficacy"])
            assert row["efficacy_end"] == pytest.approx(evals.loc[(order[-1], language), "efficacy"])
        matrix = lg.retention_matrix(run.evals, order)
        assert matrix.loc["en", "en"] == pytest.approx(evals.loc[("en", "en"), "efficacy"])
