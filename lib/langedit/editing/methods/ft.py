"""FT: fine-tuning of one W_out, as the reference baseline (kmeng01/rome and AlphaEdit, baselines/ft).

The loss is not teacher forcing: the prompt with its subject filled in (no context templates) is
read once, and every token of the new target is scored at the prompt's LAST position,

    loss = mean over requests of  -1/|t| * sum_j log p(t_j | prompt)   (all p at that one position),

i.e. the next-token distribution is pushed towards the bag of target tokens. Adam (with the
reference's weight decay) runs `ft_steps` passes over the requests in batches of `ft_batch_size`;
a batch whose loss is below `ft_early_stop_loss` takes no step, a pass whose mean loss is below it
ends FT. With a norm constraint every entry of W_out is clamped after each batch to within
+-`ft_norm_constraint` of its value before this call (the reference's "constr" settings).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ...models.architecture import w_out
from ..forward import final_hidden, unembed
from ..tokens import Request, encode, pad_right, target_ids
from .base import Method


def last_position_loss(model, tokenizer, arch, requests: Sequence[Request]) -> torch.Tensor:
    """The reference FT loss of `requests` (a scalar, differentiable in the model's parameters)."""
    device = next(model.parameters()).device
    batch = encode(tokenizer, [r.prompt.format(r.subject) for r in requests]).to(device)
    tokens, mask = pad_right([target_ids(tokenizer, r.target) for r in requests], tokenizer.pad_token_id)
    tokens, mask = tokens.to(device), mask.to(device).float()
    last = batch.attention_mask.sum(1) - 1                       # right padding: the prompt's last token
    hidden = final_hidden(model, arch, batch.input_ids, batch.attention_mask)
    logp = torch.log_softmax(unembed(model, arch, hidden[torch.arange(len(requests), device=device), last]), -1)
    per_request = -(logp.gather(1, tokens) * mask).sum(1) / mask.sum(1)
    return per_request.mean()


class FineTune(Method):
    name = "ft"

    @property
    def layers(self):
        layer = self.hp.ft_layer if self.hp.ft_layer is not None else self.hp.layers[0]
        return (layer,)

    def apply(self, requests, report, values=None):   # values: refused by the Editor (accepts_values)
        ed, hp = self.editor, self.hp
        weight = w_out(ed.model, self.layers[0])    # the Parameter itself, in whatever layout the family keeps
        start = weight.detach().clone()
        optimizer = torch.optim.Adam([weight], lr=hp.ft_lr, weight_decay=hp.ft_weight_decay)
        batches = [requests[i:i + hp.ft_batch_size] for i in range(0, len(requests), hp.ft_batch_size)]
        weight.requires_grad_(True)
        try:
            for _ in range(hp.ft_steps):
                total = 0.0
                for batch in batches:
                    optimizer.zero_grad()
                    loss = last_position_loss(ed.model, ed.tokenizer, ed.arch, batch)
                    total += loss.item() * len(batch)
                    if loss.item() >= hp.ft_early_stop_loss:
                        loss.backward()
                        optimizer.step()
                    if hp.ft_norm_constraint is not None:
                        with torch.no_grad():
                            bound = hp.ft_norm_constraint
                            weight.copy_(torch.clamp(weight, start - bound, start + bound))
                if total / len(requests) < hp.ft_early_stop_loss:
                    break
        finally:
            weight.requires_grad_(False)
            weight.grad = None
