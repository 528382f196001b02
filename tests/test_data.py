"""Data layer: edit-request records, subject location, MzsRE/MLaKE/corpus loaders, pinned downloads.

Reads the real files from the data directory (never copies them into the repository). Expected
counts below were measured on those files; a change means the data or a rule changed.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from langedit.data import (LANGUAGES, RULES, ChecksumMismatchError, DataDirectoryMissingError, DataFileMissingError,
                           DataFormatError, EditRequest, ensure_data_file, load_corpus, load_manifest, load_mlake,
                           load_mlake_multi_hop, load_mzsre, load_mzsre_pool, locate_mlake, locate_subject,
                           subject_location_report, subject_token_range, template_from_span)
from langedit.data import download as download_module
from langedit.data.mlake import locate_shared_span, statement_without_answer
from langedit.data.corpus import CorpusSpecError, CorpusUnavailableError, open_corpus
from langedit.data.mzsre import parse_pairs, read_pairs, sample_case_ids
from langedit.data.subjects import ENGLISH, EXACT, FUZZY, NORMALIZED, SHARED_SPAN, UNLOCATED
from langedit.paths import data_dir

DATA = data_dir()
#: Tests that read the real files; the rule, record and download-error tests run without them.
needs_data = pytest.mark.skipif(not (DATA / "mzsre").is_dir(), reason=f"data directory {DATA} not available")

#: Rule counts over all 643 MzsRE records, measured once (the report in the module docstring).
EXPECTED_MZSRE_RULES = {
    "en": {EXACT: 643},
    "de": {EXACT: 446, NORMALIZED: 7, ENGLISH: 138, FUZZY: 45, UNLOCATED: 7},
    "nl": {EXACT: 358, NORMALIZED: 41, ENGLISH: 231, FUZZY: 10, UNLOCATED: 3},
    "es": {EXACT: 330, NORMALIZED: 73, ENGLISH: 210, FUZZY: 22, UNLOCATED: 8},
    "fr": {EXACT: 327, NORMALIZED: 77, ENGLISH: 215, FUZZY: 19, UNLOCATED: 5},
    "zh": {EXACT: 643},
}


@pytest.fixture(scope="module")
def pool():
    return load_mzsre_pool(LANGUAGES)


@pytest.fixture(scope="module")
def mlake():
    return locate_mlake(["en", "de", "fr"])


# ----- EditRequest ------------------------------------------------------------------------------

def _request(prompt: str, subject: str = "Foo") -> EditRequest:
    return EditRequest(case_id=0, language="en", prompt=prompt, subject=subject, target="Bar", paraphrase=None,
                       locality_prompt=None, locality_answer=None, portability_prompt=None,
                       portability_answer=None, subject_rule=EXACT, english_twin=None, source_subject=subject)


def test_braces_in_question_are_escaped_so_format_round_trips():
    question = "What is {x} {} of Foo in set {1, 2}?"
    start = question.index("Foo")
    prompt = template_from_span(question, (start, start + 3))
    assert prompt == "What is {{x}} {{}} of {} in set {{1, 2}}?"
    request = _request(prompt)
    assert request.question == question
    assert request.subject_span == (start, start + 3)


@pytest.mark.parametrize("prompt", ["no placeholder", "{} and {}", "{0} is", "{name}", "unbalanced { {}",
                                    "{0} is {{}}", "{!r}", "{:>5}"])
def test_prompt_must_have_exactly_one_empty_placeholder(prompt):
    with pytest.raises(ValueError):
        _request(prompt)


def test_english_twin_must_be_english():
    german = EditRequest(case_id=0, language="de", prompt="{} ist", subject="Foo", target="x", paraphrase=None,
                         locality_prompt=None, locality_answer=None, portability_prompt=None,
                         portability_answer=None, subject_rule=EXACT, english_twin=None, source_subject="Foo")
    with pytest.raises(ValueError, match="english_twin"):
        replace(german, english_twin=german)


# ----- subject location rules -------------------------------------------------------------------

def test_rule_exact_respects_word_boundaries():
    location = locate_subject("What is Radio Ra?", "Ra")
    assert (location.rule, location.span) == (EXACT, (14, 16))


def test_rule_exact_cjk_subject():
    location = locate_subject("玛莎·诺伊马克的出生日期是什么时候？", "玛莎·诺伊马克")
    assert (location.rule, location.span) == (EXACT, (0, 7))


def test_rule_normalized_case_apostrophe_and_dash():
    question = "¿Quién dirigió o editó Fimpen?"
    location = locate_subject(question, "fimpen", "Fimpen")
    assert location.rule == NORMALIZED and question[slice(*location.span)] == "Fimpen"
    question = "À quand remonte la création du Défi des épreuves combinées de l’IAAF ?"
    location = locate_subject(question, "Défi des épreuves combinées de l'IAAF")
    assert location.rule == NORMALIZED
    assert question[slice(*location.span)] == "Défi des épreuves combinées de l’IAAF"
    question = "Wer hat den Mark 19-Torpedo entworfen?"
    assert question[slice(*locate_subject(question, "Mark 19 Torpedo").span)] == "Mark 19-Torpedo"


def test_rule_english_subject_kept_in_translation():
    question = "Für welches Instrument wurde Ariadne musica geschrieben?"
    location = locate_subject(question, "Ariadne-Musik", "Ariadne musica")
    assert location.rule == ENGLISH and question[slice(*location.span)] == "Ariadne musica"


def test_rule_fuzzy_inflected_translation():
    question = "Wann wurde der Orden vom Schwarzen Adler abgeschafft?"
    location = locate_subject(question, "Orden des Schwarzen Adlers", "Order of the Black Eagle")
    assert location.rule == FUZZY
    assert question[slice(*location.span)] == "Orden vom Schwarzen Adler"
    assert 0.86 < location.score < 0.87


def test_rule_fuzzy_never_ends_on_a_function_word():
    question = "¿En qué año se acabó la Asociación Regionalista de Galicia?"
    location = locate_subject(question, "Asociación Regionalista Gallega", "Galician Regionalist Association")
    assert location.rule == FUZZY
    assert question[slice(*location.span)] == "Asociación Regionalista"


def test_rule_fuzzy_respects_threshold():
    question = "Wann wurde der Orden vom Schwarzen Adler abgeschafft?"
    location = locate_subject(question, "Orden des Schwarzen Adlers", threshold=0.9)
    assert location.rule == UNLOCATED and location.span is None


def test_unlocated_subject_is_rejected():
    location = locate_subject("In was fließt der Fluss Elgi?", "Elgi-Fluss", "Elgi River")
    assert location.rule == UNLOCATED and location.span is None and not location.located
    assert location.score == pytest.approx(2 / 3)


# ----- MzsRE --------------------------------------------------------------------------------------

@needs_data
def test_mzsre_rule_counts_over_all_records(pool):
    report = pool.report()
    for language, expected in EXPECTED_MZSRE_RULES.items():
        row = report.loc[language]
        assert {rule: int(row[rule]) for rule in RULES if row[rule]} == expected, language
        assert row["total"] == 643
    assert pool.n_records == 643


@needs_data
def test_mzsre_unlocated_records_are_reported_not_edited(pool):
    rejected = {r.case_id for r in pool.rejected["de"]}
    assert 539 in rejected and 539 not in pool.requests["de"]
    assert len(pool.eligible_case_ids()) == 643 - len(set.union(*(
        {r.case_id for r in records} for records in pool.rejected.values())))


@needs_data
def test_every_located_request_formats_back_to_its_question(pool):
    file_code = {"en": "de", "de": "de", "nl": "du", "es": "es", "fr": "fr", "zh": "zh"}
    for language, by_case in pool.requests.items():
        records = json.loads((DATA / f"mzsre/mzsre_test_duplicate_en{file_code[language]}.json").read_text("utf-8"))
        side_key = "en" if language == "en" else file_code[language]
        for case_id, request in by_case.items():
            side = records[case_id][side_key]
            assert request.prompt.count("{}") == 1
            assert request.prompt.format(request.subject) == request.question == side["src"]
            assert request.source_subject == side["subject"]
            assert request.target == side["alt"] and request.paraphrase == side["rephrase"]


@needs_data
def test_mzsre_known_records(pool):
    german = pool.requests["de"][0]
    assert german.prompt == "Wann wurde die {} ins Leben gerufen?"
    assert (german.subject, german.target, german.subject_rule) == ("IAAF Combined Events Challenge", "2006", EXACT)
    assert german.portability_answer == "Leichtathletik"
    assert german.english_twin.prompt == "When was the inception of {}?"
    french = pool.requests["fr"][0]
    assert (french.subject, french.subject_rule) == ("Défi des épreuves combinées de l’IAAF", NORMALIZED)
    assert french.source_subject == "Défi des épreuves combinées de l'IAAF"
    assert pool.requests["nl"][0].language == "nl"


def test_locality_prompt_is_the_reference_form():
    """AlphaEdit/LangEdit dsets: `nq question: ` prefixed where missing, `?` appended (even after one)."""
    from langedit.data.mzsre import build_request
    english = {**_valid_side(), "loc": "nq question: who sang nice day for a white wedding"}
    german = {**_valid_side(), "loc": "Wie heißt die letzte Episode von SpongeBob?"}
    twin = build_request(0, "en", english, english, None)
    assert twin.locality_prompt == "nq question: who sang nice day for a white wedding?"
    assert build_request(0, "de", german, english, twin).locality_prompt == \
        "nq question: Wie heißt die letzte Episode von SpongeBob??"
    assert twin.locality_answer == "a"                  # the answer is scored as " " + loc_ans, unchanged


@needs_data
def test_mzsre_locality_prompts_follow_the_reference_in_every_language(pool):
    raw = {language: read_pairs(language) for language in LANGUAGES}
    for language in LANGUAGES:
        side = 0 if language == "en" else 1
        for case_id, request in list(pool.requests[language].items())[:50]:
            loc = raw[language][case_id][side]["loc"]
            expected = (loc if loc.startswith("nq question: ") else "nq question: " + loc) + "?"
            assert request.locality_prompt == expected, (language, case_id)
            assert request.locality_prompt.count("nq question: ") == 1


@needs_data
def test_load_mzsre_parallel_seeded_sample(caplog):
    with caplog.at_level(logging.INFO, logger="langedit.data.mzsre"):
        sample = load_mzsre(LANGUAGES, n_per_language=20, seed=0)
    assert list(sample) == list(LANGUAGES)
    ids = [r.case_id for r in sample["en"]]
    assert len(ids) == 20 == len(set(ids))
    for language, requests in sample.items():
        assert [r.case_id for r in requests] == ids, language
        assert all(r.language == language for r in requests)
        if language != "en":
            assert [r.english_twin for r in requests] == sample["en"]
    assert ids[:5] == [5, 638, 407, 34, 276]
    log = caplog.text
    assert "all 643 records" in log and "20 per language" in log
    for language in LANGUAGES:
        assert f"\n{language} " in log


@needs_data
def test_load_mzsre_seed_determinism():
    first = load_mzsre(["de", "zh"], n_per_language=5, seed=3)
    again = load_mzsre(["de", "zh"], n_per_language=5, seed=3)
    other = load_mzsre(["de", "zh"], n_per_language=5, seed=4)
    assert first == again
    assert [r.case_id for r in first["de"]] != [r.case_id for r in other["de"]]


@needs_data
def test_disjoint_design_gives_each_language_different_facts():
    disjoint = load_mzsre(LANGUAGES, n_per_language=20, seed=0, design="disjoint", verbose=False)
    ids = {language: [r.case_id for r in requests] for language, requests in disjoint.items()}
    assert all(len(v) == 20 == len(set(v)) for v in ids.values())
    every = [c for v in ids.values() for c in v]
    assert len(every) == len(set(every)) == 120   # no fact edited in two languages
    parallel = load_mzsre(LANGUAGES, n_per_language=20, seed=0, verbose=False)
    assert all([r.case_id for r in parallel[lang]] == [r.case_id for r in parallel["en"]] for lang in LANGUAGES)
    assert ids["en"][:4] == [r.case_id for r in parallel["en"]][0:24:6]   # dealt round-robin from one order
    for language, requests in disjoint.items():
        assert all(r.language == language for r in requests)
        if language != "en":
            assert [r.english_twin.case_id for r in requests] == ids[language]
    again = load_mzsre(LANGUAGES, n_per_language=20, seed=0, design="disjoint", verbose=False)
    assert again == disjoint
    other = load_mzsre(LANGUAGES, n_per_language=20, seed=1, design="disjoint", verbose=False)
    assert [r.case_id for r in other["de"]] != ids["de"]
    fewer = load_mzsre(LANGUAGES, n_per_language=5, seed=0, design="disjoint", verbose=False)
    assert all([r.case_id for r in fewer[lang]] == ids[lang][:5] for lang in LANGUAGES)   # nested in n


@needs_data
def test_disjoint_design_limits_and_bad_designs(pool):
    eligible = len(pool.eligible_case_ids())
    most = eligible // len(LANGUAGES)
    everything = load_mzsre(LANGUAGES, None, design="disjoint", verbose=False)
    assert all(len(v) == most for v in everything.values())
    with pytest.raises(ValueError, match=rf"disjoint design needs {most + 1} different facts for each of 6 "
                                         rf"languages \({6 * (most + 1)} in all\) but only {eligible} of 643 "
                                         rf".*at most {most} per language"):
        load_mzsre(LANGUAGES, most + 1, design="disjoint", verbose=False)
    assert len(load_mzsre(["de", "zh"], 300, design="disjoint", verbose=False)["zh"]) == 300
    with pytest.raises(ValueError, match=r"unknown fact design 'delta'; choose from \('parallel', 'disjoint'\)"):
        load_mzsre(["de"], 3, design="delta")


@needs_data
def test_sample_skips_cases_unlocated_in_any_requested_language(pool):
    eligible = pool.eligible_case_ids()
    chosen = sample_case_ids(pool, len(eligible), seed=1)
    assert set(chosen) == eligible
    assert not set(chosen) & {r.case_id for r in pool.rejected["es"]}


@needs_data
def test_all_records_when_n_is_none():
    everything = load_mzsre("de")
    assert len(everything["de"]) == 643 - 7
    assert [r.case_id for r in everything["de"]] == sorted(r.case_id for r in everything["de"])


@pytest.mark.parametrize("languages, match", [
    (["de", "xx"], "'xx'.*supported: en, de, nl, es, fr, zh"),
    (["du"], "Dutch is 'nl'"),
    ([], "no languages"),
    (["de", "de"], "more than once"),
])
def test_bad_languages(languages, match):
    with pytest.raises(ValueError, match=match):
        load_mzsre(languages, 5)


@needs_data
def test_bad_counts():
    with pytest.raises(ValueError, match="positive"):
        load_mzsre(["de"], 0)
    with pytest.raises(ValueError, match="positive"):
        load_mzsre(["de"], -3)
    with pytest.raises(TypeError):
        load_mzsre(["de"], 2.5)
    with pytest.raises(ValueError, match=r"asked for 640 .* only 636 of 643"):
        load_mzsre(["de"], 640)


def _valid_side() -> dict:
    return {"subject": "S", "src": "Who is S?", "rephrase": "S is who?", "alt": "A", "loc": "q", "loc_ans": "a",
            "portability": {"New Question": "Q?", "New Answer": "B"}}


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["de"].pop("alt"), "record 1 field 'de': missing field 'alt'"),
    (lambda r: r["en"].update(src=7), "record 1 field 'en': field 'src' must be a non-empty string"),
    (lambda r: r.pop("de"), "record 1: missing field 'de'"),
    (lambda r: r["de"].update(portability=["x"]), "record 1 field 'de': field 'portability' must be an object"),
])
def test_malformed_record_names_file_record_and_field(mutate, message):
    records = [{"en": _valid_side(), "de": _valid_side()} for _ in range(2)]
    mutate(records[1])
    with pytest.raises(DataFormatError) as error:
        parse_pairs(records, "mzsre/mzsre_test_duplicate_ende.json", "de")
    assert f"mzsre/mzsre_test_duplicate_ende.json {message}" in str(error.value)


@needs_data
def test_malformed_file_is_rejected_through_the_loader(tmp_path, monkeypatch):
    relative = "mzsre/mzsre_test_duplicate_ende.json"
    records = json.loads((DATA / relative).read_text("utf-8"))
    records[5]["de"]["loc_ans"] = None
    data = json.dumps(records).encode()
    (tmp_path / "mzsre").mkdir()
    (tmp_path / relative).write_bytes(data)
    pinned = {**load_manifest()[relative], "sha256": download_module.sha256_bytes(data)}
    monkeypatch.setattr(download_module, "manifest_entry", lambda rel: pinned)
    with pytest.raises(DataFormatError, match=r"record 5 field 'de': field 'loc_ans'"):
        load_mzsre_pool(["de"], data_dir=tmp_path)


@needs_data
def test_subject_location_report_counts_a_sample():
    sample = load_mzsre(["es"], 30, seed=2)
    table = subject_location_report(sample)
    assert list(table.columns) == [*RULES, "total"]
    assert table.loc["es", "total"] == 30 and table.loc["es", UNLOCATED] == 0


# ----- subjects against the real tokenizer -------------------------------------------------------

def _is_sublist(small: list[int], big: list[int]) -> bool:
    return any(big[i:i + len(small)] == small for i in range(len(big) - len(small) + 1))


@needs_data
def test_located_subjects_are_token_spans_of_the_question(pool, default_tokenizer):
    tokenizer = default_tokenizer
    for language, by_case in pool.requests.items():
        contained = 0
        for request in by_case.values():
            question, (start, end) = request.question, request.subject_span
            tokens = tokenizer(question, add_special_tokens=False)["input_ids"]
            covered = subject_token_range(tokenizer, question, (start, end), add_special_tokens=False)
            decoded = tokenizer.decode(tokens[covered.start:covered.stop])
            assert request.subject in decoded, (language, request.case_id)
            lead = " " if start > 0 and question[start - 1] == " " else ""
            contained += _is_sublist(tokenizer(lead + request.subject, add_special_tokens=False)["input_ids"], tokens)
        assert contained / len(by_case) >= 0.97, (language, contained, len(by_case))


def test_token_range_includes_a_token_straddling_the_subject_end(default_tokenizer):
    question = "What type of aquatic unit is USS Kete (SS-369)?"
    start = question.index("USS")
    covered = subject_token_range(default_tokenizer, question, (start, question.index("?")))
    last = default_tokenizer.convert_ids_to_tokens(default_tokenizer(question)["input_ids"][covered[-1]])
    assert last == ")?"


# ----- MLaKE --------------------------------------------------------------------------------------

@needs_data
def test_mlake_rule_counts(mlake):
    report = subject_location_report(mlake)
    assert report.loc["en", SHARED_SPAN] == 1060 and report.loc["en", UNLOCATED] == 12
    assert report.loc["de", ENGLISH] == 827 and report.loc["de", FUZZY] == 100
    assert report.loc["fr", ENGLISH] == 792 and report.loc["fr", FUZZY] == 112
    assert set(report["total"]) == {1072}


@needs_data
def test_mlake_record_shape(mlake):
    english, german = mlake["en"][0], mlake["de"][0]
    assert english.prompt == "Where did {} work during his career?"
    assert (english.subject, english.target, english.subject_rule) == ("Carl Sagan", "BBC", SHARED_SPAN)
    assert english.paraphrase == "Carl Sagan worked at"
    assert english.portability_prompt == ("In which country is the institution where Carl Sagan was employed located?")
    assert english.portability_answer == "United Kingdom"
    assert english.locality_prompt is None and english.dataset == "mlake"
    assert german.prompt == "An welcher Bildungseinrichtung war {} als Wissenschaftler tätig?"
    assert (german.subject_rule, german.english_twin) == (ENGLISH, english)
    assert german.paraphrase == "Carl Sagan war als Wissenschaftler an der"
    assert german.portability_answer == "London"


@needs_data
def test_mlake_requests_format_back_and_are_parallel(mlake):
    raw = {lang: json.loads((DATA / f"mlake/single_hop/{lang}_qa.json").read_text("utf-8")) for lang in mlake}
    for language, records in mlake.items():
        for record in records:
            if isinstance(record, EditRequest):
                assert record.question == raw[language][record.case_id]["question"]
                assert record.target == raw[language][record.case_id]["e_answer"]
                if record.english_twin is not None:
                    assert record.english_twin.case_id == record.case_id


def test_mlake_shared_span_rule():
    question = "Who is at the helm of leadership as the chief executive officer of Tencent?"
    statement = statement_without_answer("Luca Cordero di Montezemolo serves as the chief executive officer of "
                                         "Tencent.", "Luca Cordero di Montezemolo")
    location = locate_shared_span(question, statement)
    assert question[slice(*location.span)] == "Tencent"
    question = "Which company played a significant role in the development of the Server Message Block (SMB) protocol?"
    statement = statement_without_answer("The Server Message Block (SMB) protocol was developed by IBM.", "IBM")
    assert question[slice(*locate_shared_span(question, statement).span)] == "Server Message Block (SMB)"
    assert locate_shared_span("From which country does rock music originate?",
                              "Rock music originates from \x00.").rule == UNLOCATED


@needs_data
def test_load_mlake_filters_rejections_and_validates_languages():
    loaded = load_mlake("fr")
    assert len(loaded["fr"]) == 792 + 112
    with pytest.raises(ValueError, match="'es'.*supported: en, de, fr, ja, zh"):
        load_mlake(["es"])
    with pytest.raises(ValueError, match="no languages"):
        load_mlake([])


@needs_data
def test_mlake_multi_hop():
    new = load_mlake_multi_hop("de", "new")
    old = load_mlake_multi_hop("de", "old")
    assert (len(new), len(old)) == (731, 765)
    assert new[0].edit_prompt == "Carl Sagan worked at BBC during his career." and old[0].edit_prompt is None
    with pytest.raises(ValueError, match="stage"):
        load_mlake_multi_hop("de", "post")


# ----- corpora ------------------------------------------------------------------------------------

@needs_data
def test_wikitext_paragraphs():
    texts = load_corpus("wikitext-paragraphs")
    assert len(texts) == 4026
    assert texts[0].startswith("Homarus gammarus , known as the European lobster")
    assert not any(re.fullmatch(r"=+ .* =+", t) or not t.strip() for t in texts)
    assert "= National record" in texts  # a table legend, not a heading: kept
    assert load_corpus("wikitext-paragraphs", n_texts=10) == texts[:10]


@needs_data
def test_wikitext_articles_hold_every_paragraph_once_in_order():
    articles = load_corpus("wikitext")
    titles = [line for split in ("valid", "test") for line in (DATA / f"text/wikitext-2.{split}.txt")
              .read_text("utf-8").splitlines() if re.fullmatch(r" = [^=].* = ", line)]
    assert len(articles) == len(titles) == 122
    assert articles[0].startswith("Homarus gammarus , known as the European lobster")
    assert "\n".join(articles).split("\n") == load_corpus("wikitext-paragraphs")
    assert not any("= =" in line for article in articles for line in article.split("\n") if line.startswith(" ="))


def test_file_corpora_through_datasets_builders(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "first record", "body": "b1"}\n{"text": "", "body": "b2"}\n'
                                      '{"text": "third record", "body": "b3"}\n', encoding="utf-8")
    (tmp_path / "b.txt").write_text("line one\nline two\n\nparagraph two\n", encoding="utf-8")
    assert list(open_corpus(f"json:{tmp_path}/*.jsonl")) == ["first record", "third record"]   # empty dropped
    assert list(open_corpus(f"json:{tmp_path}/a.jsonl#body")) == ["b1", "b2", "b3"]
    assert list(open_corpus(f"text:{tmp_path}/*.txt")) == ["line one", "line two", "paragraph two"]
    assert list(open_corpus(f"text:{tmp_path}/b.txt#paragraph")) == ["line one\nline two", "paragraph two\n"]
    assert load_corpus(f"text:{tmp_path}/b.txt", n_texts=2) == ["line one", "line two"]
    with pytest.raises(CorpusSpecError, match=r"no column 'missing'; columns: \['body', 'text'\]"):
        list(open_corpus(f"json:{tmp_path}/a.jsonl#missing"))
    with pytest.raises(CorpusSpecError, match="no file matches"):
        open_corpus(f"json:{tmp_path}/none/*.jsonl")
    with pytest.raises(CorpusSpecError, match="one of .*'line', 'paragraph', 'document'.*got 'sentence'"):
        open_corpus(f"text:{tmp_path}/b.txt#sentence")


def test_file_corpus_identity_is_the_bytes_not_the_path(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("alpha\nbeta\n", encoding="utf-8")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "a.txt").write_text("alpha\nbeta\n", encoding="utf-8")
    first = open_corpus(f"text:{tmp_path}/x/*.txt").identity
    assert first == open_corpus(f"text:{tmp_path}/y/*.txt").identity
    assert first != open_corpus(f"text:{tmp_path}/x/*.txt#document").identity   # read differently
    (tmp_path / "y" / "a.txt").write_text("alpha\ngamma\n", encoding="utf-8")
    assert first != open_corpus(f"text:{tmp_path}/y/*.txt").identity


def test_hub_corpus_spec_and_offline_errors(monkeypatch):
    from langedit.data import corpus as corpus_module
    spec = corpus_module.parse_hub_spec("hf:wikimedia/wikipedia:20231101.en")
    assert (spec.dataset, spec.revision, spec.config, spec.split, spec.column) == (
        "wikimedia/wikipedia", None, "20231101.en", "train", "text")
    pinned = corpus_module.parse_hub_spec("hf:wikitext@abc123:wikitext-103-raw-v1:validation:text")
    assert (pinned.dataset, pinned.revision, pinned.split) == ("wikitext", "abc123", "validation")
    for bad in ("hf:", "hf:a/b/c", "hf:a:b:c:d:e"):
        with pytest.raises(CorpusSpecError):
            corpus_module.parse_hub_spec(bad)
    monkeypatch.setenv("LANGEDIT_DOWNLOAD", "0")
    wiki = open_corpus("hf:wikimedia/wikipedia:20231101.en")   # opening reads nothing
    for read in (lambda: wiki.identity, lambda: next(iter(wiki))):
        with pytest.raises(CorpusUnavailableError, match=r"'hf:wikimedia/wikipedia:20231101.en' streams from the "
                                                         r"Hugging Face hub, which is not allowed here.*json:"):
            read()
    monkeypatch.setenv("LANGEDIT_DOWNLOAD", "1")   # network allowed but unreachable: datasets' error, explained
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikimedia/wikipedia' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.setattr(corpus_module, "resolve_hub_revision", unreachable)
    with pytest.raises(CorpusUnavailableError, match="could not be reached.*Couldn't reach"):
        next(iter(wiki))
    with pytest.raises(CorpusUnavailableError, match="could not be asked for its revision"):
        wiki.identity
    with pytest.raises(ValueError, match="streamed from the hub: give n_texts or n_tokens"):
        load_corpus("hf:wikimedia/wikipedia:20231101.en")


def test_hub_corpus_reads_the_column_and_keys_the_revision(monkeypatch):
    from langedit.data import corpus as corpus_module
    import datasets
    asked = []

    def fake_load(name, config, split, revision, streaming):
        asked.append((name, config, split, revision, streaming))
        return iter([{"text": "one", "id": 1}, {"text": " ", "id": 2}, {"text": "three", "id": 3}])
    monkeypatch.setenv("LANGEDIT_DOWNLOAD", "1")
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    revisions = iter(["rev1", "rev1", "rev2"])
    monkeypatch.setattr(corpus_module, "resolve_hub_revision", lambda spec: next(revisions))
    assert list(open_corpus("hf:org/data:cfg")) == ["one", "three"]
    assert asked == [("org/data", "cfg", "train", None, True)]
    first, same, moved = (open_corpus("hf:org/data:cfg").identity for _ in range(3))
    assert first == same != moved   # the hub's main moved: another cache entry


@needs_data
def test_multilingual_corpus_is_interleaved_and_deterministic():
    texts = load_corpus("multilingual")
    assert len(texts) == 4 * 240 + 6 * 10000
    assert texts[4] == "What is the native language of Christiane Cohendy?"
    assert texts[5] == "Was ist die Muttersprache von Christiane Cohendy?"
    assert "\ufeff" not in "".join(texts[:40])
    budget = load_corpus("multilingual", n_tokens=5000)
    assert budget == texts[:len(budget)]
    from langedit.data import count_words
    assert sum(map(count_words, budget)) >= 5000 > sum(map(count_words, budget[:-1]))


@pytest.mark.parametrize("kwargs, error", [
    ({"name": "c4"}, CorpusSpecError), ({"name": "ftp:x"}, CorpusSpecError),
    ({"name": "wikitext", "n_texts": 5, "n_tokens": 5}, ValueError),
    ({"name": "wikitext", "n_texts": 0}, ValueError), pytest.param({"name": "wikitext", "n_texts": 10**6}, ValueError, marks=needs_data),
])
def test_corpus_bad_input(kwargs, error):
    with pytest.raises(error):
        load_corpus(**kwargs)


# ----- pinned files and downloads -----------------------------------------------------------------

WIKI = "text/wikitext-2.valid.txt"


@needs_data
def test_every_shared_file_is_pinned_and_verifies():
    manifest = load_manifest()
    present = {p.relative_to(DATA).as_posix() for p in DATA.rglob("*") if p.is_file() and p.name != "SOURCES.md"}
    assert present == set(manifest)
    for relative in manifest:
        assert ensure_data_file(relative) == DATA / relative


@needs_data
def test_checksum_mismatch_is_detected(tmp_path):
    data = bytearray((DATA / WIKI).read_bytes())
    data[100] ^= 1
    (tmp_path / "text").mkdir()
    (tmp_path / WIKI).write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match=load_manifest()[WIKI]["sha256"]):
        ensure_data_file(WIKI, tmp_path)


def test_missing_file_offline_says_where_and_how(tmp_path):
    with pytest.raises(DataFileMissingError) as error:
        ensure_data_file(WIKI, tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / WIKI) in message and "LANGEDIT_DATA_DIR" in message
    assert ("https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/"
            "word_language_model/data/wikitext-2/valid.txt") in message


def test_failed_download_is_a_missing_file_error(tmp_path):
    def offline(url):
        raise OSError("no network")
    with pytest.raises(DataFileMissingError, match="failed.*no network"):
        ensure_data_file(WIKI, tmp_path, download=True, fetch=offline)


def test_download_is_disabled_by_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGEDIT_DOWNLOAD", "0")
    def must_not_run(url):
        raise AssertionError("fetched although downloads are disabled")
    with pytest.raises(DataFileMissingError, match="disabled"):
        ensure_data_file(WIKI, tmp_path, fetch=must_not_run)


def test_missing_data_directory(tmp_path):
    with pytest.raises(DataDirectoryMissingError, match="does not exist"):
        ensure_data_file(WIKI, tmp_path / "nowhere", download=False)


@needs_data
def test_download_writes_the_verified_file(tmp_path):
    urls = []
    def fetch(url):
        urls.append(url)
        return (DATA / WIKI).read_bytes()
    path = ensure_data_file(WIKI, tmp_path / "fresh", download=True, fetch=fetch)
    assert path == tmp_path / "fresh" / WIKI and path.read_bytes() == (DATA / WIKI).read_bytes()
    assert urls == [download_module.source_url(load_manifest()[WIKI])]
    assert urls[0].startswith("https://raw.githubusercontent.com/pytorch/examples/77f55b9")
    assert ensure_data_file(WIKI, tmp_path / "fresh", fetch=None) == path  # now found on disk


def test_download_with_wrong_bytes_is_not_kept(tmp_path):
    with pytest.raises(ChecksumMismatchError):
        ensure_data_file(WIKI, tmp_path, download=True, fetch=lambda url: b"not wikitext")
    assert not (tmp_path / WIKI).exists()


@needs_data
def test_full_upstream_mzsre_file_is_accepted_by_its_record_prefix(tmp_path):
    relative = "mzsre/mzsre_test_duplicate_ende.json"
    records = json.loads((DATA / relative).read_text("utf-8"))
    extra = {"en": {**records[0]["en"], "subject": "Extra"}, "de": records[0]["de"]}
    upstream = json.dumps(records + [extra] * 100, indent=4, ensure_ascii=False).encode()
    ensure_data_file(relative, tmp_path, download=True, fetch=lambda url: upstream)
    requests = load_mzsre_pool(["en"], data_dir=tmp_path).requests["en"]
    assert len(requests) == 643


def test_converted_pickle_files_are_never_downloaded(tmp_path):
    def must_not_run(url):
        raise AssertionError("a converted file must not be fetched")
    with pytest.raises(DataFileMissingError) as error:
        ensure_data_file("xtreme/xnli_de.json", tmp_path, download=True, fetch=must_not_run)
    message = str(error.value)
    assert "converted from the LangEdit authors' pickle" in message and "never unpickles" in message
    assert ("https://raw.githubusercontent.com/VRCMF/LangEdit/bb16b51cbd5516d46ef15aa06f433cdef63a9acf/"
            "glue_eval/dataset/xnli_de.pkl") in message


def test_no_pickle_in_the_data_package():
    package = Path(download_module.__file__).parent
    for source in package.glob("*.py"):
        text = source.read_text("utf-8")
        assert "import pickle" not in text and "pickle.load" not in text, source


def test_unpinned_file_is_refused():
    with pytest.raises(KeyError, match="not in langedit/data/manifest.json"):
        ensure_data_file("mzsre/unknown.json")


@needs_data
def test_data_dir_setting_is_honoured(tmp_path, monkeypatch):
    (tmp_path / "text").mkdir()
    shutil.copy(DATA / WIKI, tmp_path / WIKI)
    monkeypatch.setenv("LANGEDIT_DATA_DIR", str(tmp_path))
    assert ensure_data_file(WIKI) == tmp_path / WIKI


@needs_data
def test_bizsre_download_is_verified_by_its_records_without_invisible_characters(tmp_path):
    """The Bi-ZsRE copy was rebuilt from a text view: an upstream file that differs only in zero-width
    characters, BOMs or non-breaking spaces (and holds more records) is accepted; other changes are not."""
    relative = "bizsre/bizsre_test.json"
    records = json.loads((DATA / relative).read_text("utf-8"))
    changed = json.loads(json.dumps(records))
    changed[0]["en"]["src"] = "\ufeff" + changed[0]["en"]["src"].replace(" ", "\u00a0", 1) + "\u200b"
    upstream = json.dumps(changed + changed[:131], indent=4, ensure_ascii=False).encode()
    ensure_data_file(relative, tmp_path, download=True, fetch=lambda url: upstream)
    assert (tmp_path / relative).read_bytes() == upstream
    wrong = json.loads(json.dumps(records))
    wrong[0]["en"]["src"] = wrong[0]["en"]["src"] + " (edited)"
    with pytest.raises(ChecksumMismatchError):
        ensure_data_file(relative, tmp_path / "other", download=True,
                         fetch=lambda url: json.dumps(wrong, ensure_ascii=False).encode())
