"""Bi-ZsRE loader (the paper's bzsre): the real test file, read here independently with ``json``,
against ``load_bizsre``; malformed files through a small crafted data directory.

Expected counts were measured on the local copy (906 records, every subject located by the exact
rule in both languages); a change means the data or a subject-location rule changed.
"""
from __future__ import annotations

import json
import random

import pytest

from langedit.data import (DataDirectoryMissingError, DataFileMissingError, DataFormatError, load_bizsre,
                           load_manifest, load_mzsre)
from langedit.data import download as download_module
from langedit.data.bizsre import BIZSRE_RELATIVE_PATH, load_bizsre_pool
from langedit.data.subjects import EXACT
from langedit.paths import data_dir

DATA = data_dir()
needs_data = pytest.mark.skipif(not (DATA / "bizsre").is_dir(), reason=f"data directory {DATA} not available")
N_RECORDS = 906
#: Records of the local copy whose English question is also in MzsRE's en-zh file, measured once.
N_SHARED_WITH_MZSRE = 643


def raw_records() -> list[dict]:
    return json.loads((DATA / BIZSRE_RELATIVE_PATH).read_text("utf-8"))


@pytest.fixture(scope="module")
def everything():
    return load_bizsre(verbose=False)


@needs_data
def test_every_record_is_loaded_in_both_languages_in_file_order(everything):
    records = raw_records()
    assert len(records) == N_RECORDS
    assert set(everything) == {"en", "zh"}
    for language in ("en", "zh"):
        assert [r.case_id for r in everything[language]] == list(range(N_RECORDS))
        assert {r.dataset for r in everything[language]} == {"bzsre"}
        assert {r.subject_rule for r in everything[language]} == {EXACT}
    pool = load_bizsre_pool()
    assert pool.n_records == N_RECORDS and pool.rejected == {"en": [], "zh": []}


@needs_data
def test_requests_carry_the_record_fields(everything):
    records = raw_records()
    for english, chinese in zip(everything["en"], everything["zh"]):
        raw = records[chinese.case_id]
        assert chinese.english_twin == english and english.english_twin is None
        for request, side in ((english, raw["en"]), (chinese, raw["zh"])):
            assert request.question == side["src"]
            assert request.target == side["alt"]
            assert request.paraphrase == side["rephrase"]
            assert request.source_subject == side["subject"]
            assert request.locality_answer == side["loc_ans"]
            assert request.portability_prompt == side["portability"]["New Question"]
            assert request.portability_answer == side["portability"]["New Answer"]
        # the reference's locality form: the English side already has the NQ prefix, Chinese not
        assert english.locality_prompt == raw["en"]["loc"] + "?"
        assert chinese.locality_prompt == "nq question: " + raw["zh"]["loc"] + "?"


@needs_data
def test_seeded_selection_is_parallel_reproducible_and_seed_dependent():
    first = load_bizsre(n_per_language=50, seed=0, verbose=False)
    ids = [r.case_id for r in first["en"]]
    assert [r.case_id for r in first["zh"]] == ids
    assert len(set(ids)) == 50
    assert ids == [r.case_id for r in load_bizsre(n_per_language=50, seed=0, verbose=False)["zh"]]
    assert ids != [r.case_id for r in load_bizsre(n_per_language=50, seed=1, verbose=False)["zh"]]
    # every record is eligible, so the selection is the head of the seeded permutation of all indices
    order = list(range(N_RECORDS))
    random.Random(0).shuffle(order)
    assert ids == order[:50]
    assert ids != sorted(ids)


@needs_data
def test_the_papers_800_per_language_and_one_language_alone(capsys):
    selected = load_bizsre(n_per_language=800, seed=3)
    assert [len(selected[lang]) for lang in ("en", "zh")] == [800, 800]
    assert "800 facts per language (seed 3); 0 records skipped" in capsys.readouterr().out
    chinese_only = load_bizsre("zh", n_per_language=800, seed=3, verbose=False)
    assert list(chinese_only) == ["zh"]
    assert [r.case_id for r in chinese_only["zh"]] == [r.case_id for r in selected["zh"]]


@needs_data
def test_records_shared_with_mzsre_give_the_same_requests(everything):
    """Matched by the English question text, read here from both files, not by index."""
    mzsre_raw = json.loads((DATA / "mzsre/mzsre_test_duplicate_enzh.json").read_text("utf-8"))
    mzsre_index = {record["en"]["src"]: index for index, record in enumerate(mzsre_raw)}
    matches = [(index, mzsre_index[record["en"]["src"]]) for index, record in enumerate(raw_records())
               if record["en"]["src"] in mzsre_index]
    assert len(matches) == N_SHARED_WITH_MZSRE
    assert any(ours != theirs for ours, theirs in matches)   # the files are not index-aligned
    mzsre = load_mzsre(["en", "zh"], verbose=False)
    mzsre_by_case = {lang: {r.case_id: r for r in requests} for lang, requests in mzsre.items()}
    for ours, theirs in matches:
        for language in ("en", "zh"):
            mine, reference = everything[language][ours], mzsre_by_case[language][theirs]
            assert (mine.prompt, mine.subject, mine.target) == (reference.prompt, reference.subject, reference.target)
            assert mine.dataset == "bzsre" and reference.dataset == "mzsre"


@needs_data
@pytest.mark.parametrize("languages, match", [
    (["en", "de"], r"unsupported Bi-ZsRE language 'de'; supported: en, zh"),
    ("fr", r"unsupported Bi-ZsRE language 'fr'"),
    ([], r"no languages requested; supported Bi-ZsRE languages: en, zh"),
    (["zh", "zh"], r"more than once: \['zh'\]"),
])
def test_bad_languages(languages, match):
    with pytest.raises(ValueError, match=match):
        load_bizsre(languages, verbose=False)


@needs_data
def test_bad_counts():
    with pytest.raises(ValueError, match=r"asked for 907 Bi-ZsRE requests per language but only 906 of 906"):
        load_bizsre(n_per_language=907, verbose=False)
    with pytest.raises(ValueError, match="positive"):
        load_bizsre(n_per_language=0, verbose=False)
    with pytest.raises(TypeError):
        load_bizsre(n_per_language=2.5, verbose=False)


# ----- a crafted data directory --------------------------------------------------------------------

def _side(subject: str) -> dict:
    return {"subject": subject, "src": f"Who founded {subject}?", "rephrase": f"{subject} was founded by?",
            "alt": "Someone", "loc": "nq question: who wrote it", "loc_ans": "Them",
            "portability": {"New Question": "Q?", "New Answer": "A"}}


def _crafted_records() -> list[dict]:
    return [{"en": _side(f"Acme {i}"), "zh": _side(f"艾克美{i}")} for i in range(3)]


def _write_pinned(tmp_path, monkeypatch, records) -> None:
    """Write ``records`` as the Bi-ZsRE file of a tmp data dir and pin its bytes (as test_data.py does)."""
    data = json.dumps(records, ensure_ascii=False).encode()
    (tmp_path / "bizsre").mkdir()
    (tmp_path / BIZSRE_RELATIVE_PATH).write_bytes(data)
    pinned = {**load_manifest()[BIZSRE_RELATIVE_PATH], "sha256": download_module.sha256_bytes(data)}
    monkeypatch.setattr(download_module, "manifest_entry", lambda relative: pinned)


def test_crafted_file_loads(tmp_path, monkeypatch):
    _write_pinned(tmp_path, monkeypatch, _crafted_records())
    selected = load_bizsre(data_dir=tmp_path, verbose=False)
    assert [r.subject for r in selected["zh"]] == ["艾克美0", "艾克美1", "艾克美2"]
    assert [r.english_twin.subject for r in selected["zh"]] == ["Acme 0", "Acme 1", "Acme 2"]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[1]["zh"].pop("alt"), "record 1 field 'zh': missing field 'alt'"),
    (lambda r: r[2]["en"].update(src=7), "record 2 field 'en': field 'src' must be a non-empty string"),
    (lambda r: r[1].pop("zh"), "record 1: missing field 'zh'"),
    (lambda r: r[0]["zh"].update(portability=["x"]), "record 0 field 'zh': field 'portability' must be an object"),
])
def test_malformed_record_names_the_file_record_and_field(tmp_path, monkeypatch, mutate, message):
    records = _crafted_records()
    mutate(records)
    _write_pinned(tmp_path, monkeypatch, records)
    with pytest.raises(DataFormatError) as error:
        load_bizsre(["en"], data_dir=tmp_path, verbose=False)   # both sides are checked even for one language
    assert f"{BIZSRE_RELATIVE_PATH} {message}" in str(error.value)


def test_a_file_that_is_not_a_list_is_rejected(tmp_path, monkeypatch):
    _write_pinned(tmp_path, monkeypatch, {"records": _crafted_records()})
    with pytest.raises(DataFormatError, match=r"bizsre/bizsre_test.json: expected a list of records, got dict"):
        load_bizsre(data_dir=tmp_path, verbose=False)


def test_missing_file_and_directory_give_the_download_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGEDIT_DOWNLOAD", "0")
    with pytest.raises(DataFileMissingError, match=r"bizsre/bizsre_test.json.*lin-wang-ynu/MKD"):
        load_bizsre(data_dir=tmp_path, verbose=False)
    with pytest.raises(DataDirectoryMissingError, match="does not exist"):
        load_bizsre(data_dir=tmp_path / "absent", verbose=False)
