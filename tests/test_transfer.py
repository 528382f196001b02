"""Cross-lingual transfer tables (langedit.transfer): directions, gains, the paper's Tables 6-7 as gains."""
import pandas as pd
import pytest

from langedit.transfer import (paper_transfer_gains, scores_beside_paper, transfer_comparison, transfer_directions,
                               transfer_gains)


def test_directions_edit_each_group_and_query_the_others():
    assert transfer_directions([("es", "fr"), ("en", "de", "nl")]) == [
        (("es", "fr"), ("en", "de", "nl")), (("en", "de", "nl"), ("es", "fr"))]
    with pytest.raises(ValueError, match="overlap"):
        transfer_directions([("es", "fr"), ("fr", "de")])
    with pytest.raises(ValueError, match="at least two"):
        transfer_directions([("es", "fr")])


EVALS = pd.DataFrame([
    {"after": "pre-edit", "language": "es", "efficacy": 10.0, "generality": 5.0},
    {"after": "pre-edit", "language": "en", "efficacy": 20.0, "generality": 10.0},
    {"after": "es", "language": "es", "efficacy": 90.0, "generality": 70.0},
    {"after": "es", "language": "en", "efficacy": 50.0, "generality": 30.0},
    {"after": "fr", "language": "en", "efficacy": 40.0, "generality": 35.0},
])


def test_gains_are_the_last_step_minus_pre_edit():
    gains = transfer_gains(EVALS, ["en"], metrics=("efficacy", "generality")).set_index("language")
    assert gains.loc["en", "efficacy_pre"] == 20.0 and gains.loc["en", "efficacy"] == 40.0   # the last step, fr
    assert gains.loc["en", "efficacy_gain"] == pytest.approx(20.0)
    assert gains.loc["en", "generality_gain"] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="'es' is not evaluated once"):
        transfer_gains(EVALS, ["es"], metrics=("efficacy",))                   # es is absent after fr


def test_the_papers_gains_are_langedit_minus_unedited_per_test_language():
    paper = paper_transfer_gains().set_index(["edited", "language"])
    # Table 7 (edit es+fr), English: 59.02 - 31.03 and 57.37 - 30.92; Table 6 (edit en+de+nl), French
    assert paper.loc[("es+fr", "en"), "efficacy_gain"] == pytest.approx(59.02 - 31.03)
    assert paper.loc[("es+fr", "en"), "generality_gain"] == pytest.approx(57.37 - 30.92)
    assert paper.loc[("en+de+nl", "fr"), "efficacy_pre"] == pytest.approx(31.51)
    assert len(paper) == 5 and set(paper["table"]) == {6, 7}


def test_comparison_puts_every_method_beside_the_paper():
    ours = pd.DataFrame([
        {"edited": "es+fr", "language": "en", "method": "alphaedit", "efficacy_gain": 3.0, "generality_gain": 1.0},
        {"edited": "es+fr", "language": "en", "method": "langedit", "efficacy_gain": 4.0, "generality_gain": 2.0},
        {"edited": "es+fr", "language": "xx", "method": "alphaedit", "efficacy_gain": 5.0, "generality_gain": 0.0},
        {"edited": "es+fr", "language": "xx", "method": "langedit", "efficacy_gain": 6.0, "generality_gain": 0.0}])
    table = transfer_comparison(ours, paper_transfer_gains(), labels={"langedit": "LangEdit"})
    row = table.set_index(["edited", "language"])
    assert row.loc[("es+fr", "en"), "efficacy gain, alphaedit (ours)"] == 3.0
    assert row.loc[("es+fr", "en"), "efficacy gain, LangEdit (ours)"] == 4.0
    assert row.loc[("es+fr", "en"), "efficacy gain, LangEdit (paper)"] == pytest.approx(59.02 - 31.03)
    assert pd.isna(row.loc[("es+fr", "xx"), "efficacy gain, LangEdit (paper)"])
    assert list(table["language"]) == ["en", "xx"]


def test_scores_beside_the_paper_keep_unedited_and_edited_apart():
    ours = pd.DataFrame([{"edited": "es+fr", "language": "en", "method": "langedit", "efficacy_pre": 20.0,
                          "efficacy": 40.0, "efficacy_gain": 20.0}])
    table = scores_beside_paper(ours, paper_transfer_gains(), metrics=("efficacy",)).iloc[0]
    assert table["efficacy, unedited (ours)"] == 20.0 and table["efficacy, langedit (ours)"] == 40.0
    assert table["efficacy, unedited (paper)"] == pytest.approx(31.03)
    assert table["efficacy, LangEdit (paper)"] == pytest.approx(59.02)
    with pytest.raises(ValueError, match="no transfer rows of method 'memit'"):
        scores_beside_paper(ours, paper_transfer_gains(), method="memit")
