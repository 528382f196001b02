"""The editing engine on tiny random models: batched = per-request, keys, the post-norm mapping,
the Editor's restore / save / load / leakage, and clear errors for bad input."""
import copy

import pytest
import torch

from langedit.editing import Editor, SubjectNotFoundError, load_hparams
from langedit.editing.activations import compute_keys
from langedit.editing.forward import head_terms
from langedit.editing import residual as residual_module
from langedit.editing.residual import (_damped_step, _damped_step_rms, norm_jacobians, residual_to_value_shift,
                                       rms_jacobian_factors, rms_norm_form)
from langedit.editing.tokens import encode, fill
from langedit.editing.templates import STARTERS, context_templates, starter_seed
from langedit.editing.value_reference import compute_value_one
from langedit.editing.values import ValueSettings, compute_values
from langedit.hooks import Trace
from langedit.models import get_module
from langedit.models.tiny import build_tiny_model
from edit_requests import CORPUS, MIXED_REQUESTS, Req


REQUESTS = MIXED_REQUESTS
TEMPLATES = [["{}"], ["The cat sat. {}", "Because I said so. {}"]]


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


def test_values_without_bos_where_the_subject_opens_the_prompt(tok):
    """No BOS (GPT-J, Qwen): a one-token subject at the start leaves a row with an empty prefix."""
    plain = copy.deepcopy(tok)
    plain.add_bos_token = False
    first = encode(plain, ["Paris is"], [(0, 5)])
    assert int(first.lookup[0]) == 0 and int(first.input_ids[0, 0]) != tok.bos_token_id
    lm = build_tiny_model("llama", tokenizer=plain)
    requests = [Req("{} is the capital of", "Paris", "France"), REQUESTS[0]]
    settings = ValueSettings(layer=1, steps=4, lr=0.5)
    values, states = compute_values(lm.model, plain, lm.arch, requests, [TEMPLATES] * 2, settings, progress=False)
    for row, request in enumerate(requests):
        value, state = compute_value_one(lm.model, plain, lm.arch, request, TEMPLATES, settings)
        assert torch.isfinite(values[row]).all()
        assert torch.allclose(states[row], state, atol=1e-5)
        assert torch.allclose(values[row], value, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_head_terms_value_and_gradient_equal_log_softmax_gather_and_kl(softcap):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    model = torch.nn.Module()
    model.lm_head, model.config = head, type("Config", (), {"final_logit_softcapping": softcap})()
    arch = type("Arch", (), {"unembed": "lm_head"})()
    hidden = torch.randn(7, 16, generator=g, requires_grad=True)
    kl_hidden = torch.randn(3, 16, generator=g, requires_grad=True)
    tokens = torch.randint(0, 50, (7,), generator=g)
    kl_init = torch.log_softmax(torch.randn(3, 50, generator=g), -1)
    weights, kl_weights = torch.rand(7, generator=g), torch.rand(3, generator=g)
    target, kl = head_terms(model, arch, hidden, tokens, kl_hidden, kl_init)
    grads = torch.autograd.grad((target * weights).sum() + (kl * kl_weights).sum(), [hidden, kl_hidden])

    def logits(rows):
        out = head(rows)
        return torch.tanh(out / softcap) * softcap if softcap else out
    plain = torch.log_softmax(logits(hidden), -1)[torch.arange(7), tokens]
    plain_kl = torch.nn.functional.kl_div(kl_init, torch.log_softmax(logits(kl_hidden), -1), log_target=True,
                                          reduction="none").sum(-1)  # KL(p_new || p_init)
    plain_grads = torch.autograd.grad((plain * weights).sum() + (plain_kl * kl_weights).sum(), [hidden, kl_hidden])
    assert torch.allclose(target, plain, atol=1e-6)
    assert torch.allclose(kl, plain_kl, atol=1e-6)
    assert kl.min() > 1e-2
    for fused, reference in zip(grads, plain_grads):
        assert torch.allclose(fused, reference, atol=1e-6)
        assert reference.abs().max() > 1e-2


def plain_templates(model, tokenizer, language, n_tokens=10, top_k=5, seed=0):
    """The plain loop: each starter alone, the whole text through the model at every step."""
    prefixes = []
    for index, starter in enumerate(STARTERS[language]):
        generator = torch.Generator().manual_seed(starter_seed(seed, index))
        ids = tokenizer(starter, return_tensors="pt")["input_ids"]
        for _ in range(n_tokens):
            top = torch.topk(model(input_ids=ids).logits[0, -1].float(), top_k)
            pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)
            ids = torch.cat([ids, top.indices[pick].view(1, 1)], dim=1)
        prefixes.append(tokenizer.decode(ids[0], skip_special_tokens=True).replace("{", " ").replace("}", " ") + ". {}")
    return [["{}"], prefixes]


@pytest.mark.parametrize("family", ["gemma3_text", "gptj"])
def test_context_templates_equal_the_plain_sampling_loop(tok, family):
    lm = build_tiny_model(family, tokenizer=tok)
    with torch.no_grad():
        for language in ("es", "zh"):             # "Por lo tanto" is several tokens, "因此" maybe one
            templates = context_templates(lm.model, tok, language, n_tokens=4)
            assert templates == plain_templates(lm.model, tok, language, n_tokens=4)
            assert templates[0] == ["{}"] and len(templates[1]) == len(STARTERS[language])
            for prefix, starter in zip(templates[1], STARTERS[language]):
                assert prefix.startswith(starter) and prefix.endswith(". {}") and tok.bos_token not in prefix
    assert context_templates(lm.model, tok, "de", n_tokens=4, seed=1) != context_templates(lm.model, tok, "de", n_tokens=4)


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


def test_rms_norm_damped_step_by_woodbury_equals_the_dense_solve(monkeypatch):
    lm = build_tiny_model("gemma3_text")
    norm = get_module(lm.model, lm.arch.post_norm_name(1))
    with torch.no_grad():
        norm.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))   # a gain far from 1
    g = torch.Generator().manual_seed(0)
    y = torch.randn(5, 64, generator=g, dtype=torch.float64)
    err = torch.randn(5, 64, generator=g, dtype=torch.float64)
    lam = torch.tensor([1e-3, 1e-2, 1.0, 10.0, 1e-6], dtype=torch.float64)
    form = rms_norm_form(norm, y[0])
    assert form is not None
    diag, a = rms_jacobian_factors(*form, y)
    implied = torch.diag_embed(diag) - a[:, :, None] * y[:, None, :]
    autograd = norm_jacobians(norm, y)                  # the module computes in float32
    assert torch.allclose(implied, autograd, rtol=1e-4, atol=1e-5 * float(autograd.abs().max()))
    dense = _damped_step(implied, err, lam)              # the Woodbury algebra, against a dense solve
    assert torch.allclose(_damped_step_rms(diag, a, y, err, lam), dense, rtol=1e-8, atol=1e-10)
    assert rms_norm_form(torch.nn.LayerNorm(64), y[0]) is None    # not an RMSNorm: dense path
    y32 = y.float()
    wanted = (norm(y32 + 1.5 * torch.randn(5, 64, generator=g)) - norm(y32)).detach()   # reachable: one answer
    fast = residual_to_value_shift(lm.model, lm.arch, 1, y32, wanted)
    monkeypatch.setattr(residual_module, "rms_norm_form", lambda norm, probe: None)
    slow = residual_to_value_shift(lm.model, lm.arch, 1, y32, wanted)
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-4 * float(slow.abs().max()))


def tiny_editor(tok, method, cache, **overrides):
    lm = build_tiny_model("gemma3_text", tokenizer=tok)
    hp = load_hparams(method, "gemma3", layers=[1, 2], rome_layer=2, ft_layer=2, v_steps=4, v_lr=0.5,
                      rome_v_steps=4, rome_template_lengths=[[3, 5]], stats_tokens=300, **overrides)
    return lm, Editor(lm, method=method, hparams=hp, corpus_texts=CORPUS, progress=False, cache=cache)


@pytest.mark.parametrize("method", ["ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit"])
def test_every_method_edits_and_restores_bit_for_bit(tok, method, tmp_path):
    lm, editor = tiny_editor(tok, method, tmp_path)
    before = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    report = editor.apply(REQUESTS[:2])
    assert report.n_edits == 2 and report.seconds > 0 and report.peak_memory_bytes > 0
    assert any(norm > 0 for norm in report.update_norm.values())
    with editor.raw_weights():     # edited keys are read where editing continues from (PRUNE: unrestrained)
        for layer, keys in editor.method.keys_of_batch().items():   # kept from the edit = read afresh after it
            fresh = compute_keys(lm.model, tok, lm.arch, REQUESTS[:2], layer, editor.templates_for(REQUESTS[:2]))
            assert torch.allclose(keys, fresh, rtol=1e-6, atol=1e-7), layer
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


def _restrained_by_hand(total: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """PRUNE's restraint written out with numpy's SVD: sigma > max sigma(W0) -> bound + ln(sigma / bound)."""
    import numpy as np
    bound = np.linalg.svd(original.double().numpy(), compute_uv=False).max()
    u, s, vt = np.linalg.svd(total.double().numpy(), full_matrices=False)
    s = np.where(s > bound, bound + np.log(s / bound), s)
    return torch.from_numpy((u * s) @ vt)


def test_prune_restrains_the_accumulated_raw_update_once_for_evaluation(tok, tmp_path):
    """Editing is MEMIT on the raw weights; the model shows W0 + restrain(W_raw - W0), computed from the
    whole raw update (the reference's MEMIT_prune), not restrained batch by batch."""
    batches = [REQUESTS[:2], REQUESTS[2:]]
    _, memit = tiny_editor(tok, "memit", tmp_path)
    lm, prune = tiny_editor(tok, "prune", tmp_path)
    for batch in batches:
        memit.apply(batch)
        prune.apply(batch)
    for layer in prune.layers:
        original = prune.original_matrix(layer)
        assert torch.equal(prune.raw_weight(layer), memit.weight(layer).detach())   # edited from the raw weights
        total = memit.weight(layer).detach().double() - original.double()
        bound = float(torch.linalg.matrix_norm(original.double(), ord=2))
        assert float(torch.linalg.matrix_norm(total, ord=2)) > 10 * bound           # the bound acts
        expected = (original.double() + _restrained_by_hand(total, original)).float()
        assert torch.allclose(prune.weight(layer), expected, rtol=1e-5, atol=1e-6), layer
    # restraining after every batch (editing the second batch from restrained weights) is another model
    _, per_batch = tiny_editor(tok, "memit", tmp_path)
    for batch in batches:
        per_batch.apply(batch)
        with torch.no_grad():
            for layer in per_batch.layers:
                original = per_batch.original_matrix(layer)
                total = per_batch.weight(layer).detach().double() - original.double()
                per_batch.weight(layer).copy_((original.double() + _restrained_by_hand(total, original)).float())
    gap = max(float((per_batch.weight(l) - prune.weight(l)).abs().max() / prune.weight(l).abs().max())
              for l in prune.layers)
    assert gap > 1e-2
    # save / load into a new Editor: same raw and shown weights; restore: the original bit for bit
    prune.save(tmp_path / "prune")
    shown = {l: prune.weight(l).detach().clone() for l in prune.layers}
    lm2, again = tiny_editor(tok, "prune", tmp_path)
    again.load(tmp_path / "prune")
    for layer in prune.layers:
        assert torch.equal(again.raw_weight(layer), prune.raw_weight(layer))
        assert torch.equal(again.weight(layer), shown[layer])
    prune.restore()
    for layer in prune.layers:
        assert torch.equal(prune.weight(layer), prune.original_matrix(layer))


def test_rect_masks_the_dense_memit_updates_of_all_layers(tok, tmp_path, monkeypatch):
    """RECT = MEMIT's dense updates for every layer (later layers solved with the earlier dense updates in
    place), each then masked to its top 40 % relative changes |dW / (W + 1e-8)| (AlphaEdit's RECT)."""
    lm, memit = tiny_editor(tok, "memit", tmp_path)
    before = {l: memit.weight(l).detach().clone() for l in memit.layers}
    dense = {}
    real_add = Editor.add_update
    monkeypatch.setattr(Editor, "add_update", lambda self, layer, update: (dense.__setitem__(layer, update.clone()),
                                                                           real_add(self, layer, update)))
    memit.apply(REQUESTS[:2])
    monkeypatch.undo()
    _, rect = tiny_editor(tok, "rect", tmp_path)
    assert rect.hparams.rect_keep_fraction == 0.4
    rect.apply(REQUESTS[:2])
    for layer in rect.layers:
        relative = (dense[layer] / (before[layer] + 1e-8).double()).abs()
        rank = relative.numel() * 60 // 100
        keep = relative >= relative.flatten().sort().values[rank - 1]
        assert keep.sum() == relative.numel() - rank + 1
        expected = before[layer] + (dense[layer] * keep).float()
        assert torch.equal(rect.weight(layer).detach(), expected), layer   # layer 2: solved after dense layer 1


@pytest.mark.parametrize("method", ["memit", "rect", "alphaedit", "langedit"])
def test_given_value_targets_edit_exactly_as_optimised_ones(tok, method, tmp_path):
    lm, editor = tiny_editor(tok, method, tmp_path)
    requests = REQUESTS[:2]
    editor.apply(requests)
    optimised = {l: editor.weight(l).detach().clone() for l in editor.layers}
    editor.restore()
    again = Editor(lm, method=method, hparams=editor.hparams, corpus_texts=CORPUS, progress=False, cache=tmp_path)
    found = compute_values(lm.model, tok, lm.arch, requests, again.templates_for(requests),
                           again.method.value_settings(), progress=False)
    report = again.apply(requests, values=found.values)
    assert report.value_seconds == 0.0 and report.value_steps == []
    for layer in again.layers:
        assert torch.equal(again.weight(layer), optimised[layer]), layer
    again.restore()
    shifted = Editor(lm, method=method, hparams=editor.hparams, corpus_texts=CORPUS, progress=False, cache=tmp_path)
    shifted.apply(requests, values=found.values + 1.0)     # other targets: another edit
    assert any(not torch.equal(shifted.weight(l), optimised[l]) for l in shifted.layers)


def test_given_value_targets_are_checked(tok, tmp_path):
    lm, editor = tiny_editor(tok, "memit", tmp_path)
    with pytest.raises(ValueError, match="3 value targets for 2 requests"):
        editor.apply(REQUESTS[:2], values=torch.zeros(3, lm.model.config.hidden_size))
    _, ft = tiny_editor(tok, "ft", tmp_path)
    with pytest.raises(ValueError, match="takes no given values"):
        ft.apply(REQUESTS[:2], values=torch.zeros(2, lm.model.config.hidden_size))
