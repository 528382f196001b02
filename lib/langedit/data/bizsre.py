"""Bi-ZsRE (Wang et al. 2024a; the paper's ``bzsre``) as English and Chinese edit requests.

``bizsre/bizsre_test.json`` is one list of records ``{"en": {...}, "zh": {...}}`` with MzsRE's fields
(subject, src, rephrase, alt, loc, loc_ans, portability), the same fact on both sides, so the record
index is the fact id shared by the two languages (``case_id``). Records are validated, and requests
built, by the MzsRE code (:mod:`langedit.data.mzsre`), with ``dataset="bzsre"``; the Chinese
request's ``english_twin`` is the English side of the same record.

Selection is MzsRE's parallel design: one seeded permutation of all record indices, walked in order,
keeping a record only if its subject was located in *every* requested language (the others are
counted and reported, never edited). The paper samples 800 facts per language.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from .mzsre import MzsrePool, build_request, check_count, english_request, read_pair_file, sample_case_ids
from .records import EditRequest, RejectedRecord
from .report import subject_location_report

logger = logging.getLogger(__name__)

#: Data-directory path of the Bi-ZsRE test file (pinned in manifest.json).
BIZSRE_RELATIVE_PATH = "bizsre/bizsre_test.json"
#: The languages Bi-ZsRE has (ISO 639-1, also its record keys).
BIZSRE_LANGUAGES: tuple[str, ...] = ("en", "zh")
#: The name on every request and rejection (the paper's dataset name).
DATASET = "bzsre"


def normalize_bizsre_languages(languages: str | Iterable[str]) -> list[str]:
    """Validate the language list: only ``en``/``zh``, no duplicates, not empty (ValueError otherwise)."""
    requested = [languages] if isinstance(languages, str) else list(languages)
    supported = ", ".join(BIZSRE_LANGUAGES)
    if not requested:
        raise ValueError(f"no languages requested; supported Bi-ZsRE languages: {supported}")
    for language in requested:
        if language not in BIZSRE_LANGUAGES:
            raise ValueError(f"unsupported Bi-ZsRE language {language!r}; supported: {supported}")
    duplicates = sorted({lang for lang in requested if requested.count(lang) > 1})
    if duplicates:
        raise ValueError(f"languages listed more than once: {duplicates}")
    return requested


def _request_or_rejection(case_id: int, language: str, english_side: dict, chinese_side: dict,
                          twin: EditRequest) -> EditRequest | RejectedRecord:
    if language == "en":
        return twin
    return build_request(case_id, language, chinese_side, english_side, twin, DATASET)


def load_bizsre_pool(languages: str | Iterable[str] = BIZSRE_LANGUAGES,
                     data_dir: str | os.PathLike | None = None) -> MzsrePool:
    """Every Bi-ZsRE record of ``languages`` with its subject located (``requests``) or rejected."""
    requested = normalize_bizsre_languages(languages)
    # Both sides are validated whatever is requested: a malformed record is a bad file either way.
    pairs = read_pair_file(BIZSRE_RELATIVE_PATH, "zh", data_dir)
    requests = {language: {} for language in requested}
    rejected = {language: [] for language in requested}
    for case_id, (english_side, chinese_side) in enumerate(pairs):
        twin = english_request(case_id, english_side, DATASET)
        for language in requested:
            built = _request_or_rejection(case_id, language, english_side, chinese_side, twin)
            if isinstance(built, RejectedRecord):
                rejected[language].append(built)
            else:
                requests[language][case_id] = built
    return MzsrePool(requests=requests, rejected=rejected, n_records=len(pairs))


def _check_available(pool: MzsrePool, n_per_language: int | None) -> None:
    available = len(pool.eligible_case_ids())
    if n_per_language is not None and n_per_language > available:
        raise ValueError(
            f"asked for {n_per_language} Bi-ZsRE requests per language but only {available} of "
            f"{pool.n_records} records have a located subject in all of {list(pool.requests)}")


def load_bizsre(
    languages: str | Iterable[str] = BIZSRE_LANGUAGES,
    n_per_language: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> dict[str, list[EditRequest]]:
    """Bi-ZsRE edit requests ``{language: [EditRequest, ...]}``, the same facts in every language.

    The first ``n_per_language`` records of a seeded permutation of all record indices that are
    located in every requested language; ``None`` returns all of them in file order. Logs (INFO) the
    subject-location counts of the whole file and of the selection, and prints the selection's
    counts unless ``verbose=False``.
    """
    check_count(n_per_language)
    pool = load_bizsre_pool(languages, data_dir)
    _check_available(pool, n_per_language)
    case_ids = sample_case_ids(pool, n_per_language, seed)
    selected = {language: [by_case[c] for c in case_ids] for language, by_case in pool.requests.items()}
    skipped = pool.n_records - len(pool.eligible_case_ids())
    logger.info("Bi-ZsRE subject location over all %d records (unlocated records are never edited):\n%s",
                pool.n_records, pool.report().to_string())
    logger.info("Bi-ZsRE selection: %d per language, seed %d; %d records skipped because a requested language "
                "could not locate the subject:\n%s", len(case_ids), seed, skipped,
                subject_location_report(selected).to_string())
    if verbose:
        print(f"Bi-ZsRE: {len(case_ids)} facts per language (seed {seed}); {skipped} records skipped because a "
              f"requested language could not locate the subject. Subject located by rule:\n"
              f"{subject_location_report(selected).to_string()}")
    return selected
