"""Cross-lingual transfer as the paper's Tables 6-7 (App. A.5) measure it: one group of languages is
edited (sequentially, on one model), another group is only queried, on the same facts in its own
language (MzsRE, parallel design); what transferred is the queried language's gain over the unedited
model on those facts.

The authors' script runs two directions: edit es+fr and query en, de, nl (Table 7), and edit
en+de+nl and query es, fr (Table 6). The paper reports LangEdit and the unedited Llama3-8B only.

* :func:`transfer_directions` - (edited group, queried group) for every group of a profile's ``edit_groups``;
* :func:`transfer_gains` - per queried language, the score before editing, after the last edit, and the gain;
* :func:`paper_transfer_gains` - the same quantities from the paper's Tables 6-7;
* :func:`transfer_comparison` - our gains per method beside the paper's, one row per (edited group, test language);
* :func:`scores_beside_paper` - the scores themselves (unedited and edited), ours for one method beside the paper's.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

TRANSFER_METRICS = ("efficacy", "generality", "specificity")


def group_name(languages: Sequence[str]) -> str:
    """"es+fr" for ("es", "fr"): the paper file's name of an edited group."""
    return "+".join(languages)


def transfer_directions(edit_groups: Sequence[Sequence[str]]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """For each group: (that group, edited; every other group's languages, queried only)."""
    groups = [tuple(group) for group in edit_groups]
    if len(groups) < 2 or any(not group for group in groups):
        raise ValueError(f"cross-lingual transfer needs at least two non-empty language groups, got {groups}")
    flat = [language for group in groups for language in group]
    if len(set(flat)) != len(flat):
        raise ValueError(f"the language groups overlap: {groups}; a queried language must never be edited")
    return [(group, tuple(l for other in groups if other != group for l in other)) for group in groups]


def transfer_gains(evals: pd.DataFrame, languages: Sequence[str],
                   metrics: Sequence[str] = TRANSFER_METRICS) -> pd.DataFrame:
    """Per language of `languages`: ``<metric>_pre`` (the unedited model), ``<metric>`` (after the run's
    last step) and ``<metric>_gain`` (their difference, percentage points), from one run's evals."""
    steps = [step for step in dict.fromkeys(evals["after"]) if step != "pre-edit"]
    if not steps:
        raise ValueError("the run has no evaluation after editing")
    rows = []
    for language in languages:
        pre = evals[(evals["after"] == "pre-edit") & (evals["language"] == language)]
        end = evals[(evals["after"] == steps[-1]) & (evals["language"] == language)]
        if len(pre) != 1 or len(end) != 1:
            raise ValueError(f"language {language!r} is not evaluated once before and once after the last step "
                             f"({steps[-1]!r}); was it given as a query language?")
        row = {"language": language}
        for metric in metrics:
            row[f"{metric}_pre"] = float(pre[metric].iloc[0])
            row[metric] = float(end[metric].iloc[0])
            row[f"{metric}_gain"] = row[metric] - row[f"{metric}_pre"]
        rows.append(row)
    return pd.DataFrame(rows)


def paper_transfer_gains(metrics: Sequence[str] = TRANSFER_METRICS) -> pd.DataFrame:
    """The paper's Tables 6-7 as gains: one row per (edited group, test language) with the unedited
    Llama3-8B's score (``<metric>_pre``), LangEdit's (``<metric>``) and the gain."""
    from .paper_results import load_paper_table

    paper = pd.concat([load_paper_table(6).assign(table=6), load_paper_table(7).assign(table=7)], ignore_index=True)
    keys = ["table", "edited_languages_inferred", "test_language"]
    unedited = paper[paper["system"] == "unedited"].set_index(keys)
    edited = paper[paper["system"] == "LangEdit"].set_index(keys)
    if set(unedited.index) != set(edited.index):
        raise ValueError("the paper's Tables 6-7 lack an unedited or a LangEdit row for some test language")
    out = pd.DataFrame(index=edited.index)
    for metric in metrics:
        out[f"{metric}_pre"] = unedited.loc[edited.index, metric]
        out[metric] = edited[metric]
        out[f"{metric}_gain"] = out[metric] - out[f"{metric}_pre"]
    out = out.reset_index().rename(columns={"edited_languages_inferred": "edited", "test_language": "language"})
    return out


def transfer_comparison(ours: pd.DataFrame, paper: pd.DataFrame, metrics: Sequence[str] = ("efficacy", "generality"),
                        labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per (edited group, test language): per metric, our gain of each method, then the paper's
    LangEdit gain (NaN where the paper has no such direction/language). `ours`: columns edited, language,
    method and ``<metric>_gain``; `paper`: :func:`paper_transfer_gains`."""
    labels = labels or {}
    columns = {}
    index = ["edited", "language"]
    for metric in metrics:
        wide = ours.pivot(index=index, columns="method", values=f"{metric}_gain")
        for method in dict.fromkeys(ours["method"]):
            columns[f"{metric} gain, {labels.get(method, method)} (ours)"] = wide[method]
        columns[f"{metric} gain, LangEdit (paper)"] = paper.set_index(index)[f"{metric}_gain"].reindex(wide.index)
    order = ours[index].drop_duplicates()
    return order.merge(pd.DataFrame(columns).reset_index(), on=index, how="left")


def scores_beside_paper(ours: pd.DataFrame, paper: pd.DataFrame, method: str = "langedit",
                        metrics: Sequence[str] = ("efficacy", "generality", "specificity")) -> pd.DataFrame:
    """One row per (edited group, test language) of `method`: per metric the unedited and the edited
    score, ours (this model) then the paper's (Llama3-8B), in percent."""
    mine = ours[ours["method"] == method].set_index(["edited", "language"])
    if mine.empty:
        raise ValueError(f"no transfer rows of method {method!r}; have {sorted(set(ours['method']))}")
    theirs = paper.set_index(["edited", "language"]).reindex(mine.index)
    columns = {}
    for metric in metrics:
        columns[f"{metric}, unedited (ours)"] = mine[f"{metric}_pre"]
        columns[f"{metric}, {method} (ours)"] = mine[metric]
        columns[f"{metric}, unedited (paper)"] = theirs[f"{metric}_pre"]
        columns[f"{metric}, LangEdit (paper)"] = theirs[metric]
    return pd.DataFrame(columns).reset_index()
