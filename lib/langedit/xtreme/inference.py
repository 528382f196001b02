"""Batched, gradient-free scoring and greedy generation for a Hugging Face causal LM.

Batches are left-padded by hand (the shared tokenizer is configured for right padding and is
not touched) with explicit position ids, so every sequence ends at the last column: the
answer positions are then the same for the whole batch and only they go through the output
head (``logits_to_keep``). With Gemma-3's 262k-word vocabulary that is the difference between
a [batch, length, vocab] tensor and a [batch, 1-2, vocab] one. Prompts are sorted by length
before batching to waste little work on padding.

Few-shot prompts of one task and language share their demonstrations: the token prefix common to
all prompts runs once, and each batch runs only the rest on top of its past keys/values (the pads
then sit between that prefix and each row's own tokens, masked out).
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

ChoiceIds = list[list[int]]


def input_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the embedding's device (also right for models split over devices)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def pad_id(model: torch.nn.Module, tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, getattr(model.config, "pad_token_id", None), tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def max_length(model: torch.nn.Module) -> int | None:
    """The longest sequence the model accepts, if its config says."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit(ids: list[int], limit: int | None, keep_first: bool) -> list[int]:
    """Drop tokens from the left (after BOS) so that `ids` has at most `limit` tokens."""
    if limit is None or len(ids) <= limit:
        return ids
    return ids[:1] + ids[len(ids) - limit + 1:] if keep_first else ids[len(ids) - limit:]


def left_pad(seqs: Sequence[list[int]], pad: int, device: torch.device):
    """input_ids, attention_mask and position_ids of left-padded `seqs`."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _last_logits(model: torch.nn.Module, ids, mask, positions, keep: int, past=None) -> torch.Tensor:
    """Logits of the last `keep` positions only, as float32 [batch, keep, vocab]. With `past`
    (keys/values of a prefix every row shares), `ids` are the rows' remaining tokens and `mask`
    covers prefix and rest."""
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=past is not None)
    if past is not None:
        kwargs["past_key_values"] = past
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        logits = model(**kwargs, logits_to_keep=keep).logits
    else:
        logits = model(**kwargs).logits[:, -keep:, :]
    return logits[:, -keep:, :].float()


def shared_prefix_length(seqs: Sequence[list[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one token of its own."""
    shortest = min(len(s) for s in seqs)
    length = 0
    while length < shortest - 1 and all(s[length] == seqs[0][length] for s in seqs):
        length += 1
    return length


class _SharedPrefix:
    """Past keys/values of a token prefix common to all sequences, computed once, handed out per batch."""

    def __init__(self, model: torch.nn.Module, prefix: list[int], device: torch.device):
        from ..editing.forward import new_cache

        self.length = len(prefix)
        self.cache = new_cache(model)
        ids = torch.tensor([prefix], dtype=torch.long, device=device)
        # only the keys/values are wanted: one position of logits, not [P, vocab]
        _last_logits(model, ids, torch.ones_like(ids), torch.arange(len(prefix), device=device)[None], 1, self.cache)

    def inputs(self, rests: Sequence[list[int]], pad: int, device: torch.device):
        """input ids, attention mask, position ids and a fresh cache for rows = prefix + rest."""
        ids, mask, positions = left_pad(rests, pad, device)
        full_mask = torch.cat([torch.ones(len(rests), self.length, dtype=mask.dtype, device=device), mask], 1)
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(rests))
        return ids, full_mask, positions + self.length, cache


def _choice_plan(prompt_ids: list[int], choices: ChoiceIds) -> list[tuple[list[int], list[int]]]:
    """The sequences to run for one prompt, each with the choices it scores.

    Choice c needs the logits after prompt + c[:-1]; a sequence that is a prefix of a longer
    one needs no run of its own (single-token choices all share the bare prompt).
    """
    plan: list[tuple[list[int], list[int]]] = []
    for c in sorted(range(len(choices)), key=lambda c: -len(choices[c])):
        seq = prompt_ids + choices[c][:-1]
        host = next((p for p in plan if p[0][:len(seq)] == seq), None)
        if host is None:
            plan.append((seq, [c]))
        else:
            host[1].append(c)
    return plan


@torch.no_grad()
def choice_logprobs(model: torch.nn.Module, prompt_ids: Sequence[list[int]], choice_ids: Sequence[ChoiceIds],
                    pad: int, batch_size: int = 8, desc: str = "", progress: bool = True,
                    share_prefix: bool = True) -> list[list[float]]:
    """Sum of the log-probabilities of each choice's tokens after its prompt.

    `choice_ids[i][c]` are the token ids of choice c as a continuation of prompt i.
    Log-softmax is taken in float32 whatever the model's dtype. `share_prefix`: run the tokens
    all prompts start with once (same numbers up to float rounding; False runs every row whole).
    """
    jobs = []  # (prompt index, sequence, choices scored by it)
    for i, (ids, choices) in enumerate(zip(prompt_ids, choice_ids)):
        if any(len(c) == 0 for c in choices):
            raise ValueError(f"prompt {i}: a choice tokenized to nothing")
        jobs += [(i, seq, cs) for seq, cs in _choice_plan(list(ids), choices)]
    scores = [[0.0] * len(c) for c in choice_ids]
    device = input_device(model)
    cut = shared_prefix_length([list(p) for p in prompt_ids]) if share_prefix and prompt_ids else 0
    shared = _SharedPrefix(model, list(prompt_ids[0][:cut]), device) if cut else None
    with tqdm(total=len(jobs), desc=desc, unit="seq", disable=not progress) as bar:
        for batch in _batches([len(j[1]) for j in jobs], batch_size):
            seqs = [jobs[j][1] for j in batch]
            keep = max(len(jobs[j][1]) - len(prompt_ids[jobs[j][0]]) + 1 for j in batch)
            if shared:
                ids, mask, positions, past = shared.inputs([s[cut:] for s in seqs], pad, device)
            else:
                (ids, mask, positions), past = left_pad(seqs, pad, device), None
            logprobs = torch.log_softmax(_last_logits(model, ids, mask, positions, keep, past), dim=-1)
            for row, j in enumerate(batch):
                i, seq, cs = jobs[j]
                for c in cs:
                    target = choice_ids[i][c]
                    first = keep - (len(seq) - len(prompt_ids[i]) + 1)  # column of the logits after the prompt
                    scores[i][c] = sum(float(logprobs[row, first + k, t]) for k, t in enumerate(target))
            bar.update(len(batch))
    return scores


def _stop_when(tokenizer, start: int, is_done: Callable[[str], bool]):
    """A stopping criterion that ends each row once its decoded continuation is complete."""
    from transformers import StoppingCriteria

    class StopWhen(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
            texts = tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            return torch.tensor([is_done(t) for t in texts], dtype=torch.bool, device=input_ids.device)

    return StopWhen()


def _generation_config(model: torch.nn.Module, tokenizer, max_new_tokens: int, pad: int):
    """Greedy decoding, stated in full so the model's own sampling defaults cannot leak in."""
    from transformers import GenerationConfig

    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                            eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, tokenizer, prompt_ids: Sequence[list[int]], max_new_tokens: int,
                    is_done: Callable[[str], bool], pad: int, batch_size: int = 8, desc: str = "",
                    progress: bool = True) -> list[str]:
    """Greedy continuations (decoded, special tokens dropped), stopped early once `is_done`."""
    from transformers import StoppingCriteriaList

    config = _generation_config(model, tokenizer, max_new_tokens, pad)
    device = input_device(model)
    outputs = [""] * len(prompt_ids)
    with tqdm(total=len(prompt_ids), desc=desc, unit="ex", disable=not progress) as bar:
        for batch in _batches([len(p) for p in prompt_ids], batch_size):
            ids, mask, _ = left_pad([list(prompt_ids[i]) for i in batch], pad, device)
            stop = StoppingCriteriaList([_stop_when(tokenizer, ids.shape[1], is_done)])
            generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                       stopping_criteria=stop)
            texts = tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)
            for i, text in zip(batch, texts):
                outputs[i] = text
            bar.update(len(batch))
    return outputs
