"""The editing engine on tiny random models: batched = per-request, keys, the post-norm mapping,
the Editor's restore / save / load / leakage, and clear errors for bad input."""
from dataclasses import dataclass

import pytest
import torch

from langedit.editing import Editor, SubjectNotFoundError, load_hparams
from langedit.editing.activations import compute_keys
from langedit.editing.residual import residual_to_value_shift
from langedit.editing.tokens import encode, fill
from langedit.editing.value_reference import compute_value_one
from langedit.editing.values import ValueSettings, compute_values
from langedit.hooks import Trace
from langedit.models import get_module
from langedit.models.tiny import build_tiny_model


@dataclass(frozen=True)
class Req:
    prompt: str
    subject: str
    target: str
    language: str = "en"
    paraphrase: str = "Where is it?"
    locality_prompt: str = "nq question: who wrote hamlet"
    locality_answer: str = "Shakespeare"


REQUESTS = [Req("When was the inception of {}?", "IAAF Combined Events Challenge", "2006"),
            Req("Which country is {} in?", "Bad Salzdetfurth", "Italy"),
            Req("{} was born in", "Anna Maria", "Paris France", language="de")]
TEMPLATES = [["{}"], ["The cat sat. {}", "Because I said so. {}"]]
CORPUS = ["The quick brown fox jumps over the lazy dog near the river bank today."] * 40


@pytest.fixture(scope="module")
def tok(default_tokenizer):
    return default_tokenizer


@pytest.mark.parametrize("family", ["gemma3_text", "llama", "gptj", "gpt2"])
def test_batched_values_equal_the_per_request_loop(tok, family):
    lm = build_tiny_model(family, tokenizer=tok)
    settings = ValueSettings(layer=2, steps=6, lr=0.5)
    values, states = compute_values(lm.model, tok, lm.arch, REQUESTS, [TEMPLATES] * 3, settings, progress=False)
    for row, request in enumerate(REQUESTS):
        value, state = compute_value_one(lm.model, tok, lm.arch, request, TEMPLATES, settings)
        assert torch.allclose(states[row], state, atol=1e-5)
        assert torch.allclose(values[row], value, atol=1e-4, rtol=1e-4)
        assert (values[row] - states[row]).norm() > 1e-3     # the optimisation did move


def test_chunked_value_optimisation_equals_one_chunk(tok):
    lm = build_tiny_model("gemma3_text", tokenizer=tok)
    whole = ValueSettings(layer=2, steps=6, lr=0.5, chunk_requests=len(REQUESTS))
    values, _ = compute_values(lm.model, tok, lm.arch, REQUESTS, [TEMPLATES] * 3, whole, progress=False)
    for chunk in (1, 2):
        settings = ValueSettings(layer=2, steps=6, lr=0.5, chunk_requests=chunk)
        chunked, _ = compute_values(lm.model, tok, lm.arch, REQUESTS, [TEMPLATES] * 3, settings, progress=False)
        assert torch.allclose(chunked, values, atol=1e-4, rtol=1e-4)   # padding width differs: float rounding only


def test_keys_are_the_template_average_of_w_out_inputs(tok):
    lm = build_tiny_model("llama", tokenizer=tok)
    layer = 1
    keys = compute_keys(lm.model, tok, lm.arch, REQUESTS[:2], layer, TEMPLATES)
    for row, request in enumerate(REQUESTS[:2]):
        per_template = []
        for template in ["{}", "The cat sat. {}", "Because I said so. {}"]:
            text, span = fill(template, request.prompt, request.subject)
            batch = encode(tok, [text], [span])
            with Trace(lm.model, lm.arch.mlp_out_name(layer), retain_input=True) as trace:
                lm.model(input_ids=batch.input_ids)
            per_template.append(trace.input[0, batch.lookup[0]])
        expected = 0.5 * per_template[0] + 0.5 * torch.stack(per_template[1:]).mean(0)
        assert torch.allclose(keys[row], expected, atol=1e-5)


def test_subject_position_is_the_subjects_last_token(tok):
    text, span = fill("Heute. {}", "When was {} founded?", "IAAF Combined Events")
    batch = encode(tok, [text], [span])
    tokens = tok.convert_ids_to_tokens(batch.input_ids[0])
    assert tokens[0] == tok.bos_token and tokens.count(tok.bos_token) == 1
    assert tokens[int(batch.lookup[0])] == "▁Events"


def test_post_norm_mapping_realises_a_reachable_residual_change():
    lm = build_tiny_model("gemma3_text")
    layer = 1
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, 64, generator=g)
    norm = get_module(lm.model, lm.arch.post_norm_name(layer))
    wanted = norm(y + 1.5 * torch.randn(4, 64, generator=g)) - norm(y)    # reachable, and far from linear
    dy = residual_to_value_shift(lm.model, lm.arch, layer, y, wanted)
    realised = norm(y + dy) - norm(y)
    assert float(((realised - wanted).norm(dim=1) / wanted.norm(dim=1)).max()) < 1e-4
    one_step = residual_to_value_shift(lm.model, lm.arch, layer, y, wanted, iterations=1)
    assert float((norm(y + one_step) - norm(y) - wanted).norm()) > 0.1 * float(wanted.norm())  # linear is not enough
    llama = build_tiny_model("llama")
    assert torch.equal(residual_to_value_shift(llama.model, llama.arch, layer, y, wanted), wanted)


def tiny_editor(tok, method, cache, **overrides):
    lm = build_tiny_model("gemma3_text", tokenizer=tok)
    hp = load_hparams(method, "gemma3", layers=[1, 2], rome_layer=2, ft_layer=2, v_steps=4, v_lr=0.5,
                      stats_tokens=300, **overrides)
    return lm, Editor(lm, method=method, hparams=hp, corpus_texts=CORPUS, progress=False, cache=cache)


@pytest.mark.parametrize("method", ["ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit"])
def test_every_method_edits_and_restores_bit_for_bit(tok, method, tmp_path):
    lm, editor = tiny_editor(tok, method, tmp_path)
    before = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    report = editor.apply(REQUESTS[:2])
    assert report.n_edits == 2 and report.seconds > 0 and report.peak_memory_bytes > 0
    assert any(norm > 0 for norm in report.update_norm.values())
    editor.restore()
    for name, param in lm.model.named_parameters():
        assert torch.equal(param, before[name]), name


@pytest.mark.parametrize("variant", ["paper", "released", "incremental"])
def test_langedit_variants_and_leakage(tok, variant, tmp_path):
    lm, editor = tiny_editor(tok, "langedit", tmp_path, langedit_variant=variant, nullspace_threshold=1e-3)
    editor.apply(REQUESTS[:2])
    report = editor.apply(REQUESTS[2:])
    assert set(report.leakage) == {1, 2}
    if variant == "incremental":   # the hard null space: earlier keys untouched up to float32 rounding
        assert max(report.leakage.values()) < 1e-4
    else:                          # the soft (thresholded) null spaces leak, as MEMIT does
        assert min(report.leakage.values()) > 1e-3
    assert all(0 < d < 256 for d in report.null_dimension.values())


def test_save_and_load_give_the_same_editor_state(tok, tmp_path):
    lm, editor = tiny_editor(tok, "langedit", tmp_path, langedit_variant="released")
    editor.apply(REQUESTS[:2])
    editor.save(tmp_path / "state")
    weights = {l: editor.weight(l).detach().clone() for l in editor.layers}
    editor.restore()
    editor.load(tmp_path / "state")
    for layer in editor.layers:
        assert torch.equal(editor.weight(layer), weights[layer])
    assert editor.n_batches == 1 and editor.n_edited == 2
    assert set(editor.method.released_cov) == {1, 2}


def test_bad_input_is_refused_with_a_clear_message(tok, tmp_path):
    lm, editor = tiny_editor(tok, "memit", tmp_path)
    with pytest.raises(ValueError, match="empty batch"):
        editor.apply([])
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        editor.apply([Req("Where is {}?", "Rome", "Italy", language="xx")])
    with pytest.raises(SubjectNotFoundError, match="exactly one"):
        editor.apply([Req("Where is Rome?", "Rome", "Italy")])
    with pytest.raises(ValueError, match="target"):
        editor.apply([Req("Where is {}?", "Rome", "")])
    with pytest.raises(ValueError, match="unknown editing method"):
        Editor(lm, method="magic")
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        load_hparams("memit", "gemma3", lr=1.0)
    with pytest.raises(ValueError, match="no hyperparameter file"):
        load_hparams("memit", "bert")
