"""Tokenising edit prompts: right padding, BOS exactly once, subject and target positions.

A prompt is a template with one ``{}`` where the subject goes (MEMIT's convention). The *lookup
position* of a prompt is its subject's last token, found from character offsets of the full
tokenised text, so tokenisation at the subject/suffix boundary cannot shift it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch


class Request(Protocol):
    prompt: str   # contains exactly one "{}" for the subject
    subject: str
    target: str


class SubjectNotFoundError(ValueError):
    """The subject does not occur in the prompt, or covers no token."""


def check_request(request: Request) -> None:
    for field in ("prompt", "subject", "target"):
        value = getattr(request, field, None)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"edit request {request!r} has no usable '{field}' (got {value!r})")
    if request.prompt.count("{}") != 1:
        raise SubjectNotFoundError(
            f"prompt {request.prompt!r} must contain exactly one '{{}}' for the subject {request.subject!r}")


def with_space(target: str) -> str:
    """Targets are appended after a space, as the reference implementations do."""
    return target if target.startswith(" ") else " " + target


@dataclass
class Batch:
    input_ids: torch.Tensor       # [N, T] right padded
    attention_mask: torch.Tensor  # [N, T]
    lookup: torch.Tensor          # [N] subject-last-token index per row (-1 if none requested)

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.lookup.to(device))


def _subject_last_token(offsets: Sequence[tuple[int, int]], subject_end: int, text: str) -> int:
    last = -1
    for index, (start, end) in enumerate(offsets):
        if end == start:  # special tokens have empty spans
            continue
        if start < subject_end:
            last = index
    if last < 0:
        raise SubjectNotFoundError(f"no token covers the subject in {text!r}")
    return last


def encode(tokenizer, texts: Sequence[str], subject_spans: Sequence[tuple[int, int] | None] | None = None) -> Batch:
    """Right-padded batch; `subject_spans[i]` = (char_start, char_end) of the subject in texts[i]."""
    if len(texts) == 0:
        raise ValueError("cannot encode an empty batch of texts")
    enc = tokenizer(list(texts), padding=True, return_tensors="pt", return_offsets_mapping=True)
    lookup = []
    for row, text in enumerate(texts):
        span = None if subject_spans is None else subject_spans[row]
        if span is None:
            lookup.append(-1)
            continue
        offsets = enc["offset_mapping"][row].tolist()
        valid = enc["attention_mask"][row].tolist()
        offsets = [tuple(o) if v else (0, 0) for o, v in zip(offsets, valid)]
        lookup.append(_subject_last_token(offsets, span[1], text))
    return Batch(enc["input_ids"], enc["attention_mask"], torch.tensor(lookup, dtype=torch.long))


def pad_right(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> right-padded ids and attention mask [N, T]."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[index, :len(row)] = 1
    return ids, mask


def fill(template: str, prompt: str, subject: str) -> tuple[str, tuple[int, int]]:
    """Put `prompt` into a context template, then the subject into the prompt; return text and subject span."""
    text_with_slot = template.replace("{}", prompt, 1) if "{}" in template else template + prompt
    start = text_with_slot.index("{}")
    text = text_with_slot[:start] + subject + text_with_slot[start + 2:]
    return text, (start, start + len(subject))


def target_ids(tokenizer, target: str) -> list[int]:
    ids = tokenizer(with_space(target), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids
