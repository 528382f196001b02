"""Notebook 06's per-batch series, checked by hand on small frames."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from langedit.scaling_results import (batch_series, change_since_first, edits_after, level_titles,  # noqa: E402
                                      per_layer_panels)

BATCHES = pd.DataFrame({"n_edits": [3, 3, 2],
                        "null_dimension": [{"3": 690, "4": 500}, {"3": 687, "4": 498}, {"3": 685, "4": 497}],
                        "leakage": [None, {"3": 1e-3, "4": 2e-3}, {"3": 4e-3, "4": 5e-3}]})


def test_batch_series_counts_edits_after_or_before_each_batch():
    after = batch_series(BATCHES, "null_dimension")
    assert after[after["layer"] == 3][["edits", "null_dimension"]].values.tolist() == [[3, 690], [6, 687], [8, 685]]
    before = batch_series(BATCHES, "leakage", before=True)   # the first batch has no earlier edits: no row
    assert before[before["layer"] == 4][["edits", "leakage"]].values.tolist() == [[3, 2e-3], [6, 5e-3]]


def test_change_since_first_is_per_method_and_layer():
    a = batch_series(BATCHES, "null_dimension").assign(method="alphaedit")
    b = batch_series(BATCHES, "null_dimension").assign(method="langedit:paper")
    b["null_dimension"] += 10
    changes = change_since_first(pd.concat([a, b], ignore_index=True), "null_dimension")
    assert changes[(changes["method"] == "langedit:paper") & (changes["layer"] == 3)]["change"].tolist() == [0, -3, -5]
    assert changes[(changes["method"] == "alphaedit") & (changes["layer"] == 4)]["change"].tolist() == [0, -2, -3]
    titles = level_titles(pd.concat([a, b], ignore_index=True), "null_dimension")
    assert titles == {3: "layer 3 · at first 690–700", 4: "layer 4 · at first 500–510"}
    assert level_titles(a, "null_dimension")[3] == "layer 3 · at first 690"


def test_edits_after_each_language_step():
    evals = pd.DataFrame({"after": ["pre-edit", "pre-edit", "en", "de", "de"], "language": ["en", "de", "en", "en", "de"],
                          "n": [3, 2, 3, 3, 2]})
    assert edits_after(evals, ["en", "de"]) == {"pre-edit": 0, "en": 3, "de": 5}


def test_per_layer_panels_one_panel_per_layer_with_titles():
    series = change_since_first(batch_series(BATCHES, "null_dimension").assign(method="alphaedit"), "null_dimension")
    fig = per_layer_panels(series, "change", "change", titles={3: "three"})
    assert [ax.get_title() for ax in fig.axes] == ["three", "layer 4"]
    assert list(fig.axes[1].lines[0].get_ydata()) == [0, -2, -3]
    plt.close(fig)
    with pytest.raises(KeyError):
        per_layer_panels(series.assign(method="no-such-method"), "change", "change")
