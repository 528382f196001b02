"""The paper's Table 5 (App. A.2) variants as one table: each variant's scores over all languages at the
end of its run, with the XTREME F1 of the model at that point, beside the paper's numbers.

Variants (our names; :data:`PAPER_NAMES` maps them onto Table 5's rows):

* ``AlphaEdit (translation)`` - SequentialRun mode "translation": every fact edited once, in English;
  every language queried.
* ``AlphaEdit (multilingual summed)`` - mode "summed", the paper's "AlphaEdit (multilingual)": each
  language's update computed on the unedited model, the updates added.
* ``AlphaEdit (multilingual sequential)`` - the ordinary multilingual sequential run (not in Table 5;
  Table 1's AlphaEdit), the baseline the two cheap variants replace.
* ``LangEdit (shuffled order)`` - LangEdit in several shuffled language orders: mean and standard deviation
  over the orders (the paper: "randomizing the editing sequence for three times").
* ``LangEdit`` - LangEdit in the given order.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from .notebook_support import RunResult

VARIANT_METRICS = ("efficacy", "generality", "specificity", "xtreme_f1")
#: Our variant -> the row of the paper's Table 5 it reproduces (None: not in Table 5).
PAPER_NAMES: dict[str, str | None] = {
    "AlphaEdit (translation)": "AlphaEdit (translation)",
    "AlphaEdit (multilingual summed)": "AlphaEdit (multilingual)",
    "AlphaEdit (multilingual sequential)": None,
    "LangEdit (shuffled order)": "LangEdit (shuffle order)",
    "LangEdit": "LangEdit",
}
#: Figure style per variant: the method's colour (notebook_support.METHOD_COLOURS) and a hatch per variant,
#: so a colour always means a method and the hatch the variant.
VARIANT_STYLES: dict[str, dict] = {
    "AlphaEdit (translation)": dict(method="alphaedit", hatch="//"),
    "AlphaEdit (multilingual summed)": dict(method="alphaedit", hatch="xx"),
    "AlphaEdit (multilingual sequential)": dict(method="alphaedit", hatch=""),
    "LangEdit (shuffled order)": dict(method="langedit", hatch=".."),
    "LangEdit": dict(method="langedit", hatch=""),
}


def run_scores(result: "RunResult") -> dict[str, float]:
    """One run's scores at its end: each edit metric averaged over the languages evaluated after its last
    step, and the XTREME F1 (avg.) of its last probe record (NaN without a probe)."""
    from .notebook_support import final_scores
    from .xtreme.probe import f1_by_step

    final = final_scores(result.evals)
    scores = {metric: float(final[metric].mean()) for metric in VARIANT_METRICS[:3]}
    has_probe = result.probes is not None and not result.probes.empty
    last_step = final["after"].iloc[0]
    if has_probe:
        f1 = f1_by_step(result.probes)
        if f1["after"].iloc[-1] != last_step:
            raise ValueError(f"the run's last probe record is after {f1['after'].iloc[-1]!r}, its last "
                             f"evaluation after {last_step!r}: the probe did not score the final model")
        scores["xtreme_f1"] = float(f1["f1"].iloc[-1])
    else:
        scores["xtreme_f1"] = float("nan")
    return scores


def variants_table(runs: Mapping[str, Sequence["RunResult"]]) -> pd.DataFrame:
    """One row per variant: ``<metric>`` the mean over its runs (several for the shuffled orders),
    ``<metric>_std`` the sample standard deviation over them (NaN for one run), ``runs`` their number."""
    rows = []
    for name, results in runs.items():
        if not results:
            raise ValueError(f"variant {name!r} has no runs")
        scores = pd.DataFrame([run_scores(result) for result in results])
        row = {"variant": name, "paper_variant": PAPER_NAMES.get(name), "runs": len(results)}
        for metric in VARIANT_METRICS:
            row[metric] = float(scores[metric].mean())
            row[f"{metric}_std"] = float(scores[metric].std()) if len(results) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def with_paper(table: pd.DataFrame, dataset: str = "mzsre") -> pd.DataFrame:
    """`table` (variants_table) with the paper's Table 5 numbers for `dataset` beside each metric
    (``<metric> (paper)``; NaN for a variant the paper does not have)."""
    from .paper_results import load_paper_table

    paper = load_paper_table(5).set_index("variant")
    out = table.copy()
    for metric in VARIANT_METRICS:
        column = f"{dataset}_{metric}"
        if column not in paper:
            raise ValueError(f"the paper's Table 5 has no column {column!r}")
        out[f"{metric} (paper)"] = [paper[column].get(name, float("nan")) if name else float("nan")
                                    for name in out["paper_variant"]]
    unknown = sorted(set(out["paper_variant"].dropna()) - set(paper.index))
    if unknown:
        raise ValueError(f"variant name(s) {unknown} are not rows of the paper's Table 5 ({sorted(paper.index)})")
    # read across: per metric ours, its spread over runs, the paper's
    metric_columns = [c for m in VARIANT_METRICS for c in (m, f"{m}_std", f"{m} (paper)")]
    return out[[c for c in out.columns if c not in metric_columns] + metric_columns]
