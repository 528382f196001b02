"""The per-request value optimisation, written plainly as the reference implementations do it
(full forward every step, full-vocabulary logits at every position, one request at a time).

Kept as the independent check for :func:`langedit.editing.values.compute_values` and as the
baseline the benchmark measures the batched version against. Not used for editing.
"""
from __future__ import annotations

import torch

from ..hooks import Trace
from .tokens import Request, encode, fill, pad_right, target_ids
from .values import KL_PROMPT, ValueSettings


def compute_value_one(model, tokenizer, arch, request: Request, templates: list[list[str]],
                      settings: ValueSettings) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    ids = target_ids(tokenizer, request.target)
    texts, spans = zip(*[fill(t, request.prompt, request.subject) for group in templates for t in group])
    prompts = encode(tokenizer, list(texts), list(spans))
    kl = encode(tokenizer, *map(list, zip(fill(KL_PROMPT, "{}", request.subject))))
    rows = []
    for row in range(len(texts)):
        length = int(prompts.attention_mask[row].sum())
        rows.append(prompts.input_ids[row, :length].tolist() + ids[:-1])
    input_ids, mask = pad_right(rows, tokenizer.pad_token_id)
    input_ids, mask = input_ids.to(device), mask.to(device)
    lookups = prompts.lookup.tolist()
    layer_name = arch.layer_name(settings.layer)

    with torch.no_grad(), Trace(model, layer_name) as trace:
        model(input_ids=input_ids[:1], attention_mask=mask[:1])
    h = trace.output[0, lookups[0]].float()
    with torch.no_grad():
        kl_logits = model(input_ids=kl.input_ids.to(device), attention_mask=kl.attention_mask.to(device)).logits
        kl_init = torch.log_softmax(kl_logits[0, kl.lookup[0]].float(), -1)

    delta = torch.zeros_like(h, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    for step in range(settings.steps):
        def add_delta(output, positions):
            output = output.clone()
            for row, position in enumerate(positions):
                output[row, position] += delta.to(output.dtype)
            return output

        with Trace(model, layer_name, edit_output=lambda o: add_delta(o, lookups), retain_output=False):
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits, -1)
        nll_rows = []
        for row, values in enumerate(rows):
            start = len(values) - len(ids)
            picked = [logp[row, start + i, token] for i, token in enumerate(ids)]
            nll_rows.append(-torch.stack(picked).sum() / len(ids))
        nll = torch.stack(nll_rows).mean()
        with Trace(model, layer_name, edit_output=lambda o: add_delta(o, kl.lookup.tolist()), retain_output=False):
            kl_logits = model(input_ids=kl.input_ids.to(device), attention_mask=kl.attention_mask.to(device)).logits
        kl_new = torch.log_softmax(kl_logits[0, kl.lookup[0]].float(), -1)
        kl_term = settings.kl_factor * (kl_new.exp() * (kl_new - kl_init)).sum()
        loss = nll + kl_term + settings.weight_decay * delta.norm() / h.norm() ** 2
        if loss.item() < settings.early_stop_loss or step == settings.steps - 1:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            max_norm = settings.clamp_norm_factor * h.norm()
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())
    return (h + delta.detach()).float(), h
