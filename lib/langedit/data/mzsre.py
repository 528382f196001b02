"""MzsRE (multilingual zsRE, from ReMaKE) as edit requests in the paper's six languages
(en/de/nl/es/fr/zh, ``LANGUAGES``, the default everywhere) or all twelve MzsRE has
(``MZSRE_LANGUAGES_ALL``: also cs/pt/ru/th/tr/vi).

Each pair file ``mzsre/mzsre_test_duplicate_en<xx>.json`` holds records ``{"en": {...}, "<xx>": {...}}``
for the same facts in the same order, so the record index is a fact id shared across languages
(``case_id``). The API uses ISO 639-1 codes; the files' own codes appear only in file names and
record keys: Dutch is ``du`` there and ``nl`` here, Czech ``cz`` there and ``cs`` here
(``FILE_CODES``). English requests come from the ``en`` side of the en-de file; every other
language's ``english_twin`` is the ``en`` side of its own pair file (identical across files).

Two designs of which facts each language edits (``design``), both from one seeded permutation of
all case ids, walked in order, keeping a case only if its subject was located in *every* requested
language (records whose subject cannot be located are skipped, counted, never edited):

``parallel`` (default)
    every language edits the same facts, its own translation of each: the first ``n`` eligible
    ids. A later language re-writes the facts earlier languages wrote (with the same target), so
    cross-lingual transfer can mask interference. The paper's design as far as its text and the
    released loader show (README, "Which facts each language edits").
``disjoint``
    each language edits different facts: the eligible ids are dealt round-robin over the languages
    in the order given (language ``i`` takes ids ``i, i+L, i+2L, ...``), so no fact is edited in two
    languages, a language's first ``k`` facts do not depend on ``n``, and the pool is the same as
    for ``parallel`` (each fact can still be evaluated in every language).
"""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .download import manifest_entry, read_json
from .records import LANGUAGES, MZSRE_LANGUAGES_ALL, DataFormatError, EditRequest, RejectedRecord
from .report import subject_location_report
from .subjects import locate_subject, template_from_span

logger = logging.getLogger(__name__)

#: Our (ISO) language code -> the code used in the ReMaKE file names and record keys.
FILE_CODES: dict[str, str] = {"de": "de", "nl": "du", "es": "es", "fr": "fr", "zh": "zh",
                              "cs": "cz", "pt": "pt", "ru": "ru", "th": "th", "tr": "tr", "vi": "vi"}
#: File codes that differ from the ISO code -> the language's name (for error messages).
_FILE_ONLY_CODES: dict[str, str] = {"du": "Dutch", "cz": "Czech"}
TEXT_FIELDS: tuple[str, ...] = ("subject", "src", "rephrase", "alt", "loc", "loc_ans")


def _unsupported(language: str) -> ValueError:
    hint = ""
    if language in _FILE_ONLY_CODES:
        iso = next(code for code, file in FILE_CODES.items() if file == language)
        hint = f" ({_FILE_ONLY_CODES[language]} is {iso!r} in this API; {language!r} only appears in file names)"
    return ValueError(f"unsupported MzsRE language {language!r}{hint}; "
                      f"supported: {', '.join(MZSRE_LANGUAGES_ALL)}")


def file_code(language: str) -> str:
    """The code of ``language`` in MzsRE's file names and record keys (``cs`` -> ``cz``, ``nl`` -> ``du``)."""
    if language == "en":
        return "en"
    if language not in FILE_CODES:
        raise _unsupported(language)
    return FILE_CODES[language]


def mzsre_relative_path(language: str) -> str:
    """Data-directory path of the pair file that holds ``language`` (English: the en-de file)."""
    return f"mzsre/mzsre_test_duplicate_en{'de' if language == 'en' else file_code(language)}.json"


@dataclass(frozen=True)
class MzsrePool:
    """Every record of the requested languages, located (``requests``) or rejected (``rejected``)."""

    requests: dict[str, dict[int, EditRequest]]
    rejected: dict[str, list[RejectedRecord]] = field(default_factory=dict)
    n_records: int = 0

    def eligible_case_ids(self) -> set[int]:
        """Case ids whose subject was located in every language of the pool."""
        located = [set(by_case) for by_case in self.requests.values()]
        return set.intersection(*located) if located else set()

    def report(self) -> pd.DataFrame:
        """Per language, how many records each subject-location rule handled (incl. rejections)."""
        merged = {lang: [*self.requests[lang].values(), *self.rejected.get(lang, [])] for lang in self.requests}
        return subject_location_report(merged)


def normalize_languages(languages: str | Iterable[str]) -> list[str]:
    """Validate the language list: known codes (any of ``MZSRE_LANGUAGES_ALL``), no duplicates, not
    empty (ValueError otherwise, naming the supported codes)."""
    requested = [languages] if isinstance(languages, str) else list(languages)
    if not requested:
        raise ValueError(f"no languages requested; supported MzsRE languages: {', '.join(MZSRE_LANGUAGES_ALL)}"
                         f" (the paper's six: {', '.join(LANGUAGES)})")
    for language in requested:
        if language not in MZSRE_LANGUAGES_ALL:
            raise _unsupported(language)
    duplicates = sorted({lang for lang in requested if requested.count(lang) > 1})
    if duplicates:
        raise ValueError(f"languages listed more than once: {duplicates}")
    return requested


def _check_side(side: Any, where: str) -> dict[str, Any]:
    if not isinstance(side, dict):
        raise DataFormatError(f"{where}: expected an object, got {type(side).__name__}")
    for name in TEXT_FIELDS:
        if name not in side:
            raise DataFormatError(f"{where}: missing field {name!r}")
        if not isinstance(side[name], str) or not side[name].strip():
            raise DataFormatError(f"{where}: field {name!r} must be a non-empty string, got {side[name]!r}")
    portability = side.get("portability")
    if portability is not None:
        if not isinstance(portability, dict):
            raise DataFormatError(f"{where}: field 'portability' must be an object or null")
        for name in ("New Question", "New Answer"):
            if not isinstance(portability.get(name), str):
                raise DataFormatError(f"{where}: field 'portability.{name}' must be a string")
    return side


def parse_pairs(records: Any, relative: str, language: str) -> list[tuple[dict, dict]]:
    """Validate parsed pair-file records into ``(english_side, language_side)`` tuples.

    Errors name the file, the record index and the field, so a bad upstream version is easy to find.
    """
    code = file_code(language)
    if not isinstance(records, list):
        raise DataFormatError(f"{relative}: expected a list of records, got {type(records).__name__}")
    pairs = []
    for index, record in enumerate(records):
        where = f"{relative} record {index}"
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: expected an object, got {type(record).__name__}")
        for side in ("en", code):
            if side not in record:
                raise DataFormatError(f"{where}: missing field {side!r}")
        pairs.append((_check_side(record["en"], f"{where} field 'en'"),
                      _check_side(record[code], f"{where} field {code!r}")))
    return pairs


def read_pair_file(relative: str, language: str, data_dir: str | os.PathLike | None = None) -> list[tuple[dict, dict]]:
    """The validated ``(english_side, language_side)`` records of the pair file ``relative`` (any
    dataset whose records are ``{"en": {...}, "<code>": {...}}`` with MzsRE's fields), in file order.

    Only the first ``n_records`` records pinned in the manifest are used, so a full upstream
    download and the truncated local copy give identical results.
    """
    records = read_json(relative, data_dir)
    if isinstance(records, list):
        records = records[: manifest_entry(relative).get("n_records", len(records))]
    return parse_pairs(records, relative, language)


def read_pairs(language: str, data_dir: str | os.PathLike | None = None) -> list[tuple[dict, dict]]:
    """The validated ``(english_side, language_side)`` records of the MzsRE pair file of ``language``."""
    return read_pair_file(mzsre_relative_path(language), language, data_dir)


def _portability(side: dict) -> tuple[str | None, str | None]:
    portability = side.get("portability")
    if portability is None:
        return None, None
    return portability["New Question"], portability["New Answer"]


#: The zsRE locality probes are Natural Questions; the reference marks them with this prefix.
LOCALITY_PREFIX = "nq question: "


def locality_question(loc: str) -> str:
    """The locality prompt as the reference builds it from a record's ``loc`` (AlphaEdit dsets/zsre.py,
    LangEdit dsets/mzsre.py): ``nq question: `` prefixed where the text lacks it (the English side has
    it, the other languages not), then ``?`` appended, even after a question mark already there."""
    return (loc if LOCALITY_PREFIX in loc else LOCALITY_PREFIX + loc) + "?"


def build_request(
    case_id: int, language: str, side: dict, english_side: dict, english_twin: EditRequest | None,
    dataset: str = "mzsre",
) -> EditRequest | RejectedRecord:
    """Locate the subject of one record and build its EditRequest, or reject it (``dataset`` names the
    source on both, e.g. ``"bzsre"`` for Bi-ZsRE records, which share MzsRE's fields)."""
    question = side["src"]
    english_subject = None if language == "en" else english_side["subject"]
    location = locate_subject(question, side["subject"], english_subject)
    if not location.located:
        return RejectedRecord(case_id, language, question, side["subject"], english_side["subject"], location.score,
                              dataset=dataset)
    portability_prompt, portability_answer = _portability(side)
    return EditRequest(
        case_id=case_id, language=language, prompt=template_from_span(question, location.span),
        subject=question[slice(*location.span)], target=side["alt"], paraphrase=side["rephrase"],
        locality_prompt=locality_question(side["loc"]), locality_answer=side["loc_ans"],
        portability_prompt=portability_prompt,
        portability_answer=portability_answer, subject_rule=location.rule, english_twin=english_twin,
        source_subject=side["subject"], dataset=dataset,
    )


def english_request(case_id: int, english_side: dict, dataset: str = "mzsre") -> EditRequest:
    """The English request of one record; DataFormatError if its subject is not in its question."""
    request = build_request(case_id, "en", english_side, english_side, None, dataset)
    if isinstance(request, RejectedRecord):  # English subjects all occur verbatim; fail loudly if not
        raise DataFormatError(f"{dataset} record {case_id}: English subject {english_side['subject']!r} "
                              f"not found in {english_side['src']!r}")
    return request


def _language_requests(language: str, data_dir) -> tuple[dict[int, EditRequest], list[RejectedRecord], int]:
    pairs = read_pairs(language, data_dir)
    requests, rejected = {}, []
    for case_id, (english_side, side) in enumerate(pairs):
        twin = english_request(case_id, english_side)
        if language == "en":
            requests[case_id] = twin
            continue
        built = build_request(case_id, language, side, english_side, twin)
        if isinstance(built, RejectedRecord):
            rejected.append(built)
        else:
            requests[case_id] = built
    return requests, rejected, len(pairs)


def load_mzsre_pool(languages: str | Iterable[str], data_dir: str | os.PathLike | None = None) -> MzsrePool:
    """All MzsRE records of ``languages`` with their subjects located (or rejected)."""
    requests, rejected, sizes = {}, {}, set()
    for language in normalize_languages(languages):
        requests[language], rejected[language], size = _language_requests(language, data_dir)
        sizes.add(size)
    if len(sizes) != 1:
        raise DataFormatError(f"MzsRE pair files disagree on the number of records: {sorted(sizes)}")
    return MzsrePool(requests=requests, rejected=rejected, n_records=sizes.pop())


def check_count(n_per_language: int | None) -> None:
    if n_per_language is None:
        return
    if isinstance(n_per_language, bool) or not isinstance(n_per_language, int):
        raise TypeError(f"n_per_language must be an int or None, got {n_per_language!r}")
    if n_per_language <= 0:
        raise ValueError(f"n_per_language must be positive, got {n_per_language} (an empty selection edits nothing)")


#: Which facts each language edits: the same ones (translated) or different ones.
FACT_DESIGNS: tuple[str, ...] = ("parallel", "disjoint")


def check_design(design: str) -> str:
    if design not in FACT_DESIGNS:
        raise ValueError(f"unknown fact design {design!r}; choose from {FACT_DESIGNS} "
                         f"(parallel: the same facts in every language; disjoint: different facts per language)")
    return design


def _seeded_eligible(pool: MzsrePool, seed: int) -> list[int]:
    """Eligible ids in the order of a permutation that depends only on ``seed`` and the file size
    (so adding a language only drops the cases that language cannot locate)."""
    eligible = pool.eligible_case_ids()
    order = list(range(pool.n_records))
    random.Random(seed).shuffle(order)
    return [case_id for case_id in order if case_id in eligible]


def sample_case_ids(pool: MzsrePool, n_per_language: int | None, seed: int) -> list[int]:
    """Seeded parallel selection: the first ``n`` eligible ids of a permutation of all case ids;
    ``None`` selects every eligible case in file order."""
    eligible = pool.eligible_case_ids()
    if n_per_language is None:
        return sorted(eligible)
    if n_per_language > len(eligible):
        raise ValueError(
            f"asked for {n_per_language} MzsRE requests per language but only {len(eligible)} of "
            f"{pool.n_records} records have a located subject in all of {list(pool.requests)}")
    return _seeded_eligible(pool, seed)[:n_per_language]


def sample_disjoint_case_ids(pool: MzsrePool, n_per_language: int | None, seed: int) -> dict[str, list[int]]:
    """Seeded disjoint selection: the seeded eligible ids dealt round-robin over the pool's languages;
    ``None`` gives every language the same, largest possible number of facts."""
    languages = list(pool.requests)
    dealt = _seeded_eligible(pool, seed)
    most = len(dealt) // len(languages)
    n = max(most, 1) if n_per_language is None else n_per_language
    if n > most:
        raise ValueError(
            f"the disjoint design needs {n} different facts for each of {len(languages)} languages "
            f"({n * len(languages)} in all) but only {len(dealt)} of {pool.n_records} records have a located "
            f"subject in all of {languages}: at most {most} per language")
    return {language: dealt[i::len(languages)][:n] for i, language in enumerate(languages)}


def load_mzsre(
    languages: str | Iterable[str],
    n_per_language: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    verbose: bool = True,
    design: str = "parallel",
) -> dict[str, list[EditRequest]]:
    """MzsRE edit requests ``{language: [EditRequest, ...]}``, the same facts in every language
    (``design="parallel"``) or different ones (``"disjoint"``), see the module docstring.

    ``n_per_language=None`` returns every record located in all requested languages (parallel), or
    an equal share of them per language (disjoint). Logs (INFO) the per-language subject-location
    counts of the whole files and of the selection, and prints the selection's counts unless
    ``verbose=False``.
    """
    check_count(n_per_language)
    check_design(design)
    pool = load_mzsre_pool(languages, data_dir)
    if design == "parallel":
        case_ids = sample_case_ids(pool, n_per_language, seed)
        chosen = {language: case_ids for language in pool.requests}
    else:
        chosen = sample_disjoint_case_ids(pool, n_per_language, seed)
    selected = {language: [by_case[c] for c in chosen[language]] for language, by_case in pool.requests.items()}
    per_language = len(next(iter(chosen.values())))
    skipped = pool.n_records - len(pool.eligible_case_ids())
    logger.info("MzsRE subject location over all %d records (unlocated records are never edited):\n%s",
                pool.n_records, pool.report().to_string())
    logger.info("MzsRE selection: %d per language (%s), seed %d; %d case ids skipped because a requested "
                "language could not locate the subject:\n%s", per_language, design, seed, skipped,
                subject_location_report(selected).to_string())
    if verbose:
        print(f"MzsRE: {per_language} facts per language, {design} (seed {seed}); {skipped} case ids skipped "
              f"because a requested language could not locate the subject. Subject located by rule:\n"
              f"{subject_location_report(selected).to_string()}")
    return selected
