"""The sequential loop on a tiny model: evaluation after each language, JSONL output, resume, staleness."""

import pytest
import torch

from langedit.editing import Editor, load_hparams
from langedit.editing.sequential import SequentialRun, StaleRunError, language_order
from langedit.models.tiny import build_tiny_model
from edit_requests import LanguageReq


Req = LanguageReq


REQUESTS = {"en": [Req("Where is {}?", "Rome", "Italy", "en"), Req("Who founded {}?", "Acme", "Bob", "en", 1)],
            "de": [Req("Wo liegt {}?", "Rom", "Italien", "de"), Req("Wer gründete {}?", "Acme", "Bob", "de", 1)]}


@pytest.fixture(scope="module")
def setup(default_tokenizer, tmp_path_factory):
    lm = build_tiny_model("gemma3_text", tokenizer=default_tokenizer)
    cache = tmp_path_factory.mktemp("cache")
    hp = load_hparams("memit", "gemma3", layers=[1, 2], v_steps=2, v_lr=0.5, stats_tokens=200)
    calls = []

    def factory():
        calls.append(1)
        return Editor(lm, method="memit", hparams=hp, corpus_texts=["a b c d e f g h i j k"] * 30,
                      progress=False, cache=cache)
    return lm, factory, calls


def test_multilingual_run_evaluates_every_edited_language_and_resumes(setup, tmp_path):
    lm, factory, calls = setup
    run = SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                        editor_factory=factory)
    table = run.run()
    steps = list(zip(table["after"], table["language"]))
    assert steps == [("pre-edit", "en"), ("pre-edit", "de"), ("en", "en"), ("de", "en"), ("de", "de")]
    assert len(run.batches()) == 4 and set(run.batches()["language"]) == {"en", "de"}
    assert table[["efficacy", "generality", "specificity", "locality_agreement"]].stack().between(0, 100).all()
    weights = {l: w.clone() for l, w in ((l, lm.model.model.layers[l].mlp.down_proj.weight) for l in (1, 2))}
    # the run restored the model; running again resumes from the checkpoint and edits nothing new
    again = SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                          editor_factory=factory).run()
    assert len(again) == len(table) and len(run.batches()) == 4
    for layer, weight in weights.items():
        assert (lm.model.model.layers[layer].mlp.down_proj.weight == weight).all()


def test_a_finished_run_without_its_checkpoint_is_read_back_without_editing(setup, tmp_path):
    import shutil
    lm, factory, calls = setup
    make = lambda: SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                                 editor_factory=factory)
    first = make().run()
    records = (tmp_path / "batches.jsonl").read_text()
    shutil.rmtree(tmp_path / "checkpoint")          # what a fresh clone of committed results looks like
    before = len(calls)
    run = make()
    assert run.is_recorded()
    again = run.run()
    assert len(calls) == before and not (tmp_path / "checkpoint").exists()      # no editor was even built
    assert again.equals(first) and (tmp_path / "batches.jsonl").read_text() == records


def test_a_finished_run_whose_states_are_needed_is_edited_again_to_save_them(setup, tmp_path):
    import shutil
    lm, factory, calls = setup
    make = lambda **kw: SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path,
                                      progress=False, editor_factory=factory, **kw)
    first = make().run()
    saved = _checkpoint_tensors(tmp_path)
    shutil.rmtree(tmp_path / "checkpoint")
    run = make(keep_states=True)
    assert run.is_recorded() and not run.states_saved()
    before = len(calls)
    assert run.run().equals(first) and len(calls) == before + 1 and run.states_saved()
    again = _checkpoint_tensors(tmp_path)
    assert set(again) == set(saved) and all(torch.equal(again[k], saved[k]) for k in saved)
    before = len(calls)
    make(keep_states=True).run()                  # states present now: read back
    assert len(calls) == before


def test_an_unfinished_run_without_its_checkpoint_is_edited_again_without_duplicate_records(setup, tmp_path):
    import shutil
    lm, factory, calls = setup
    make = lambda: SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                                 editor_factory=factory)
    first = make().run()
    shutil.rmtree(tmp_path / "checkpoint")
    evals = (tmp_path / "evals.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "evals.jsonl").write_text("".join(evals[:-1]))      # the last evaluation was never written
    run = make()
    assert not run.is_recorded()
    before = len(calls)
    again = run.run()
    assert len(calls) == before + 1
    assert len(run.batches()) == 4 and list(run.batches()["batch"]) == [0, 1, 2, 3]
    assert (tmp_path / "checkpoint" / "state.json").exists()
    assert again.equals(first)          # editing is deterministic: the missing evaluation is the one lost


@pytest.mark.parametrize("mode", ["multilingual", "monolingual", "summed"])      # translation: with PARALLEL below
def test_the_expected_records_are_exactly_what_a_finished_run_writes(setup, tmp_path, mode):
    lm, factory, _ = setup
    run = SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                        editor_factory=factory, mode=mode)
    assert not run.is_recorded()
    table = run.run()
    batches, evals, _ = run.expected_records()
    assert list(zip(table["after"], table["language"])) == evals
    written = run.batches().groupby("checkpoint")["batch"].apply(sorted).to_dict()
    assert written == {name: list(range(n)) for name, n in batches.items()}
    assert run.is_recorded()


def test_a_finished_run_with_a_new_probe_is_edited_again_to_score_it(setup, tmp_path):
    lm, factory, calls = setup
    SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                  editor_factory=factory).run()
    probe = _NormProbe(lm)
    run = SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                        editor_factory=factory, probe=probe)
    assert not run.is_recorded()
    run.run()
    assert probe.calls == 3 and list(run.probes()["after"]) == ["pre-edit", "en", "de"] and run.is_recorded()


def test_a_folder_of_another_configuration_is_refused(setup, tmp_path):
    lm, factory, _ = setup
    SequentialRun(lm, "memit", REQUESTS, ["en"], batch_size=2, out_dir=tmp_path, progress=False,
                  editor_factory=factory).run()
    with pytest.raises(StaleRunError, match="different configuration"):
        SequentialRun(lm, "memit", REQUESTS, ["en"], batch_size=1, out_dir=tmp_path, progress=False,
                      editor_factory=factory).run()


def test_bad_arguments_and_shuffled_order():
    assert language_order(["en", "de", "nl", "es"], 3) == language_order(["en", "de", "nl", "es"], 3)
    assert sorted(language_order(["en", "de", "nl", "es"], 3)) == ["de", "en", "es", "nl"]
    with pytest.raises(ValueError, match="unknown mode"):
        SequentialRun(None, "memit", REQUESTS, ["en"], 1, "/tmp/x", mode="sideways")
    with pytest.raises(ValueError, match=r"no edit requests for language\(s\) \['fr'\]"):
        SequentialRun(None, "memit", REQUESTS, ["en", "fr"], 1, "/tmp/x")


def _weights(lm):
    return {l: lm.model.model.layers[l].mlp.down_proj.weight.detach().clone() for l in (1, 2)}


def test_monolingual_run_edits_each_language_on_a_fresh_model_and_queries_every_language(setup, tmp_path):
    lm, factory, _ = setup
    before = _weights(lm)
    run = SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=2, out_dir=tmp_path, mode="monolingual",
                        progress=False, editor_factory=factory)
    table = run.run()
    edited = table[table["after"] != "pre-edit"]
    assert sorted(zip(edited["after"], edited["language"])) == [("de", "de"), ("de", "en"), ("en", "de"), ("en", "en")]
    # each language started from the original weights: its first batch saw no earlier edit
    assert set(run.batches()["checkpoint"]) == {"checkpoint-en", "checkpoint-de"}
    assert all(v == {} for v in run.batches()["leakage"])
    after = _weights(lm)
    assert all(torch.equal(before[l], after[l]) for l in before)


def test_summed_run_adds_the_separately_computed_updates(setup, tmp_path):
    lm, factory, _ = setup
    separate = {}
    for language in ("en", "de"):
        editor = factory()
        editor.apply(REQUESTS[language])
        separate[language] = {l: editor.weight(l).detach() - editor.original[l] for l in editor.layers}
        editor.restore()
    seen = {}
    original_evaluate = SequentialRun._evaluate

    def spy(self, after, languages, reference, done):
        if after == "all (summed)":
            seen.update({l: lm.model.model.layers[l].mlp.down_proj.weight.detach().clone() for l in (1, 2)})
        return original_evaluate(self, after, languages, reference, done)

    SequentialRun._evaluate = spy
    try:
        before = _weights(lm)
        SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=2, out_dir=tmp_path, mode="summed",
                      progress=False, editor_factory=factory).run()
    finally:
        SequentialRun._evaluate = original_evaluate
    for layer in (1, 2):
        expected = before[layer] + separate["en"][layer] + separate["de"][layer]
        assert torch.allclose(seen[layer], expected, rtol=1e-5, atol=1e-4)   # float32 sums of ~1e3 entries
    assert all(torch.equal(before[l], w) for l, w in _weights(lm).items())


def test_translation_run_edits_the_english_twins_only(setup, tmp_path):
    lm, factory, _ = setup
    twin = REQUESTS["en"][0]
    german = {"de": [Req("Wo liegt {}?", "Rom", "Italien", "de", english_twin=twin)]}
    run = SequentialRun(lm, "memit", german, ["de"], batch_size=1, out_dir=tmp_path, mode="translation",
                        progress=False, editor_factory=factory)
    assert [[r.language for r in batch] for _, batch in run.edit_plan()] == [["en"]]
    table = run.run()
    assert "all" in set(table["after"])


def test_the_run_key_covers_the_resolved_hyperparameters(setup):
    from langedit.editing.sequential import resolved_hparams
    from langedit.notebook_support import run_folder

    lm, _, _ = setup
    default = resolved_hparams(lm, "memit")
    assert default["layers"] == tuple(load_hparams("memit", "gemma3").layers) and "source" not in default
    assert resolved_hparams(lm, "memit", v_lr=3.0)["v_lr"] == 3.0
    changed_file = load_hparams("memit", "gemma3", v_steps=7)      # as if hparams/gemma3.json had changed
    assert resolved_hparams(lm, "memit", changed_file) != default
    make = lambda hp: SequentialRun(lm, "memit", REQUESTS, ["en"], batch_size=1, out_dir="unused", progress=False,
                                    hparams=hp).config.key()
    assert make(changed_file) != make(None)
    params = lambda hp: dict(order=["en"], hparams=resolved_hparams(lm, "memit", hp))
    assert run_folder("seq", "memit", "multilingual", lm.name, params(None)) != \
        run_folder("seq", "memit", "multilingual", lm.name, params(changed_file))


def test_a_prune_run_evaluates_the_restrained_accumulated_update(setup, tmp_path, monkeypatch):
    """What the loop evaluates is W0 + restrain(W_raw - W0) (an SVD by hand of the raw update the
    checkpoint holds), while the checkpoint keeps the raw weights editing continues from."""
    import numpy as np
    lm, _, _ = setup
    hp = load_hparams("prune", "gemma3", layers=[1, 2], v_steps=2, v_lr=0.5, stats_tokens=200)
    factory = lambda: Editor(lm, method="prune", hparams=hp, corpus_texts=["a b c d e f g h i j k"] * 30,
                             progress=False, cache=tmp_path / "cache")
    before = _weights(lm)
    seen = {}
    real_evaluate = SequentialRun._evaluate

    def spy(self, after, languages, reference, done):
        seen[after] = _weights(lm)
        return real_evaluate(self, after, languages, reference, done)
    monkeypatch.setattr(SequentialRun, "_evaluate", spy)
    SequentialRun(lm, "prune", REQUESTS, ["en", "de"], batch_size=2, out_dir=tmp_path / "run", progress=False,
                  editor_factory=factory, hparams=hp).run()
    _, state = _final_state(tmp_path / "run")
    for layer in (1, 2):
        w0, raw = before[layer].double().numpy(), state[f"weight.{layer}"].double().numpy()
        bound = np.linalg.svd(w0, compute_uv=False).max()
        u, sigma, vt = np.linalg.svd(raw - w0, full_matrices=False)
        assert sigma.max() > 2 * bound                                   # the bound acts
        restrained = np.where(sigma > bound, bound + np.log(sigma / bound), sigma)
        expected = torch.from_numpy(w0 + (u * restrained) @ vt).float()
        assert torch.allclose(seen["de"][layer], expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(seen["de"][layer], state[f"weight.{layer}"], rtol=1e-3)   # not the raw weights
    assert all(torch.equal(before[l], w) for l, w in _weights(lm).items())                   # restored


# ----- resume in a new process, bit for bit ------------------------------------------------------------

RESUME_CASES = ["ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit", "langedit-paper",
                "langedit-incremental", "prune-killed-after-save", "memit-killed-in-save",
                "langedit-killed-in-evaluation"]
UNINTERRUPTED = {"prune-killed-after-save": "prune", "memit-killed-in-save": "memit",
                 "langedit-killed-in-evaluation": "langedit"}


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """tests/resume_worker.py in three processes: uninterrupted runs beside interrupted ones (stopped
    after batch 1 of 3; or right after, or in the middle of, saving batch 2; or killed in the middle of
    the last evaluations); then a third, new process resumes every interrupted run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = tmp_path_factory.mktemp("resume")
    worker = Path(__file__).with_name("resume_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = lambda phase: subprocess.Popen([sys.executable, str(worker), str(root), phase], env=env,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for process, code in [(start("full"), 0), (start("interrupt"), 9)]:   # "interrupt" ends killed
        output, _ = process.communicate(timeout=600)
        assert process.returncode == code, output[-3000:]
    resume = start("resume")
    output, _ = resume.communicate(timeout=600)
    assert resume.returncode == 0, output[-3000:]
    return root


def _final_state(folder):
    import json
    from safetensors.torch import load_file
    meta = json.loads((folder / "checkpoint" / "state.json").read_text())
    return meta, load_file(str(folder / "checkpoint" / meta["tensors"]))


def _batch_rows(run_folder):
    import json
    rows = [json.loads(line) for line in (run_folder / "batches.jsonl").read_text().splitlines()]
    timing = ("seconds", "peak_memory_bytes", "value_seconds", "added_memory_bytes")
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


@pytest.mark.parametrize("case", RESUME_CASES)
def test_a_run_resumed_in_a_new_process_equals_the_uninterrupted_run(resumed_runs, case):
    import json
    full, resumed = resumed_runs / "full" / UNINTERRUPTED.get(case, case), resumed_runs / "resumed" / case
    read = lambda folder, name: [json.loads(line) for line in (folder / name).read_text().splitlines()]
    evals = lambda folder: sorted(map(json.dumps, read(folder, "evals.jsonl")))
    assert len(read(full, "evals.jsonl")) == 5                                # pre-edit x2, after en, after de x2
    assert evals(resumed) == evals(full)                                      # the scores, to the last digit
    from langedit.editing.sequential import read_per_fact
    per_fact = lambda folder: read_per_fact(folder).sort_values(["after", "language", "case_id"], ignore_index=True)
    assert len(per_fact(full)) == 7 and per_fact(resumed).equals(per_fact(full))  # the facts' scores too
    evaluated = lambda folder: {(r["after"], r["weights"]) for r in read(folder, "evaluated.jsonl")}
    assert evaluated(resumed) == evaluated(full) and len(evaluated(full)) == 3  # the weights each evaluation saw
    assert _batch_rows(resumed) == _batch_rows(full) and len(_batch_rows(full)) == 3
    (meta_full, state_full), (meta_resumed, state_resumed) = _final_state(full), _final_state(resumed)
    assert meta_resumed["n_batches"] == meta_full["n_batches"] == 3
    assert meta_resumed["templates"] == meta_full["templates"]
    assert set(state_resumed) == set(state_full)
    for name, tensor in state_full.items():                                   # raw weights and all method state
        assert torch.equal(state_resumed[name], tensor), name
    if case not in ("ft",):
        assert meta_full["key_statistics"] and (full / "checkpoint" / meta_full["key_statistics"]).exists()


class _NormProbe:
    """A stand-in ability probe: the norm of an edited matrix, i.e. exactly the state it was shown."""
    signature = "norm-of-layer-2"

    def __init__(self, lm):
        self.lm, self.calls = lm, 0

    def summary(self, model, tokenizer):
        import pandas as pd
        self.calls += 1
        return pd.DataFrame([{"language": "xx", "norm": float(model.model.layers[2].mlp.down_proj.weight.norm())}])


def test_a_probe_scores_the_model_after_every_step_once_also_on_resume(setup, tmp_path):
    lm, factory, _ = setup
    original = float(lm.model.model.layers[2].mlp.down_proj.weight.norm())
    probe = _NormProbe(lm)
    run = SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                        editor_factory=factory, probe=probe)
    run.run()
    probes = run.probes()
    assert list(probes["after"]) == ["pre-edit", "en", "de"] and probe.calls == 3
    assert probes["norm"].iloc[0] == pytest.approx(original)
    assert probes["norm"].iloc[1] != probes["norm"].iloc[0] != probes["norm"].iloc[2]
    # the final step's norm is the edited model's, which the checkpoint reproduces
    editor = factory()
    editor.load(tmp_path / "checkpoint")
    assert probes["norm"].iloc[2] == pytest.approx(float(lm.model.model.layers[2].mlp.down_proj.weight.norm()))
    editor.restore()
    again = SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                          editor_factory=factory, probe=probe)
    again.run()
    assert probe.calls == 3 and len(again.probes()) == 3


def test_a_final_only_probe_scores_the_finished_models_and_nothing_else(setup, tmp_path):
    lm, factory, _ = setup
    every, final = _NormProbe(lm), _NormProbe(lm)
    final.steps, final.signature = "final", "norm-final"
    make = lambda folder, probe, **kw: SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1,
                                                     out_dir=folder, progress=False, editor_factory=factory,
                                                     probe=probe, **kw)
    reference = make(tmp_path / "every", every)
    reference.run()
    run = make(tmp_path / "final", final)
    run.run()
    # only the last step of the one edited model, with the value the every-step probe saw there
    assert final.calls == 1 and list(run.probes()["after"]) == ["de"]
    assert run.probes()["norm"].iloc[0] == reference.probes()["norm"].iloc[-1]
    assert run.is_recorded()
    make(tmp_path / "final", final).run()
    assert final.calls == 1
    # monolingual: every language's model is a finished one, and the unedited model is not scored
    mono_probe = _NormProbe(lm)
    mono_probe.steps, mono_probe.signature = "final", "norm-final"
    mono = make(tmp_path / "mono", mono_probe, mode="monolingual")
    mono.run()
    assert list(mono.probes()["after"]) == ["en", "de"] and mono_probe.calls == 2


def test_a_probe_with_unknown_steps_is_refused_before_any_work(setup, tmp_path):
    lm, factory, _ = setup
    probe = _NormProbe(lm)
    probe.steps = "sometimes"
    with pytest.raises(ValueError, match="probe.steps must be one of"):
        SequentialRun(lm, "memit", REQUESTS, ["en"], batch_size=1, out_dir=tmp_path, progress=False,
                      editor_factory=factory, probe=probe)
    assert not (tmp_path / "config.json").exists()


# ----- queried (never edited) languages; the translation plan; the probe on summed / translated models -----

EN = [Req("Where is {}?", "Rome", "Italy", "en"), Req("Who founded {}?", "Acme", "Bob", "en", 1)]
#: the same two facts in three languages (the parallel design): de and nl carry their English twins
PARALLEL = {"en": EN,
            "de": [Req("Wo liegt {}?", "Rom", "Italien", "de", 0, english_twin=EN[0]),
                   Req("Wer gründete {}?", "Acme", "Bob", "de", 1, english_twin=EN[1])],
            "nl": [Req("Waar ligt {}?", "Rome", "Italië", "nl", 0, english_twin=EN[0]),
                   Req("Wie stichtte {}?", "Acme", "Bob", "nl", 1, english_twin=EN[1])]}


def _checkpoint_tensors(folder, name="checkpoint"):
    import json
    from safetensors.torch import load_file
    meta = json.loads((folder / name / "state.json").read_text())
    return load_file(str(folder / name / meta["tensors"]))


def test_a_queried_language_is_evaluated_at_every_step_and_never_edited(setup, tmp_path):
    lm, factory, _ = setup
    make = lambda folder, **kw: SequentialRun(lm, "memit", PARALLEL, ["en", "de"], batch_size=1, out_dir=folder,
                                              progress=False, editor_factory=factory, **kw)
    plain, queried = make(tmp_path / "plain"), make(tmp_path / "queried", query_languages=["nl"])
    plain_table, table = plain.run(), queried.run()
    assert list(zip(table["after"], table["language"])) == [
        ("pre-edit", "en"), ("pre-edit", "de"), ("pre-edit", "nl"), ("en", "en"), ("en", "nl"),
        ("de", "en"), ("de", "de"), ("de", "nl")]
    # nothing of nl was edited: the same batches, the same final weights as the run without it
    assert "nl" not in set(queried.batches()["language"])
    assert len(queried.batches()) == len(plain.batches()) == 4
    mine, theirs = _checkpoint_tensors(tmp_path / "queried"), _checkpoint_tensors(tmp_path / "plain")
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    # the edited languages' scores are those of the run without it; nl's come from its own requests
    edited = table[table["language"] != "nl"].drop(columns=["method", "mode"]).reset_index(drop=True)
    assert edited.equals(plain_table.drop(columns=["method", "mode"]).reset_index(drop=True))
    assert set(table.loc[table["language"] == "nl", "n"]) == {2}
    assert queried.config.key() != plain.config.key()


def test_queried_languages_in_the_monolingual_summed_and_translation_modes(setup, tmp_path):
    lm, factory, _ = setup
    steps = {}
    for mode in ("monolingual", "summed", "translation"):
        table = SequentialRun(lm, "memit", PARALLEL, ["en", "de"], batch_size=2, out_dir=tmp_path / mode, mode=mode,
                              progress=False, editor_factory=factory, query_languages=["nl"]).run()
        steps[mode] = {after for after, language in zip(table["after"], table["language"]) if language == "nl"}
    assert steps["monolingual"] == {"pre-edit", "en", "de"}       # each language's own model is queried in nl
    assert steps["summed"] == {"pre-edit", "all (summed)"}
    assert steps["translation"] == {"pre-edit", "all"}


def test_bad_query_languages_are_refused_by_name():
    with pytest.raises(ValueError, match=r"query language\(s\) \['de'\] are also edited"):
        SequentialRun(None, "memit", PARALLEL, ["en", "de"], 1, "/tmp/x", query_languages=["de"])
    with pytest.raises(ValueError, match=r"no requests to query for query language\(s\) \['fr'\]"):
        SequentialRun(None, "memit", PARALLEL, ["en"], 1, "/tmp/x", query_languages=["nl", "fr"])
    with pytest.raises(ValueError, match=r"no requests to query for query language\(s\) \['nl'\]"):
        SequentialRun(None, "memit", {**PARALLEL, "nl": []}, ["en"], 1, "/tmp/x", query_languages=["nl"])
    with pytest.raises(ValueError, match=r"query language\(s\) \['nl'\] given more than once"):
        SequentialRun(None, "memit", PARALLEL, ["en"], 1, "/tmp/x", query_languages=["nl", "nl"])
    with pytest.raises(TypeError, match="the string 'nl'"):
        SequentialRun(None, "memit", PARALLEL, ["en"], 1, "/tmp/x", query_languages="nl")


#: A run committed before query_languages and translation_plan existed (results/runs/
#: seq-gemma-3-270m-alphaedit-translation-24612cba78/config.json), with the key it was stored under.
COMMITTED_CONFIG = {
    "method": "alphaedit", "order": ["en", "de", "nl", "es", "fr", "zh"], "n_per_language": 3, "batch_size": 3,
    "mode": "translation", "shuffle_seed": None, "portability": False, "overrides": {}, "model": "gemma-3-270m",
    "hparams": {"layers": [3, 4, 5, 6, 7, 8], "v_steps": 25, "v_lr": 10.0, "clamp_norm_factor": 0.75,
                "kl_factor": 0.0625, "v_weight_decay": 0.5, "early_stop_loss": 0.05, "v_chunk_requests": 16,
                "stats_corpus": "wikitext", "stats_tokens": 20000, "mom2_update_weight": 150.0,
                "nullspace_threshold": 0.02, "l2": 1.0, "paper_ridge": 1.0, "langedit_variant": "released",
                "residual_damping": 0.001, "rome_layer": 6, "ft_layer": 6, "ft_lr": 0.0005, "ft_steps": 25,
                "ft_norm_constraint": 0.0005, "prune_log_base": 2.718281828459045, "rect_keep_fraction": 0.2}}


def test_earlier_runs_keep_their_keys_and_the_new_translation_plan_gets_its_own():
    from langedit.editing.sequential import TRANSLATION_PLAN, RunConfig
    assert RunConfig(**COMMITTED_CONFIG).key() == "b8b26a2324f7"
    assert RunConfig(**COMMITTED_CONFIG, translation_plan=TRANSLATION_PLAN).key() != "b8b26a2324f7"
    assert RunConfig(**COMMITTED_CONFIG, query_languages=("cs",)).key() != "b8b26a2324f7"


def test_the_translation_plan_edits_each_fact_once_in_english(setup, tmp_path):
    lm, factory, _ = setup
    plan = lambda requests, order, batch: SequentialRun(lm, "memit", requests, order, batch, tmp_path / "unused",
                                                        mode="translation", progress=False).edit_plan()
    parallel = plan(PARALLEL, ["de", "nl", "en"], 1)               # the same 2 facts in 3 languages: 2 edits
    edited = [r for _, batch in parallel for r in batch]
    assert [r.case_id for r in edited] == [0, 1] and {r.language for r in edited} == {"en"}
    assert [language for language, _ in parallel] == ["en", "en"]
    extra = Req("Who wrote {}?", "Hamlet", "Marlowe", "en", 2)
    disjoint = {"en": [EN[0]], "de": [Req("Wo liegt {}?", "Rom", "Italien", "de", 1, english_twin=EN[1])],
                "nl": [Req("Wie schreef {}?", "Hamlet", "Marlowe", "nl", 2, english_twin=extra)]}
    union = [r for _, batch in plan(disjoint, ["en", "de", "nl"], 2) for r in batch]
    assert [(r.case_id, r.language) for r in union] == [(0, "en"), (1, "en"), (2, "en")]
    assert [len(batch) for _, batch in plan(disjoint, ["en", "de", "nl"], 2)] == [2, 1]
    with pytest.raises(ValueError, match="request 0 of 'de' has no English twin"):
        plan({"de": [Req("Wo liegt {}?", "Rom", "Italien", "de")]}, ["de"], 1)
    # the run edits the plan (2 batches for 3 languages' 6 requests) and scores every language after it
    run = SequentialRun(lm, "memit", PARALLEL, ["en", "de", "nl"], 1, tmp_path / "run", mode="translation",
                        progress=False, editor_factory=factory)
    table = run.run()
    assert len(run.batches()) == 2 and set(run.batches()["language"]) == {"en"}
    assert sorted(table.loc[table["after"] == "all", "language"]) == ["de", "en", "nl"]
    assert set(table["after"]) == {"pre-edit", "all"}


def test_the_probe_scores_the_summed_model_and_the_translated_model(setup, tmp_path):
    lm, factory, _ = setup
    separate = []
    for language in ("en", "de"):
        editor = factory()
        editor.apply(PARALLEL[language])
        separate.append(editor.weight(2).detach() - editor.original[2])
        editor.restore()
    original = lm.model.model.layers[2].mlp.down_proj.weight.detach().clone()
    run = SequentialRun(lm, "memit", PARALLEL, ["en", "de"], batch_size=2, out_dir=tmp_path / "summed", mode="summed",
                        progress=False, editor_factory=factory, probe=_NormProbe(lm))
    run.run()
    probes = run.probes().set_index("after")["norm"]
    assert list(probes.index) == ["pre-edit", "all (summed)"]
    assert probes["pre-edit"] == pytest.approx(float(original.norm()))
    assert probes["all (summed)"] == pytest.approx(float((original + separate[0] + separate[1]).norm()), rel=1e-5)
    assert probes["all (summed)"] != pytest.approx(float(original.norm()), rel=1e-6)
    run = SequentialRun(lm, "memit", PARALLEL, ["en", "de"], batch_size=2, out_dir=tmp_path / "translation",
                        mode="translation", progress=False, editor_factory=factory, probe=_NormProbe(lm))
    run.run()
    probes = run.probes().set_index("after")["norm"]
    assert list(probes.index) == ["pre-edit", "all"]
    edited = _checkpoint_tensors(tmp_path / "translation")["weight.2"]
    assert probes["all"] == pytest.approx(float(edited.norm())) and probes["all"] != pytest.approx(float(original.norm()))


@pytest.mark.parametrize("mode", ["multilingual", "monolingual", "summed", "translation"])
def test_the_expected_records_with_a_queried_language_are_what_the_run_writes(setup, tmp_path, mode):
    lm, factory, _ = setup
    run = SequentialRun(lm, "memit", PARALLEL, ["en", "de"], batch_size=1, out_dir=tmp_path, mode=mode,
                        progress=False, editor_factory=factory, query_languages=["nl"])
    table = run.run()
    batches, evals, _ = run.expected_records()
    assert list(zip(table["after"], table["language"])) == evals
    assert run.batches().groupby("checkpoint")["batch"].apply(sorted).to_dict() == {
        name: list(range(n)) for name, n in batches.items()}
    assert run.is_recorded()

