#!/usr/bin/env python3
"""Print the headline tables of the committed results as Markdown (what the README shows).

    .venv/bin/python scripts/results_summary.py [RESULTS_DIR]

Reads results/02_sequential_editing/table1_mzsre.csv (ours, measured) and the paper's Table 1 (stored
as data, labelled as reported), and any other notebook summary table that exists.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from langedit.notebook_support import METHOD_LABELS, paper_table

METRICS = ("efficacy", "generality", "specificity", "xtreme_f1")


def markdown(frame: pd.DataFrame) -> str:
    cells = frame.astype(object).where(frame.notna(), "")
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def headline(results: Path) -> str:
    ours = pd.read_csv(results / "02_sequential_editing" / "table1_mzsre.csv")
    table = pd.DataFrame({"method": ours["method"].map(METHOD_LABELS)})
    for metric in METRICS:
        if f"{metric}_mean" in ours:
            table[f"{metric} (ours)"] = ours[f"{metric}_mean"]
    paper = paper_table(1, dataset="mzsre")  # ours is the mzsre run
    if not paper.empty:
        llama = paper[paper["model"] == "Llama3-8B"].set_index("method")
        for metric in METRICS:
            if metric in llama:
                table[f"{metric} (paper, Llama-3-8B)"] = table["method"].map(llama[metric])
    return markdown(table)


def main() -> None:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "results"
    print(headline(results))
    for name in ("03_negative_interference/mean_gaps.csv", "08_variants/table5_variants.csv",
                 "07_cross_lingual_transfer/transfer_summary.csv", "05_cost/cost_per_method.csv"):
        path = results / name
        if path.exists():
            print(f"\n{name}\n")
            print(markdown(pd.read_csv(path)))


if __name__ == "__main__":
    main()
