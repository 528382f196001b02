"""MLaKE's two settings (langedit.data.mlake) and notebook 09's tables (langedit.mlake_results).

The multi-hop requests are checked against the raw JSON files read here independently: which file
fields become prompt and target, one request per edit chain, counts, and the errors for bad input.
"""
import json
import math
from collections import defaultdict

import pandas as pd
import pytest

from langedit.data import DataFormatError, EditRequest, load_manifest, load_mlake, locate_mlake
from langedit.data import download as download_module
from langedit.data.mlake import MLAKE_SETTINGS, MULTI_HOP_DATASET
from langedit.data.subjects import ENGLISH, EXACT, UNLOCATED
from langedit.paths import data_dir
from langedit import notebook_support as ns

DATA = data_dir()
needs_data = pytest.mark.skipif(not (DATA / "mlake").is_dir(), reason=f"data directory {DATA} not available")
LANGS = ("en", "de", "fr")


def raw(relative):
    return json.loads((DATA / "mlake" / relative).read_text("utf-8"))


def raw_chains(language):
    """Independently: the new multi-hop records per English single-hop index of their e_prompt."""
    english = {record["e_prompt"]: index for index, record in enumerate(raw("single_hop/en_qa.json"))}
    chains = defaultdict(list)
    for record in raw(f"multi_hop/new_{language}_qa.json"):
        chains[english[record["e_prompt"]]].append(record)
    return chains


@pytest.fixture(scope="module")
def multi_hop():
    return locate_mlake(LANGS, setting="multi_hop")


@needs_data
def test_multi_hop_requests_edit_the_first_question_of_each_chain_to_its_new_answer(multi_hop):
    for language in LANGS:
        chains = raw_chains(language)
        requests = [r for r in multi_hop[language] if isinstance(r, EditRequest)]
        assert len(requests) > 400
        for request in requests:
            first = chains[request.case_id][0]
            assert request.question == first["question"]
            assert request.target == first["e_answer"] and request.target_aliases == tuple(first["e_answer_aliases"])
            assert request.subject in request.question and request.language == language
            assert request.dataset == MULTI_HOP_DATASET
            assert request.locality_prompt is None and request.portability_prompt is None
            if request.paraphrase is not None:   # a later question of the chain with the same new answer
                assert request.paraphrase in [r["question"] for r in chains[request.case_id][1:]
                                              if r["e_answer"] == request.target]


@needs_data
def test_multi_hop_counts_one_record_per_chain(multi_hop):
    for language in LANGS:
        records = multi_hop[language]
        assert len(records) == len(raw_chains(language)) == len({r["e_prompt"] for r in
                                                                 raw(f"multi_hop/new_{language}_qa.json")})
        assert len({r.case_id for r in records}) == len(records)
    located = {language: sum(isinstance(r, EditRequest) for r in records) for language, records in multi_hop.items()}
    assert located == {"en": 642, "de": 451, "fr": 441}
    assert (len(multi_hop["en"]), len(multi_hop["de"]), len(multi_hop["fr"])) == (656, 514, 514)


@needs_data
def test_multi_hop_subject_is_the_english_single_hop_subject(multi_hop):
    single = {r.case_id: r for r in locate_mlake("en")["en"]}
    english = {r.case_id: r for r in multi_hop["en"]}
    carl = english[0]
    assert carl.prompt == "In which country is the institution where {} was employed located?"
    assert (carl.subject, carl.target, carl.subject_rule) == ("Carl Sagan", "United Kingdom", EXACT)
    german = {r.case_id: r for r in multi_hop["de"]}[0]
    assert (german.subject, german.target, german.subject_rule) == ("Carl Sagan", "London", ENGLISH)
    assert german.english_twin is carl and german.source_subject == single[0].subject
    for case_id, record in english.items():
        if not isinstance(single[case_id], EditRequest):   # no English single-hop subject: rejected
            assert record.subject_rule == UNLOCATED


@needs_data
def test_single_hop_setting_is_the_default_and_unchanged():
    default, explicit = load_mlake("de"), load_mlake("de", setting="single_hop")
    assert default == explicit and all(r.dataset == "mlake" for r in default["de"])
    first = raw("single_hop/de_qa.json")[0]
    assert (default["de"][0].question, default["de"][0].target) == (first["question"], first["e_answer"])


def test_unknown_setting_and_language_are_refused():
    with pytest.raises(ValueError, match=r"setting 'two_hop'.*single_hop, multi_hop"):
        load_mlake("en", setting="two_hop")
    with pytest.raises(ValueError, match=r"'es'.*supported: en, de, fr, ja, zh"):
        load_mlake(["es"], setting="multi_hop")
    assert MLAKE_SETTINGS == ("single_hop", "multi_hop")


def _copy_data(tmp_path, monkeypatch, changed: dict):
    """The MLaKE files the loader reads for en/de, with `changed` (relative -> records) replacing some;
    the manifest pins the bytes written, so only the record checks can refuse them."""
    manifest = load_manifest()
    for relative in ("single_hop/en_qa.json", "multi_hop/new_en_qa.json", "multi_hop/new_de_qa.json"):
        target = tmp_path / "mlake" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(changed[relative]).encode() if relative in changed else (DATA / "mlake" / relative).read_bytes()
        target.write_bytes(data)
    monkeypatch.setattr(download_module, "manifest_entry", lambda rel: {
        **manifest[rel], "sha256": download_module.sha256_bytes((tmp_path / rel).read_bytes()),
        "size": (tmp_path / rel).stat().st_size})


@needs_data
@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("e_answer"), r"new_de_qa.json record 3: field 'e_answer' missing"),
    (lambda r: r.update(e_answer_aliases="London"), r"new_de_qa.json record 3: field 'e_answer_aliases' must be"),
    (lambda r: r.update(e_prompt="Carl Sagan worked at NASA."), r"new_de_qa.json record 3: e_prompt 'Carl Sagan "
                                                                  r"worked at NASA.' is no e_prompt of"),
])
def test_malformed_multi_hop_record_names_file_record_and_field(tmp_path, monkeypatch, mutate, message):
    records = raw("multi_hop/new_de_qa.json")
    mutate(records[3])
    _copy_data(tmp_path, monkeypatch, {"multi_hop/new_de_qa.json": records})
    with pytest.raises(DataFormatError, match=message):
        load_mlake(["en", "de"], data_dir=tmp_path, setting="multi_hop")


# ----- run keys -----------------------------------------------------------------------------------

@needs_data
def test_the_two_settings_never_share_a_run_folder():
    multi = load_mlake("en", setting="multi_hop")["en"][:3]
    # the single-hop edits of the same facts: the same case ids, which is why the key needs more
    single = [r for r in load_mlake("en")["en"] if r.case_id in {m.case_id for m in multi}]
    assert [r.case_id for r in single] == [r.case_id for r in multi] == [0, 3, 7]
    identity = lambda requests: ns.request_identity({"en": requests})
    assert identity(single) != identity(multi)
    assert identity(single)["datasets"] == ["mlake"] and identity(multi)["datasets"] == [MULTI_HOP_DATASET]


def test_mzsre_run_keys_hold_only_case_ids():
    class Request:
        def __init__(self, case_id, dataset="mzsre"):
            self.case_id, self.dataset = case_id, dataset
    assert ns.request_identity({"en": [Request(0), Request(4)]}) == {"case_ids": {"en": [0, 4]}}


# ----- notebook 09's tables -----------------------------------------------------------------------

def _request(language, case_id, paraphrase=None, portability=None):
    return EditRequest(case_id, language, "Q {}?", "s", "t", paraphrase, None, None, portability,
                       "a" if portability else None, EXACT, None, "s")


def _run(method, efficacy_last, f1_pre, f1_last):
    """A finished run over en, de: pre-edit rows, a middle step, the last step, XTREME probe records."""
    evals = pd.DataFrame([
        {"after": "pre-edit", "language": "en", "n": 2, "efficacy": 0.0, "generality": 10.0, "portability": 0.0},
        {"after": "pre-edit", "language": "de", "n": 2, "efficacy": 50.0, "generality": 20.0, "portability": 0.0},
        {"after": "en", "language": "en", "n": 2, "efficacy": 99.0, "generality": 99.0, "portability": 99.0},
        {"after": "de", "language": "en", "n": 2, "efficacy": efficacy_last[0], "generality": 40.0, "portability": 25.0},
        {"after": "de", "language": "de", "n": 2, "efficacy": efficacy_last[1], "generality": 30.0, "portability": 0.0}])
    probes = pd.DataFrame([{"after": after, "task": task, "language": lang, "f1": f1 + shift}
                           for after, f1 in (("pre-edit", f1_pre), ("en", 0.0), ("de", f1_last))
                           for task, shift in (("xnli", -5.0), ("pawsx", 5.0)) for lang in ("en", "de")])
    return ns.RunResult(evals, pd.DataFrame(), None, method, "multilingual", {}, probes)


REQUESTS = {"en": [_request("en", 0, "P", "M"), _request("en", 1)], "de": [_request("de", 0), _request("de", 1)]}


def _tables():
    from langedit.mlake_results import setting_scores, xtreme_rows

    runs = {"alphaedit": _run("alphaedit", (100.0, 50.0), 40.0, 30.0), "langedit": _run("langedit", (100.0, 100.0), 40.0, 38.0)}
    scores = pd.concat([setting_scores(run, REQUESTS, "multi_hop") for run in runs.values()], ignore_index=True)
    xtreme = pd.concat([xtreme_rows(run, "multi_hop") for run in runs.values()], ignore_index=True)
    return scores, xtreme


def test_setting_scores_take_the_last_step_and_count_the_facts_each_metric_scores():
    scores, _ = _tables()
    langedit = scores[scores["method"] == "langedit"].set_index(["language", "metric"])
    assert langedit.loc[("de", "efficacy"), "value"] == 100.0 and langedit.loc[("en", "portability"), "value"] == 25.0
    assert langedit.loc[("en", "efficacy"), "n"] == 2 and langedit.loc[("en", "generality"), "n"] == 1
    # German requests have no paraphrase nor portability question: those metrics are not shown for de
    assert ("de", "generality") not in langedit.index and ("de", "portability") not in langedit.index
    assert len(scores[scores["method"] == "pre-edit"]) == 2 * 4   # one set of pre-edit rows per run


def test_table8_comparison_puts_the_paper_beside_ours():
    from langedit.mlake_results import table8_comparison

    scores, xtreme = _tables()
    table = table8_comparison(scores, xtreme, ns.paper_table(8)).set_index("method")
    assert list(table.index) == ["Pre-edited", "AlphaEdit", "LangEdit"] and set(table["setting"]) == {"multi-hop"}
    assert table.loc["AlphaEdit", "efficacy (ours)"] == pytest.approx((100.0 + 50.0) / 2)
    assert table.loc["Pre-edited", "efficacy (ours)"] == pytest.approx((0.0 + 50.0) / 2)
    # F1 = mean over tasks of the mean over languages: (25 + 35) / 2 after AlphaEdit's last step
    assert table.loc["AlphaEdit", "XTREME F1 (ours)"] == pytest.approx(30.0)
    assert table.loc["Pre-edited", "XTREME F1 (ours)"] == pytest.approx(40.0)
    assert table.loc["AlphaEdit", "efficacy (paper)"] == 88.48 and table.loc["LangEdit", "XTREME F1 (paper)"] == 69.09
    assert math.isnan(table.loc["Pre-edited", "efficacy (paper)"])
    assert table.loc["LangEdit", "facts per language"] == "2/2"


def test_xtreme_rows_need_the_probe():
    from langedit.mlake_results import xtreme_rows

    run = _run("langedit", (1.0, 1.0), 1.0, 1.0)
    run.probes = None
    with pytest.raises(ValueError, match="no XTREME probe records"):
        xtreme_rows(run, "single_hop")


def test_setting_figure_shows_n_per_language_and_titles_in_words():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from langedit.mlake_results import setting_figure

    scores, xtreme = _tables()
    fig = setting_figure(scores, xtreme, "multi_hop", ["en", "de"], "tiny")
    efficacy, generality = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in efficacy.get_xticklabels()] == ["en\nn=2", "de\nn=2"]
    assert [t.get_text() for t in generality.get_xticklabels()] == ["en\nn=1", "de\nn=–"]
    assert "multi-hop questions edited" in fig._suptitle.get_text()
    colours = {p.get_facecolor()[:3] for p in efficacy.patches}
    assert matplotlib.colors.to_rgb(ns.METHOD_COLOURS["langedit"]) in colours
    # the legend sits above the panels (inside one it covered bars at 100 %), once for the figure
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [t.get_label() for t in efficacy.containers]
    zeros_before = len(efficacy.texts)
    plt.close(fig)
    # a score of 0 is marked, so that its invisible bar does not read as a missing one
    zeroed = scores.copy()
    zeroed.loc[(zeroed["method"] == "langedit") & (zeroed["metric"] == "efficacy") & (zeroed["language"] == "de"),
               "value"] = 0.0
    fig = setting_figure(zeroed, xtreme, "multi_hop", ["en", "de"], "tiny")
    assert [t.get_text() for t in fig.axes[0].texts] == ["0"] * (zeros_before + 1)
    plt.close(fig)
