"""Activations at the subject's last token: keys (W_out inputs), values, residual states."""
from __future__ import annotations

from typing import Sequence

import torch

from ..hooks import TraceDict
from .tokens import Batch, Request, encode, fill


def _rows(batch: Batch) -> torch.Tensor:
    return torch.arange(batch.input_ids.shape[0], device=batch.lookup.device)


@torch.no_grad()
def read_at_lookup(model, batch: Batch, names: Sequence[str], inputs: bool = False, chunk: int = 64) -> dict[str, torch.Tensor]:
    """Input (or output) of each named module at every row's lookup position, float32 [N, d]."""
    device = next(model.parameters()).device
    found: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for start in range(0, batch.input_ids.shape[0], chunk):
        part = Batch(*(t[start:start + chunk] for t in (batch.input_ids, batch.attention_mask, batch.lookup))).to(device)
        with TraceDict(model, names, retain_input=inputs, retain_output=not inputs, stop=True) as traces:
            model(input_ids=part.input_ids, attention_mask=part.attention_mask)
        for name in names:
            acts = traces[name].input if inputs else traces[name].output
            found[name].append(acts[_rows(part), part.lookup].float())
    return {name: torch.cat(parts) for name, parts in found.items()}


def per_request(templates, n: int) -> list[list[list[str]]]:
    """One templates structure for every request: a shared one is repeated, a list is checked."""
    if templates and isinstance(templates[0][0], str):
        return [templates] * n
    if len(templates) != n:
        raise ValueError(f"got templates for {len(templates)} requests, expected {n}")
    return list(templates)


def templated_texts(requests: Sequence[Request], templates) -> tuple[list[str], list[tuple[int, int]]]:
    """Every request in every template, request-major: row = request * n_templates + template.
    `templates` is one structure for all requests or one per request (same group sizes)."""
    texts, spans = [], []
    for request, groups in zip(requests, per_request(templates, len(requests))):
        for template in (t for group in groups for t in group):
            text, span = fill(template, request.prompt, request.subject)
            texts.append(text)
            spans.append(span)
    return texts, spans


def average_over_templates(per_row: torch.Tensor, templates) -> torch.Tensor:
    """MEMIT's average: mean within each template group, then mean over groups ([B*T, d] -> [B, d])."""
    first = templates if isinstance(templates[0][0], str) else templates[0]
    sizes = [len(group) for group in first]
    per_request = per_row.view(-1, sum(sizes), per_row.shape[-1])
    groups = torch.split(per_request, sizes, dim=1)
    return torch.stack([g.mean(dim=1) for g in groups]).mean(dim=0)


def compute_keys(model, tokenizer, arch, requests: Sequence[Request], layer: int, templates) -> torch.Tensor:
    """Keys k = input of W_out at the subject's last token, averaged over templates: [B, d_key]."""
    return keys_at_layers(model, tokenizer, arch, requests, [layer], templates)[layer]


def keys_at_layers(model, tokenizer, arch, requests: Sequence[Request], layers: Sequence[int],
                   templates) -> dict[int, torch.Tensor]:
    """compute_keys at several layers from one forward pass (stopped after the last of them)."""
    texts, spans = templated_texts(requests, templates)
    batch = encode(tokenizer, texts, spans)
    names = {layer: arch.mlp_out_name(layer) for layer in layers}
    found = read_at_lookup(model, batch, list(names.values()), inputs=True)
    return {layer: average_over_templates(found[name], templates) for layer, name in names.items()}


def bare_batch(tokenizer, requests: Sequence[Request]) -> Batch:
    texts, spans = templated_texts(requests, [["{}"]])
    return encode(tokenizer, texts, spans)
