"""langedit.statistics against independent computations: the normal-theory interval of a mean, the
normal approximation of a paired test, scipy's paired t-test, and xtreme.scoring's F1 on the very
resamples the fast path scores."""
import math
import random

import numpy as np
import pytest
from scipy import stats as scipy_stats

from langedit import statistics as st
from langedit.xtreme import scoring
from langedit.xtreme.tasks import gold_label, load_task


def normal_sample(n, mean=0.0, sd=1.0, seed=1):
    return np.random.default_rng(seed).normal(mean, sd, n)


def test_bootstrap_ci_of_a_large_normal_sample_is_mean_plus_minus_1_96_standard_errors():
    values = normal_sample(20_000, mean=3.0, sd=2.0)
    mean, low, high = st.bootstrap_ci(values, n_resamples=4000, seed=0)
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert mean == pytest.approx(values.mean())
    assert low == pytest.approx(mean - 1.96 * se, abs=0.1 * se)
    assert high == pytest.approx(mean + 1.96 * se, abs=0.1 * se)
    _, low90, high90 = st.bootstrap_ci(values, n_resamples=4000, confidence=0.90, seed=0)
    assert high90 - low90 == pytest.approx(2 * 1.645 * se, rel=0.08)


def test_bootstraps_are_deterministic_by_seed():
    values = normal_sample(50)
    assert st.bootstrap_ci(values, 500, seed=3) == st.bootstrap_ci(values, 500, seed=3)
    assert st.bootstrap_ci(values, 500, seed=3) != st.bootstrap_ci(values, 500, seed=4)
    golds, preds = [0, 1] * 20, [0, 0, 1, 1] * 10
    assert st.f1_bootstrap_ci(golds, preds, "macro_f1", 300, seed=2) == st.f1_bootstrap_ci(golds, preds, "macro_f1", 300, seed=2)
    a, b = normal_sample(40, seed=5), normal_sample(40, seed=6)
    numbers = lambda r: (r.mean_difference, r.low, r.high, r.p_value)
    assert numbers(st.paired_bootstrap(a, b, 300, seed=1)) == numbers(st.paired_bootstrap(a, b, 300, seed=1))
    assert numbers(st.paired_bootstrap(a, b, 300, seed=1)) != numbers(st.paired_bootstrap(a, b, 300, seed=2))


def test_cluster_bootstrap_resamples_whole_clusters():
    values = normal_sample(30)
    # each value twice, clustered by its origin: the same draws as resampling the 30 values
    doubled, clusters = np.repeat(values, 2), np.repeat(np.arange(30), 2)
    assert np.allclose(st.resampled_means(doubled, 200, seed=0, clusters=clusters), st.resampled_means(values, 200, seed=0))
    # the cluster bootstrap of a mean is the ratio of sums over drawn clusters (brute force)
    items, labels = [1.0, 2.0, 4.0, 8.0, 16.0], ["x", "x", "y", "z", "z"]
    rng = np.random.default_rng(0)
    drawn = rng.integers(0, 3, size=(5, 3))
    sums, counts = np.array([3.0, 4.0, 24.0]), np.array([2.0, 1.0, 2.0])
    assert np.allclose(st.resampled_means(items, 5, seed=0, clusters=labels), sums[drawn].sum(1) / counts[drawn].sum(1))
    with pytest.raises(ValueError, match="cluster labels"):
        st.resampled_means(items, 5, clusters=["x"])


def test_paired_bootstrap_of_identical_inputs_is_zero_with_p_one():
    a = normal_sample(25).tolist()
    result = st.paired_bootstrap(a, list(a), n_resamples=500)
    assert result.mean_difference == 0.0 and result.low == 0.0 and result.high == 0.0
    assert result.p_value == 1.0
    assert result.test == "paired bootstrap over facts" and result.n == 25


def test_paired_bootstrap_p_value_matches_the_normal_approximation():
    n = 3000
    b = normal_sample(n, seed=2)
    noise = normal_sample(n, seed=3)
    a = b + (noise - noise.mean()) / noise.std(ddof=1) + 2.0 / math.sqrt(n)   # z = 2 exactly: p = 0.0455
    d = a - b
    z = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    expected = 2 * (1 - scipy_stats.norm.cdf(abs(z)))
    result = st.paired_bootstrap(a, b, n_resamples=20_000, seed=0)
    assert expected == pytest.approx(0.0455, abs=1e-3)
    assert result.p_value == pytest.approx(expected, abs=0.01)
    assert result.low < d.mean() < result.high
    assert result.mean_difference == pytest.approx(d.mean())


def test_paired_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="different lengths"):
        st.paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        st.paired_bootstrap([], [])
    with pytest.raises(ValueError, match="NaN"):
        st.paired_bootstrap([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        st.bootstrap_ci([1.0, 2.0], confidence=95)


def test_paired_bootstrap_with_clusters_counts_them():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 2.0, 4.0]
    result = st.paired_bootstrap(a, b, 200, clusters=[7, 7, 8, 8])
    assert result.clusters == 2 and result.n == 4 and result.mean_difference == pytest.approx(0.5)


def test_paired_seed_test_equals_scipy_and_refuses_a_p_value_below_three_pairs():
    a, b = [71.0, 64.5, 80.2, 75.0], [69.0, 66.0, 71.5, 70.0]
    result = st.paired_seed_test(a, b)
    reference = scipy_stats.ttest_rel(a, b)
    assert result.test == st.SEED_TEST == "paired t-test over seeds"
    assert result.statistic == pytest.approx(reference.statistic) and result.p_value == pytest.approx(reference.pvalue)
    d = np.subtract(a, b)
    half = scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert (result.low, result.high) == pytest.approx((d.mean() - half, d.mean() + half))
    three = st.paired_seed_test(a[:3], b[:3])
    assert three.p_value == pytest.approx(scipy_stats.ttest_rel(a[:3], b[:3]).pvalue) and three.n == 3
    for k in (0, 1, 2):
        few = st.paired_seed_test(a[:k], b[:k])
        assert math.isnan(few.p_value) and math.isnan(few.statistic) and few.n == k
        assert "fewer than 3" in few.note
    assert st.paired_seed_test(a[:2], b[:2]).mean_difference == pytest.approx(np.mean(d[:2]))
    with pytest.raises(ValueError, match="different lengths"):
        st.paired_seed_test([1.0, 2.0, 3.0], [1.0, 2.0])
    row = result.as_row()
    assert row["test"] == "paired t-test over seeds" and row["p_value"] == result.p_value


def test_mean_std_n():
    mean, std, n = st.mean_std_n([2.0, 4.0, 9.0])
    assert (mean, n) == (5.0, 3) and std == pytest.approx(math.sqrt(((3 ** 2) + 1 + 16) / 2))
    assert st.mean_std_n([4.0])[0] == 4.0 and math.isnan(st.mean_std_n([4.0])[1])
    assert st.mean_std_n([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    empty = st.mean_std_n([])
    assert math.isnan(empty[0]) and empty[2] == 0


# ----- F1 ------------------------------------------------------------------------------------------

def classification_items(n, seed=0):
    rng = random.Random(seed)
    golds = [rng.randint(0, 1) for _ in range(n)]
    preds = [g if rng.random() < 0.7 else rng.choice([1 - g, scoring.INVALID]) for g in golds]
    return golds, preds


def entity_items(n, seed=0):
    rng = random.Random(seed)
    pool = [("PER", "Ann"), ("LOC", "Paris"), ("ORG", "Acme"), ("LOC", "慕尼黑"), ("PER", "Bo  Li")]
    golds = [rng.sample(pool, rng.randint(0, 2)) for _ in range(n)]
    preds = [[e for e in g if rng.random() < 0.6] + ([rng.choice(pool)] if rng.random() < 0.3 else []) for g in golds]
    preds[0] = [("LOC", "慕 尼 黑"), ("LOC", "慕尼黑")]      # normalised alike, counted as a multiset
    return golds, preds


def qa_items(n, seed=0):
    rng = random.Random(seed)
    answers = ["the Eiffel Tower", "in 1999", "Marie Curie", "a red car", "北京大学"]
    golds = [rng.choice(answers) for _ in range(n)]
    preds = [g if rng.random() < 0.5 else rng.choice(answers + ["Eiffel", "1999", ""]) for g in golds]
    return golds, preds


SCORERS = {"macro_f1": (classification_items, scoring.macro_f1),
           "binary_f1": (classification_items, scoring.binary_f1),
           "entity_f1": (entity_items, lambda g, p: scoring.entity_f1(p, g)),
           "squad_f1": (qa_items, lambda g, p: scoring.mean_squad_f1(p, g, "en"))}


@pytest.mark.parametrize("metric", sorted(SCORERS))
def test_fast_f1_resamples_equal_the_scoring_functions_on_the_same_resamples(metric):
    make, score = SCORERS[metric]
    golds, preds = make(40)
    language = "en" if metric == "squad_f1" else None
    fast_point, fast = st.f1_distribution(golds, preds, metric, n_resamples=300, seed=5, language=language)
    slow_point, slow = st.f1_distribution(golds, preds, score, n_resamples=300, seed=5)
    assert fast_point == pytest.approx(score(golds, preds)) == pytest.approx(slow_point)
    assert np.allclose(fast, slow, atol=1e-9)


@pytest.mark.parametrize("metric", sorted(SCORERS))
def test_f1_interval_contains_the_point_f1_and_shrinks_with_more_items(metric):
    make, _ = SCORERS[metric]
    language = "en" if metric == "squad_f1" else None
    golds, preds = make(60, seed=1)
    f1, low, high = st.f1_bootstrap_ci(golds, preds, metric, n_resamples=2000, language=language)
    assert low <= f1 <= high and high - low > 0
    # the same items four times over: the same F1, an interval about half as wide (1/sqrt(4))
    f1_4, low_4, high_4 = st.f1_bootstrap_ci(golds * 4, preds * 4, metric, n_resamples=2000, language=language)
    assert f1_4 == pytest.approx(f1)
    assert (high_4 - low_4) == pytest.approx((high - low) / 2, rel=0.2)


def test_f1_functions_refuse_bad_input():
    with pytest.raises(ValueError, match="language"):
        st.f1_bootstrap_ci(["a"], ["a"], "squad_f1")
    with pytest.raises(ValueError, match="unknown F1 metric"):
        st.f1_bootstrap_ci([1], [1], "accuracy")
    with pytest.raises(ValueError, match="different lengths"):
        st.f1_bootstrap_ci([1, 0], [1], "macro_f1")
    with pytest.raises(ValueError, match="no items"):
        st.f1_bootstrap_ci([], [], "macro_f1")


def test_paired_f1_bootstrap():
    golds, preds = classification_items(80, seed=3)
    same = st.paired_f1_bootstrap(golds, preds, list(preds), "macro_f1", n_resamples=500)
    assert same.mean_difference == 0.0 and same.p_value == 1.0 and "F1" in same.test
    better = [g for g in golds]
    result = st.paired_f1_bootstrap(golds, better, preds, "macro_f1", n_resamples=2000)
    assert result.mean_difference == pytest.approx(100.0 - scoring.macro_f1(golds, preds))
    assert result.low > 0 and result.p_value < 0.01


# ----- XTREME results (the real task files) -------------------------------------------------------

def fake_result(task, language, indices, predictions):
    items = load_task(task, language)
    tests = [items[i] for i in indices]
    if task in ("xnli", "pawsx"):
        f1 = scoring.macro_f1([gold_label(task, x) for x in tests], predictions)
    elif task == "mlqa":
        f1 = scoring.mean_squad_f1(predictions, [x["answer"] for x in tests], language)
    else:
        f1 = scoring.entity_f1(predictions, [scoring.parse_entities(x["label"]) for x in tests])
    return {"parts": {"task": task, "language": language}, "test_indices": indices, "predictions": predictions,
            "f1": f1, "n": len(indices)}


def test_xtreme_f1_ci_reads_the_golds_of_the_result():
    indices = list(range(10, 70))
    items = load_task("xnli", "de")
    rng = random.Random(0)
    predictions = [gold_label("xnli", items[i]) if rng.random() < 0.6 else rng.randint(0, 1) for i in indices]
    result = fake_result("xnli", "de", indices, predictions)
    f1, low, high = st.xtreme_f1_ci(result, n_resamples=1000)
    assert f1 == pytest.approx(result["f1"]) and low < f1 < high
    golds, metric = st.xtreme_golds(result)
    assert metric == "macro_f1" and golds == [gold_label("xnli", items[i]) for i in indices]
    with pytest.raises(ValueError, match="differs from the result"):
        st.xtreme_f1_ci({**result, "f1": result["f1"] + 1.0})
    with pytest.raises(ValueError, match="evaluate_task"):
        st.xtreme_f1_ci({"f1": 1.0})


def test_xtreme_f1_intervals_with_the_papers_average():
    mlqa = load_task("mlqa", "en")
    wikiann = load_task("wikiann", "en")
    results = [
        fake_result("xnli", "en", list(range(40)), [i % 2 for i in range(40)]),
        fake_result("xnli", "de", list(range(40)), [1] * 40),
        fake_result("mlqa", "en", list(range(30)), [mlqa[i]["answer"] if i % 3 else "no" for i in range(30)]),
        # JSON-cached NER predictions are lists of [type, entity] lists
        fake_result("wikiann", "en", list(range(30)),
                    [[list(e) for e in scoring.parse_entities(wikiann[i]["label"])][: i % 2 + 1] for i in range(30)]),
    ]
    table = st.xtreme_f1_intervals(results, n_resamples=1000).set_index(["task", "language"])
    assert len(table) == 5
    for result in results:
        row = table.loc[(result["parts"]["task"], result["parts"]["language"])]
        assert row["f1"] == pytest.approx(result["f1"]) and row["low"] <= row["f1"] <= row["high"]
    avg = table.loc[("avg", "all")]
    per_task = [np.mean([results[0]["f1"], results[1]["f1"]]), results[2]["f1"], results[3]["f1"]]
    assert avg["f1"] == pytest.approx(np.mean(per_task)) and avg["low"] < avg["f1"] < avg["high"]
    assert avg["n"] == 140
