"""Counting which subject-location rule handled each record, for logs and papers' data sections."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from .subjects import RULES


def subject_location_report(records_by_language: Mapping[str, Iterable[Any]]) -> pd.DataFrame:
    """Counts per language (rows) and subject-location rule (columns), with a ``total`` column.

    Accepts EditRequests and RejectedRecords (anything with ``subject_rule``), so the same table
    describes a whole file (with its rejections) or a sample.
    """
    rows = {}
    for language, records in records_by_language.items():
        counts = dict.fromkeys(RULES, 0)
        for record in records:
            counts[record.subject_rule] = counts.get(record.subject_rule, 0) + 1
        rows[language] = counts
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(RULES)).fillna(0).astype(int)
    table["total"] = table.sum(axis=1)
    table.index.name = "language"
    return table
