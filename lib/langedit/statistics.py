"""How uncertain the suite's numbers are: bootstrap intervals over items, paired tests, and counts.

Which test where (issue 15, "Statistics"): a paired test only where the pairing is real.

* Over **seeds** (independent runs with different facts): :func:`paired_seed_test`, a paired t-test
  (``scipy.stats.ttest_rel``). It gives no p-value from fewer than 3 pairs.
* Over **items** of one run (the facts two methods both edited, XTREME test items both models
  answered): :func:`paired_bootstrap` (means of per-item scores) and :func:`paired_f1_bootstrap`
  (F1, which is not a mean over items). Parallel facts (one fact in several languages) are not
  independent: pass the fact id as ``clusters`` so that a fact is resampled with all its languages.
* Intervals: :func:`bootstrap_ci` (a mean), :func:`f1_bootstrap_ci` / :func:`xtreme_f1_ci` (an F1,
  recomputed on each resample of the items), :func:`xtreme_f1_intervals` (a table with the average).
* :func:`mean_std_n`: mean, std (ddof=1) and how many values a number rests on.

Every bootstrap is the percentile bootstrap, deterministic for a given ``seed``. Each test returns a
:class:`PairedTest` whose ``test`` field names it, so that tables can print the name.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from .xtreme import scoring

DEFAULT_RESAMPLES = 10_000
#: F1 of a resample is recomputed from per-item counts (a Python loop over items for a caller's metric).
DEFAULT_F1_RESAMPLES = 10_000
#: Resampled index blocks stay under this many entries (memory of one block of means).
_BLOCK_ENTRIES = 2_000_000
SEED_TEST = "paired t-test over seeds"
MIN_SEED_PAIRS = 3


class Interval(NamedTuple):
    """A point estimate with the bounds of its confidence interval (unpacks as a 3-tuple)."""
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedTest:
    """The result of a paired comparison a - b, with the test's name for tables.

    ``n`` counts pairs (seeds, or items); ``clusters`` the independent units resampled when the
    items were clustered (None otherwise). ``note`` says why a number is missing, where one is."""
    test: str
    n: int
    mean_difference: float
    low: float
    high: float
    statistic: float
    p_value: float
    confidence: float
    clusters: int | None = None
    note: str = ""

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


# ----- helpers -------------------------------------------------------------------------------------

def _values(values: Sequence[float], name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: nothing to resample")
    if np.isnan(array).any():
        raise ValueError(f"{name} holds {int(np.isnan(array).sum())} NaN value(s); drop or fill them first")
    return array


def _check_settings(n_resamples: int, confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")


def _check_pairs(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired samples of different lengths: {len(a)} and {len(b)}; "
                         "a paired comparison needs the same items in the same order")


def percentile_interval(distribution: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of a bootstrap distribution (percentile method)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(distribution, dtype=np.float64), [tail, 1.0 - tail])
    return float(low), float(high)


def _cluster_codes(clusters: Sequence | None, n: int) -> np.ndarray:
    """Integer codes 0..K-1 of the items' clusters, numbered in order of first appearance (so one
    item per cluster resamples exactly as no clusters); each item its own cluster when None."""
    if clusters is None:
        return np.arange(n)
    labels = [c.item() if isinstance(c, np.generic) else c for c in clusters]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} cluster labels for {n} items")
    code_of: dict = {}
    return np.asarray([code_of.setdefault(label, len(code_of)) for label in labels], dtype=np.int64)


def resampled_means(values: Sequence[float], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    clusters: Sequence | None = None) -> np.ndarray:
    """Means of `n_resamples` bootstrap resamples of `values` [n_resamples].

    With `clusters`, whole clusters are drawn with replacement (as many as there are clusters) and
    the mean is over all items of the drawn clusters (the cluster bootstrap of a mean)."""
    array = _values(values)
    codes = _cluster_codes(clusters, len(array))
    n_clusters = int(codes.max()) + 1
    sums = np.bincount(codes, weights=array, minlength=n_clusters)
    counts = np.bincount(codes, minlength=n_clusters).astype(np.float64)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ENTRIES // n_clusters)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        rows = min(block, n_resamples - start)
        drawn = rng.integers(0, n_clusters, size=(rows, n_clusters))
        means[start:start + rows] = sums[drawn].sum(1) / counts[drawn].sum(1)
    return means


def _bootstrap_p(distribution: np.ndarray, observed: float) -> float:
    """Two-sided bootstrap p-value of 'no difference': the distribution shifted to mean 0 under the
    null (Efron & Tibshirani 1993, §16.4), with the +1 correction so that p is never 0."""
    centred = np.abs(distribution - distribution.mean())
    # a tiny tolerance: identical inputs give an all-zero distribution and p = 1, not a rounding accident
    extreme = int((centred >= abs(observed) - 1e-12).sum())
    return (1 + extreme) / (1 + len(distribution))


# ----- means ---------------------------------------------------------------------------------------

def bootstrap_ci(values: Sequence[float], n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
                 seed: int = 0, clusters: Sequence | None = None) -> Interval:
    """(mean, low, high): the mean of `values` (one per item: fact, XTREME item) and its percentile
    bootstrap interval, resampling items (or whole `clusters` of items) with replacement."""
    _check_settings(n_resamples, confidence)
    array = _values(values)
    low, high = percentile_interval(resampled_means(array, n_resamples, seed, clusters), confidence)
    return Interval(float(array.mean()), low, high)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = DEFAULT_RESAMPLES,
                     confidence: float = 0.95, seed: int = 0, clusters: Sequence | None = None,
                     unit: str = "facts") -> PairedTest:
    """Paired bootstrap of mean(a - b) over items that both a and b scored (a[i] and b[i]: item i).

    Returns the mean difference, its percentile interval and a two-sided bootstrap p-value of 'no
    difference'. `clusters` (e.g. the fact id of each (language, fact) item) resamples clusters of
    items together; `unit` names the items in the test's name ("paired bootstrap over facts")."""
    _check_pairs(a, b)
    _check_settings(n_resamples, confidence)
    differences = _values(a, "a") - _values(b, "b")
    distribution = resampled_means(differences, n_resamples, seed, clusters)
    observed = float(differences.mean())
    low, high = percentile_interval(distribution, confidence)
    n_clusters = None if clusters is None else int(_cluster_codes(clusters, len(differences)).max()) + 1
    return PairedTest(f"paired bootstrap over {unit}", len(differences), observed, low, high, float("nan"),
                      _bootstrap_p(distribution, observed), confidence, n_clusters,
                      f"{n_resamples} resamples" + (f" of {n_clusters} clusters" if n_clusters else ""))


def paired_seed_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedTest:
    """Paired t-test of a against b over seeds (a[i], b[i]: the two methods' scores with seed i).

    With fewer than 3 pairs there is no p-value (NaN, and `note` says why): a t-test on two
    independent samples says nothing worth a number. The interval is the t-interval of the mean
    difference."""
    from scipy import stats

    _check_pairs(a, b)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(differences)
    mean = float(differences.mean()) if n else float("nan")
    nan = float("nan")
    if n < MIN_SEED_PAIRS:
        return PairedTest(SEED_TEST, n, mean, nan, nan, nan, nan, confidence,
                          note=f"{n} pair(s): no p-value from fewer than {MIN_SEED_PAIRS} independent samples")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # constant differences: scipy's NaN, explained below
        result = stats.ttest_rel(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        interval = result.confidence_interval(confidence)
    note = "the differences have no spread" if float(differences.std()) == 0.0 else ""
    return PairedTest(SEED_TEST, n, mean, float(interval.low), float(interval.high), float(result.statistic),
                      float(result.pvalue), confidence, note=note)


def mean_std_n(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) of the non-missing `values`: std is NaN for n < 2 and the
    mean NaN for n = 0, so a table can show how many values (facts, seeds) a number rests on."""
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[~np.isnan(array)]
    n = int(array.size)
    mean = float(array.mean()) if n else float("nan")
    std = float(array.std(ddof=1)) if n >= 2 else float("nan")
    return mean, std, n


# ----- F1 (not a mean over items) ------------------------------------------------------------------

Metric = Callable[[Sequence, Sequence], float]
F1_METRICS = ("macro_f1", "binary_f1", "squad_f1", "entity_f1")


def f1_metric(metric: str | Metric, language: str | None = None) -> Metric:
    """The scoring function (golds, predictions) -> F1 (%) of `metric`, from xtreme.scoring.

    "squad_f1" is MLQA's mean token F1 and needs the `language` (its normaliser drops that
    language's articles and splits CJK by character)."""
    if callable(metric):
        return metric
    if metric == "macro_f1":
        return scoring.macro_f1
    if metric == "binary_f1":
        return scoring.binary_f1
    if metric == "entity_f1":
        return lambda golds, preds: scoring.entity_f1(preds, golds)
    if metric == "squad_f1":
        if language is None:
            raise ValueError("squad_f1 needs the language of the answers (language=...)")
        return lambda golds, preds: scoring.mean_squad_f1(preds, golds, language)
    raise ValueError(f"unknown F1 metric {metric!r}; choose from {F1_METRICS} or pass a function")


def _resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """100 * 2tp / (2tp + fp + fn), 0 where tp = 0 (scoring._f1, elementwise)."""
    denominator = np.where(tp > 0, 2 * tp + fp + fn, 1.0)
    return np.where(tp > 0, 100.0 * 2 * tp / denominator, 0.0)


def _class_counts(golds: Sequence, preds: Sequence, positive: int) -> np.ndarray:
    """Per item: is it a true positive, false positive, false negative of class `positive` [n, 3]."""
    g = np.asarray([x == positive for x in golds])
    p = np.asarray([x == positive for x in preds])
    return np.stack([g & p, ~g & p, g & ~p], 1).astype(np.float64)


def _entity_counts(golds: Sequence, preds: Sequence) -> np.ndarray:
    """Per item: matched, predicted and gold (type, entity) pairs [n, 3], as scoring.entity_f1 counts."""
    from collections import Counter

    rows = []
    for pred, gold in zip(preds, golds):
        pred_c = Counter((t, scoring.normalize_entity(e)) for t, e in pred)
        gold_c = Counter((t, scoring.normalize_entity(e)) for t, e in gold)
        rows.append((sum((pred_c & gold_c).values()), sum(pred_c.values()), sum(gold_c.values())))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _summed_metric(golds: Sequence, preds: Sequence, metric: str, language: str | None):
    """(per-item statistics [n, k], F1 of summed statistics [B, k] -> [B]): F1 of a resample is a
    function of sums of per-item counts, so resamples need no Python loop over items."""
    if metric == "squad_f1":
        if language is None:
            raise ValueError("squad_f1 needs the language of the answers (language=...)")
        per_item = [scoring.squad_f1(p, g, language) for g, p in zip(golds, preds)]
        return np.asarray(per_item, dtype=np.float64)[:, None], lambda sums: sums[:, 0] / len(per_item)
    if metric == "binary_f1":
        return _class_counts(golds, preds, 1), lambda s: _f1_from_counts(s[:, 0], s[:, 1], s[:, 2])
    if metric == "macro_f1":
        counts = np.concatenate([_class_counts(golds, preds, c) for c in (0, 1)], 1)

        def macro(s: np.ndarray) -> np.ndarray:
            f1 = np.stack([_f1_from_counts(s[:, 3 * c], s[:, 3 * c + 1], s[:, 3 * c + 2]) for c in (0, 1)], 1)
            present = np.stack([s[:, 3 * c:3 * c + 3].sum(1) > 0 for c in (0, 1)], 1)  # in golds or predictions
            if not present.any(1).all():
                raise ValueError("a resample has no gold or predicted label among the scored labels (0, 1)")
            return (f1 * present).sum(1) / present.sum(1)
        return counts, macro
    if metric == "entity_f1":
        counts = _entity_counts(golds, preds)

        def micro(s: np.ndarray) -> np.ndarray:
            tp, fp, fn = s[:, 0], s[:, 1] - s[:, 0], s[:, 2] - s[:, 0]
            return np.where(tp + fp + fn == 0, 100.0, _f1_from_counts(tp, fp, fn))
        return counts, micro
    raise ValueError(f"unknown F1 metric {metric!r}; choose from {F1_METRICS} or pass a function")


def f1_distribution(golds: Sequence, preds: Sequence, metric: str | Metric, n_resamples: int = DEFAULT_F1_RESAMPLES,
                    seed: int = 0, language: str | None = None) -> tuple[float, np.ndarray]:
    """(F1 of all items, F1 of each of `n_resamples` resamples of the items) [n_resamples].

    The point F1 is the scoring function's. A named metric resamples per-item counts (checked
    against that point F1); a function is called on every resample."""
    _check_pairs(golds, preds)
    if len(golds) == 0:
        raise ValueError("no items to score")
    golds, preds = list(golds), list(preds)
    point = float(f1_metric(metric, language)(golds, preds))
    indices = _resample_indices(len(golds), n_resamples, seed)
    if callable(metric):
        draws = [metric([golds[i] for i in rows], [preds[i] for i in rows]) for rows in indices.tolist()]
        return point, np.asarray(draws, dtype=np.float64)
    per_item, combine = _summed_metric(golds, preds, metric, language)
    whole = float(combine(per_item.sum(0, keepdims=True))[0])
    if not math.isclose(whole, point, rel_tol=1e-9, abs_tol=1e-9):   # the counts must be the scoring's
        raise AssertionError(f"{metric}: F1 from per-item counts {whole} differs from scoring's {point}")
    block = max(1, _BLOCK_ENTRIES // (len(golds) * per_item.shape[1]))
    draws = np.concatenate([combine(per_item[indices[start:start + block]].sum(1))
                            for start in range(0, n_resamples, block)])
    return point, draws


def f1_bootstrap_ci(golds: Sequence, preds: Sequence, metric: str | Metric, n_resamples: int = DEFAULT_F1_RESAMPLES,
                    confidence: float = 0.95, seed: int = 0, language: str | None = None) -> Interval:
    """(F1, low, high): an F1 (%) and its percentile bootstrap interval, the F1 recomputed on each
    resample of the items (macro / binary F1 of classes and entity micro F1 are not means over items)."""
    _check_settings(n_resamples, confidence)
    point, draws = f1_distribution(golds, preds, metric, n_resamples, seed, language)
    return Interval(point, *percentile_interval(draws, confidence))


def paired_f1_bootstrap(golds: Sequence, preds_a: Sequence, preds_b: Sequence, metric: str | Metric,
                        n_resamples: int = DEFAULT_F1_RESAMPLES, confidence: float = 0.95, seed: int = 0,
                        language: str | None = None, unit: str = "items") -> PairedTest:
    """Paired bootstrap of F1(a) - F1(b) on the same items (two models' predictions for one test set)."""
    _check_pairs(golds, preds_a)
    _check_pairs(golds, preds_b)
    _check_settings(n_resamples, confidence)
    point_a, draws_a = f1_distribution(golds, preds_a, metric, n_resamples, seed, language)
    point_b, draws_b = f1_distribution(golds, preds_b, metric, n_resamples, seed, language)  # same seed: same items
    distribution, observed = draws_a - draws_b, point_a - point_b
    low, high = percentile_interval(distribution, confidence)
    return PairedTest(f"paired bootstrap over {unit} (F1)", len(golds), observed, low, high, float("nan"),
                      _bootstrap_p(distribution, observed), confidence, note=f"{n_resamples} resamples")


# ----- XTREME results ------------------------------------------------------------------------------

def _task_language(result: dict) -> tuple[str, str]:
    try:
        return result["parts"]["task"], result["parts"]["language"]
    except (KeyError, TypeError):
        raise ValueError("not a result of langedit.xtreme.evaluate_task (it has no parts.task / parts.language)") from None


def xtreme_golds(result: dict, data_dir=None) -> tuple[list, str | Metric]:
    """(gold answers of the test items, F1 metric) of one ``evaluate_task`` result, read from the
    task file at the result's ``test_indices``, in the form its scoring compares with predictions."""
    from .xtreme.tasks import get_task, gold_label, load_task

    task, language = _task_language(result)
    items = load_task(task, language, data_dir)
    tests = [items[i] for i in result["test_indices"]]
    kind = get_task(task).kind
    if kind == "classification":
        return [gold_label(task, x) for x in tests], "macro_f1"
    if kind == "qa":
        return [x["answer"] for x in tests], "squad_f1"
    return [scoring.parse_entities(x["label"]) for x in tests], "entity_f1"


def _xtreme_distribution(result: dict, n_resamples: int, seed: int, data_dir) -> tuple[float, np.ndarray]:
    task, language = _task_language(result)
    golds, metric = xtreme_golds(result, data_dir)
    point, draws = f1_distribution(golds, result["predictions"], metric, n_resamples, seed, language)
    if not math.isclose(point, result["f1"], rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(f"{task}/{language}: F1 recomputed from the task file ({point:.4f}) differs from the "
                         f"result's ({result['f1']:.4f}); the data file or the scoring changed since")
    return point, draws


def xtreme_f1_ci(result: dict, n_resamples: int = DEFAULT_F1_RESAMPLES, confidence: float = 0.95, seed: int = 0,
                 data_dir=None) -> Interval:
    """(F1, low, high) of one ``langedit.xtreme.evaluate_task`` result (a cached one too), resampling
    its test items; checks that the recomputed F1 is the result's."""
    _check_settings(n_resamples, confidence)
    point, draws = _xtreme_distribution(result, n_resamples, seed, data_dir)
    return Interval(point, *percentile_interval(draws, confidence))


def _derived_seed(seed: int, task: str, language: str) -> int:
    """Independent resamples per (task, language), stable across Python runs."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{task}|{language}".encode()).digest()[:8], "little")


def xtreme_f1_intervals(results: Sequence[dict], n_resamples: int = DEFAULT_F1_RESAMPLES, confidence: float = 0.95,
                        seed: int = 0, data_dir=None):
    """One row per ``evaluate_task`` result (task, language, n, f1, low, high) and a last row
    task="avg" for the paper's F1 (avg.) (mean over tasks of each task's mean over languages) whose
    interval resamples every (task, language) independently."""
    import pandas as pd

    _check_settings(n_resamples, confidence)
    if not results:
        raise ValueError("no XTREME results given")
    rows, per_task = [], {}
    for result in results:
        task, language = _task_language(result)
        point, draws = _xtreme_distribution(result, n_resamples, _derived_seed(seed, task, language), data_dir)
        rows.append({"task": task, "language": language, "n": len(result["predictions"]), "f1": point,
                     **dict(zip(("low", "high"), percentile_interval(draws, confidence)))})
        per_task.setdefault(task, []).append((point, draws))
    average = np.mean([np.mean([d for _, d in scores], axis=0) for scores in per_task.values()], axis=0)
    point = float(np.mean([np.mean([p for p, _ in scores]) for scores in per_task.values()]))
    low, high = percentile_interval(average, confidence)
    rows.append({"task": "avg", "language": "all", "n": sum(r["n"] for r in rows), "f1": point, "low": low,
                 "high": high})
    return pd.DataFrame(rows)
