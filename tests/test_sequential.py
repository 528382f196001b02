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


@pytest.mark.parametrize("mode", ["multilingual", "monolingual", "summed", "translation"])
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
