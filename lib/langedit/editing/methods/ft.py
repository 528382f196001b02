"""FT: constrained fine-tuning of one W_out on the edit prompts (FT-L: every entry stays within
+-norm_constraint of its value before the batch)."""
from __future__ import annotations

import torch

from ..forward import final_hidden, unembed
from ..values import build_problem
from .base import Method


class FineTune(Method):
    name = "ft"

    @property
    def layers(self):
        layer = self.hp.ft_layer if self.hp.ft_layer is not None else self.hp.layers[0]
        return (layer,)

    def apply(self, requests, report):
        ed, hp = self.editor, self.hp
        device = ed.lm.device
        problem = build_problem(ed.tokenizer, requests, [[["{}"]]] * len(requests))
        keep = ~problem.is_kl
        ids, mask = problem.input_ids[keep].to(device), problem.attention_mask[keep].to(device)
        new_row = torch.cumsum(keep.long(), 0) - 1
        rows, pos = new_row[problem.target_rows].to(device), problem.target_pos.to(device)
        tokens, weights = problem.target_tok.to(device), problem.target_weight.to(device)
        weight = ed.weight(ed.layers[0])
        start = weight.detach().clone()
        weight.requires_grad_(True)
        optimizer = torch.optim.Adam([weight], lr=hp.ft_lr)
        try:
            for _ in range(hp.ft_steps):
                hidden = final_hidden(ed.model, ed.arch, ids, mask)
                logp = torch.log_softmax(unembed(ed.model, ed.arch, hidden[rows, pos]), -1)
                loss = -(logp.gather(1, tokens[:, None]).squeeze(1) * weights).sum() / len(requests)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    weight.copy_(torch.clamp(weight, start - hp.ft_norm_constraint, start + hp.ft_norm_constraint))
        finally:
            weight.requires_grad_(False)
            weight.grad = None
