"""Trace / TraceDict: what they read and patch, and that they always leave the model as it was."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from langedit.hooks import Trace, TraceDict
from langedit.models import UnsupportedArchitectureError, get_module
from langedit.models.tiny import build_tiny_model

LAYER = 1


@pytest.fixture(scope="module")
def llama():
    return build_tiny_model("llama")


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 512, (2, 6), generator=torch.Generator().manual_seed(0))


def _logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def _hook_counts(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_trace_retains_input_and_output_equal_to_a_manual_computation(llama, tokens):
    arch = llama.arch
    mlp = get_module(llama.model, arch.mlp_name(LAYER))
    with Trace(llama.model, arch.mlp_name(LAYER), retain_input=True) as mlp_trace, \
            Trace(llama.model, arch.mlp_out_name(LAYER), retain_input=True) as out_trace, torch.no_grad():
        llama.model(input_ids=tokens)
    x = mlp_trace.input
    assert x.shape == (2, 6, 64)
    with torch.no_grad():
        keys = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)  # LlamaMLP, by hand
        values = keys @ mlp.down_proj.weight.T
    torch.testing.assert_close(out_trace.input, keys)
    torch.testing.assert_close(out_trace.output, values)
    torch.testing.assert_close(mlp_trace.output, values)  # the MLP returns down_proj's output
    assert not out_trace.output.requires_grad


def test_trace_keeps_only_what_it_is_asked_for(llama, tokens):
    with Trace(llama.model, llama.arch.mlp_out_name(LAYER), retain_output=False) as trace:
        _logits(llama.model, tokens)
    assert trace.input is None and trace.output is None


def test_edit_output_changes_the_logits_and_is_removed_afterwards(llama, tokens):
    before = _logits(llama.model, tokens)
    hooks_before = _hook_counts(llama.model)
    delta = torch.randn(64, generator=torch.Generator().manual_seed(1))
    with Trace(llama.model, llama.arch.mlp_out_name(LAYER), edit_output=lambda out: out + delta) as trace:
        edited = _logits(llama.model, tokens)
        assert _hook_counts(llama.model) == hooks_before + 1
    assert not torch.allclose(edited, before, atol=1e-4)
    assert trace.output is not None
    assert _hook_counts(llama.model) == hooks_before
    assert torch.equal(_logits(llama.model, tokens), before)


def test_edit_output_sees_the_unedited_output_and_the_trace_keeps_the_edited_one(llama, tokens):
    seen = []

    def edit(out):
        seen.append(out.clone())
        return out * 0

    with Trace(llama.model, llama.arch.mlp_out_name(LAYER), edit_output=edit) as trace:
        _logits(llama.model, tokens)
    assert len(seen) == 1 and seen[0].abs().sum() > 0
    assert torch.count_nonzero(trace.output) == 0


def test_tracedict_edit_output_gets_the_module_name(llama, tokens):
    names = [llama.arch.mlp_out_name(0), llama.arch.mlp_out_name(2)]
    called = []
    with TraceDict(llama.model, names, edit_output=lambda out, name: called.append(name) or out) as traces:
        _logits(llama.model, tokens)
    assert called == names
    assert list(traces) == names
    assert _hook_counts(llama.model) == 0


def test_tracedict_stop_true_stops_early(llama, tokens):
    arch = llama.arch
    names = [arch.mlp_out_name(0), arch.mlp_out_name(1)]
    later = []
    probe = get_module(llama.model, arch.layer_name(3)).register_forward_hook(lambda *args: later.append(1))
    try:
        result = "not assigned"
        with TraceDict(llama.model, names, retain_input=True, stop=True) as traces:
            result = llama.model(input_ids=tokens)
        assert result == "not assigned", "the forward pass should have stopped before returning"
        assert later == [], "a layer after the last traced module ran"
        for name in names:
            assert traces[name].input is not None and traces[name].output is not None
    finally:
        probe.remove()
    assert _hook_counts(llama.model) == 0


def test_trace_stop_true_stops_and_is_swallowed(llama, tokens):
    arch = llama.arch
    with Trace(llama.model, arch.mlp_name(0), stop=True) as trace:
        llama.model(input_ids=tokens)
        pytest.fail("unreachable: the forward pass should have stopped")
    assert trace.output.shape == (2, 6, 64)
    assert _hook_counts(llama.model) == 0


def test_hooks_are_removed_when_the_body_raises(llama, tokens):
    before = _logits(llama.model, tokens)
    name = llama.arch.mlp_out_name(LAYER)
    with pytest.raises(RuntimeError, match="boom"):
        with Trace(llama.model, name, edit_output=lambda out: out + 1.0):
            raise RuntimeError("boom")
    assert _hook_counts(llama.model) == 0
    with pytest.raises(KeyError):
        with TraceDict(llama.model, [name, llama.arch.mlp_name(0)], edit_output=lambda out, n: out + 1.0):
            _logits(llama.model, tokens)
            raise KeyError("inside")
    assert _hook_counts(llama.model) == 0
    assert torch.equal(_logits(llama.model, tokens), before)


def test_hooks_are_removed_when_the_edit_itself_raises(llama, tokens):
    def broken(out):
        raise ValueError("bad edit")

    with pytest.raises(ValueError, match="bad edit"):
        with Trace(llama.model, llama.arch.mlp_out_name(LAYER), edit_output=broken):
            _logits(llama.model, tokens)
    assert _hook_counts(llama.model) == 0


def test_tracing_a_missing_module_names_it_and_leaves_no_hook(llama):
    hooks_before = _hook_counts(llama.model)
    with pytest.raises(UnsupportedArchitectureError, match=r"model\.layers\.99\.mlp"):
        Trace(llama.model, "model.layers.99.mlp")
    with pytest.raises(UnsupportedArchitectureError, match="no_such_module"):
        TraceDict(llama.model, ["model.no_such_module", llama.arch.mlp_name(0)])
    assert _hook_counts(llama.model) == hooks_before


def test_tracedict_with_a_missing_later_module_leaves_no_hook():
    lm = build_tiny_model("llama")
    with pytest.raises(UnsupportedArchitectureError, match="no_such_module"):
        TraceDict(lm.model, [lm.arch.mlp_name(0), "model.no_such_module"])
    assert _hook_counts(lm.model) == 0
