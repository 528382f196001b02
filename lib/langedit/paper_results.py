"""The LangEdit paper's own reported numbers, for showing beside our measured ones.

These are numbers *reported by* Sun et al., "Mitigating Negative Interference in
Multilingual Sequential Knowledge Editing through Null-Space Constraints"
(ACL 2025 Findings, arXiv 2506.10800) -- not numbers this suite measured.  Each
row carries the URL of the text it was copied from (column ``source``) and the
kind of source (column ``source_type``).  See ``langedit/paper/README.md`` for
which paper tables were found, which were not, and the caveats.

    >>> from langedit.paper_results import available_tables, load_paper_table
    >>> available_tables()
    ['table1']
    >>> df = load_paper_table(1)          # or "1", "table1", "table1_main"
"""
from __future__ import annotations

import re
from importlib import resources

import pandas as pd

__all__ = ["PaperTableNotAvailable", "COLUMNS", "available_tables", "load_paper_table"]

#: Columns every paper CSV has, in order (tidy / long format, one number per row).
COLUMNS = ["table", "model", "dataset", "method", "metric", "language", "value", "unit", "source",
           "source_type"]

# table key -> CSV file in langedit/paper/.  Only tables whose numbers were actually
# retrieved from a source text are listed; see paper/README.md for the rest.
_FILES = {
    "table1": "table1_main.csv",
}

# Paper tables that exist in the paper but whose numbers could not be retrieved.
_NOT_FOUND = {f"table{i}" for i in range(2, 9)}


class PaperTableNotAvailable(LookupError):
    """Raised for a table that is unknown or whose numbers are not stored."""


def available_tables() -> list[str]:
    """Keys of the paper tables stored in this package, e.g. ``['table1']``."""
    return sorted(_FILES, key=lambda k: int(k[len("table"):]))


def _normalise(table: str | int) -> str:
    if isinstance(table, bool):  # bool is an int subclass; reject it explicitly
        raise PaperTableNotAvailable(f"not a paper table: {table!r}")
    if isinstance(table, int):
        return f"table{table}"
    if isinstance(table, str):
        s = table.strip().lower()
        m = re.fullmatch(r"(?:table[\s_-]*)?(\d+)(?:_[a-z0-9_]+)?", s)
        if m:
            return f"table{int(m.group(1))}"
        return s
    raise PaperTableNotAvailable(f"not a paper table: {table!r}")


def load_paper_table(table: str | int) -> pd.DataFrame:
    """The paper's reported numbers for one table, as a tidy DataFrame.

    ``table`` may be ``1``, ``"1"``, ``"table1"``, ``"Table 1"`` or the file stem
    ``"table1_main"``.  Columns are :data:`COLUMNS`; ``value`` is a float in the
    unit given by ``unit`` (``%`` for the editing metrics).  Raises
    :class:`PaperTableNotAvailable` for an unknown table or one whose numbers
    could not be found.
    """
    key = _normalise(table)
    if key not in _FILES:
        if key in _NOT_FOUND:
            why = "its numbers could not be retrieved from any source (see langedit/paper/README.md)"
        else:
            why = "the paper has no such table"
        raise PaperTableNotAvailable(
            f"paper table {table!r} is not available: {why}; available: {available_tables()}")
    path = resources.files("langedit").joinpath("paper", _FILES[key])
    with resources.as_file(path) as p:
        df = pd.read_csv(p, dtype={"table": str, "language": str})
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
    return df[COLUMNS]
