"""Tidy tables from per-fact traces: position categories (ROME Figure 1/5), MLP curve, layer choice.

Facts have different lengths, so per-token heatmaps are aligned as in ROME by position category:

==================  ===========================================================
first_subject       the subject's first token
middle_subject      subject tokens strictly between first and last (>= 3 tokens)
last_subject        the subject's last token (= first for a one-token subject)
first_subsequent    the token right after the subject (ROME counts it even if it is the last)
further             tokens after that, before the last token
last                the prompt's last token (where the answer is predicted)
==================  ===========================================================

Tokens before the subject are left out: they are identical in the clean and corrupted runs, so
restoring them changes nothing. A category's value for one fact is the mean over its tokens; the
table then averages over facts (ROME pools middle/further *tokens*; we weight facts equally).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

POSITION_CATEGORIES = ("first_subject", "middle_subject", "last_subject", "first_subsequent", "further", "last")
#: ROME's axis labels, for plots.
POSITION_LABELS = {
    "first_subject": "First subject token", "middle_subject": "Middle subject tokens",
    "last_subject": "Last subject token", "first_subsequent": "First subsequent token",
    "further": "Further tokens", "last": "Last token",
}


def position_categories(n_tokens: int, subject_range: tuple[int, int]) -> dict[str, list[int]]:
    """Token positions of each category present in a prompt of `n_tokens` with this subject span."""
    start, end = subject_range
    last = n_tokens - 1
    groups = {
        "first_subject": [start],
        "middle_subject": list(range(start + 1, end - 1)),
        "last_subject": [end - 1],
        "first_subsequent": [end] if end <= last else [],
        "further": list(range(end + 1, last)),
        "last": [last],
    }
    return {name: positions for name, positions in groups.items() if positions}


def positions_for(n_tokens: int, subject_range: tuple[int, int], categories: Sequence[str] | None) -> list[int]:
    """The token positions a grid must compute to fill `categories` (None: all from the subject on)."""
    if categories is None:
        return list(range(subject_range[0], n_tokens))
    unknown = set(categories) - set(POSITION_CATEGORIES)
    if unknown:
        raise ValueError(f"unknown position categories {sorted(unknown)}; choose from {POSITION_CATEGORIES}")
    groups = position_categories(n_tokens, subject_range)
    return sorted({p for name in categories for p in groups.get(name, [])})


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    frame["position_category"] = pd.Categorical(frame["position_category"], POSITION_CATEGORIES, ordered=True)
    return frame


def position_effects(traces: Sequence) -> pd.DataFrame:
    """Tidy effects: language, kind, position_category, layer, prob, indirect_effect, n_facts, p_clean, p_corrupt.

    ``prob`` is the mean restored answer probability, ``indirect_effect`` the mean of
    (restored - corrupted) per fact; ``p_clean``/``p_corrupt`` are the language's mean baselines over
    the same facts (the colour-scale ends of ROME's heatmaps).
    """
    rows = []
    for trace in traces:
        groups = position_categories(trace.fact.n_tokens, trace.fact.subject_range)
        for kind, scores in trace.scores.items():
            for category, positions in groups.items():
                values = scores[positions]
                if np.isnan(values).all():
                    continue  # not computed (a `categories` subset was asked for)
                for layer, prob in enumerate(np.nanmean(values, axis=0)):
                    rows.append((trace.fact.fact.language, kind, category, layer, prob, prob - trace.p_corrupt,
                                 trace.p_clean, trace.p_corrupt))
    columns = ["language", "kind", "position_category", "layer", "prob", "indirect_effect", "p_clean", "p_corrupt"]
    frame = pd.DataFrame(rows, columns=columns)
    keys = ["language", "kind", "position_category", "layer"]
    table = frame.groupby(keys, sort=False).agg(
        prob=("prob", "mean"), indirect_effect=("indirect_effect", "mean"), n_facts=("prob", "size"),
        p_clean=("p_clean", "mean"), p_corrupt=("p_corrupt", "mean")).reset_index()
    return _ordered(table).sort_values(keys, ignore_index=True)


def token_effects(trace) -> pd.DataFrame:
    """One fact's per-token table (position, token, layer, kind, prob) for a single-fact heatmap."""
    rows = [(kind, position, trace.fact.tokens[position], layer, float(prob))
            for kind, scores in trace.scores.items()
            for position in range(scores.shape[0]) for layer, prob in enumerate(scores[position])]
    frame = pd.DataFrame(rows, columns=["kind", "position", "token", "layer", "prob"])
    start, end = trace.fact.subject_range
    frame["in_subject"] = frame["position"].between(start, end - 1)
    return frame


def heatmap_frame(table: pd.DataFrame, language: str, kind: str, value: str = "prob") -> pd.DataFrame:
    """Position category x layer matrix of one language and kind, rows in ROME's order."""
    subset = table[(table["language"] == language) & (table["kind"] == kind)]
    if subset.empty:
        raise ValueError(f"no rows for language={language!r}, kind={kind!r} in the table")
    return subset.pivot_table(index="position_category", columns="layer", values=value, observed=True)


def colour_limits(table: pd.DataFrame, kind: str, value: str = "indirect_effect") -> tuple[float, float]:
    """One colour scale for a kind, shared by every language: ``(vmin, vmax)`` over all its cells.

    For the indirect effect the scale is symmetric about 0 (a diverging colormap: restoring can also
    lower the answer's probability); for probabilities it is ``[0, max]``.
    """
    values = table.loc[table["kind"] == kind, value].dropna()
    if values.empty:
        raise ValueError(f"no {value!r} values for kind={kind!r} in the table")
    if value == "indirect_effect":
        bound = float(values.abs().max())
        return -bound, bound
    return 0.0, float(values.max())


def facts_per_panel(table: pd.DataFrame, language: str, kind: str) -> int:
    """Facts averaged in one heatmap (the most any of its cells has: every counted fact has a last token)."""
    subset = table[(table["language"] == language) & (table["kind"] == kind)]
    return int(subset["n_facts"].max()) if not subset.empty else 0


def mlp_effect_by_layer(table: pd.DataFrame, position_category: str = "last_subject",
                        kind: str = "mlp") -> pd.DataFrame:
    """Per-layer MLP indirect effect at the last subject token, per language plus ``"all"``.

    ``"all"`` weights languages by their number of counted facts (a mean over facts).
    """
    subset = table[(table["kind"] == kind) & (table["position_category"] == position_category)]
    if subset.empty:
        raise ValueError(f"the table has no kind={kind!r} rows at position {position_category!r}")
    curve = subset[["language", "layer", "indirect_effect", "prob", "n_facts"]].copy()
    weighted = curve.assign(ie_w=curve.indirect_effect * curve.n_facts, p_w=curve.prob * curve.n_facts)
    total = weighted.groupby("layer").agg(ie_w=("ie_w", "sum"), p_w=("p_w", "sum"), n_facts=("n_facts", "sum"))
    overall = pd.DataFrame({"language": "all", "layer": total.index,
                            "indirect_effect": total.ie_w / total.n_facts, "prob": total.p_w / total.n_facts,
                            "n_facts": total.n_facts})
    return pd.concat([curve, overall], ignore_index=True).sort_values(["language", "layer"], ignore_index=True)


def suggest_edit_layers(curve: pd.DataFrame, n_layers: int = 5, language: str = "all") -> list[int]:
    """The `n_layers` consecutive layers with the highest mean indirect effect (ties: the earliest).

    Rule (ROME's reading of the MLP curve): an edit writes one window of adjacent MLPs, so choose the
    window, not the individually best layers, where restoring the MLPs recovers the most.
    """
    series = curve[curve["language"] == language].set_index("layer")["indirect_effect"].sort_index()
    if series.empty:
        raise ValueError(f"no curve for language={language!r}; have {sorted(curve['language'].unique())}")
    if not 1 <= n_layers <= len(series):
        raise ValueError(f"n_layers={n_layers} must be between 1 and the {len(series)} layers of the curve")
    means = series.rolling(n_layers).mean().iloc[n_layers - 1:].to_numpy()
    start = int(np.argmax(means))
    return [int(layer) for layer in series.index[start:start + n_layers]]


def fact_effects(traces: Sequence, kind: str, position_category: str = "last_subject") -> tuple[list[str], np.ndarray]:
    """Per counted fact: its language and its ``[n_layers]`` indirect effect (restored - corrupted)
    of `kind` at a position category (the mean over the category's tokens)."""
    languages, rows = [], []
    for trace in traces:
        if kind not in trace.scores:
            raise ValueError(f"the traces have no {kind!r} grid; traced kinds: {sorted(trace.scores)}")
        positions = position_categories(trace.fact.n_tokens, trace.fact.subject_range).get(position_category)
        if not positions:
            continue   # e.g. a one- or two-token subject has no middle tokens
        languages.append(trace.fact.fact.language)
        rows.append(np.nanmean(trace.scores[kind][positions], axis=0) - trace.p_corrupt)
    return languages, np.array(rows)


def paper_claims(traces: Sequence, early_layers: Sequence[int], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The two claims of the paper's Figure 5, per language and over all facts ("all"), with a bootstrap
    95 % interval over facts:

    * ``hidden_peak_layer``: the layer where the mean hidden-state effect at the last subject token peaks,
      and ``hidden_early_minus_late``: that effect averaged over `early_layers` minus over the other layers
      (> 0: "strong causal states appear in early layers at the last token of the subject");
    * ``mlp_minus_attn``: MLP minus attention effect at the last subject token, averaged over
      `early_layers` (> 0: "the MLP contributes stronger causality in early layers").
    """
    from ..statistics import bootstrap_ci

    early = sorted(set(early_layers))
    languages, hidden = fact_effects(traces, "hidden")
    _, mlp = fact_effects(traces, "mlp")
    _, attn = fact_effects(traces, "attn")
    late = [layer for layer in range(hidden.shape[1]) if layer not in early]
    if not early or not late:
        raise ValueError(f"early_layers {early} must be a proper, non-empty subset of the {hidden.shape[1]} layers")
    languages = np.array(languages)
    rows = []
    for language in [*dict.fromkeys(languages), "all"]:
        mask = np.ones(len(languages), bool) if language == "all" else languages == language
        row = {"language": language, "n_facts": int(mask.sum()),
               "hidden_peak_layer": int(np.argmax(hidden[mask].mean(0)))}
        for name, per_fact in (("hidden_early_minus_late", hidden[mask][:, early].mean(1) - hidden[mask][:, late].mean(1)),
                               ("mlp_minus_attn", mlp[mask][:, early].mean(1) - attn[mask][:, early].mean(1))):
            interval = bootstrap_ci(per_fact, n_resamples=n_resamples, seed=seed)
            row.update({name: interval.estimate, f"{name}_low": interval.low, f"{name}_high": interval.high})
        rows.append(row)
    return pd.DataFrame(rows)
