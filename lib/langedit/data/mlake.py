"""MLaKE edits (en/de/fr/ja/zh) as EditRequests, in the paper's two settings (Table 8, A.6).

Settings (``load_mlake(..., setting=...)``); each is edited and scored on its own questions:

``single_hop`` one request per ``single_hop/<lang>_qa.json`` record: the question asking for the
    object, the counterfactual ``e_answer`` as target. Record ``i`` is the same fact in every language.
``multi_hop`` one request per *edit chain* of ``multi_hop/new_<lang>_qa.json``: the first question
    (file order) of the records sharing one ``e_prompt`` (the English single-hop edit the chain starts
    from), with that record's ``e_answer`` (the post-edit answer of the whole chain) as target. The
    multi-hop question itself is edited, so Efficacy is "does the edited model now answer the
    multi-hop question with the new answer". Why this reading: Table 8 gives the multi-hop setting
    its own *Efficacy* (88-90 %, a point or two under single-hop), the score of a directly edited
    question; answering a multi-hop question through an edit of its first hop only is a different,
    far harder score, which this module offers as ``portability_*`` of the single-hop requests
    (named so in notebook 09, never called multi-hop Efficacy). One question per chain: several
    questions of one chain share its subject, and two requests with one subject and different targets
    would fight over one key. ``case_id`` is the chain's English single-hop record index, so a chain
    keeps its id in every language (the multi-hop files are not parallel: 1024/731/701 questions in
    en/de/fr). The authors' released code (VRCMF/LangEdit, commit 1c33ab9) imports
    ``SMLAKEQADataset`` and ``MMLAKEQADataset`` from ``dsets.smlake``/``dsets.mmlake`` but ships neither
    file, so their exact multi-hop requests cannot be checked; they annotated subjects by hand for 100
    records per language, we locate them by rule (below) and reject what no rule finds.

MLaKE records have no subject field: ``question`` (asks for the object), ``o_prompt``/``o_answer``
(the true fact as a sentence), ``e_prompt``/``e_answer`` (the counterfactual edit as a sentence).
The single-hop files are parallel across languages (record ``i`` is the same fact), and every
``multi_hop/new_<lang>_qa.json`` question carries the *English* single-hop ``e_prompt`` it depends on.

Subject location (documented rules, recorded in ``subject_rule``):

``shared_span`` (English) the longest span of the question that starts and ends on a name-like
    word (one containing an uppercase letter or a digit; not a function word) and also occurs in
    the edit statement with the new answer cut out: the entity the question and the statement share.
    Example: "Where did Carl Sagan work during his career?" / "Carl Sagan worked at BBC ..." ->
    "Carl Sagan".
other languages: the English subject of the same record is searched in the question with the
    MzsRE cascade (``english``: verbatim or normalized; ``fuzzy``: similar span >= FUZZY_THRESHOLD),
    because MLaKE questions were generated per language and names are mostly kept or transliterated.
    ja/zh questions transliterate names, so most of their records are ``unlocated`` and rejected.

Multi-hop subjects: the subject of the chain's English single-hop request (so a chain whose English
single-hop subject is unlocated is rejected), searched in the multi-hop question with the same
cascade (English: ``exact``/``normalized``/``fuzzy`` on it; other languages: ``english``/``fuzzy``).

Single-hop request fields: ``prompt``/``subject`` from the question, ``target`` = ``e_answer`` (``target_aliases``
= ``e_answer_aliases``), ``paraphrase`` = the edit statement cut before the new answer (a cloze
rephrasing; None when the answer opens the statement), no locality probe, ``portability_*`` = the
first multi-hop post-edit question (same language) built on this edit, if any.

Multi-hop request fields: ``prompt``/``subject`` from the chain's first question, ``target`` =
its ``e_answer`` (``target_aliases`` = ``e_answer_aliases``), ``paraphrase`` = a later question of the
same chain with the same new answer (a rephrasing; most chains have none, so Generality covers few
facts), no locality probe, no portability question (the multi-hop question is the edit), ``dataset``
= ``"mlake_multi_hop"``, ``english_twin`` = the English multi-hop request of the same chain, if located.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .download import read_json
from .records import DataFormatError, EditRequest, RejectedRecord
from .report import subject_location_report
from .subjects import (FUNCTION_WORDS, SHARED_SPAN, UNLOCATED, SubjectLocation, find_literal, locate_subject,
                       template_from_span)

logger = logging.getLogger(__name__)

MLAKE_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "ja", "zh")
#: The languages the LangEdit paper evaluates on MLaKE.
PAPER_MLAKE_LANGUAGES: tuple[str, ...] = ("en", "de", "fr")
SINGLE_HOP_FIELDS: tuple[str, ...] = ("question", "o_prompt", "o_answer", "e_prompt", "e_answer")
#: The paper's two MLaKE settings (Table 8), see the module docstring.
MLAKE_SETTINGS: tuple[str, ...] = ("single_hop", "multi_hop")
MULTI_HOP_DATASET = "mlake_multi_hop"
_CHUNK = re.compile(r"\S+")
_CHUNK_EDGE = "\"'“”‘’«»„()[]{},;:!?¿¡"
_ANSWER_GAP = " \x00 "  # cannot occur in text, so no shared span can run across the removed answer


@dataclass(frozen=True)
class MultiHopQuestion:
    """A multi-hop question; ``edit_prompt`` (post-edit files only) is the English single-hop e_prompt."""

    question: str
    answer: str
    aliases: tuple[str, ...]
    edit_prompt: str | None


def _check_language(language: str) -> None:
    if language not in MLAKE_LANGUAGES:
        raise ValueError(f"unsupported MLaKE language {language!r}; supported: {', '.join(MLAKE_LANGUAGES)}")


def _check_setting(setting: str) -> None:
    if setting not in MLAKE_SETTINGS:
        raise ValueError(f"unknown MLaKE setting {setting!r}; choose from {', '.join(MLAKE_SETTINGS)}")


def _check_fields(record, where: str, text_fields: Iterable[str], alias_fields: Iterable[str]) -> None:
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected an object, got {type(record).__name__}")
    for name in text_fields:
        if not isinstance(record.get(name), str) or not record[name].strip():
            raise DataFormatError(f"{where}: field {name!r} missing or not a non-empty string")
    for name in alias_fields:
        aliases = record.get(name)
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise DataFormatError(f"{where}: field {name!r} must be a list of strings")


def read_single_hop(language: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The validated single-hop records of one language, in file order."""
    _check_language(language)
    relative = f"mlake/single_hop/{language}_qa.json"
    records = read_json(relative, data_dir)
    if not isinstance(records, list):
        raise DataFormatError(f"{relative}: expected a list of records")
    for index, record in enumerate(records):
        _check_fields(record, f"{relative} record {index}", SINGLE_HOP_FIELDS, ("o_answer_aliases", "e_answer_aliases"))
    return records


def load_mlake_multi_hop(
    language: str, stage: str = "new", data_dir: str | os.PathLike | None = None
) -> list[MultiHopQuestion]:
    """Multi-hop questions before (``stage="old"``) or after (``"new"``) the edits, in file order."""
    _check_language(language)
    if stage not in ("old", "new"):
        raise ValueError(f"stage must be 'old' (pre-edit answers) or 'new' (post-edit answers), got {stage!r}")
    relative = f"mlake/multi_hop/{stage}_{language}_qa.json"
    prefix = "o" if stage == "old" else "e"
    text_fields = ["question", f"{prefix}_answer"] + (["e_prompt"] if stage == "new" else [])
    records = read_json(relative, data_dir)
    if not isinstance(records, list):
        raise DataFormatError(f"{relative}: expected a list of records")
    questions = []
    for index, record in enumerate(records):
        _check_fields(record, f"{relative} record {index}", text_fields, [f"{prefix}_answer_aliases"])
        questions.append(MultiHopQuestion(record["question"], record[f"{prefix}_answer"],
                                          tuple(record[f"{prefix}_answer_aliases"]), record.get("e_prompt")))
    return questions


def statement_without_answer(statement: str, answer: str) -> str:
    """The edit statement with the answer replaced by a gap no span can cross."""
    return statement.replace(answer, _ANSWER_GAP) if answer in statement else statement


def _chunk_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-separated chunks with surrounding punctuation and a possessive 's stripped."""
    spans = []
    for match in _CHUNK.finditer(text):
        start, end = match.span()
        while start < end and text[start] in _CHUNK_EDGE:
            start += 1
        while end > start and text[end - 1] in _CHUNK_EDGE:
            end -= 1
        if text[start:end].endswith(("'s", "’s")) and end - start > 2:
            end -= 2
        if start < end:
            spans.append((start, end))
    return spans


def _close_brackets(text: str, start: int, end: int) -> int | None:
    """Extend a span over the ")" its last chunk lost to punctuation stripping; None if still unbalanced."""
    if text.count("(", start, end) == text.count(")", start, end) + 1 and text[end:end + 1] == ")":
        end += 1
    return end if text.count("(", start, end) == text.count(")", start, end) else None


def _is_name_like(chunk: str) -> bool:
    return chunk not in FUNCTION_WORDS and any(c.isupper() or c.isdigit() for c in chunk)


def locate_shared_span(question: str, statement: str) -> SubjectLocation:
    """The English MLaKE rule: the longest name-bounded question span also found in ``statement``."""
    chunks = _chunk_spans(question)
    best = None
    for first, (start, _) in enumerate(chunks):
        if not _is_name_like(question[start:chunks[first][1]]):
            continue
        for last in range(first, len(chunks)):
            end = chunks[last][1]
            if not _is_name_like(question[chunks[last][0]:end]):
                continue
            end = _close_brackets(question, start, end)
            if end is None or (best is not None and end - start <= best[1] - best[0]):
                continue
            if find_literal(statement, question[start:end]):
                best = (start, end)
    return SubjectLocation(SHARED_SPAN, best, 1.0) if best else SubjectLocation(UNLOCATED, None, 0.0)


def cloze_paraphrase(statement: str, answer: str) -> str | None:
    """The edit statement up to the new answer (a completion prompt for it), if the answer is not first."""
    index = statement.find(answer)
    prefix = statement[:index].rstrip() if index > 0 else ""
    return prefix or None


def _portability_by_edit(language: str, data_dir) -> dict[str, MultiHopQuestion]:
    first = {}
    for question in load_mlake_multi_hop(language, "new", data_dir):
        first.setdefault(question.edit_prompt, question)
    return first


def _request(case_id, language, record, location, twin, portability) -> EditRequest:
    question = record["question"]
    return EditRequest(
        case_id=case_id, language=language, prompt=template_from_span(question, location.span),
        subject=question[slice(*location.span)], target=record["e_answer"],
        paraphrase=cloze_paraphrase(record["e_prompt"], record["e_answer"]), locality_prompt=None,
        locality_answer=None, portability_prompt=portability.question if portability else None,
        portability_answer=portability.answer if portability else None, subject_rule=location.rule,
        english_twin=twin, source_subject=twin.subject if twin else question[slice(*location.span)],
        dataset="mlake", target_aliases=tuple(record["e_answer_aliases"]),
    )


def _rejected(case_id, language, record, english_subject, score) -> RejectedRecord:
    return RejectedRecord(case_id, language, record["question"], english_subject or "", english_subject,
                          score, dataset="mlake")


def _locate_english(records, portability) -> list[EditRequest | RejectedRecord]:
    located = []
    for case_id, record in enumerate(records):
        statement = statement_without_answer(record["e_prompt"], record["e_answer"])
        location = locate_shared_span(record["question"], statement)
        if location.located:
            located.append(_request(case_id, "en", record, location, None, portability.get(record["e_prompt"])))
        else:
            located.append(_rejected(case_id, "en", record, None, 0.0))
    return located


def _locate_translated(language, records, english_records, english, portability) -> list[EditRequest | RejectedRecord]:
    if len(records) != len(english_records):
        raise DataFormatError(f"mlake/single_hop/{language}_qa.json has {len(records)} records, English has "
                              f"{len(english_records)}; the files must be parallel")
    located = []
    for case_id, record in enumerate(records):
        twin = english.get(case_id)
        location = locate_subject(record["question"], "", twin.subject) if twin else None
        if location is not None and location.located:
            edit = portability.get(english_records[case_id]["e_prompt"])
            located.append(_request(case_id, language, record, location, twin, edit))
        else:
            located.append(_rejected(case_id, language, record, twin.subject if twin else None,
                                     location.score if location else 0.0))
    return located


def _requested_languages(languages: str | Iterable[str]) -> list[str]:
    requested = [languages] if isinstance(languages, str) else list(languages)
    if not requested:
        raise ValueError(f"no languages requested; supported MLaKE languages: {', '.join(MLAKE_LANGUAGES)}")
    for language in requested:
        _check_language(language)
    return requested


def _multi_hop_chains(language: str, english_prompts: dict[str, int], data_dir) -> dict[int, list[MultiHopQuestion]]:
    """The post-edit multi-hop questions grouped by chain (English single-hop case id), in file order."""
    chains: dict[int, list[MultiHopQuestion]] = {}
    for index, question in enumerate(load_mlake_multi_hop(language, "new", data_dir)):
        if question.edit_prompt not in english_prompts:
            raise DataFormatError(f"mlake/multi_hop/new_{language}_qa.json record {index}: e_prompt "
                                  f"{question.edit_prompt!r} is no e_prompt of mlake/single_hop/en_qa.json")
        chains.setdefault(english_prompts[question.edit_prompt], []).append(question)
    return chains


def _multi_hop_request(case_id, language, question, paraphrase, location, english_subject, twin) -> EditRequest:
    return EditRequest(
        case_id=case_id, language=language, prompt=template_from_span(question.question, location.span),
        subject=question.question[slice(*location.span)], target=question.answer, paraphrase=paraphrase,
        locality_prompt=None, locality_answer=None, portability_prompt=None, portability_answer=None,
        subject_rule=location.rule, english_twin=twin, source_subject=english_subject,
        dataset=MULTI_HOP_DATASET, target_aliases=question.aliases,
    )


def _locate_multi_hop(language, chains, english_single, english_multi) -> list[EditRequest | RejectedRecord]:
    located = []
    for case_id, questions in chains.items():
        first = questions[0]
        single = english_single.get(case_id)
        subject = single.subject if single else None
        # English has the subject itself; other languages search for the English subject
        location = (None if subject is None else
                    locate_subject(first.question, subject) if language == "en" else
                    locate_subject(first.question, "", subject))
        if location is None or not location.located:
            located.append(RejectedRecord(case_id, language, first.question, subject or "", subject,
                                          location.score if location else 0.0, dataset=MULTI_HOP_DATASET))
            continue
        paraphrase = next((q.question for q in questions[1:] if q.answer == first.answer), None)
        located.append(_multi_hop_request(case_id, language, first, paraphrase, location, subject,
                                          english_multi.get(case_id)))
    return located


def _locate_multi_hop_setting(requested, data_dir, english_records, english_located):
    english_prompts = {record["e_prompt"]: case_id for case_id, record in enumerate(english_records)}
    english_single = {r.case_id: r for r in english_located if isinstance(r, EditRequest)}
    english = _locate_multi_hop("en", _multi_hop_chains("en", english_prompts, data_dir), english_single, {})
    english_multi = {r.case_id: r for r in english if isinstance(r, EditRequest)}
    return {language: english if language == "en" else
            _locate_multi_hop(language, _multi_hop_chains(language, english_prompts, data_dir), english_single,
                              english_multi)
            for language in requested}


def locate_mlake(
    languages: str | Iterable[str] = PAPER_MLAKE_LANGUAGES,
    data_dir: str | os.PathLike | None = None,
    setting: str = "single_hop",
) -> dict[str, list[EditRequest | RejectedRecord]]:
    """Every record (single-hop) or edit chain (multi-hop) per language, as an EditRequest or, if its
    subject was not found, rejected; ``setting`` as in the module docstring."""
    _check_setting(setting)
    requested = _requested_languages(languages)
    english_records = read_single_hop("en", data_dir)
    english_located = _locate_english(english_records, _portability_by_edit("en", data_dir))
    if setting == "multi_hop":
        return _locate_multi_hop_setting(requested, data_dir, english_records, english_located)
    english = {r.case_id: r for r in english_located if isinstance(r, EditRequest)}
    result = {}
    for language in requested:
        if language == "en":
            result[language] = english_located
            continue
        result[language] = _locate_translated(language, read_single_hop(language, data_dir), english_records,
                                              english, _portability_by_edit(language, data_dir))
    return result


def load_mlake(
    languages: str | Iterable[str] = PAPER_MLAKE_LANGUAGES,
    data_dir: str | os.PathLike | None = None,
    setting: str = "single_hop",
) -> dict[str, list[EditRequest]]:
    """MLaKE edit requests of one setting (``"single_hop"`` or ``"multi_hop"``, see the module
    docstring) per language, in file order; unlocated records are left out.

    Logs (INFO) the per-language subject-location counts, rejections included.
    """
    located = locate_mlake(languages, data_dir, setting)
    logger.info("MLaKE %s subject location (unlocated records are never edited):\n%s", setting,
                subject_location_report(located).to_string())
    return {language: [r for r in records if isinstance(r, EditRequest)] for language, records in located.items()}
