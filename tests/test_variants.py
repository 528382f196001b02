"""The Table 5 variants table (langedit.variants): end-of-run scores, XTREME F1, mean/std, the paper beside."""
import math

import pandas as pd
import pytest

from langedit.notebook_support import RunResult
from langedit.variants import PAPER_NAMES, VARIANT_STYLES, variants_table, with_paper


def result(efficacy_en, efficacy_de, f1_last, last="de"):
    evals = pd.DataFrame([
        {"after": "pre-edit", "language": "en", "efficacy": 0.0, "generality": 0.0, "specificity": 50.0},
        {"after": "pre-edit", "language": "de", "efficacy": 0.0, "generality": 0.0, "specificity": 50.0},
        {"after": last, "language": "en", "efficacy": efficacy_en, "generality": 10.0, "specificity": 40.0},
        {"after": last, "language": "de", "efficacy": efficacy_de, "generality": 20.0, "specificity": 30.0}])
    probes = pd.DataFrame([
        {"after": "pre-edit", "task": "xnli", "language": "en", "f1": 50.0},
        {"after": last, "task": "xnli", "language": "en", "f1": f1_last},
        {"after": last, "task": "xnli", "language": "de", "f1": f1_last + 2},   # mean over languages
        {"after": last, "task": "pawsx", "language": "en", "f1": 10.0}])         # then over tasks
    return RunResult(evals, pd.DataFrame(), None, "langedit", "multilingual", {}, probes)


def test_the_table_averages_languages_at_the_end_and_runs_over_orders():
    table = variants_table({"LangEdit": [result(80, 60, 30)],
                            "LangEdit (shuffled order)": [result(80, 60, 30), result(100, 80, 40), result(60, 40, 20)]})
    row = table.set_index("variant")
    assert row.loc["LangEdit", "efficacy"] == pytest.approx(70.0)
    assert row.loc["LangEdit", "specificity"] == pytest.approx(35.0)
    assert row.loc["LangEdit", "xtreme_f1"] == pytest.approx(((30 + 32) / 2 + 10) / 2)
    assert math.isnan(row.loc["LangEdit", "efficacy_std"])
    assert row.loc["LangEdit (shuffled order)", "efficacy"] == pytest.approx(70.0)
    assert row.loc["LangEdit (shuffled order)", "efficacy_std"] == pytest.approx(pd.Series([70.0, 90.0, 50.0]).std())
    assert row.loc["LangEdit (shuffled order)", "runs"] == 3


def test_a_probe_that_missed_the_final_model_is_refused():
    stale = result(80, 60, 30)
    stale.probes = stale.probes[stale.probes["after"] == "pre-edit"]
    with pytest.raises(ValueError, match="did not score the final model"):
        variants_table({"LangEdit": [stale]})


def test_the_paper_numbers_sit_beside_ours_under_the_papers_names():
    table = with_paper(variants_table({name: [result(80, 60, 30, last="all")] for name in PAPER_NAMES}))
    row = table.set_index("variant")
    assert row.loc["AlphaEdit (multilingual summed)", "efficacy (paper)"] == 45.35   # Table 5's "multilingual"
    assert row.loc["LangEdit (shuffled order)", "xtreme_f1 (paper)"] == 65.37
    assert row.loc["AlphaEdit (translation)", "generality (paper)"] == 55.57
    assert math.isnan(row.loc["AlphaEdit (multilingual sequential)", "efficacy (paper)"])
    assert set(VARIANT_STYLES) == set(PAPER_NAMES)
    # every (method, hatch) pair is distinct: a variant is never drawn like another
    assert len({(s["method"], s["hatch"]) for s in VARIANT_STYLES.values()}) == len(VARIANT_STYLES)
