"""Cheap forward passes for optimisation: skip layers whose output is known, unembed only where needed."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..hooks import Trace
from ..models.architecture import get_module


def new_cache(model):
    """An empty past-keys/values cache the model fills in place during a forward pass."""
    from transformers import DynamicCache
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 has no config argument
        return DynamicCache()


def unembed(model, arch, hidden: torch.Tensor) -> torch.Tensor:
    """Logits for final-normed hidden states [..., d] -> [..., V] in float32 (with Gemma-2 soft-capping)."""
    logits = get_module(model, arch.unembed)(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


class _TargetLogProb(torch.autograd.Function):
    """log softmax(h W^T + b)[token] per row. Autograd of log_softmax + gather would keep a second
    [M, V] tensor and scatter a zero-filled [M, V] gradient; here backward is one product:
    d/dh = (onehot - softmax) W."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens):
        logp = torch.log_softmax(nn.functional.linear(hidden, weight, bias).float(), -1)
        ctx.save_for_backward(logp, weight, tokens)
        ctx.hidden_dtype = hidden.dtype
        return logp.gather(1, tokens[:, None]).squeeze(1)

    @staticmethod
    def backward(ctx, grad):
        logp, weight, tokens = ctx.saved_tensors
        minus_grad_logits = logp.exp()
        minus_grad_logits[torch.arange(len(tokens), device=tokens.device), tokens] -= 1.0
        minus_grad_logits.mul_(grad[:, None])
        grad_hidden = -(minus_grad_logits.to(weight.dtype) @ weight)
        return grad_hidden.to(ctx.hidden_dtype), None, None, None


def target_log_probs(model, arch, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) for final-normed hidden states [M, d] and token ids [M] -> [M] float32."""
    head = get_module(model, arch.unembed)
    if getattr(model.config, "final_logit_softcapping", None) or not isinstance(head, nn.Linear):
        return torch.log_softmax(unembed(model, arch, hidden), -1).gather(1, tokens[:, None]).squeeze(1)
    return _TargetLogProb.apply(hidden, head.weight, head.bias, tokens)


@contextmanager
def record_block_arity(model, arch, upto: int):
    """While active, remember for blocks 0..`upto` how many values each returns (1 = a plain tensor)."""
    blocks = get_module(model, arch.layers)
    arity: dict[int, int] = {}
    handles = [
        blocks[index].register_forward_hook(
            lambda module, inputs, output, _i=index: arity.__setitem__(_i, len(output) if isinstance(output, tuple) else 1))
        for index in range(upto + 1)
    ]
    try:
        yield arity
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def replay_layers(model, arch, upto: int, arity: dict[int, int]):
    """Make blocks 0..`upto` pass their input through untouched, so a hook on block `upto` can
    supply that block's cached output without computing anything below it. `arity` comes from
    :func:`record_block_arity` on a real pass (GPT-J blocks return tuples, most others tensors)."""
    blocks = get_module(model, arch.layers)

    def passthrough(n_values: int):
        def forward(hidden_states, *args, **kwargs):
            return hidden_states if n_values == 1 else (hidden_states, *([None] * (n_values - 1)))
        return forward

    patched = []
    try:
        for index in range(upto + 1):
            blocks[index].forward = passthrough(arity[index])
            patched.append(index)
        yield
    finally:
        for index in patched:
            del blocks[index].forward  # drop the instance attribute: the class method is back


def final_hidden(model, arch, input_ids, attention_mask, **forward_kwargs) -> torch.Tensor:
    """Final-normed hidden states [N, T, d] without computing the full-vocabulary logits
    (`forward_kwargs`, e.g. position_ids and past_key_values, go to the model's forward)."""
    with Trace(model, arch.final_norm, retain_output=True, detach=False, stop=True) as trace:
        model(input_ids=input_ids, attention_mask=attention_mask, **forward_kwargs)  # stops at the final norm
    return trace.output
