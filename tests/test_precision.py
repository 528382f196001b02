"""The fast path (langedit.precision): bfloat16 products everywhere but W_out, which stays exact."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from langedit.editing.editor import Editor
from langedit.editing.forward import head_terms
from langedit.hooks import Trace
from langedit.models.architecture import get_module, n_layers, w_out
from langedit.models.loading import with_matmul_dtype
from langedit.models.tiny import TINY_FAMILIES, build_tiny_model
from langedit.precision import (has_bf16_units, keep_in_float32, linear_float32_logits, resolve_matmul_dtype,
                                use_bf16_matmuls, w_out_module_names)


def _ids(lm, n=3, length=12, seed=0):
    vocab = lm.model.config.vocab_size
    return torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def test_resolve_matmul_dtype():
    assert resolve_matmul_dtype("float32", "cpu") == torch.float32
    assert resolve_matmul_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_matmul_dtype("auto", "cpu") == (torch.bfloat16 if has_bf16_units("cpu") else torch.float32)
    with pytest.raises(ValueError, match="unknown matmul_dtype 'int8'"):
        resolve_matmul_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        resolve_matmul_dtype(torch.float16, "cpu")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_bf16_matmuls_convert_every_linear_but_w_out_and_stay_close(family):
    exact, fast = build_tiny_model(family), build_tiny_model(family)
    converted = use_bf16_matmuls(fast.model, fast.arch)
    keep = w_out_module_names(fast.model, fast.arch)
    for name, module in fast.model.named_modules():
        if isinstance(module, nn.Linear):
            assert (name in converted) == (name not in keep), name
            assert module.weight.dtype == (torch.float32 if name in keep else torch.bfloat16), name
    for layer in range(n_layers(fast.model)):
        assert w_out(fast.model, layer).dtype == torch.float32
        assert torch.equal(w_out(fast.model, layer), w_out(exact.model, layer))
    ids = _ids(exact)
    with torch.no_grad():
        want = exact.model(input_ids=ids).logits
        got = fast.model(input_ids=ids).logits
    assert got.dtype == torch.float32
    relative = (got - want).norm() / want.norm()
    assert 1e-7 < relative < 3e-2, relative         # rounded, not exact, and not broken
    assert use_bf16_matmuls(fast.model, fast.arch) == []   # idempotent


@pytest.mark.parametrize("family", ["gemma3_text", "llama", "gpt2"])
def test_an_update_of_relative_size_1e_4_survives_on_the_fast_path(family):
    """dW at 1e-4 of W is below bfloat16's resolution (2^-8): kept in float32, W_out's output moves by
    exactly dW k (float32 precision), and restore() gives back the weights bit for bit."""
    lm = with_matmul_dtype(build_tiny_model(family), "bfloat16")
    layer = 1
    module_name = lm.arch.mlp_out_name(layer)
    weight = w_out(lm.model, layer)
    original = weight.detach().clone()
    update = 1e-4 * weight.detach().abs().mean() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    ids = _ids(lm)
    with torch.no_grad(), Trace(lm.model, module_name) as before:
        lm.model(input_ids=ids)
    with torch.no_grad():
        weight.add_(update)
        assert torch.equal(weight - original, (original + update) - original)   # nothing rounded away
        with Trace(lm.model, module_name, retain_input=True) as after:
            lm.model(input_ids=ids)
    key = after.input
    transposed = lm.arch.mlp_out_transposed
    expected_shift = key @ (update if transposed else update.T)
    assert torch.allclose(after.output - before.output, expected_shift, rtol=1e-3, atol=1e-6 * before.output.abs().max())
    with torch.no_grad():
        weight.copy_(original)
    assert torch.equal(w_out(lm.model, layer), original)


@pytest.mark.parametrize("family", ["gemma3_text", "llama"])
def test_editor_keeps_edited_layers_in_float32_on_a_bf16_model(family):
    lm = build_tiny_model(family)
    lm.model.to(torch.bfloat16)
    bf16_weight = w_out(lm.model, 2).detach().clone()
    editor = Editor(lm, method="memit", layers=(2,), progress=False, corpus_texts=["a b c d"] * 4)
    weight = w_out(lm.model, 2)
    assert weight.dtype == torch.float32 and torch.equal(weight, bf16_weight.float())
    assert w_out(lm.model, 1).dtype == torch.bfloat16            # not edited: untouched
    ids = _ids(lm)
    with torch.no_grad():
        out = lm.model(input_ids=ids).logits
    assert out.dtype == torch.bfloat16                            # the model's activations keep their dtype
    update = 1e-4 * weight.abs().mean() * torch.ones_like(weight)
    editor.add_update(2, update)
    assert torch.allclose(w_out(lm.model, 2) - bf16_weight.float(), update, rtol=1e-3)
    editor.restore()
    assert torch.equal(w_out(lm.model, 2), bf16_weight.float())
    assert keep_in_float32(get_module(lm.model, lm.arch.mlp_out_name(2))) is False   # idempotent


def test_linear_float32_logits_against_float64():
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(5, 32, generator=generator), torch.randn(100, 32, generator=generator)
    exact = hidden.double() @ weight.double().T
    fp32 = linear_float32_logits(hidden, weight, None)
    assert fp32.dtype == torch.float32 and torch.allclose(fp32.double(), exact, atol=1e-4)
    bf16 = linear_float32_logits(hidden, weight.bfloat16(), None)
    assert bf16.dtype == torch.float32
    assert 1e-4 < (bf16.double() - exact).abs().max() < 0.2 * exact.abs().max()


def test_head_terms_with_a_bf16_unembedding_match_autograd():
    """The fused head (one product forward, one backward) equals log_softmax/gather + KL by autograd,
    with the same bfloat16 operands."""
    lm = with_matmul_dtype(build_tiny_model("llama"), "bfloat16")
    head = get_module(lm.model, lm.arch.unembed)
    assert head.weight.dtype == torch.bfloat16
    generator = torch.Generator().manual_seed(0)
    d = head.weight.shape[1]
    target_hidden = torch.randn(4, d, generator=generator, requires_grad=True)
    kl_hidden = torch.randn(2, d, generator=generator, requires_grad=True)
    tokens = torch.tensor([3, 7, 11, 5])
    kl_init = torch.log_softmax(torch.randn(2, head.weight.shape[0], generator=generator), -1)
    logp_t, kl = head_terms(lm.model, lm.arch, target_hidden, tokens, kl_hidden, kl_init)
    (logp_t.sum() + 0.5 * kl.sum()).backward()
    grads = target_hidden.grad.clone(), kl_hidden.grad.clone()
    target_hidden.grad = kl_hidden.grad = None
    logits = lambda h: torch.nn.functional.linear(h.bfloat16(), head.weight).float()
    ref_t = torch.log_softmax(logits(target_hidden), -1).gather(1, tokens[:, None]).squeeze(1)
    logp = torch.log_softmax(logits(kl_hidden), -1)
    ref_kl = (logp.exp() * (logp - kl_init)).sum(-1)
    (ref_t.sum() + 0.5 * ref_kl.sum()).backward()
    assert torch.allclose(logp_t, ref_t, atol=1e-5) and torch.allclose(kl, ref_kl, atol=1e-5)
    assert torch.allclose(grads[0], target_hidden.grad, rtol=2e-2, atol=1e-3)
    assert torch.allclose(grads[1], kl_hidden.grad, rtol=2e-2, atol=1e-3)


def test_with_matmul_dtype_follows_the_setting_and_refuses_to_go_back():
    auto = with_matmul_dtype(build_tiny_model("llama"), "auto")
    head = get_module(auto.model, auto.arch.unembed)
    assert auto.matmul_dtype == head.weight.dtype == (torch.bfloat16 if has_bf16_units("cpu") else torch.float32)
    exact = with_matmul_dtype(build_tiny_model("llama"), "float32")
    assert exact.matmul_dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in exact.model.parameters())
    fast = with_matmul_dtype(build_tiny_model("llama"), "bfloat16")
    with pytest.raises(ValueError, match="already runs bfloat16 products"):
        with_matmul_dtype(fast, "float32")
