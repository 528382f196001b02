"""Notebook 06's tables and panels: quantities per batch and layer as edits accumulate.

``batch_series`` turns a run's batch reports (``null_dimension``, ``leakage``: one value per edited
layer) into long rows with the number of edits at that point, ``change_since_first`` re-expresses a
level as its change since the first batch (a few directions out of hundreds are invisible on a shared
level axis), ``per_layer_panels`` draws one panel per layer with the suite's method styles;
``edits_after`` (from notebook_support, shared with ``language_steps``) counts the edits made after each
language step.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from .notebook_support import (METHOD_COLOURS, METHOD_LABELS, METHOD_LINESTYLES, METHOD_MARKERS, RULE_LABELS, RULE_STYLES,
                               edits_after)  # noqa: F401  (re-exported: notebook 06 counts edits with it)


def batch_series(batches: pd.DataFrame, field: str, before: bool = False) -> pd.DataFrame:
    """One row per (batch, layer) of a per-layer batch-report field, with the number of edits after
    the batch (or, with `before`, made before it: leakage is about the earlier edits)."""
    rows, edits = [], 0
    for _, batch in batches.iterrows():
        if not before:
            edits += batch["n_edits"]
        for layer, value in (batch.get(field) or {}).items():
            rows.append({"edits": edits, "layer": int(layer), field: value})
        if before:
            edits += batch["n_edits"]
    return pd.DataFrame(rows, columns=["edits", "layer", field])


def change_since_first(series: pd.DataFrame, field: str) -> pd.DataFrame:
    """Adds ``change`` = value minus the same method's and layer's first value (rows in batch order)."""
    first = series.groupby(["method", "layer"], sort=False)[field].transform("first")
    return series.assign(change=series[field] - first)


def style_of(name: str) -> dict:
    """Colour, line style and marker of a method or a projector rule (``langedit:paper`` ...)."""
    if name in RULE_STYLES:
        return RULE_STYLES[name]
    return dict(color=METHOD_COLOURS[name], linestyle=METHOD_LINESTYLES[name], marker=METHOD_MARKERS[name])


def label_of(name: str) -> str:
    return RULE_LABELS.get(name, METHOD_LABELS.get(name, name))


def per_layer_panels(series: pd.DataFrame, field: str, ylabel: str, log: bool = False,
                     titles: Mapping[int, str] | None = None, sharey: bool = True):
    """One panel per layer, a line per method; `titles` replaces a panel's "layer L" title."""
    import matplotlib.pyplot as plt

    layers = sorted(series["layer"].unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers), 3.0), sharey=sharey, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for name, part in series[series["layer"] == layer].groupby("method", sort=False):
            ax.plot(part["edits"], part[field], label=label_of(name), markersize=4, linewidth=1.2, **style_of(name))
        ax.set_title((titles or {}).get(layer, f"layer {layer}"), fontsize=8)
        ax.set_xlabel("edits")
        if log:
            ax.set_yscale("log")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def level_titles(series: pd.DataFrame, field: str) -> dict[int, str]:
    """Per layer: "layer L · first a–b" (the range over methods of the first value), so that a panel
    of changes still says what level they start from."""
    first = series.groupby(["layer", "method"], sort=False)[field].first()
    return {int(layer): f"layer {layer} · at first {int(values.min())}–{int(values.max())}"
            if values.min() != values.max() else f"layer {layer} · at first {int(values.min())}"
            for layer, values in first.groupby(level="layer")}
