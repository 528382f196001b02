"""The stored paper numbers load, are well formed, and match the values read from the source."""
from importlib import resources

import pandas as pd
import pytest

from langedit.paper_results import (
    COLUMNS,
    PaperTableNotAvailable,
    available_tables,
    load_paper_table,
)

PAPERNOTES = ("https://en.papernotes.org/ACL2025/knowledge_editing/"
              "mitigating_negative_interference_in_multilingual_sequential_knowledge_editing_th/")


def test_available_tables():
    assert available_tables() == ["table1"]


@pytest.mark.parametrize("table", available_tables())
def test_table_is_well_formed(table):
    df = load_paper_table(table)
    assert list(df.columns) == COLUMNS
    assert len(df) > 0
    assert pd.api.types.is_float_dtype(df["value"])
    assert df["value"].notna().all()
    # Editing metrics and XTREME F1 are percentages.
    assert set(df["unit"]) == {"%"}
    assert df["value"].between(0, 100).all()
    # Every row names the text it was copied from.
    assert df["source"].notna().all()
    assert df["source"].str.startswith("https://").all()
    assert df["source_type"].notna().all()
    assert df["source_type"].str.match(r"^(primary|secondary)").all()
    # No key repeated: one number per (model, dataset, method, metric, language).
    key = ["table", "model", "dataset", "method", "metric", "language"]
    assert not df.duplicated(key).any()
    for col in key:
        assert df[col].notna().all() and (df[col].astype(str).str.len() > 0).all()


def test_every_csv_in_package_is_listed():
    # No CSV in langedit/paper is orphaned from the loader.
    csvs = sorted(p.name for p in resources.files("langedit").joinpath("paper").iterdir()
                  if p.name.endswith(".csv"))
    assert csvs == ["table1_main.csv"]


def test_table1_shape_and_labels():
    df = load_paper_table(1)
    assert set(df["table"]) == {"1"}
    assert set(df["dataset"]) == {"mzsre"}
    assert set(df["language"]) == {"avg"}
    assert set(df["metric"]) == {"efficacy", "generality", "specificity", "xtreme_f1"}
    assert set(df["model"]) == {"Llama3-8B", "Qwen2.5-7B", "GPT-J-6B"}
    assert len(df) == 32
    assert set(df["source"]) == {PAPERNOTES}


def _cell(df, model, method, metric):
    sel = df[(df.model == model) & (df.method == method) & (df.metric == metric)]
    assert len(sel) == 1, (model, method, metric)
    return sel["value"].item()


@pytest.mark.parametrize("model,method,metric,expected", [
    ("Llama3-8B", "Pre-edited", "efficacy", 31.15),
    ("Llama3-8B", "Pre-edited", "xtreme_f1", 69.30),
    ("Llama3-8B", "MEMIT", "specificity", 0.67),
    ("Llama3-8B", "AlphaEdit", "generality", 75.84),
    ("Llama3-8B", "LangEdit", "efficacy", 82.54),
    ("Llama3-8B", "LangEdit", "xtreme_f1", 66.24),
    ("Qwen2.5-7B", "AlphaEdit", "specificity", 42.58),
    ("Qwen2.5-7B", "LangEdit", "generality", 87.02),
    ("GPT-J-6B", "AlphaEdit", "xtreme_f1", 36.74),
    ("GPT-J-6B", "LangEdit", "specificity", 27.23),
])
def test_table1_cells_match_source(model, method, metric, expected):
    assert _cell(load_paper_table(1), model, method, metric) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("alias", [1, "1", "table1", "Table 1", "table1_main", " TABLE_1 "])
def test_table_aliases(alias):
    pd.testing.assert_frame_equal(load_paper_table(alias), load_paper_table("table1"))


@pytest.mark.parametrize("table", [2, 3, 4, 5, 6, 7, 8])
def test_not_found_tables_raise_clearly(table):
    with pytest.raises(PaperTableNotAvailable, match="could not be retrieved"):
        load_paper_table(table)


@pytest.mark.parametrize("table", [0, 9, "nope", "table", True, None, 1.0])
def test_unknown_tables_raise(table):
    with pytest.raises(PaperTableNotAvailable):
        load_paper_table(table)
    assert issubclass(PaperTableNotAvailable, LookupError)
