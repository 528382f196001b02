"""The LangEdit paper's own reported numbers, for showing beside our measured ones.

These are numbers *reported by* Sun et al., "Mitigating Negative Interference in
Multilingual Sequential Knowledge Editing through Null-Space Constraints"
(ACL 2025 Findings, arXiv 2506.10800) -- not numbers this suite measured.  They were
transcribed from the paper's PDF; ``langedit/paper/README.md`` says what each file holds.

    >>> from langedit.paper_results import available_tables, load_paper_table, load_paper_text_numbers
    >>> available_tables()
    [1, 2, 3, 4, 5, 6, 7, 8]
    >>> t1 = load_paper_table(1)            # or "1", "table1", "Table 1"
    >>> text = load_paper_text_numbers(4)   # the numbers §4.4 gives for Figure 4

Every table comes in the columns of its file (:data:`TABLE_COLUMNS`); tables printed
together in one file (2-4, 6-7) are that file's rows for the table asked for.
"""
from __future__ import annotations

import re
from importlib import resources

import pandas as pd

__all__ = ["PaperTableNotAvailable", "TABLE_COLUMNS", "TABLE_TITLES", "TEXT_COLUMNS", "available_tables",
           "load_paper_table", "load_paper_text_numbers", "paper_table_file"]

# table -> (file in langedit/paper/, value of the file's `table` column, or None for a one-table file)
_SOURCES: dict[int, tuple[str, int | None]] = {
    1: ("table1_main.csv", None),
    2: ("table2_4_cost.csv", 2),
    3: ("table2_4_cost.csv", 3),
    4: ("table2_4_cost.csv", 4),
    5: ("table5_variants.csv", None),
    6: ("table6_7_transfer.csv", 6),
    7: ("table6_7_transfer.csv", 7),
    8: ("table8_mlake.csv", None),
}

_COST = ["model", "method", "seconds_per_batch_of_100", "memory_gb"]
_TRANSFER = ["model", "edited_languages_inferred", "test_language", "system", "efficacy", "generality",
             "specificity"]
#: Columns of each table as returned by :func:`load_paper_table` (the file's, less its `table` column).
TABLE_COLUMNS: dict[int, list[str]] = {
    1: ["model", "method", "dataset", "metric", "mean", "std", "significant"],
    2: _COST, 3: _COST, 4: _COST,
    5: ["model", "variant", "mzsre_efficacy", "mzsre_generality", "mzsre_specificity", "mzsre_xtreme_f1",
        "bzsre_efficacy", "bzsre_generality", "bzsre_specificity", "bzsre_xtreme_f1"],
    6: _TRANSFER, 7: _TRANSFER,
    8: ["model", "method", "setting", "efficacy", "xtreme_f1"],
}

#: What each table is, in a few words (the paper's captions, shortened).
TABLE_TITLES: dict[int, str] = {
    1: "main results: 3 models x 8 methods x mzsre/bzsre, mean and std over 3 seeds",
    2: "cost per batch of 100 edits, Llama3-8B (A100-80GB, MzsRE)",
    3: "cost per batch of 100 edits, GPT-J-6B (A100-80GB, MzsRE)",
    4: "cost per batch of 100 edits, Qwen2.5-7B (A100-80GB, MzsRE)",
    5: "variants on Llama3-8B: AlphaEdit translation / multilingual, LangEdit shuffled order",
    6: "cross-lingual transfer, Llama3-8B, test languages fr and es",
    7: "cross-lingual transfer, Llama3-8B, test languages en, de and nl",
    8: "MLaKE (en/de/fr), Llama3-8B: single-hop and multi-hop settings",
}

#: Columns of :func:`load_paper_text_numbers` (numbers the paper's text gives outside its tables).
TEXT_COLUMNS = ["element", "figure", "model", "dataset", "metric", "difference", "language", "stat", "value",
                "quote", "note"]
_TEXT_FILE = "text_numbers.csv"
_FIGURES_WITHOUT_NUMBERS = {2: "Figure 2 (XTREME F1 against the number of edits) prints no numbers",
                            5: "Figure 5 (causal tracing) prints no numbers; App. A.1 describes it in words"}


class PaperTableNotAvailable(LookupError):
    """Raised for a table (or figure) of which the paper prints no numbers, or that it does not have."""


def available_tables() -> list[int]:
    """Numbers of the paper tables stored in this package: ``[1, ..., 8]``."""
    return sorted(_SOURCES)


def _table_number(table: int | str) -> int:
    """1 from 1, "1", "table1", "Table 1", "table_1"; anything else raises."""
    if isinstance(table, bool):  # bool is an int subclass: True is not Table 1
        raise PaperTableNotAvailable(f"not a paper table: {table!r}")
    if isinstance(table, int):
        number = table
    elif isinstance(table, str) and (m := re.fullmatch(r"(?:table[\s_-]*)?(\d+)", table.strip().lower())):
        number = int(m.group(1))
    else:
        raise PaperTableNotAvailable(
            f"not a paper table: {table!r}; give its number, one of {available_tables()}")
    if number not in _SOURCES:
        raise PaperTableNotAvailable(
            f"the paper has no Table {number}; its tables are {available_tables()}")
    return number


def _read(name: str, **kwargs) -> pd.DataFrame:
    with resources.as_file(resources.files("langedit").joinpath("paper", name)) as path:
        return pd.read_csv(path, **kwargs)


def paper_table_file(table: int | str) -> str:
    """The file in ``langedit/paper/`` that holds `table` (shared by Tables 2-4 and by Tables 6-7)."""
    return _SOURCES[_table_number(table)][0]


def load_paper_table(table: int | str) -> pd.DataFrame:
    """The paper's reported numbers of one table, in the columns :data:`TABLE_COLUMNS` gives.

    ``table`` is the table's number (``1``, ``"1"``, ``"table1"``, ``"Table 1"``).  Scores are
    percentages (0-100) as printed; Table 1's ``significant`` is the paper's asterisk (paired
    t-test, p = 0.05), as a bool.  Raises :class:`PaperTableNotAvailable` for anything else.
    """
    number = _table_number(table)
    name, key = _SOURCES[number]
    frame = _read(name)
    if key is not None:
        # Several tables in one file: keep this table's rows; the column is constant afterwards.
        frame = frame[frame.pop("table") == key].reset_index(drop=True)
    expected = TABLE_COLUMNS[number]
    if list(frame.columns) != expected or frame.empty:
        raise ValueError(f"langedit/paper/{name} does not hold Table {number} as expected: columns "
                         f"{list(frame.columns)} (expected {expected}), {len(frame)} rows")
    if number == 1:
        frame["significant"] = frame["significant"].map({0: False, 1: True}).astype(bool)
    return frame


def load_paper_text_numbers(figure: int | None = None) -> pd.DataFrame:
    """Numbers the paper's text gives outside its tables (Sec. 4.2 on Table 1; Figures 3 and 4).

    One number per row, in percentage points, columns :data:`TEXT_COLUMNS`: ``difference`` says
    what minus what (e.g. ``"AlphaEdit (mono) - AlphaEdit (multi)"``), ``stat`` is ``value`` or
    the ``min``/``max`` of a range over languages, ``quote`` the sentence it was read from.
    ``figure`` keeps one figure's rows; Figures 2 and 5 print no numbers and raise
    :class:`PaperTableNotAvailable`, as does a figure the paper does not have.
    """
    frame = _read(_TEXT_FILE, dtype={c: str for c in TEXT_COLUMNS if c != "value"}, keep_default_na=False)
    frame["value"] = frame["value"].astype(float)
    frame["figure"] = pd.array([int(f) if f else None for f in frame["figure"]], dtype="Int64")
    if figure is None:
        return frame
    if figure in _FIGURES_WITHOUT_NUMBERS:
        raise PaperTableNotAvailable(_FIGURES_WITHOUT_NUMBERS[figure])
    rows = frame[(frame["figure"] == figure).fillna(False).astype(bool)].reset_index(drop=True)
    if rows.empty:
        raise PaperTableNotAvailable(f"the paper's text gives no numbers for Figure {figure!r}; "
                                     f"stored: Figures {sorted({int(f) for f in frame['figure'].dropna()})}")
    return rows
