"""Editing metrics with the MEMIT/AlphaEdit zsRE protocol: token-level top-1 accuracy.

For a prompt and an answer, the model reads prompt + answer (teacher forcing) and we count the
answer tokens that are the argmax at the position before them. Efficacy uses the edit prompt and
the new target, Generality the paraphrase, Specificity the locality question and its gold answer.
"Locality agreement" (an extra column) is the fraction of the locality answer's positions where
the edited model's argmax equals the unedited model's.
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .forward import final_hidden, unembed
from .tokens import pad_right, target_ids


@torch.no_grad()
def answer_argmax(model, tokenizer, arch, prompts: Sequence[str], answers: Sequence[str],
                  batch_size: int = 32, progress: bool = False) -> list[tuple[list[int], list[int]]]:
    """For each (prompt, answer): (answer token ids, the model's argmax at each of their positions)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    results = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="scoring", disable=not progress, leave=False):
        rows, spans = [], []
        for prompt, answer in zip(prompts[start:start + batch_size], answers[start:start + batch_size]):
            prefix = tokenizer(prompt)["input_ids"]
            answer_ids = target_ids(tokenizer, answer)
            rows.append(prefix + answer_ids[:-1])
            spans.append((len(prefix) - 1, answer_ids))
        ids, mask = pad_right(rows, tokenizer.pad_token_id)
        hidden = final_hidden(model, arch, ids.to(device), mask.to(device))
        # every answer position of the batch through the head at once: one read of a large head
        row_of = [i for i, (_, answer_ids) in enumerate(spans) for _ in answer_ids]
        position_of = [first + k for first, answer_ids in spans for k in range(len(answer_ids))]
        predicted = unembed(model, arch, hidden[row_of, position_of]).argmax(-1).tolist()
        for _, answer_ids in spans:
            results.append((answer_ids, predicted[:len(answer_ids)]))
            predicted = predicted[len(answer_ids):]
    return results


def token_accuracy(model, tokenizer, arch, prompts: Sequence[str], answers: Sequence[str], **kwargs) -> list[float]:
    """Per example: the fraction of answer tokens predicted exactly (top-1, teacher forced)."""
    return [sum(int(a == p) for a, p in zip(ids, pred)) / len(ids)
            for ids, pred in answer_argmax(model, tokenizer, arch, prompts, answers, **kwargs)]


def agreement(before: Sequence[Sequence[int]], after: Sequence[Sequence[int]]) -> list[float]:
    """Per example: fraction of positions where two models' argmax tokens agree."""
    return [sum(int(x == y) for x, y in zip(b, a)) / max(len(b), 1) for b, a in zip(before, after)]


def edit_metrics(model, tokenizer, arch, requests, reference_predictions: Sequence[Sequence[int]] | None = None,
                 batch_size: int = 32, portability: bool = False) -> dict[str, list[float]]:
    """Efficacy, Generality, Specificity (and locality agreement if the unedited model's locality
    predictions are given; portability, the multi-hop question, if asked) per request, in [0, 1].

    Requests without a paraphrase / locality probe / portability question (MLaKE has no locality
    probe) are left out of that metric's list; a metric no request has is left out of the result."""
    if len(requests) == 0:
        raise ValueError("edit_metrics got no requests")
    questions = [r.prompt.format(r.subject) for r in requests]
    out = {"efficacy": token_accuracy(model, tokenizer, arch, questions, [r.target for r in requests],
                                      batch_size=batch_size)}
    with_paraphrase = [r for r in requests if getattr(r, "paraphrase", None)]
    if with_paraphrase:
        out["generality"] = token_accuracy(model, tokenizer, arch, [r.paraphrase for r in with_paraphrase],
                                           [r.target for r in with_paraphrase], batch_size=batch_size)
    with_locality = [r for r in requests if getattr(r, "locality_prompt", None)]
    if with_locality:
        loc = answer_argmax(model, tokenizer, arch, [r.locality_prompt for r in with_locality],
                            [r.locality_answer for r in with_locality], batch_size=batch_size)
        out["specificity"] = [sum(int(a == p) for a, p in zip(ids, pred)) / len(ids) for ids, pred in loc]
        if reference_predictions is not None:
            if len(reference_predictions) != len(with_locality):
                raise ValueError(f"{len(reference_predictions)} reference predictions for {len(with_locality)} locality probes")
            out["locality_agreement"] = agreement(reference_predictions, [pred for _, pred in loc])
    with_portability = [r for r in requests if getattr(r, "portability_prompt", None)] if portability else []
    if with_portability:
        out["portability"] = token_accuracy(model, tokenizer, arch, [r.portability_prompt for r in with_portability],
                                            [r.portability_answer for r in with_portability], batch_size=batch_size)
    return out


def locality_predictions(model, tokenizer, arch, requests, batch_size: int = 32) -> list[list[int]]:
    """The (unedited) model's argmax tokens over each request's locality answer, for agreement later."""
    probed = [r for r in requests if getattr(r, "locality_prompt", None)]
    if not probed:
        return []
    loc = answer_argmax(model, tokenizer, arch, [r.locality_prompt for r in probed],
                        [r.locality_answer for r in probed], batch_size=batch_size)
    return [pred for _, pred in loc]
