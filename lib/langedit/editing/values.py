"""Value targets v*: the residual-stream state at the last edited layer that makes the model say
the new target, found by optimising a shift delta added there (MEMIT's compute_z), for a whole
batch of requests at once.

Per request b, with delta_b added at the subject's last token of every prompt at layer L:

    loss_b = mean over templated prompts of  -log p(target | prompt)   (per-token average)
           + kl_factor * KL(p_new || p_init) at the subject of "{subject} is a"
           + weight_decay * ||delta_b|| / ||h_b||^2

Each row only sees its own delta, the total loss is the sum over rows and Adam is elementwise,
so optimising [B, d] at once gives each row exactly the trajectory it would get alone. Rows stop
individually (loss below `early_stop_loss`); the norm clamp is per row. Layers <= L run once
without gradient, and the unembedding runs only at the target and KL positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..hooks import Trace
from .forward import final_hidden, record_block_arity, replay_layers, unembed
from .tokens import Request, encode, fill, target_ids

KL_PROMPT = "{} is a"


@dataclass(frozen=True)
class ValueSettings:
    layer: int                 # the last edited layer: delta is added to its output
    steps: int = 25
    lr: float = 0.1
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    early_stop_loss: float = 5e-2
    chunk_requests: int = 16   # requests per forward/backward (memory bound only; results do not depend on it)


@dataclass
class ValueProblem:
    """Token ids and positions of every row (request-major: its prompts, then its KL prompt)."""
    input_ids: torch.Tensor      # [N, T]
    attention_mask: torch.Tensor
    lookup: torch.Tensor         # [N] subject last token per row
    owner: torch.Tensor          # [N] request index per row
    is_kl: torch.Tensor          # [N] bool
    target_rows: torch.Tensor    # [M] row of each predicted target token
    target_pos: torch.Tensor     # [M] position whose logits predict it
    target_tok: torch.Tensor     # [M] the token id
    target_weight: torch.Tensor  # [M] 1 / (n target tokens) / (n prompts of its request)


def build_problem(tokenizer, requests: Sequence[Request], templates: Sequence[list[list[str]]]) -> ValueProblem:
    rows, spans, owners, is_kl, suffixes = [], [], [], [], []
    for index, (request, groups) in enumerate(zip(requests, templates)):
        ids = target_ids(tokenizer, request.target)
        for template in (t for group in groups for t in group):
            text, span = fill(template, request.prompt, request.subject)
            rows.append(text); spans.append(span); owners.append(index); is_kl.append(False); suffixes.append(ids)
        text, span = fill(KL_PROMPT, "{}", request.subject)
        rows.append(text); spans.append(span); owners.append(index); is_kl.append(True); suffixes.append([])
    prefix = encode(tokenizer, rows, spans)
    lengths = prefix.attention_mask.sum(1).tolist()
    width = max(length + max(len(s) - 1, 0) for length, s in zip(lengths, suffixes))
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    t_rows, t_pos, t_tok, t_w = [], [], [], []
    n_prompts = {i: sum(1 for o, k in zip(owners, is_kl) if o == i and not k) for i in set(owners)}
    for row, (length, suffix) in enumerate(zip(lengths, suffixes)):
        ids = prefix.input_ids[row, :length].tolist() + suffix[:-1] if suffix else prefix.input_ids[row, :length].tolist()
        input_ids[row, :len(ids)] = torch.tensor(ids)
        mask[row, :len(ids)] = 1
        for offset, token in enumerate(suffix):
            t_rows.append(row); t_pos.append(length - 1 + offset); t_tok.append(token)
            t_w.append(1.0 / len(suffix) / n_prompts[owners[row]])
    as_long = lambda values: torch.tensor(values, dtype=torch.long)
    return ValueProblem(input_ids, mask, prefix.lookup, as_long(owners), torch.tensor(is_kl), as_long(t_rows),
                        as_long(t_pos), as_long(t_tok), torch.tensor(t_w, dtype=torch.float32))


def _subset(problem: ValueProblem, keep_requests: torch.Tensor) -> tuple[ValueProblem, torch.Tensor]:
    """The rows of the requests in `keep_requests` (and which original rows they are)."""
    row_keep = torch.isin(problem.owner, keep_requests)
    old_rows = row_keep.nonzero().squeeze(1)
    new_index = torch.full((len(row_keep),), -1, dtype=torch.long)
    new_index[old_rows] = torch.arange(len(old_rows))
    t_keep = row_keep[problem.target_rows]
    sub = ValueProblem(problem.input_ids[old_rows], problem.attention_mask[old_rows], problem.lookup[old_rows],
                       problem.owner[old_rows], problem.is_kl[old_rows], new_index[problem.target_rows[t_keep]],
                       problem.target_pos[t_keep], problem.target_tok[t_keep], problem.target_weight[t_keep])
    return sub, old_rows


def compute_values(model, tokenizer, arch, requests: Sequence[Request], templates: Sequence[list[list[str]]],
                   settings: ValueSettings, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(v*, h): residual targets and current residual states at layer L for each request, [B, d] float32."""
    if len(requests) == 0:
        raise ValueError("compute_values needs at least one request")
    device = next(model.parameters()).device
    problem = build_problem(tokenizer, requests, templates)
    to_dev = lambda t: t.to(device)
    layer_name = arch.layer_name(settings.layer)

    # One pass without gradient: block outputs up to L, and the initial KL distribution.
    with torch.no_grad(), record_block_arity(model, arch, settings.layer) as arity, \
            Trace(model, layer_name) as at_layer:
        hidden = final_hidden(model, arch, to_dev(problem.input_ids), to_dev(problem.attention_mask))
    cached = at_layer.output  # [N, T, d] block-L output (residual stream)
    kl_rows = problem.is_kl.nonzero().squeeze(1)
    kl_init = torch.log_softmax(unembed(model, arch, hidden[to_dev(kl_rows), to_dev(problem.lookup[kl_rows])]), -1)
    del hidden
    bare_rows = torch.tensor([(problem.owner == b).nonzero()[0].item() for b in range(len(requests))])
    h = cached[to_dev(bare_rows), to_dev(problem.lookup[bare_rows])].float()  # [B, d]

    delta = torch.zeros_like(h, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    max_norm = settings.clamp_norm_factor * h.norm(dim=1)
    active = torch.ones(len(requests), dtype=torch.bool)
    bar = tqdm(range(settings.steps), desc=f"value targets ({len(requests)} edits)", disable=not progress, leave=False)
    for step in bar:
        last_step = step == settings.steps - 1
        optimizer.zero_grad()
        evaluated = active.nonzero().squeeze(1)
        losses = torch.zeros(len(requests))
        # Chunks of requests bound the memory (activations, vocabulary-wide log-probs); every
        # request's rows are in one chunk, and gradients add up, so the step is unchanged.
        for chunk in evaluated.split(settings.chunk_requests):
            loss_each = _chunk_loss(model, arch, problem, chunk, cached, delta, kl_init, h, settings, layer_name,
                                    arity, device)
            losses[chunk] = loss_each.detach()[to_dev(chunk)].cpu()
            active[chunk[losses[chunk] < settings.early_stop_loss]] = False
            if not last_step and active[chunk].any():  # as the reference: no update after the last loss
                (loss_each * to_dev(active)).sum().backward()
        bar.set_postfix(loss=f"{losses[evaluated].mean().item():.3f}", active=int(active.sum()))
        if not active.any() or last_step:
            break
        grad_mask = to_dev(active)[:, None]
        delta.grad *= grad_mask  # finished rows keep their delta (Adam would move them on stale moments)
        saved = delta.detach().clone()
        optimizer.step()
        with torch.no_grad():
            delta.copy_(torch.where(grad_mask, delta, saved))
            norms = delta.norm(dim=1)
            scale = torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
            delta.mul_(scale[:, None])
    return (h + delta.detach()).float(), h


def _chunk_loss(model, arch, problem: ValueProblem, requests_on: torch.Tensor, cached: torch.Tensor,
                delta: torch.Tensor, kl_init: torch.Tensor, h: torch.Tensor, settings: ValueSettings,
                layer_name: str, arity, device) -> torch.Tensor:
    """loss_b for the requests in `requests_on` (zero elsewhere), [B], differentiable in delta."""
    to_dev = lambda t: t.to(device)
    n_requests = len(h)
    sub, old_rows = _subset(problem, requests_on)
    owner = to_dev(sub.owner)
    start = cached[to_dev(old_rows)]
    position = to_dev(sub.lookup)

    def inject(output: torch.Tensor) -> torch.Tensor:
        shift = torch.zeros_like(start)
        shift[torch.arange(len(owner), device=device), position] = delta[owner].to(start.dtype)
        return start + shift

    with replay_layers(model, arch, settings.layer, arity), Trace(model, layer_name, edit_output=inject, retain_output=False):
        hidden = final_hidden(model, arch, to_dev(sub.input_ids), to_dev(sub.attention_mask))
    logp = torch.log_softmax(unembed(model, arch, hidden[to_dev(sub.target_rows), to_dev(sub.target_pos)]), -1)
    token_nll = -logp.gather(1, to_dev(sub.target_tok)[:, None]).squeeze(1) * to_dev(sub.target_weight)
    nll = torch.zeros(n_requests, device=device).index_add(0, owner[to_dev(sub.target_rows)], token_nll)
    kl_sub = sub.is_kl.nonzero().squeeze(1)
    kl_new = torch.log_softmax(unembed(model, arch, hidden[to_dev(kl_sub), to_dev(sub.lookup[kl_sub])]), -1)
    kl_init_on = kl_init[to_dev(sub.owner[kl_sub])]
    kl_each = (kl_new.exp() * (kl_new - kl_init_on)).sum(-1)
    kl = torch.zeros(n_requests, device=device).index_add(0, to_dev(sub.owner[kl_sub]), kl_each)
    on = torch.zeros(n_requests, dtype=torch.bool, device=device)
    on[to_dev(requests_on)] = True
    decay = settings.weight_decay * delta.norm(dim=1) / h.norm(dim=1) ** 2
    return (nll + settings.kl_factor * kl + decay) * on
