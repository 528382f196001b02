"""The stored paper numbers load, are well formed, and match the raw files and the paper's text.

Three independent references: the package CSVs read with the csv module (not pandas), values typed in
from the paper's text (paper_text.md, Tables 1-8), and -- where ../shared/paper is on this machine --
the shared transcription and the paper's text themselves (skipped elsewhere)."""
import csv
import os
import re
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from langedit.notebook_support import paper_table
from langedit.paper_results import (
    TABLE_COLUMNS,
    TEXT_COLUMNS,
    PaperTableNotAvailable,
    available_tables,
    load_paper_table,
    load_paper_text_numbers,
    paper_table_file,
)

PACKAGE_FILES = ["table1_main.csv", "table2_4_cost.csv", "table5_variants.csv", "table6_7_transfer.csv",
                 "table8_mlake.csv"]


def _shared_paper() -> Path:
    """../shared/paper: LANGEDIT_PAPER_DIR, else beside LANGEDIT_DATA_DIR, else /work/shared/paper."""
    if os.environ.get("LANGEDIT_PAPER_DIR"):
        return Path(os.environ["LANGEDIT_PAPER_DIR"])
    if os.environ.get("LANGEDIT_DATA_DIR"):
        return Path(os.environ["LANGEDIT_DATA_DIR"]).parent / "paper"
    return Path("/work/shared/paper")


SHARED = _shared_paper()
needs_shared = pytest.mark.skipif(not (SHARED / "paper_text.md").exists(),
                                  reason=f"the shared paper folder {SHARED} is not on this machine")


def _package_csv(name: str) -> list[dict[str, str]]:
    with resources.as_file(resources.files("langedit").joinpath("paper", name)) as path:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))


# --- interface ---------------------------------------------------------------------------------------------

def test_available_tables():
    assert available_tables() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_every_csv_in_package_is_used():
    csvs = sorted(p.name for p in resources.files("langedit").joinpath("paper").iterdir() if p.name.endswith(".csv"))
    used = {paper_table_file(n) for n in available_tables()} | {"text_numbers.csv"}
    assert csvs == sorted(used) == sorted(PACKAGE_FILES + ["text_numbers.csv"])


@pytest.mark.parametrize("table", available_tables())
def test_table_loads_with_its_columns(table):
    df = load_paper_table(table)
    assert list(df.columns) == TABLE_COLUMNS[table]
    assert len(df) > 0
    assert "table" not in df
    assert df.notna().all().all()
    numeric = df.select_dtypes("number")
    assert numeric.shape[1] > 0
    if table not in (2, 3, 4):  # scores are percentages; cost tables hold seconds and GB
        assert ((numeric >= 0) & (numeric <= 100)).all().all()


@pytest.mark.parametrize("table,rows", [(1, 192), (2, 7), (3, 7), (4, 7), (5, 4), (6, 4), (7, 6), (8, 4)])
def test_row_counts(table, rows):
    assert len(load_paper_table(table)) == rows


def test_table1_labels():
    df = load_paper_table(1)
    assert set(df["model"]) == {"Llama3-8B", "Qwen2.5-7B", "GPT-J-6B"}
    assert list(dict.fromkeys(df["method"])) == ["Pre-edited", "FT", "ROME", "MEMIT", "PRUNE", "RECT", "AlphaEdit",
                                                 "LangEdit"]
    assert set(df["dataset"]) == {"mzsre", "bzsre"}
    assert set(df["metric"]) == {"efficacy", "generality", "specificity", "xtreme_f1"}
    assert df["significant"].dtype == bool
    assert not df.duplicated(["model", "method", "dataset", "metric"]).any()
    # the asterisk marks LangEdit only
    assert set(df.loc[df["significant"], "method"]) == {"LangEdit"}


def test_combined_files_split_by_table():
    assert set(load_paper_table(2)["model"]) == {"Llama3-8B"}
    assert set(load_paper_table(3)["model"]) == {"GPT-J-6B"}
    assert set(load_paper_table(4)["model"]) == {"Qwen2.5-7B"}
    assert set(load_paper_table(6)["test_language"]) == {"fr", "es"}
    assert set(load_paper_table(7)["test_language"]) == {"en", "de", "nl"}
    assert paper_table_file(2) == paper_table_file(4) == "table2_4_cost.csv"
    assert paper_table_file("Table 7") == "table6_7_transfer.csv"


@pytest.mark.parametrize("alias", [1, "1", "table1", "Table 1", " TABLE_1 ", "table-1"])
def test_table_aliases(alias):
    pd.testing.assert_frame_equal(load_paper_table(alias), load_paper_table(1))


@pytest.mark.parametrize("table", [0, 9, -1, "9", "table9", "nope", "table", "table1_main", True, None, 1.0])
def test_unknown_tables_raise(table):
    with pytest.raises(PaperTableNotAvailable, match="not a paper table|has no Table"):
        load_paper_table(table)
    assert issubclass(PaperTableNotAvailable, LookupError)


# --- values: the loader against the package files read with csv ----------------------------------------------

def _rows_as_strings(df: pd.DataFrame) -> list[tuple[str, ...]]:
    def text(v):
        if isinstance(v, bool):
            return str(int(v))
        return f"{v:g}" if isinstance(v, float) else str(v)
    return [tuple(text(v) for v in row) for row in df.itertuples(index=False)]


@pytest.mark.parametrize("table", available_tables())
def test_loader_returns_every_row_of_the_file(table):
    raw = [r for r in _package_csv(paper_table_file(table)) if r.get("table", str(table)) == str(table)]
    expected = [tuple(f"{float(r[c]):g}" if re.fullmatch(r"-?[\d.]+", r[c]) else r[c] for c in TABLE_COLUMNS[table])
                for r in raw]
    assert _rows_as_strings(load_paper_table(table)) == expected


# --- values: typed in from the paper's text ------------------------------------------------------------------

def _t1(model, method, dataset, metric):
    df = load_paper_table(1)
    row = df[(df.model == model) & (df.method == method) & (df.dataset == dataset) & (df.metric == metric)]
    assert len(row) == 1
    return row.iloc[0]


@pytest.mark.parametrize("model,method,dataset,metric,mean,std,significant", [
    ("Llama3-8B", "Pre-edited", "mzsre", "xtreme_f1", 69.30, 0.21, False),
    ("Llama3-8B", "LangEdit", "mzsre", "efficacy", 82.54, 0.14, True),
    ("Llama3-8B", "RECT", "bzsre", "xtreme_f1", 55.97, 3.44, False),
    ("Qwen2.5-7B", "LangEdit", "mzsre", "generality", 87.02, 0.41, False),  # no asterisk in the paper
    ("Qwen2.5-7B", "MEMIT", "bzsre", "efficacy", 75.75, 0.06, False),
    ("GPT-J-6B", "RECT", "mzsre", "specificity", 26.26, 0.36, False),  # the garbled "26.26 <sub>36</sub>"
    ("GPT-J-6B", "LangEdit", "bzsre", "specificity", 15.31, 0.05, False),
    ("GPT-J-6B", "LangEdit", "bzsre", "xtreme_f1", 35.75, 0.94, True),
])
def test_table1_cells(model, method, dataset, metric, mean, std, significant):
    row = _t1(model, method, dataset, metric)
    assert (row["mean"], row["std"], row["significant"]) == (pytest.approx(mean), pytest.approx(std), significant)


@pytest.mark.parametrize("table,key,column,expected", [
    (2, "LangEdit", "seconds_per_batch_of_100", 1549), (2, "AlphaEdit", "seconds_per_batch_of_100", 1277),
    (2, "LangEdit", "memory_gb", 41.5), (3, "ROME", "seconds_per_batch_of_100", 1509), (3, "FT", "memory_gb", 28.1),
    (4, "MEMIT", "seconds_per_batch_of_100", 450), (4, "LangEdit", "memory_gb", 38.3),
    (5, "AlphaEdit (multilingual)", "bzsre_xtreme_f1", 4.66),
    (5, "LangEdit (shuffle order)", "mzsre_specificity", 32.77),
    (5, "AlphaEdit (translation)", "mzsre_xtreme_f1", 75.53),
    (8, ("LangEdit", "multi-hop"), "efficacy", 90.05), (8, ("AlphaEdit (adapted)", "single-hop"), "xtreme_f1", 69.96),
])
def test_tables_2_to_5_and_8_cells(table, key, column, expected):
    df = load_paper_table(table)
    if table == 8:
        row = df[(df.method == key[0]) & (df.setting == key[1])]
    else:
        row = df[df["variant" if table == 5 else "method"] == key]
    assert len(row) == 1
    assert row[column].item() == pytest.approx(expected)


@pytest.mark.parametrize("table,language,system,efficacy,generality,specificity", [
    (6, "fr", "LangEdit", 56.41, 53.91, 30.54), (6, "es", "unedited", 31.71, 31.62, 31.33),
    (7, "en", "LangEdit", 59.02, 57.37, 31.14), (7, "nl", "unedited", 30.62, 30.14, 30.37),
])
def test_transfer_cells(table, language, system, efficacy, generality, specificity):
    df = load_paper_table(table)
    row = df[(df.test_language == language) & (df.system == system)]
    assert len(row) == 1
    assert row[["efficacy", "generality", "specificity"]].iloc[0].tolist() == pytest.approx(
        [efficacy, generality, specificity])
    # the edited group never contains the test language ("never seen in the edits")
    assert language not in row["edited_languages_inferred"].item().split("+")


def test_paper_cost_ratio():
    t2 = load_paper_table(2).set_index("method")["seconds_per_batch_of_100"]
    assert t2["LangEdit"] / t2["AlphaEdit"] == pytest.approx(1.213, abs=1e-3)  # issue 14: 1549/1277 = 1.21


# --- notebook view -----------------------------------------------------------------------------------------

def test_paper_table_wide_view():
    wide = paper_table(1, dataset="mzsre")
    assert list(wide.columns) == ["source", "model", "dataset", "method", "efficacy", "generality", "specificity",
                                  "xtreme_f1"]
    assert len(wide) == 24 and set(wide["source"]) == {"paper (reported)"}
    assert list(wide["method"][:8]) == ["Pre-edited", "FT", "ROME", "MEMIT", "PRUNE", "RECT", "AlphaEdit", "LangEdit"]
    lang = wide[(wide.model == "Llama3-8B") & (wide.method == "LangEdit")]
    assert lang[["efficacy", "xtreme_f1"]].iloc[0].tolist() == pytest.approx([82.54, 66.24])
    assert len(paper_table(1)) == 48
    assert list(paper_table(2).columns) == ["source"] + TABLE_COLUMNS[2]
    with pytest.raises(ValueError, match="no dataset 'xnli'"):
        paper_table(1, dataset="xnli")
    with pytest.raises(ValueError, match="no dataset column"):
        paper_table(8, dataset="mzsre")


# --- text numbers ------------------------------------------------------------------------------------------

def test_text_numbers_well_formed():
    df = load_paper_text_numbers()
    assert list(df.columns) == TEXT_COLUMNS
    assert len(df) == 27
    assert set(df["figure"].dropna()) == {3, 4}
    assert set(df["stat"]) == {"value", "min", "max"}
    assert df["quote"].str.len().gt(20).all()
    for value, quote in zip(df["value"], df["quote"]):  # each number is printed in its sentence
        assert f"{abs(value):.2f}" in quote
    ranges = df[df["stat"] != "value"]
    lows = ranges[ranges["stat"] == "min"].reset_index(drop=True)
    highs = ranges[ranges["stat"] == "max"].reset_index(drop=True)
    assert (lows[["metric", "difference"]] == highs[["metric", "difference"]]).all().all()
    assert (lows["value"] < highs["value"]).all()


def test_figure4_ranges():
    f4 = load_paper_text_numbers(4)
    def pick(difference, metric, stat):
        return f4[(f4.difference == difference) & (f4.metric == metric) & (f4["stat"] == stat)]["value"].item()
    multi = "AlphaEdit (mono) - AlphaEdit (multi)"
    assert (pick(multi, "efficacy", "min"), pick(multi, "efficacy", "max")) == (0.10, 3.27)
    assert (pick(multi, "xtreme_f1", "min"), pick(multi, "xtreme_f1", "max")) == (3.20, 15.19)
    lang = "AlphaEdit (mono) - LangEdit"
    assert (pick(lang, "xtreme_f1", "min"), pick(lang, "xtreme_f1", "max")) == (0.20, 9.29)
    above = f4[f4.difference == "LangEdit - AlphaEdit (mono)"].set_index("language")["value"].to_dict()
    assert above == {"en": 1.10, "de": 3.01, "nl": 2.58, "fr": 3.95}


@pytest.mark.parametrize("figure", [2, 5])
def test_figures_without_numbers_raise(figure):
    with pytest.raises(PaperTableNotAvailable, match="prints no numbers"):
        load_paper_text_numbers(figure)


def test_unknown_figure_raises():
    with pytest.raises(PaperTableNotAvailable, match="no numbers for Figure 9"):
        load_paper_text_numbers(9)


def _mean_t1(model, method, dataset, metric):
    return _t1(model, method, dataset, metric)["mean"]


def test_section42_numbers_follow_from_table1():
    """Sec. 4.2's differences recomputed from Table 1; the one the paper gets wrong is marked in `note`."""
    s42 = load_paper_text_numbers()
    s42 = s42[s42["element"].str.startswith("Sec. 4.2")]
    models = ["Llama3-8B", "Qwen2.5-7B", "GPT-J-6B"]
    checked = 0
    for row in s42.itertuples():
        method, reference = row.difference.split(" - ")
        members = models if row.model == "mean of 3 models" else [row.model]
        derived = sum(_mean_t1(m, method, row.dataset, row.metric) - _mean_t1(m, reference, row.dataset, row.metric)
                      for m in members) / len(members)
        if "disagree" in row.note:
            assert abs(derived - row.value) > 0.05, "marked as disagreeing with Table 1 but it agrees"
        else:
            assert derived == pytest.approx(row.value, abs=0.006), row
        checked += 1
    assert checked == 11
    assert s42["note"].str.contains("disagree").sum() == 1


# --- against ../shared/paper (where it exists) ---------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("name", PACKAGE_FILES)
def test_package_copies_equal_the_shared_files(name):
    with resources.as_file(resources.files("langedit").joinpath("paper", name)) as path:
        assert Path(path).read_bytes() == (SHARED / name).read_bytes()


@needs_shared
def test_spot_values_against_shared_csv():
    with open(SHARED / "table1_main.csv", newline="") as f:
        shared = {(r["model"], r["method"], r["dataset"], r["metric"]): r for r in csv.DictReader(f)}
    df = load_paper_table(1)
    for row in df.sample(20, random_state=0).itertuples():
        raw = shared[(row.model, row.method, row.dataset, row.metric)]
        expected = (float(raw["mean"]), float(raw["std"]), raw["significant"] == "1")
        assert (row.mean, row.std, row.significant) == expected
    with open(SHARED / "table6_7_transfer.csv", newline="") as f:
        raw7 = [r for r in csv.DictReader(f) if r["table"] == "7"]
    assert load_paper_table(7)["generality"].tolist() == [float(r["generality"]) for r in raw7]


@needs_shared
def test_text_quotes_occur_in_the_paper():
    text = (SHARED / "paper_text.md").read_text(encoding="utf-8")
    for quote in load_paper_text_numbers()["quote"]:
        assert quote in text, quote


@needs_shared
def test_table1_against_the_papers_text():
    """Every Table 1 cell parsed from the paper's text (mean, std, asterisk) equals the stored one."""
    lines = (SHARED / "paper_text.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Model\tMethods\tmzsre"))
    columns = [(d, m) for d in ("mzsre", "bzsre") for m in ("efficacy", "generality", "specificity", "xtreme_f1")]
    parsed, model = {}, None
    for line in lines[start + 2:]:
        parts = line.split("\t")
        if len(parts) != 10:
            break
        model = parts[0] or model
        for (dataset, metric), cell in zip(columns, parts[2:]):
            cell = re.sub(r"</?(u|b|sub)>", "", cell)
            mean, std, star = re.fullmatch(r"\s*([\d.]+)\s*(?:\$\\pm\$)?\s*([\d.]+)(\*?)\s*", cell).groups()
            std = "0.36" if (model, parts[1], dataset, metric) == ("GPT-J-6B", "RECT", "mzsre", "specificity") else std
            parsed[(model, parts[1], dataset, metric)] = (float(mean), float(std), star == "*")
    stored = {(r.model, r.method, r.dataset, r.metric): (r.mean, r.std, r.significant)
              for r in load_paper_table(1).itertuples()}
    assert len(parsed) == 192
    assert stored == parsed
