"""The sequential loop on a tiny model: evaluation after each language, JSONL output, resume, staleness."""
from dataclasses import dataclass

import pytest
import torch

from langedit.editing import Editor, load_hparams
from langedit.editing.sequential import SequentialRun, StaleRunError, language_order
from langedit.models.tiny import build_tiny_model


@dataclass(frozen=True)
class Req:
    prompt: str
    subject: str
    target: str
    language: str
    case_id: int = 0
    paraphrase: str = "Where is it?"
    locality_prompt: str = "who wrote hamlet"
    locality_answer: str = "Shakespeare"
    english_twin: object = None


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


def test_a_run_without_its_checkpoint_is_edited_again_without_duplicate_records(setup, tmp_path):
    import shutil
    lm, factory, _ = setup
    make = lambda: SequentialRun(lm, "memit", REQUESTS, ["en", "de"], batch_size=1, out_dir=tmp_path, progress=False,
                                 editor_factory=factory)
    first = make().run()
    shutil.rmtree(tmp_path / "checkpoint")          # what a fresh clone of committed results looks like
    run = make()
    again = run.run()
    assert len(run.batches()) == 4 and list(run.batches()["batch"]) == [0, 1, 2, 3]
    assert (tmp_path / "checkpoint" / "state.json").exists()
    assert again.equals(first)


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
