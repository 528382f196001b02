"""Cheap forward passes for optimisation: skip layers whose output is known, unembed only where needed."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..hooks import Trace
from ..models.architecture import get_module
from ..precision import linear_float32_logits


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


def _kl(logp: torch.Tensor, logp_init: torch.Tensor) -> torch.Tensor:
    """KL(p || p_init) per row from log-probabilities [K, V]."""
    return (logp.exp() * (logp - logp_init)).sum(-1)


class _HeadTerms(torch.autograd.Function):
    """From final-normed rows [M + K, d] through one unembedding product: log p(token) of the first
    M rows and KL(p || p_init) of the last K rows. One [M + K, V] product forward and one backward,
    instead of one each for targets and KL rows (the head is the largest matrix of a small model,
    so each product costs about one read of it); no second [M + K, V] tensor kept for autograd.
    Gradients w.r.t. the logits: target rows onehot - p, KL rows p * (log p - log p_init - KL)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, kl_init):
        logp = torch.log_softmax(linear_float32_logits(hidden, weight, bias), -1)
        n_targets = len(tokens)
        target = logp[:n_targets].gather(1, tokens[:, None]).squeeze(1)
        kl = _kl(logp[n_targets:], kl_init)
        ctx.save_for_backward(logp, weight, tokens, kl_init, kl)
        ctx.hidden_dtype = hidden.dtype
        return target, kl

    @staticmethod
    def backward(ctx, grad_target, grad_kl):
        logp, weight, tokens, kl_init, kl = ctx.saved_tensors
        n_targets = len(tokens)
        grad_logits = logp.exp()
        target_part, kl_part = grad_logits[:n_targets], grad_logits[n_targets:]
        target_part[torch.arange(n_targets, device=tokens.device), tokens] -= 1.0
        target_part.mul_(-grad_target[:, None])
        kl_part.mul_((logp[n_targets:] - kl_init - kl[:, None]) * grad_kl[:, None])
        grad_hidden = grad_logits.to(weight.dtype) @ weight
        return grad_hidden.to(ctx.hidden_dtype), None, None, None, None


def head_terms(model, arch, target_hidden: torch.Tensor, tokens: torch.Tensor, kl_hidden: torch.Tensor,
               kl_init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(token) [M], KL(p || exp(kl_init)) [K]) in float32 for final-normed hidden states:
    `target_hidden` [M, d] with token ids [M], `kl_hidden` [K, d] with reference log-probs [K, V]."""
    hidden = torch.cat([target_hidden, kl_hidden.to(target_hidden.dtype)])
    head = get_module(model, arch.unembed)
    if getattr(model.config, "final_logit_softcapping", None) or not isinstance(head, nn.Linear):
        logp = torch.log_softmax(unembed(model, arch, hidden), -1)
        return logp[:len(tokens)].gather(1, tokens[:, None]).squeeze(1), _kl(logp[len(tokens):], kl_init)
    return _HeadTerms.apply(hidden, head.weight, head.bias, tokens, kl_init)


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
