"""All twelve MzsRE languages: the paper's six plus cs/pt/ru/th/tr/vi (issue 16, part 2).

Reads the real pair files from the data directory and checks the loader against them read here
independently (``json`` and this file's own table of file codes). Expected rule counts were measured
once on those files; a change means the data or a subject-location rule changed.
"""
from __future__ import annotations

import json
import unicodedata

import pytest

from langedit.data import (EXTRA_MZSRE_LANGUAGES, LANGUAGES, MZSRE_LANGUAGES_ALL, load_mzsre, load_mzsre_pool,
                           locate_subject)
from langedit.data.corpus import ZSRE_TRAIN_LANGUAGES, zsre_train_questions
from langedit.data.mzsre import file_code, mzsre_relative_path
from langedit.data.subjects import ENGLISH, EXACT, FUZZY, NORMALIZED, RULES, UNLOCATED, normalize
from langedit.editing.templates import STARTERS, context_templates
from langedit.paths import data_dir
from test_data import EXPECTED_MZSRE_RULES

DATA = data_dir()
needs_data = pytest.mark.skipif(not (DATA / "mzsre").is_dir(), reason=f"data directory {DATA} not available")

#: ISO code -> the code in the ReMaKE file names, written out here rather than imported.
FILE_CODE = {"de": "de", "nl": "du", "es": "es", "fr": "fr", "zh": "zh",
             "cs": "cz", "pt": "pt", "ru": "ru", "th": "th", "tr": "tr", "vi": "vi"}
NEW = ("cs", "pt", "ru", "th", "tr", "vi")

#: Rule counts over all 643 records per language, measured once (the paper's six: test_data.py).
EXPECTED_RULES = {
    **EXPECTED_MZSRE_RULES,
    "cs": {EXACT: 364, NORMALIZED: 23, ENGLISH: 127, FUZZY: 120, UNLOCATED: 9},
    "pt": {EXACT: 358, NORMALIZED: 32, ENGLISH: 231, FUZZY: 18, UNLOCATED: 4},
    "ru": {EXACT: 303, NORMALIZED: 26, ENGLISH: 119, FUZZY: 154, UNLOCATED: 41},
    "th": {EXACT: 115, ENGLISH: 449, FUZZY: 57, UNLOCATED: 22},
    "tr": {EXACT: 424, NORMALIZED: 20, ENGLISH: 143, FUZZY: 36, UNLOCATED: 20},
    "vi": {EXACT: 427, NORMALIZED: 29, ENGLISH: 147, FUZZY: 27, UNLOCATED: 13},
}
#: Case ids whose subject is located in all twelve languages.
ELIGIBLE_IN_ALL_TWELVE = 549


def raw_records(language: str) -> list[dict]:
    """The pair file of ``language`` (English: the en-de file), parsed here without the loader."""
    code = FILE_CODE.get(language, "de")
    return json.loads((DATA / f"mzsre/mzsre_test_duplicate_en{code}.json").read_text("utf-8"))


def raw_side(records: list[dict], language: str, case_id: int) -> dict:
    return records[case_id]["en" if language == "en" else FILE_CODE[language]]


_THAI_DEPENDENT = {chr(c) for c in (0x0E30, *range(0x0E31, 0x0E3B), 0x0E45, *range(0x0E47, 0x0E4F))}
_THAI_LEADING = {chr(c) for c in range(0x0E40, 0x0E45)}


def splits_a_character(text: str, start: int, end: int) -> bool:
    """Independent statement of the rule: no span starts on, or ends just before, a combining mark or
    Thai dependent vowel, nor separates a Thai leading vowel from the letter after it."""
    def dependent(char: str) -> bool:
        return unicodedata.category(char).startswith("M") or char in _THAI_DEPENDENT
    return ((start < len(text) and dependent(text[start])) or (end < len(text) and dependent(text[end]))
            or (start > 0 and text[start - 1] in _THAI_LEADING) or text[end - 1] in _THAI_LEADING)


@pytest.fixture(scope="module")
def pool():
    return load_mzsre_pool(MZSRE_LANGUAGES_ALL)


@pytest.fixture(scope="module")
def sample():
    return load_mzsre(MZSRE_LANGUAGES_ALL, n_per_language=5, seed=0, verbose=False)


# ----- language lists and codes ------------------------------------------------------------------

def test_language_lists_keep_the_paper_six_as_default():
    assert LANGUAGES == ("en", "de", "nl", "es", "fr", "zh")
    assert EXTRA_MZSRE_LANGUAGES == NEW
    assert MZSRE_LANGUAGES_ALL == LANGUAGES + NEW
    assert ZSRE_TRAIN_LANGUAGES == LANGUAGES          # the multilingual C0 corpus (and its cache key) unchanged
    from langedit import notebook_support
    assert tuple(notebook_support.LANGUAGES) == LANGUAGES


def test_iso_codes_in_the_api_file_codes_in_file_names():
    assert file_code("cs") == "cz" and file_code("nl") == "du" and file_code("en") == "en"
    assert mzsre_relative_path("cs") == "mzsre/mzsre_test_duplicate_encz.json"
    assert mzsre_relative_path("nl") == "mzsre/mzsre_test_duplicate_endu.json"
    assert mzsre_relative_path("en") == "mzsre/mzsre_test_duplicate_ende.json"
    for language in NEW:
        assert mzsre_relative_path(language) == f"mzsre/mzsre_test_duplicate_en{FILE_CODE[language]}.json"


@pytest.mark.parametrize("languages, match", [
    (["de", "xx"], "unsupported MzsRE language 'xx'; supported: en, de, nl, es, fr, zh, cs, pt, ru, th, tr, vi$"),
    (["cz"], "Czech is 'cs' in this API; 'cz' only appears in file names"),
    (["du"], "Dutch is 'nl' in this API; 'du' only appears in file names"),
    (["CS"], "unsupported MzsRE language 'CS'"),
    ([], "no languages requested; supported MzsRE languages: en, de, nl, es, fr, zh, cs, pt, ru, th, tr, vi"),
])
def test_unknown_language_names_the_known_ones(languages, match):
    with pytest.raises(ValueError, match=match):
        load_mzsre(languages, 5)


def test_a_path_for_an_unknown_language_is_an_error_not_the_german_file():
    for bad in ("xx", "cz", "du"):
        with pytest.raises(ValueError, match="supported: en, de"):
            mzsre_relative_path(bad)


# ----- loading all twelve ------------------------------------------------------------------------

@needs_data
def test_every_language_loads_five_requests_aligned_by_case_id(sample):
    assert list(sample) == list(MZSRE_LANGUAGES_ALL)
    ids = [request.case_id for request in sample["en"]]
    assert len(ids) == 5 == len(set(ids))
    for language, requests in sample.items():
        assert [r.case_id for r in requests] == ids, language
        assert all(r.language == language and r.dataset == "mzsre" for r in requests)
        if language != "en":
            assert [r.english_twin for r in requests] == sample["en"], language


@needs_data
@pytest.mark.parametrize("language", MZSRE_LANGUAGES_ALL)
def test_loaded_records_are_the_files_records_with_the_subject_in_the_prompt(sample, language):
    records = raw_records(language)
    for request in sample[language]:
        side = raw_side(records, language, request.case_id)
        assert request.question == side["src"] and request.prompt.format(request.subject) == side["src"]
        start, end = request.subject_span
        assert side["src"][start:end] == request.subject and request.subject.strip() == request.subject
        assert request.source_subject == side["subject"]
        assert (request.target, request.paraphrase, request.locality_answer) == \
            (side["alt"], side["rephrase"], side["loc_ans"])
        if language != "en":   # the twin is the English side of this language's own pair file
            assert request.english_twin.question == records[request.case_id]["en"]["src"]


@needs_data
def test_czech_reads_the_cz_file():
    czech = load_mzsre_pool(["cs"])
    raw = raw_records("cs")
    assert list(czech.requests) == ["cs"] and czech.n_records == 643
    first = czech.requests["cs"][0]
    assert first.question == raw[0]["cz"]["src"] == "Kdy vznikl IAAF Combined Events Challenge?"
    assert first.language == "cs" and first.subject == "IAAF Combined Events Challenge"


@needs_data
def test_rule_counts_over_all_records_of_all_twelve(pool):
    report = pool.report()
    assert list(report.index) == list(MZSRE_LANGUAGES_ALL)
    for language, expected in EXPECTED_RULES.items():
        row = report.loc[language]
        assert {rule: int(row[rule]) for rule in RULES if row[rule]} == expected, language
        assert row["total"] == 643
    assert len(pool.eligible_case_ids()) == ELIGIBLE_IN_ALL_TWELVE


@needs_data
@pytest.mark.parametrize("language", NEW)
def test_every_located_subject_of_the_new_languages_is_a_clean_span(pool, language):
    records = raw_records(language)
    for case_id, request in pool.requests[language].items():
        side = raw_side(records, language, case_id)
        start, end = request.subject_span
        assert request.question == side["src"]
        assert not splits_a_character(side["src"], start, end), (language, case_id, request.subject)
        if request.subject_rule == EXACT:
            assert request.subject == side["subject"]
        elif request.subject_rule in (NORMALIZED, ENGLISH):
            english = records[case_id]["en"]["subject"]
            assert normalize(request.subject) in {normalize(side["subject"]), normalize(english)}
    rejected = {r.case_id for r in pool.rejected[language]}
    assert rejected.isdisjoint(pool.requests[language])
    assert len(rejected) + len(pool.requests[language]) == 643


@needs_data
def test_disjoint_design_over_twelve_languages():
    dealt = load_mzsre(MZSRE_LANGUAGES_ALL, 5, seed=0, design="disjoint", verbose=False)
    every = [r.case_id for requests in dealt.values() for r in requests]
    assert len(every) == len(set(every)) == 60
    with pytest.raises(ValueError, match=f"at most {ELIGIBLE_IN_ALL_TWELVE // 12} per language"):
        load_mzsre(MZSRE_LANGUAGES_ALL, ELIGIBLE_IN_ALL_TWELVE // 12 + 1, design="disjoint", verbose=False)


@needs_data
@pytest.mark.parametrize("language", NEW)
def test_zsre_training_questions_of_the_new_languages(language):
    questions = zsre_train_questions(language)
    raw = (DATA / f"text/zsre_mend_train_{FILE_CODE[language]}_10000.txt").read_text("utf-8").split("\n")
    assert questions[0] == raw[0].split("\t", 1)[0].strip()
    assert 9_900 <= len(questions) <= 10_000


def test_zsre_training_questions_refuse_file_codes():
    with pytest.raises(ValueError, match="no zsRE training questions for language 'cz'; available: en, de"):
        zsre_train_questions("cz")


# ----- the subject-location cascade on Thai, Cyrillic and decomposed text ------------------------

def test_thai_subject_without_surrounding_spaces_is_exact():
    question = "ตำแหน่งของบาร์บาร่า เลแกรนด์ในสนามขณะเล่นฟุตบอลคืออะไร?"
    location = locate_subject(question, "บาร์บาร่า เลแกรนด์")
    assert location.rule == EXACT and question[slice(*location.span)] == "บาร์บาร่า เลแกรนด์"


def test_thai_span_never_separates_a_letter_from_its_marks():
    assert locate_subject("กี", "ก").rule == UNLOCATED                 # sara ii belongs to the letter
    location = locate_subject("เลโอนาร์โด คาสโตร", "ลโอนาร์โด")         # would leave the leading vowel behind
    assert location.rule != EXACT
    assert location.span is None or not splits_a_character("เลโอนาร์โด คาสโตร", *location.span)


def test_thai_fuzzy_span_covers_whole_letters():
    question = "แอนโทนี่ โลซิล่า อยู่ในสนามขณะเล่นฟุตบอลเป็นอย่างไรบ้าง?"
    location = locate_subject(question, "แอนโทนี่ โลซิลา", "Anthony Losilla")
    assert location.rule == FUZZY and question[slice(*location.span)] == "แอนโทนี่ โลซิล่า"


def test_cyrillic_case_and_inflection():
    location = locate_subject("Куда впадает река Эльги?", "Река Эльги", "Elgi River")
    assert location.rule == NORMALIZED and "Куда впадает река Эльги?"[slice(*location.span)] == "река Эльги"
    question = "Какова была причина смерти Пола Дьюка?"
    location = locate_subject(question, "Пол Дьюк", "Paul Duke")
    assert location.rule == FUZZY and question[slice(*location.span)] == "Пола Дьюка"


def test_normalized_span_keeps_decomposed_accents():
    question = "Wer war Jose\u0301 Marti\u0301?"                       # NFD: accents as combining marks
    location = locate_subject(question, "José Martí")
    assert location.rule == NORMALIZED
    assert question[slice(*location.span)] == "Jose\u0301 Marti\u0301"


# ----- context-template starters -----------------------------------------------------------------

def test_starters_for_all_twelve_languages():
    assert set(STARTERS) == set(MZSRE_LANGUAGES_ALL)
    for language, words in STARTERS.items():
        assert len(words) == 5 and len(set(words)) == 5, language     # ROME: same count in every language
        assert all(w and w == w.strip() and "{" not in w and "}" not in w for w in words), language


def _starter_tokenizer():
    """A word-level tokenizer over the starters, built in memory (no model download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    words = [piece for starters in STARTERS.values() for w in starters for piece, _ in split.pre_tokenize_str(w)]
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = split
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize("language", NEW)
def test_context_templates_for_the_new_languages(language):
    from langedit.models.tiny import build_tiny_model
    tokenizer = _starter_tokenizer()
    lm = build_tiny_model("gemma3_text", tokenizer=tokenizer)
    templates = context_templates(lm.model, tokenizer, language, n_tokens=3)
    assert templates[0] == ["{}"] and len(templates[1]) == 5
    for prefix, starter in zip(templates[1], STARTERS[language]):
        assert prefix.startswith(starter) and prefix.endswith(". {}"), (prefix, starter)
