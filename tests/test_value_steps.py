"""Stopped value-target requests cost nothing: a request whose loss is already below the early-stop
threshold leaves the step loop after its first loss, its rows run in no later forward/backward,
every v* still equals the per-request reference loop, and the step counts equal the reference's."""

import pytest
import torch

from langedit.editing import Editor, load_hparams
from langedit.editing.tokens import fill, target_ids
from langedit.editing.value_reference import compute_value_one
from langedit.editing.values import ValueSettings, compute_values
from langedit.models import get_module
from langedit.models.tiny import build_tiny_model
from edit_requests import BORN_EN, CORPUS, COUNTRY, INCEPTION


REQUESTS = [INCEPTION, COUNTRY, BORN_EN]
TEMPLATES = [["{}"], ["The cat sat. {}", "Because I said so. {}"]]
ROWS_PER_REQUEST = 3 + 1   # its three templated prompts and its KL prompt


@pytest.fixture(scope="module")
def tok(default_tokenizer):
    return default_tokenizer


def initial_loss(lm, tok, request) -> float:
    """The value loss at delta = 0, where the KL and decay terms vanish: the mean over prompts of the
    per-token mean -log p(target), each prompt run alone through the whole model."""
    ids = target_ids(tok, request.target)
    per_prompt = []
    for template in (t for group in TEMPLATES for t in group):
        prompt = tok(fill(template, request.prompt, request.subject)[0])["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=torch.tensor([prompt + ids[:-1]])).logits[0].float(), -1)
        per_prompt.append(-sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(ids)) / len(ids))
    return sum(per_prompt) / len(per_prompt)


def threshold_below_all_but_one(lm, tok) -> tuple[int, float]:
    """(the request of lowest initial loss, a threshold between its loss and the next lowest)."""
    losses = [initial_loss(lm, tok, r) for r in REQUESTS]
    ranked = sorted(range(len(losses)), key=losses.__getitem__)
    return ranked[0], (losses[ranked[0]] + losses[ranked[1]]) / 2


def reference_steps(lm, tok, request, settings) -> tuple[torch.Tensor, int]:
    """v* of the per-request loop, and its number of loss evaluations counted from its forward passes
    (two before the loop: h and the KL reference; then a prompt pass and a KL pass per evaluation)."""
    calls = []
    handle = lm.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        value, _ = compute_value_one(lm.model, tok, lm.arch, request, TEMPLATES, settings)
    finally:
        handle.remove()
    return value, (len(calls) - 2) // 2


@pytest.mark.parametrize("family", ["gemma3_text", "llama"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_a_request_already_below_the_threshold_stops_and_costs_no_more_rows(tok, family, chunk):
    lm = build_tiny_model(family, tokenizer=tok)
    easy, threshold = threshold_below_all_but_one(lm, tok)
    layer = 2
    settings = ValueSettings(layer=layer, steps=5, lr=0.5, early_stop_loss=threshold, chunk_requests=chunk)
    rows_seen = []   # rows through the block above L, per call: the prefix pass, the suffix pass, the steps
    above = get_module(lm.model, lm.arch.layers)[layer + 1]
    handle = above.register_forward_pre_hook(lambda module, args, kwargs: rows_seen.append(
        (args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True)
    try:
        found = compute_values(lm.model, tok, lm.arch, REQUESTS, [TEMPLATES] * 3, settings, progress=False)
    finally:
        handle.remove()

    assert found.steps[easy] == 1                        # its first loss is below the threshold
    assert all(found.steps[b] == settings.steps for b in range(3) if b != easy)   # the premise of the count below
    for b, request in enumerate(REQUESTS):
        value, steps = reference_steps(lm, tok, request, settings)
        assert found.steps[b] == steps
        assert torch.allclose(found.values[b], value, atol=1e-4, rtol=1e-4)
    all_rows = ROWS_PER_REQUEST * len(REQUESTS)
    assert sum(rows_seen) == 2 * all_rows + ROWS_PER_REQUEST * sum(found.steps)
    if chunk == len(REQUESTS):   # before, a chunk ran all its rows while any of them was active
        assert sum(rows_seen) < 2 * all_rows + all_rows * max(found.steps)


def test_values_unpack_as_before_and_count_every_step_without_early_stop(tok):
    lm = build_tiny_model("gemma3_text", tokenizer=tok)
    settings = ValueSettings(layer=2, steps=3, lr=0.5, early_stop_loss=-1.0)   # a loss is never negative
    found = compute_values(lm.model, tok, lm.arch, REQUESTS[:2], [TEMPLATES] * 2, settings, progress=False)
    values, states = found
    assert values is found.values and states is found.states
    assert found.steps == [3, 3]


def test_batch_report_holds_each_requests_value_steps(tok, tmp_path):
    lm = build_tiny_model("gemma3_text", tokenizer=tok)
    easy, threshold = threshold_below_all_but_one(lm, tok)
    for method in ("memit", "rome"):
        hp = load_hparams(method, "gemma3", layers=[1, 2], rome_layer=2, v_steps=4, v_lr=0.5, stats_tokens=300,
                          early_stop_loss=threshold, rome_v_steps=4, rome_v_lr=0.5)
        editor = Editor(lm, method=method, hparams=hp, corpus_texts=CORPUS, progress=False, cache=tmp_path)
        editor.prepare()
        if method == "memit":
            expected = compute_values(lm.model, tok, lm.arch, REQUESTS, editor.templates_for(REQUESTS),
                                      hp.value_settings(2), progress=False).steps
        else:                   # ROME's own templates and settings (delta at W_out's output)
            expected = compute_values(lm.model, tok, lm.arch, REQUESTS[:1], [editor.method.templates("en")],
                                      editor.method.value_settings(), progress=False).steps
        report = editor.apply(REQUESTS)
        editor.restore()
        assert len(report.value_steps) == len(REQUESTS) and report.to_dict()["value_steps"] == report.value_steps
        if method == "memit":   # one optimisation of the whole batch on the unedited model
            assert report.value_steps == expected
        else:                   # ROME optimises one request at a time, each after the previous edits
            assert report.value_steps[0] == expected[0]
        assert all(1 <= s <= (hp.v_steps if method == "memit" else hp.rome_v_steps) for s in report.value_steps)
