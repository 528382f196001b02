"""Per-language editing gains over a long language sequence, and whether they follow the languages'
pre-training data volume (notebook 11, issue 16 part 2).

The paper (§4.3) reads its Figure 3 as "editing effectiveness is inversely correlated with the
pretraining data volume of the target language" (citing Conneau et al. 2020), the gain being LangEdit's
over the baselines. Testing that needs, per language,

* the scores of its facts at three stages of a multilingual sequential run: before any edit
  (``pre_edit``), right after the language's own step (``after_edit``) and after the last language
  (``end``), from the run's per-fact scores (``evals_per_fact.jsonl``);
* a proxy of its pre-training volume. Gemma 3 publishes none per language; :func:`load_pretraining_volume`
  gives the CC-100 sizes of XLM-R's Table 6 (the paper the claim cites), a proxy of how much web text a
  language has, not of what any one model saw. The pre-edit Efficacy of the unedited model is a second,
  model-internal proxy (how much it already gets right in that language);
* an association across languages: Spearman's rank correlation (:func:`spearman`) with a percentile
  bootstrap interval that resamples facts within each (seed, language) (:func:`gain_correlations`). It
  shows how much the correlation moves with *which facts* were drawn; it says nothing about other
  languages, seeds or models, and with ~12 languages only a large |rho| stands out from chance
  (:func:`spearman_null_band`).

Frames: :func:`fact_stages` (one row per seed, language, fact; columns metric / method / stage),
:func:`language_table` (one row per method and language), :func:`language_quantities` (gains, drops and
the candidate's advantages per language), :func:`retention_matrix` (a language's score after every step)
and :func:`forgetting_curve` (the mean change since a language's own step by how many languages followed).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .statistics import DEFAULT_RESAMPLES, percentile_interval

if TYPE_CHECKING:
    from .notebook_support import RunResult

PRETRAINING_FILE = "pretraining_volume.csv"
VOLUME_MEASURES = ("cc100_gib", "cc100_tokens_m")
STAGES = ("pre_edit", "after_edit", "end")
#: The paper's claim, as the sign of the correlation between a gain and pre-training volume.
CLAIMED_SIGN = "negative"


# ----- pre-training volume ------------------------------------------------------------------------

def load_pretraining_volume() -> pd.DataFrame:
    """Per language: CC-100 size in million tokens and GiB (XLM-R, Conneau et al. 2020, Appendix A,
    Table 6) and where each number comes from (column ``source``); NaN where no citable number was found.

    Chinese is the table's "Chinese (Simplified)" row (MzsRE's Chinese is simplified; the traditional
    row is separate there). Sizes in GiB count UTF-8 bytes, so scripts with 2-3 bytes per character
    (Cyrillic, Thai, CJK) weigh more per character than Latin ones; the token counts of languages written
    without spaces (Chinese, Thai) look like whitespace counts and are far lower than their GiB
    suggest. The two measures therefore rank th and zh differently: use both."""
    path = resources.files("langedit.data").joinpath(PRETRAINING_FILE)
    with resources.as_file(path) as csv_path:
        frame = pd.read_csv(csv_path, dtype={"language": str})
    missing = {"language", "source", *VOLUME_MEASURES} - set(frame.columns)
    if missing:
        raise ValueError(f"{PRETRAINING_FILE} lacks the column(s) {sorted(missing)}")
    if frame["language"].duplicated().any():
        raise ValueError(f"{PRETRAINING_FILE} lists a language twice: "
                         f"{sorted(frame.loc[frame['language'].duplicated(), 'language'])}")
    for measure in VOLUME_MEASURES:
        values = pd.to_numeric(frame[measure], errors="raise")
        if (values <= 0).any():
            raise ValueError(f"{PRETRAINING_FILE}: {measure} must be positive (or empty), "
                             f"got {values[values <= 0].tolist()}")
        frame[measure] = values.astype(float)
    return frame


def pretraining_volume(languages: Sequence[str], measure: str = "cc100_gib") -> pd.Series:
    """The `measure` of each language (index: language, in the given order); NaN where unknown."""
    if measure not in VOLUME_MEASURES:
        raise ValueError(f"unknown volume measure {measure!r}; choose from {VOLUME_MEASURES}")
    table = load_pretraining_volume().set_index("language")
    unknown = [language for language in languages if language not in table.index]
    if unknown:
        raise ValueError(f"no pre-training volume row for {unknown} in {PRETRAINING_FILE}; "
                         f"it lists {list(table.index)}")
    return table.loc[list(languages), measure].rename(measure)


# ----- per-fact scores at three stages ------------------------------------------------------------

def fact_stages(runs: Mapping[tuple[int, str], "RunResult"], order: Sequence[str],
                metrics: Sequence[str] = ("efficacy", "generality")) -> pd.DataFrame:
    """One row per (seed, language, case_id), columns (metric, method, stage): a fact's score (percent)
    before editing, right after its language's step and after the last language, from the per-fact
    scores of the multilingual runs ``{(seed, method): RunResult}`` (all edited in `order`).

    A fact is kept only where every method has every score at every stage (one without a paraphrase has
    no Generality and is dropped), so that methods and stages compare the same facts: the runs of a seed
    edited the same facts."""
    from .editing.sequential import read_per_fact

    order = list(order)
    frames = []
    for (seed, method), run in runs.items():
        facts = read_per_fact(run.folder)
        if facts.empty:
            raise ValueError(f"{run.folder} holds no per-fact scores (recorded before evals_per_fact.jsonl "
                             "was kept): rerun it")
        missing = [m for m in metrics if m not in facts]
        if missing:
            raise ValueError(f"{run.folder}: no per-fact {missing} scores")
        for language in order:
            own = facts[facts["language"] == language].set_index("case_id")
            stage_rows = {"pre_edit": own[own["after"] == "pre-edit"], "after_edit": own[own["after"] == language],
                          "end": own[own["after"] == order[-1]]}
            for stage, rows in stage_rows.items():
                if rows.empty:
                    raise ValueError(f"{run.folder}: no evaluation of {language!r} at stage {stage} "
                                     f"(order {order}); is the run finished and multilingual?")
                for metric in metrics:
                    frames.append(pd.DataFrame({"seed": seed, "language": language, "case_id": rows.index,
                                                "metric": metric, "method": method, "stage": stage,
                                                "value": rows[metric].to_numpy(dtype=float)}))
    long = pd.concat(frames, ignore_index=True)
    keys, columns = ["seed", "language", "case_id"], ["metric", "method", "stage"]
    # pivot (not pivot_table): a fact scored twice at one stage is an error, never silently averaged
    wide = long.pivot(index=keys, columns=columns, values="value")
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(list(dict.fromkeys(zip(*(long[c] for c in columns)))),
                                                          names=columns))   # the runs' order of methods
    wide = wide.dropna()
    if wide.empty:
        raise ValueError("no fact has every score for every method; nothing to compare")
    position = {language: i for i, language in enumerate(order)}
    index = wide.index
    rows = np.lexsort((index.get_level_values("case_id"), index.get_level_values("language").map(position),
                       index.get_level_values("seed")))
    return wide.iloc[rows]


def _language_order(stages: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(stages.index.get_level_values("language")))


def language_means(stages: pd.DataFrame) -> pd.DataFrame:
    """Per language (rows, in editing order): each column's mean over the language's facts within a
    seed, then over seeds (each seed weighs the same)."""
    per_seed = stages.groupby(level=["seed", "language"], sort=False).mean()
    means = per_seed.groupby(level="language", sort=False).mean()
    return means.loc[_language_order(stages)]


def language_table(stages: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, language): position in the order, facts, and per metric the scores
    pre_edit / after_edit / end with gain = after_edit - pre_edit and drop = after_edit - end."""
    means = language_means(stages)
    counts = stages.groupby(level=["seed", "language"], sort=False).size().groupby(level="language", sort=False).sum()
    metrics = list(dict.fromkeys(stages.columns.get_level_values("metric")))
    methods = list(dict.fromkeys(stages.columns.get_level_values("method")))
    rows = []
    for method in methods:
        for position, language in enumerate(means.index, start=1):
            row = {"method": method, "language": language, "position": position, "n_facts": int(counts[language])}
            for metric in metrics:
                values = {stage: float(means.loc[language, (metric, method, stage)]) for stage in STAGES}
                row.update({f"{metric}_{stage}": values[stage] for stage in STAGES})
                row[f"{metric}_gain"] = values["after_edit"] - values["pre_edit"]
                row[f"{metric}_drop"] = values["after_edit"] - values["end"]
            rows.append(row)
    return pd.DataFrame(rows)


# ----- gains and advantages per language ----------------------------------------------------------

def _quantities(get, metrics: Sequence[str], methods: Sequence[str], candidate: str | None) -> dict[str, np.ndarray]:
    """The per-language quantities from `get(metric, method, stage)` -> array [..., languages]."""
    out = {}
    for metric in metrics:
        for method in methods:
            out[f"{metric}_gain_{method}"] = get(metric, method, "after_edit") - get(metric, method, "pre_edit")
            out[f"{metric}_drop_{method}"] = get(metric, method, "after_edit") - get(metric, method, "end")
        if candidate is None:
            continue
        for baseline in methods:
            if baseline == candidate:
                continue
            out[f"{metric}_advantage_end_vs_{baseline}"] = get(metric, candidate, "end") - get(metric, baseline, "end")
            out[f"{metric}_advantage_after_vs_{baseline}"] = (get(metric, candidate, "after_edit")
                                                             - get(metric, baseline, "after_edit"))
    return out


def _columns(stages: pd.DataFrame) -> tuple[list[str], list[str]]:
    return (list(dict.fromkeys(stages.columns.get_level_values("metric"))),
            list(dict.fromkeys(stages.columns.get_level_values("method"))))


def language_quantities(stages: pd.DataFrame, candidate: str | None = "langedit") -> pd.DataFrame:
    """Per language (rows): ``<metric>_gain_<method>`` (after_edit - pre_edit), ``<metric>_drop_<method>``
    (after_edit - end) and, if `candidate` ran, ``<metric>_advantage_end_vs_<baseline>`` (candidate minus
    baseline after the last language, the paper's Figure 3 reading) and ``..._advantage_after_vs_...``
    (right after the language's step)."""
    means = language_means(stages)
    metrics, methods = _columns(stages)
    if candidate is not None and candidate not in methods:
        candidate = None
    get = lambda metric, method, stage: means[(metric, method, stage)].to_numpy(dtype=float)
    return pd.DataFrame(_quantities(get, metrics, methods, candidate), index=means.index)


# ----- rank correlation with a bootstrap over facts -----------------------------------------------

def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)   # average ranks for ties, as Spearman's rho uses


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> np.ndarray | float:
    """Spearman's rank correlation of x and y along the last axis (rows of a 2-D y are resamples;
    x may be one vector for all rows); NaN where either side has no spread."""
    x_arr, y_arr = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    x_arr, y_arr = np.broadcast_arrays(x_arr, y_arr)
    if x_arr.shape[-1] < 2:
        raise ValueError(f"a rank correlation needs at least 2 languages, got {x_arr.shape[-1]}")
    rx, ry = _ranks(x_arr), _ranks(y_arr)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denominator > 0, (rx * ry).sum(-1) / np.where(denominator > 0, denominator, 1.0), np.nan)
    return float(rho) if np.ndim(rho) == 0 else rho


def bootstrap_language_means(stages: pd.DataFrame, n_resamples: int = DEFAULT_RESAMPLES,
                             seed: int = 0) -> np.ndarray:
    """Language means (as :func:`language_means`) of `n_resamples` resamples [resample, language, column]:
    each (seed, language)'s facts are drawn with replacement, as many as it has, the same draw for every
    column (so methods and stages stay paired on the same facts)."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    languages = _language_order(stages)
    seeds = list(dict.fromkeys(stages.index.get_level_values("seed")))
    total = np.zeros((n_resamples, len(languages), stages.shape[1]))
    counted = np.zeros(len(languages))
    for s in seeds:
        for li, language in enumerate(languages):
            try:
                values = stages.xs((s, language), level=["seed", "language"]).to_numpy(dtype=float)
            except KeyError:
                continue
            n = len(values)
            # multinomial counts per fact: a resample's mean is counts @ values / n without an [B, n, k] array
            counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples)
            total[:, li, :] += counts @ values / n
            counted[li] += 1
    return total / counted[None, :, None]


def spearman_null_band(n_languages: int, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """The central `confidence` range of Spearman's rho between two unrelated rankings of `n_languages`
    (random permutations): a |rho| inside it is what chance alone gives with that many languages."""
    rng = np.random.default_rng(seed)
    base = np.arange(n_languages, dtype=float)
    shuffled = np.argsort(rng.random((n_resamples, n_languages)), axis=1).astype(float)
    return percentile_interval(spearman(base, shuffled), confidence)


def gain_correlations(stages: pd.DataFrame, volume: pd.Series, candidate: str | None = "langedit",
                      n_resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0,
                      proxy_metric: str = "efficacy") -> pd.DataFrame:
    """Spearman's rho across languages between each per-language quantity (:func:`language_quantities`)
    and two proxies of how much a language was pre-trained: ``log_volume`` (log of `volume`, one number
    per language; languages without one are left out) and ``pre_edit_<proxy_metric>`` (the unedited
    model's score, from the first method's pre-edit evaluation, resampled with the facts).

    Each row: quantity, proxy, n_languages, rho, its percentile bootstrap interval over facts resampled
    within each (seed, language) (`n_resamples` draws; ``undefined`` counts draws where a side had no
    spread, left out of the interval), and ``claimed_sign`` (the paper: negative). A quantity that
    shares a term with the proxy (gain = after_edit - pre_edit against pre_edit) is negatively biased by
    construction (column ``shares_term``)."""
    means = language_means(stages)
    languages = list(means.index)
    log_volume = np.log(volume.reindex(languages).to_numpy(dtype=float))
    metrics, methods = _columns(stages)
    if candidate is not None and candidate not in methods:
        candidate = None
    columns = {key: i for i, key in enumerate(stages.columns)}
    point = means.to_numpy(dtype=float)[None]                          # [1, L, C]
    draws = bootstrap_language_means(stages, n_resamples, seed)        # [B, L, C]

    def quantities(array: np.ndarray) -> dict[str, np.ndarray]:
        return _quantities(lambda m, meth, st: array[:, :, columns[(m, meth, st)]], metrics, methods, candidate)

    proxy_key = (proxy_metric, methods[0], "pre_edit")
    if proxy_key not in columns:
        raise ValueError(f"no {proxy_metric} scores in the stages; have {metrics}")
    proxies = {"log_volume": (np.broadcast_to(log_volume, point.shape[:2]), np.broadcast_to(log_volume, draws.shape[:2])),
               f"pre_edit_{proxy_metric}": (point[:, :, columns[proxy_key]], draws[:, :, columns[proxy_key]])}
    point_q, draw_q = quantities(point), quantities(draws)
    rows = []
    for name in point_q:
        for proxy, (proxy_point, proxy_draws) in proxies.items():
            keep = ~np.isnan(proxy_point[0])
            n_keep = int(keep.sum())
            row = {"quantity": name, "proxy": proxy, "n_languages": n_keep, "rho": math.nan, "low": math.nan,
                   "high": math.nan, "confidence": confidence, "n_resamples": n_resamples, "undefined": 0,
                   "claimed_sign": CLAIMED_SIGN,
                   "shares_term": proxy.startswith("pre_edit") and name.startswith(f"{proxy_metric}_gain_")}
            if n_keep >= 3:
                rho = spearman(proxy_point[0, keep], point_q[name][0, keep])
                rhos = spearman(proxy_draws[:, keep], draw_q[name][:, keep])
                defined = rhos[~np.isnan(rhos)]
                row.update(rho=rho, undefined=int(np.isnan(rhos).sum()))
                if defined.size:
                    row["low"], row["high"] = percentile_interval(defined, confidence)
            rows.append(row)
    return pd.DataFrame(rows)


# ----- how far earlier languages fall -------------------------------------------------------------

def retention_matrix(evals: pd.DataFrame, order: Sequence[str], metric: str = "efficacy") -> pd.DataFrame:
    """Rows: the evaluated language; columns: the language step after which it was evaluated (both in
    `order`); a language's score after every step from its own on (NaN before it was edited)."""
    order = list(order)
    edited = evals[evals["after"].isin(order)]
    matrix = edited.pivot_table(index="language", columns="after", values=metric, aggfunc="first")
    return matrix.reindex(index=[l for l in order if l in matrix.index], columns=order)


def forgetting_curve(evals: pd.DataFrame, order: Sequence[str], metric: str = "efficacy") -> pd.DataFrame:
    """By how many languages were edited after a language (``later``: 0 = right after its own step),
    the mean change of its score since its own step over the languages that have that many successors
    (``n_languages``; the last language has none, so the tail rests on the first few languages only)."""
    order = list(order)
    matrix = retention_matrix(evals, order, metric)
    rows = []
    for later in range(len(order)):
        changes = [matrix.loc[language, order[i + later]] - matrix.loc[language, language]
                   for i, language in enumerate(order[:len(order) - later]) if language in matrix.index]
        changes = [c for c in changes if not math.isnan(c)]
        if changes:
            rows.append({"later": later, "change": float(np.mean(changes)), "n_languages": len(changes)})
    return pd.DataFrame(rows, columns=["later", "change", "n_languages"])
