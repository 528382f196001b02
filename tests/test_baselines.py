"""The reference baselines FT and ROME on tiny random models, each against an independent computation:
ROME's value target at W_out's output (a plain full-forward loop), its rank-one update (exact at the
bare prompt's key, along C0^-1 k_avg), its templates; FT's last-position loss (by hand) and its box."""

import pytest
import torch

from langedit.editing import Editor, load_hparams
from langedit.editing.methods.ft import last_position_loss
from langedit.editing.methods.rome import rome_update
from langedit.editing.templates import context_templates
from langedit.editing.tokens import encode, fill, pad_right, target_ids
from langedit.editing.values import KL_PROMPT, ValueSettings, compute_values
from langedit.hooks import Trace
from langedit.models import get_module
from langedit.models.architecture import w_out_as_matrix
from langedit.models.tiny import build_tiny_model
from edit_requests import MIXED_REQUESTS


REQUESTS = MIXED_REQUESTS
FLAT_TEMPLATES = [["{}", "The cat sat. {}", "Because I said so. {}"]]
WORDS = ("river house green seven quickly under music paper window coffee mountain silver yellow travel "
         "history engine market winter school doctor village garden science ocean friend number dark light").split()


def varied_corpus(n_texts: int = 120, n_words: int = 14) -> list[str]:
    """Texts of shuffled words: enough distinct tokens for a full-rank C0 of the tiny model's keys."""
    g = torch.Generator().manual_seed(3)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (n_words,), generator=g).tolist())
            for _ in range(n_texts)]


@pytest.fixture(scope="module")
def tok(default_tokenizer):
    return default_tokenizer


def plain_value_at_mlp_out(model, tokenizer, arch, request, templates, settings):
    """ROME's compute_v written plainly: full forward every step, delta added to W_out's output at the
    subject's last token of every prompt (and of the KL prompt), full-vocabulary logits."""
    site = arch.mlp_out_name(settings.layer)
    ids = target_ids(tokenizer, request.target)
    texts, spans = zip(*[fill(t, request.prompt, request.subject) for group in templates for t in group])
    prompts = encode(tokenizer, list(texts), list(spans))
    kl = encode(tokenizer, *map(list, zip(fill(KL_PROMPT, "{}", request.subject))))
    rows = [prompts.input_ids[r, :int(prompts.attention_mask[r].sum())].tolist() + ids[:-1] for r in range(len(texts))]
    input_ids, mask = pad_right(rows, tokenizer.pad_token_id)
    lookups = prompts.lookup.tolist()
    with torch.no_grad(), Trace(model, site) as trace:
        model(input_ids=input_ids[:1], attention_mask=mask[:1])
    h = trace.output[0, lookups[0]].float()
    with torch.no_grad():
        kl_init = torch.log_softmax(model(input_ids=kl.input_ids).logits[0, kl.lookup[0]], -1)
    delta = torch.zeros_like(h, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)

    def shifted(positions):
        def edit(output):
            output = output.clone()
            for row, position in enumerate(positions):
                output[row, position] += delta
            return output
        return edit

    for step in range(settings.steps):
        with Trace(model, site, edit_output=shifted(lookups), retain_output=False):
            logp = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits, -1)
        nll = torch.stack([-sum(logp[r, len(row) - len(ids) + i, t] for i, t in enumerate(ids)) / len(ids)
                           for r, row in enumerate(rows)]).mean()
        with Trace(model, site, edit_output=shifted(kl.lookup.tolist()), retain_output=False):
            kl_new = torch.log_softmax(model(input_ids=kl.input_ids).logits[0, kl.lookup[0]], -1)
        loss = nll + settings.kl_factor * (kl_new.exp() * (kl_new - kl_init)).sum() \
            + settings.weight_decay * delta.norm() / h.norm() ** 2
        if loss.item() < settings.early_stop_loss or step == settings.steps - 1:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if delta.norm() > settings.clamp_norm_factor * h.norm():
                delta.mul_(settings.clamp_norm_factor * h.norm() / delta.norm())
    return (h + delta.detach()), h


@pytest.mark.parametrize("family,layer", [("gemma3_text", 2), ("gpt2", 1), ("llama", 0)])
def test_value_targets_at_w_out_output_equal_the_plain_loop(tok, family, layer):
    """Layer 0 has no block below it to replay; GPT-2's W_out has a bias; Gemma a post-MLP norm."""
    lm = build_tiny_model(family, tokenizer=tok)
    settings = ValueSettings(layer=layer, steps=6, lr=0.5, clamp_norm_factor=4.0, delta_at="mlp_out")
    values, states = compute_values(lm.model, tok, lm.arch, REQUESTS, [FLAT_TEMPLATES] * 3, settings, progress=False)
    for row, request in enumerate(REQUESTS):
        value, state = plain_value_at_mlp_out(lm.model, tok, lm.arch, request, FLAT_TEMPLATES, settings)
        assert torch.allclose(states[row], state, atol=1e-5)
        assert torch.allclose(values[row], value, atol=1e-4, rtol=1e-4)
        assert (values[row] - states[row]).norm() > 1e-2 * states[row].norm()   # it did move
    residual, _ = compute_values(lm.model, tok, lm.arch, REQUESTS[:1], [FLAT_TEMPLATES],
                                 ValueSettings(layer=layer, steps=2, lr=0.5), progress=False)
    assert residual.shape[1] == values.shape[1] and not torch.allclose(residual[0], values[0])


def test_unknown_value_target_site_is_refused():
    with pytest.raises(ValueError, match="delta_at"):
        ValueSettings(layer=1, delta_at="attention")


def rome_editor(tok, family, tmp_path, seed=0, **overrides):
    lm = build_tiny_model(family, tokenizer=tok, seed=seed)
    return lm, rome_editor_on(lm, tok, tmp_path, **overrides)


def rome_editor_on(lm, tok, tmp_path, **overrides):
    hp = load_hparams("rome", "gemma3", **{"layers": [2], "rome_layer": 2, "rome_v_steps": 5,
                                           "rome_template_lengths": [[3, 5]], "stats_tokens": 1500, **overrides})
    return Editor(lm, method="rome", hparams=hp, corpus_texts=varied_corpus(), progress=False, cache=tmp_path)


def w_out_io(lm, tok, layer, texts_spans):
    """W_out's input and output at the subject's last token, one plain forward per text."""
    name = lm.arch.mlp_out_name(layer)
    keys, outs = [], []
    for text, span in texts_spans:
        batch = encode(tok, [text], [span])
        with torch.no_grad(), Trace(lm.model, name, retain_input=True) as trace:
            lm.model(input_ids=batch.input_ids)
        keys.append(trace.input[0, batch.lookup[0]].double())
        outs.append(trace.output[0, batch.lookup[0]].double())
    return torch.stack(keys), torch.stack(outs)


@pytest.mark.parametrize("family,mom2", [("gemma3_text", True), ("gpt2", True), ("llama", False)])
def test_one_rome_edit_writes_v_star_at_the_bare_key_along_c0_inverse_k_avg(tok, tmp_path, family, mom2):
    lm, editor = rome_editor(tok, family, tmp_path, rome_mom2_adjustment=mom2)
    request, layer = REQUESTS[1], 2
    editor.prepare()
    templates = editor.method.templates("en")
    v_star, _ = compute_values(lm.model, tok, lm.arch, [request], [templates], editor.method.value_settings(),
                               progress=False)     # deterministic: the same v* the edit computes
    texts = [fill(t, request.prompt, request.subject) for t in templates[0]]
    keys, _ = w_out_io(lm, tok, layer, texts)
    k_bare, k_avg = keys[0], keys.mean(0)
    weight_before = w_out_as_matrix(lm.model, layer).detach().double().clone()
    updates = []
    add_update = editor.add_update
    editor.add_update = lambda l, update: (updates.append(update), add_update(l, update))
    editor.apply([request])

    _, out_after = w_out_io(lm, tok, layer, texts[:1])
    assert torch.allclose(out_after[0].float(), v_star[0], rtol=1e-5, atol=1e-5 * float(v_star.norm()))
    assert len(updates) == 1
    written = w_out_as_matrix(lm.model, layer).detach().double() - weight_before
    assert torch.allclose(written, updates[0], atol=1e-6 * float(weight_before.abs().max()))
    _, sigma, vh = torch.linalg.svd(updates[0])
    assert sigma[1] < 1e-9 * sigma[0]                              # rank one
    solve = lambda k: torch.linalg.lstsq(editor.cov0(layer).moment.double(), k[:, None]).solution[:, 0]  # C0^-1 k
    direction = solve(k_avg) if mom2 else k_avg
    cosine = lambda d: float((vh[0] @ d).abs() / d.norm())
    assert cosine(direction) > 1 - 1e-5
    assert cosine(solve(k_bare) if mom2 else k_bare) < 0.999      # the average's direction, not the bare key's


def test_rome_update_formula():
    g = torch.Generator().manual_seed(0)
    root = torch.randn(12, 12, generator=g, dtype=torch.float64)
    cov = root @ root.T + 0.1 * torch.eye(12, dtype=torch.float64)
    k_avg, k_bare = torch.randn(12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    resid = torch.randn(5, generator=g, dtype=torch.float64)
    update = rome_update(k_avg, k_bare, resid, cov)
    assert torch.allclose(update @ k_bare, resid, atol=1e-10)
    u = torch.linalg.inv(cov) @ k_avg
    assert torch.allclose(update, torch.outer(resid, u) / (u @ k_bare), atol=1e-10)
    assert torch.allclose(rome_update(k_avg, k_bare, resid, None), torch.outer(resid, k_avg) / (k_avg @ k_bare))
    with pytest.raises(ValueError, match="orthogonal"):
        rome_update(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.ones(3), None)


def test_rome_templates_are_the_reference_draws_and_survive_save_and_load(tok, tmp_path):
    lm, editor = rome_editor(tok, "gemma3_text", tmp_path, rome_template_lengths=[[3, 5], [4, 10]],
                             rome_mom2_adjustment=False)
    templates = editor.method.templates("de")
    assert len(templates) == 1 and templates[0][0] == "{}" and len(templates[0]) == 1 + 15
    expected = [p for seed, n in ((0, 3), (1, 4), (2, 4)) for p in context_templates(lm.model, tok, "de", n, 5, seed)[1]]
    assert templates[0][1:] == expected and len(set(expected)) == len(expected)
    editor.apply([REQUESTS[0]])
    editor.save(tmp_path / "state")
    other_model = lambda: rome_editor(tok, "gemma3_text", tmp_path, seed=1, rome_template_lengths=[[3, 5], [4, 10]],
                                      rome_mom2_adjustment=False)[1]
    assert other_model().method.templates("de") != templates      # the draws depend on the model's weights ...
    editor.restore()
    fresh = rome_editor_on(lm, tok, tmp_path, rome_template_lengths=[[3, 5], [4, 10]], rome_mom2_adjustment=False)
    fresh.load(tmp_path / "state")                                 # ... so they are saved with the state
    assert fresh.method.templates("de") == templates and fresh.method.templates("en") == editor.method.templates("en")
    assert fresh.n_batches == 1
    with pytest.raises(ValueError, match="multiple of 5"):
        rome_editor(tok, "gemma3_text", tmp_path, rome_template_lengths=[[3, 7]])


def hand_ft_loss(model, tokenizer, requests):
    """Each prompt alone (no padding): -mean_j log p(t_j) at its last position, then the mean over prompts."""
    losses = []
    for r in requests:
        ids = tokenizer(r.prompt.format(r.subject), return_tensors="pt")["input_ids"]
        logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
        tokens = tokenizer(" " + r.target, add_special_tokens=False)["input_ids"]
        losses.append(-sum(logp[t] for t in tokens) / len(tokens))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_ft_loss_is_every_target_token_at_the_last_prompt_position(tok, family):
    lm = build_tiny_model(family, tokenizer=tok)
    with torch.no_grad():
        got = last_position_loss(lm.model, tok, lm.arch, REQUESTS)
        expected = hand_ft_loss(lm.model, tok, REQUESTS)
        assert abs(float(got) - float(expected)) < 1e-5 * float(expected)
        teacher_forced = []                          # what the loss is not: the usual next-token NLL
        for r in REQUESTS:
            prompt = tok(r.prompt.format(r.subject))["input_ids"]
            answer = target_ids(tok, r.target)
            logp = torch.log_softmax(lm.model(input_ids=torch.tensor([prompt + answer[:-1]])).logits[0], -1)
            teacher_forced.append(-sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(answer)) / len(answer))
        assert abs(float(sum(teacher_forced) / 3) - float(expected)) > 1e-3


def ft_editor(tok, family, tmp_path, **overrides):
    lm = build_tiny_model(family, tokenizer=tok)
    hp = load_hparams("ft", "gemma3", **{"layers": [1], "ft_layer": 1, "ft_lr": 1e-2, "ft_steps": 5, **overrides})
    return lm, Editor(lm, method="ft", hparams=hp, progress=False, cache=tmp_path)


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_ft_stays_in_its_box_and_lowers_the_loss(tok, tmp_path, family):
    lm, editor = ft_editor(tok, family, tmp_path, ft_norm_constraint=2e-3, ft_batch_size=2)
    before_w = w_out_as_matrix(lm.model, 1).detach().clone()
    before_loss = float(last_position_loss(lm.model, tok, lm.arch, REQUESTS))
    editor.apply(REQUESTS)
    change = (w_out_as_matrix(lm.model, 1) - before_w).abs()
    assert float(change.max()) <= 2e-3 + 1e-7 and float(change.max()) > 1.9e-3
    assert float(last_position_loss(lm.model, tok, lm.arch, REQUESTS)) < before_loss
    editor.restore()
    _, free = ft_editor(tok, family, tmp_path, ft_norm_constraint=None)
    start = w_out_as_matrix(free.model, 1).detach().clone()
    free.apply(REQUESTS)
    assert float((w_out_as_matrix(free.model, 1) - start).abs().max()) > 2e-2
    _, stopped = ft_editor(tok, family, tmp_path, ft_early_stop_loss=1e6)   # every batch already "below": no step
    start = w_out_as_matrix(stopped.model, 1).detach().clone()
    stopped.apply(REQUESTS)
    assert torch.equal(w_out_as_matrix(stopped.model, 1), start)


def test_ft_with_one_batch_equals_plain_adam_on_the_hand_loss(tok, tmp_path):
    lm, editor = ft_editor(tok, "gemma3_text", tmp_path, ft_norm_constraint=None, ft_steps=3)
    plain = build_tiny_model("gemma3_text", tokenizer=tok)
    weight = get_module(plain.model, plain.arch.mlp_out_name(1)).weight
    weight.requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        hand_ft_loss(plain.model, tok, REQUESTS).backward()
        optimizer.step()
    editor.apply(REQUESTS)
    # Adam's first steps are ~lr * sign(grad): entries whose gradient is at rounding level move by
    # up to ~lr * 1e-4 differently (measured 2e-6); a different loss moves entries by ~lr.
    assert torch.allclose(w_out_as_matrix(lm.model, 1), weight.detach(), atol=1e-2 * 1e-2)
    assert float((weight.detach() - w_out_as_matrix(build_tiny_model("gemma3_text", tokenizer=tok).model, 1)).abs().max()) > 1e-3


@pytest.mark.parametrize("family", ["gemma3", "llama", "qwen2", "gptj", "gpt2"])
def test_every_family_has_rome_and_ft_settings(family):
    rome, ft = load_hparams("rome", family), load_hparams("ft", family)
    assert rome.rome_layer is not None and ft.ft_layer is not None
    assert all(n % 5 == 0 for _, n in rome.rome_template_lengths)
    assert ft.ft_norm_constraint is None or ft.ft_norm_constraint > 0
