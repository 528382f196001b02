"""Value targets v*: the state at the last edited layer that makes the model say the new target,
found by optimising a shift delta added there, for a whole batch of requests at once. The state is
the residual stream, block L's output (MEMIT's compute_z; `delta_at="layer"`), or W_out's own
output at layer L (ROME's compute_v; `delta_at="mlp_out"`: on Gemma-2/3 that is before the
post-feed-forward norm, so v* is directly what W_out must produce).

Per request b, with delta_b added at the subject's last token of every prompt at that state:

    loss_b = mean over templated prompts of  -log p(target | prompt)   (per-token average)
           + kl_factor * KL(p_new || p_init) at the subject of "{subject} is a"
           + weight_decay * ||delta_b|| / ||h_b||^2     (h_b: the state on the bare prompt)

Each row only sees its own delta, the total loss is the sum over rows and Adam is elementwise,
so optimising [B, d] at once gives each row exactly the trajectory it would get alone. Requests stop
individually (loss below `early_stop_loss`); a stopped request's rows leave the later steps' forward
and backward, so it costs nothing more. The norm clamp is per row.

What makes it cheap: nothing before a row's subject-last token depends on delta (attention is
causal), so each row is split there. The prefix runs once, without gradient, through all layers
and is kept as past keys/values; the blocks of the suffix below the one delta enters run once too
(<= L for the residual, < L for W_out's output, whose block L must run again). A step runs only
the suffix from there on, and the unembedding only at the target and KL positions.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..hooks import TraceDict
from .forward import final_hidden, head_terms, new_cache, record_block_arity, replay_layers, unembed
from .tokens import Request, encode, fill, target_ids

KL_PROMPT = "{} is a"
#: Where delta is added at layer L: block L's output (the residual stream) or W_out's output.
DELTA_SITES = ("layer", "mlp_out")


@dataclass(frozen=True)
class ValueSettings:
    layer: int                 # the last edited layer: delta is added to its output (or its W_out's)
    steps: int = 25
    lr: float = 0.1
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    early_stop_loss: float = 5e-2
    chunk_requests: int = 16   # requests per forward/backward (memory bound only; results do not depend on it)
    delta_at: str = "layer"    # one of DELTA_SITES

    def __post_init__(self) -> None:
        if self.delta_at not in DELTA_SITES:
            raise ValueError(f"unknown value-target site delta_at={self.delta_at!r}; choose from {DELTA_SITES}")


def delta_site(arch, settings: ValueSettings) -> tuple[str, int]:
    """(module whose output delta is added to, last block whose cached output a step replays; -1: none)."""
    if settings.delta_at == "layer":
        return arch.layer_name(settings.layer), settings.layer
    return arch.mlp_out_name(settings.layer), settings.layer - 1


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
    pad_id: int


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
                        as_long(t_pos), as_long(t_tok), torch.tensor(t_w, dtype=torch.float32), pad)


@dataclass
class _Chunk:
    """Rows of some requests split at the subject's last token: the prefix before it never sees
    delta, so its keys/values are computed once; each step runs only the suffix from the block
    delta enters on."""
    requests: torch.Tensor       # [b] request indices
    owner: torch.Tensor          # [n] request index per row
    suffix_ids: torch.Tensor     # [n, S] the row from its subject's last token on (right padded)
    position_ids: torch.Tensor   # [n, S] positions of those tokens in the full row
    attention_mask: torch.Tensor # [n, P + S] prefix columns, then suffix columns
    prefix_cache: object         # past key/values of the prefixes (all layers, no grad)
    at_layer: torch.Tensor | None  # [n, S, d] output of the replayed block on the suffix (None: no block replayed)
    at_site: torch.Tensor        # [n, d] output of delta's module at the subject's last token, without delta
    target_rows: torch.Tensor    # [m] local row, suffix position, token and weight of each target token
    target_pos: torch.Tensor
    target_tok: torch.Tensor
    target_weight: torch.Tensor
    kl_rows: torch.Tensor        # [b'] local rows of the KL prompts (delta at suffix position 0)
    kl_init: torch.Tensor        # [b', V] their log-probabilities before editing


def _prepare_chunk(model, arch, problem: ValueProblem, requests_in: torch.Tensor, site: tuple[str, int],
                   device) -> _Chunk:
    to_dev = lambda t: t.to(device)
    rows = torch.isin(problem.owner, requests_in).nonzero().squeeze(1)
    lengths = problem.attention_mask[rows].sum(1)
    split = problem.lookup[rows]
    n, width_p, width_s = len(rows), max(int(split.max()), 1), int((lengths - split).max())
    pad = problem.pad_id
    prefix_ids = torch.full((n, width_p), pad, dtype=torch.long)
    prefix_mask = torch.zeros((n, width_p), dtype=torch.long)
    suffix_ids = torch.full((n, width_s), pad, dtype=torch.long)
    suffix_mask = torch.zeros((n, width_s), dtype=torch.long)
    for local, (row, cut, length) in enumerate(zip(rows.tolist(), split.tolist(), lengths.tolist())):
        prefix_ids[local, :cut] = problem.input_ids[row, :cut]
        prefix_mask[local, :cut] = 1
        suffix_ids[local, :length - cut] = problem.input_ids[row, cut:length]
        suffix_mask[local, :length - cut] = 1
    position_ids = split[:, None] + torch.arange(width_s)[None, :]
    attention_mask = torch.cat([prefix_mask, suffix_mask], 1)
    # A row whose subject ends at its first token (no BOS) has an empty prefix; its first prefix
    # column is attended in the prefix pass only, so no attention row is empty (NaN), and it stays
    # masked for the suffix.
    prefix_pass_mask = prefix_mask.clone()
    prefix_pass_mask[split == 0, 0] = 1

    local_of = torch.full((len(problem.owner),), -1, dtype=torch.long)
    local_of[rows] = torch.arange(n)
    t_keep = local_of[problem.target_rows] >= 0
    t_rows = local_of[problem.target_rows[t_keep]]
    kl_rows = problem.is_kl[rows].nonzero().squeeze(1)

    cache = new_cache(model)
    with torch.no_grad():
        final_hidden(model, arch, to_dev(prefix_ids), to_dev(prefix_pass_mask), past_key_values=cache, use_cache=True)
        site_name, replayed = site
        names = [site_name] + ([arch.layer_name(replayed)] if replayed >= 0 else [])
        with TraceDict(model, names) as traces:
            hidden = final_hidden(model, arch, to_dev(suffix_ids), to_dev(attention_mask),
                                  position_ids=to_dev(position_ids), past_key_values=copy.deepcopy(cache), use_cache=True)
        kl_init = torch.log_softmax(unembed(model, arch, hidden[to_dev(kl_rows), 0]), -1)
    at_layer = traces[arch.layer_name(replayed)].output if replayed >= 0 else None
    return _Chunk(requests_in, problem.owner[rows], suffix_ids, position_ids, attention_mask, cache, at_layer,
                  traces[site_name].output[:, 0], t_rows, problem.target_pos[t_keep] - split[t_rows], problem.target_tok[t_keep],
                  problem.target_weight[t_keep], kl_rows, kl_init)


def _suffix_width(problem: ValueProblem, request: int) -> int:
    rows = problem.owner == request
    return int((problem.attention_mask[rows].sum(1) - problem.lookup[rows]).max())


@dataclass
class ValueTargets:
    """What :func:`compute_values` returns. Iterates as ``(values, states)``."""
    values: torch.Tensor   # [B, d] float32: v* = h + delta
    states: torch.Tensor   # [B, d] float32: h, the state at layer L (delta's site) before editing
    steps: list[int]       # per request: how many times its loss was evaluated (1..settings.steps)

    def __iter__(self):  # `v, h = compute_values(...)` as before the step counts were returned
        return iter((self.values, self.states))


def compute_values(model, tokenizer, arch, requests: Sequence[Request], templates: Sequence[list[list[str]]],
                   settings: ValueSettings, progress: bool = True) -> ValueTargets:
    """v*, h (targets and current states at layer L: the residual stream or W_out's output, as
    `settings.delta_at` says; [B, d] float32) and the number of loss evaluations each request took
    before it stopped."""
    if len(requests) == 0:
        raise ValueError("compute_values needs at least one request")
    device = next(model.parameters()).device
    problem = build_problem(tokenizer, requests, templates)
    site = delta_site(arch, settings)

    # Requests of similar suffix length share a chunk (less padding); chunks bound the memory.
    order = torch.tensor(sorted(range(len(requests)), key=lambda b: _suffix_width(problem, b)))
    with record_block_arity(model, arch, settings.layer) as arity:
        chunks = [_prepare_chunk(model, arch, problem, part, site, device)
                  for part in order.split(settings.chunk_requests)]
    h = torch.zeros(len(requests), chunks[0].at_site.shape[-1], device=device)
    for chunk in chunks:  # the bare prompt (first row of each request) at its subject's last token
        first = torch.tensor([(chunk.owner == b).nonzero()[0].item() for b in chunk.requests.tolist()])
        h[chunk.requests.to(device)] = chunk.at_site[first.to(device)].float()

    delta = torch.zeros_like(h, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    max_norm = settings.clamp_norm_factor * h.norm(dim=1)
    active = torch.ones(len(requests), dtype=torch.bool)
    steps = torch.zeros(len(requests), dtype=torch.long)
    bar = tqdm(range(settings.steps), desc=f"value targets ({len(requests)} edits)", disable=not progress, leave=False)
    for step in bar:
        last_step = step == settings.steps - 1
        optimizer.zero_grad()
        # A stopped request never resumes, so its rows leave the chunk for good: later steps run
        # only active requests (each row's trajectory is independent of the others').
        chunks = [_keep_active(chunk, active, device) for chunk in chunks if active[chunk.requests].any()]
        evaluated = active.clone()
        losses = torch.zeros(len(requests))
        for chunk in chunks:  # gradients of chunks add up: the step does not depend on chunking
            loss_each = _chunk_loss(model, arch, chunk, delta, h, settings, site, arity, device)
            counted = chunk.requests
            steps[counted] += 1
            losses[counted] = loss_each.detach()[counted.to(device)].cpu()
            active[counted[losses[counted] < settings.early_stop_loss]] = False
            if not last_step and active[chunk.requests].any():  # as the reference: no update after the last loss
                (loss_each * active.to(device)).sum().backward()
        bar.set_postfix(loss=f"{losses[evaluated].mean().item():.3f}", active=int(active.sum()))
        if not active.any() or last_step:
            break
        grad_mask = active.to(device)[:, None]
        delta.grad *= grad_mask  # finished rows keep their delta (Adam would move them on stale moments)
        saved = delta.detach().clone()
        optimizer.step()
        with torch.no_grad():
            delta.copy_(torch.where(grad_mask, delta, saved))
            norms = delta.norm(dim=1)
            scale = torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
            delta.mul_(scale[:, None])
    return ValueTargets((h + delta.detach()).float(), h, steps.tolist())


def _keep_active(chunk: _Chunk, active: torch.Tensor, device) -> _Chunk:
    """`chunk` without the rows (prompts and KL prompt) of requests that have stopped, and without
    the suffix columns only their rows used; the chunk itself when all its requests are active."""
    keep_requests = active[chunk.requests]
    if keep_requests.all():
        return chunk
    rows = active[chunk.owner].nonzero().squeeze(1)
    local_of = torch.full((len(chunk.owner),), -1, dtype=torch.long)
    local_of[rows] = torch.arange(len(rows))
    t_keep, kl_keep = local_of[chunk.target_rows] >= 0, local_of[chunk.kl_rows] >= 0
    width_p = chunk.attention_mask.shape[1] - chunk.suffix_ids.shape[1]
    width_s = int(chunk.attention_mask[rows, width_p:].sum(1).max())
    on_device = rows.to(device)
    chunk.prefix_cache.batch_select_indices(on_device)  # new tensors: the old rows are freed
    return _Chunk(chunk.requests[keep_requests], chunk.owner[rows], chunk.suffix_ids[rows, :width_s],
                  chunk.position_ids[rows, :width_s], chunk.attention_mask[rows, :width_p + width_s],
                  chunk.prefix_cache, None if chunk.at_layer is None else chunk.at_layer[on_device, :width_s],
                  chunk.at_site[on_device], local_of[chunk.target_rows[t_keep]],
                  chunk.target_pos[t_keep], chunk.target_tok[t_keep], chunk.target_weight[t_keep],
                  local_of[chunk.kl_rows[kl_keep]], chunk.kl_init[kl_keep.to(device)])


def _chunk_loss(model, arch, chunk: _Chunk, delta: torch.Tensor, h: torch.Tensor, settings: ValueSettings,
                site: tuple[str, int], arity, device) -> torch.Tensor:
    """loss_b for the requests of `chunk` (zero elsewhere), [B], differentiable in delta."""
    to_dev = lambda t: t.to(device)
    n_requests = len(h)
    owner = to_dev(chunk.owner)

    site_name, replayed = site
    replayed_name = arch.layer_name(replayed) if replayed >= 0 else None

    def inject(output: torch.Tensor, name: str) -> torch.Tensor:
        if name == replayed_name:   # the replayed blocks passed their input through: supply their output
            output = chunk.at_layer
        if name == site_name:
            shift = torch.zeros_like(output)
            shift[:, 0] = delta[owner].to(shift.dtype)  # every suffix starts at the subject's last token
            output = output + shift
        return output

    names = [site_name] + ([replayed_name] if replayed_name else [])
    with replay_layers(model, arch, replayed, arity), TraceDict(model, names, edit_output=inject, retain_output=False):
        hidden = final_hidden(model, arch, to_dev(chunk.suffix_ids), to_dev(chunk.attention_mask),
                              position_ids=to_dev(chunk.position_ids), past_key_values=copy.deepcopy(chunk.prefix_cache),
                              use_cache=True)
    target_logp, kl_each = head_terms(model, arch, hidden[to_dev(chunk.target_rows), to_dev(chunk.target_pos)],
                                      to_dev(chunk.target_tok), hidden[to_dev(chunk.kl_rows), 0], chunk.kl_init)
    token_nll = -target_logp * to_dev(chunk.target_weight)
    nll = torch.zeros(n_requests, device=device).index_add(0, owner[to_dev(chunk.target_rows)], token_nll)
    kl = torch.zeros(n_requests, device=device).index_add(0, owner[to_dev(chunk.kl_rows)], kl_each)
    on = torch.zeros(n_requests, dtype=torch.bool, device=device)
    on[to_dev(chunk.requests)] = True
    decay = settings.weight_decay * delta.norm(dim=1) / h.norm(dim=1) ** 2
    return (nll + settings.kl_factor * kl + decay) * on
