"""Notebook 09's tables and figure: MLaKE scores per setting beside the paper's Table 8.

``setting_scores`` turns one finished run into long rows (setting, method, language, metric, value, n),
``xtreme_rows`` its XTREME probe into F1 before and after editing, ``table8_comparison`` both into one
row per (setting, method) with the paper's numbers in the next column, and ``setting_figure`` draws one
setting. Efficacy and F1 are averaged over languages as Table 1/8 average them (the mean of the
per-language means after the last language step).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from .notebook_support import METHOD_COLOURS, METHOD_LABELS, METHOD_ORDER, RunResult, final_scores

#: Our setting names (langedit.data.mlake.MLAKE_SETTINGS) -> Table 8's.
PAPER_SETTINGS = {"single_hop": "single-hop", "multi_hop": "multi-hop"}
#: Our method names -> Table 8's.
PAPER_METHODS = {"alphaedit": "AlphaEdit (adapted)", "langedit": "LangEdit"}
SETTING_TITLES = {"single_hop": "single-hop questions edited", "multi_hop": "multi-hop questions edited"}
#: metric -> (the request field a fact needs to be scored, the title of its panel)
METRICS = {"efficacy": (None, "Efficacy (the edited question)"),
           "generality": ("paraphrase", "Generality (a rephrasing)"),
           "portability": ("portability_prompt", "Portability (extra): multi-hop question\nafter its single-hop edit")}


def _scored(requests: Sequence, field: str | None) -> int:
    return len(requests) if field is None else sum(1 for r in requests if getattr(r, field, None))


def setting_scores(result: RunResult, requests: Mapping[str, Sequence], setting: str) -> pd.DataFrame:
    """Long rows setting, method, language, metric, value (%), n (facts scored): the unedited model
    (method "pre-edit", the run's own pre-edit evaluation) and the model after the last step."""
    rows = []
    for method, frame in (("pre-edit", result.evals[result.evals["after"] == "pre-edit"]),
                          (result.method, final_scores(result.evals))):
        for record in frame.to_dict("records"):
            for metric, (field, _) in METRICS.items():
                n = _scored(requests[record["language"]], field)
                if metric in record and n and not pd.isna(record[metric]):
                    rows.append({"setting": setting, "method": method, "language": record["language"],
                                 "metric": metric, "value": float(record[metric]), "n": n})
    return pd.DataFrame(rows)


def xtreme_rows(result: RunResult, setting: str) -> pd.DataFrame:
    """XTREME F1 (the paper's average over tasks) of the unedited model and after the last step."""
    from .xtreme import f1_by_step

    steps = f1_by_step(result.probes)
    pre = steps[steps["after"] == "pre-edit"]
    if pre.empty:
        raise ValueError(f"the {result.method} run has no pre-edit XTREME record")
    return pd.DataFrame([{"setting": setting, "method": "pre-edit", "xtreme_f1": float(pre["f1"].iloc[0])},
                         {"setting": setting, "method": result.method, "xtreme_f1": float(steps["f1"].iloc[-1])}])


def _dedupe_pre_edit(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each run brings its own pre-edit rows (the same unedited model); keep the first per key."""
    return frame.drop_duplicates(subset=keys, keep="first").reset_index(drop=True)


def table8_comparison(scores: pd.DataFrame, xtreme: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, method): our Efficacy (mean over languages) and XTREME F1 after editing,
    each beside the paper's (Table 8, Llama3-8B; NaN for the unedited model, which Table 8 lacks),
    with the facts edited per language and the languages."""
    scores = _dedupe_pre_edit(scores, ["setting", "method", "language", "metric"])
    xtreme = _dedupe_pre_edit(xtreme, ["setting", "method"])
    efficacy = scores[scores["metric"] == "efficacy"]
    rows = []
    for (setting, method), part in efficacy.groupby(["setting", "method"], sort=False):
        reported = paper[(paper["setting"] == PAPER_SETTINGS[setting]) & (paper["method"] == PAPER_METHODS.get(method))]
        f1 = xtreme[(xtreme["setting"] == setting) & (xtreme["method"] == method)]["xtreme_f1"]
        rows.append({"setting": PAPER_SETTINGS[setting], "method": METHOD_LABELS[method],
                     "efficacy (ours)": part["value"].mean(),
                     "efficacy (paper)": float(reported["efficacy"].iloc[0]) if len(reported) else float("nan"),
                     "XTREME F1 (ours)": float(f1.iloc[0]) if len(f1) else float("nan"),
                     "XTREME F1 (paper)": float(reported["xtreme_f1"].iloc[0]) if len(reported) else float("nan"),
                     "facts per language": "/".join(str(n) for n in part["n"]),
                     "languages": "/".join(part["language"]), "_order": METHOD_ORDER.index(method)})
    frame = pd.DataFrame(rows)
    frame["_setting"] = frame["setting"].map({v: i for i, v in enumerate(PAPER_SETTINGS.values())})
    return frame.sort_values(["_setting", "_order"]).drop(columns=["_setting", "_order"]).reset_index(drop=True)


def setting_figure(scores: pd.DataFrame, xtreme: pd.DataFrame, setting: str, order: Sequence[str], model: str):
    """One figure for one setting: a panel per metric scored (bars per language, n under each
    language), then XTREME F1 before and after editing; methods in the suite's colours."""
    import matplotlib.pyplot as plt

    scores = _dedupe_pre_edit(scores[scores["setting"] == setting], ["method", "language", "metric"])
    xtreme = _dedupe_pre_edit(xtreme[xtreme["setting"] == setting], ["method"])
    metrics = [m for m in METRICS if m in set(scores["metric"])]
    methods = [m for m in METHOD_ORDER if m in set(scores["method"])]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(3.9 * (len(metrics) + 1), 3.4))
    width = 0.8 / len(methods)
    for ax, metric in zip(axes, metrics):
        part = scores[scores["metric"] == metric]
        for i, method in enumerate(methods):
            values = part[part["method"] == method].set_index("language").reindex(order)["value"]
            positions = [j + i * width for j in range(len(order))]
            ax.bar(positions, values, width, color=METHOD_COLOURS[method], label=METHOD_LABELS[method])
            for x, value in zip(positions, values):   # a bar of 0 is invisible: mark it, so it is not read as missing
                if value == 0:
                    ax.text(x, 1.5, "0", ha="center", va="bottom", fontsize=7, color=METHOD_COLOURS[method])
        n = part.drop_duplicates("language").set_index("language").reindex(order)["n"]
        ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(order))],
                      [f"{lang}\nn={'–' if pd.isna(k) else int(k)}" for lang, k in zip(order, n)])
        ax.set_ylim(0, 100)
        ax.set_title(METRICS[metric][1], fontsize=9)
        ax.set_ylabel("token accuracy (%)")
    ax = axes[-1]
    for i, method in enumerate(methods):
        value = xtreme[xtreme["method"] == method]["xtreme_f1"]
        ax.bar(i, value.iloc[0] if len(value) else float("nan"), color=METHOD_COLOURS[method])
    ax.set_xticks(range(len(methods)), [METHOD_LABELS[m] for m in methods], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_title("XTREME F1 after editing\n(pre-edited: the unedited model)", fontsize=9)
    ax.set_ylabel("F1 (%)")
    # one legend for the figure, under the title: inside a panel it covers bars that reach 100 %
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(f"MLaKE, {SETTING_TITLES[setting]}, on {model}: after editing {' → '.join(order)} in sequence")
    fig.legend(handles, labels, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.93))
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return fig
