"""What causal tracing needs to know about one fact, and where its subject sits in the tokens.

Tracing takes plain ``(prompt, subject, answer)`` triples or any record with ``question``/``prompt``,
``subject`` and ``target``/``answer`` attributes (e.g. ``langedit.data.EditRequest``), so it does not
depend on any file format.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


class SubjectNotFoundError(ValueError):
    """The subject string does not occur in the prompt, so there is nothing to corrupt."""


@dataclass(frozen=True)
class TraceFact:
    """One fact to trace: the full prompt text, the subject inside it, and (optionally) the answer.

    ``answer=None`` traces the model's own top-1 next token (ROME's choice when no gold answer exists).
    """
    prompt: str
    subject: str
    answer: str | None = None
    language: str = ""


@dataclass(frozen=True)
class EncodedFact:
    """A fact as token ids: ``subject_range`` is the half-open token span ``[start, end)`` to corrupt.

    ``answer_id`` is the first answer token (None: decided later as the model's top-1). Whitespace-only
    tokens that the tokenizer emits before the answer (Gemma writes " 2006" as "▁", "2", ...) are moved
    into the prompt, so the traced token is the first one that carries content.
    """
    fact: TraceFact
    input_ids: torch.Tensor
    tokens: tuple[str, ...]
    subject_range: tuple[int, int]
    answer_id: int | None
    #: every content token of the answer (first = `answer_id`), for the full-answer criterion.
    answer_ids: tuple[int, ...] = ()

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def _first_attr(item, names: tuple[str, ...]):
    for name in names:
        value = item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)
        if value is not None:
            return value
    return None


def _answer_text(value) -> str | None:
    if isinstance(value, Mapping):  # EasyEdit-style {"str": ...}
        value = value.get("str")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else str(value)


def as_trace_fact(item, template: str = "{}", language: str | None = None) -> TraceFact:
    """Adapt a triple ``(prompt, subject, answer[, language])``, a dict or an edit-request-like object.

    Objects: the text is ``.question`` if present, else ``.prompt`` (with ``{}`` filled by the subject);
    the answer is ``.target``/``.answer``/``.target_new``. `template` wraps the text, e.g.
    ``"Question: {}\\nAnswer:"``, because a base model continues a bare question with anything but
    the answer.
    """
    if isinstance(item, TraceFact):
        fact = item
    elif isinstance(item, (tuple, list)):
        if not 2 <= len(item) <= 4:
            raise ValueError(f"a fact tuple is (prompt, subject[, answer[, language]]), got {len(item)} items")
        prompt, subject, answer, lang = (*item, None, None)[:4]
        fact = TraceFact(str(prompt), str(subject), _answer_text(answer), lang or "")
    else:
        subject = _first_attr(item, ("subject",))
        text = _first_attr(item, ("question", "prompt", "src"))
        if subject is None or text is None:
            raise TypeError(f"cannot read a fact from {type(item).__name__}: it needs a subject and a question/prompt")
        if "{}" in text:
            text = text.format(subject)
        answer = _answer_text(_first_attr(item, ("target", "answer", "target_new", "alt")))
        fact = TraceFact(str(text), str(subject), answer, str(_first_attr(item, ("language",)) or ""))
    prompt = template.replace("{}", fact.prompt) if template != "{}" else fact.prompt
    return TraceFact(prompt, fact.subject, fact.answer, language if language is not None else fact.language)


def _subject_char_span(prompt: str, subject: str) -> tuple[int, int]:
    """First occurrence of the subject; a case-insensitive match if the exact one fails."""
    start = prompt.find(subject) if subject else -1
    if start < 0 and subject and len(prompt.lower()) == len(prompt) and len(subject.lower()) == len(subject):
        start = prompt.lower().find(subject.lower())
    if start < 0:
        raise SubjectNotFoundError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    return start, start + len(subject)


def _offsets(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Character span of each token; from the fast tokenizer, else by decoding token by token."""
    try:
        encoded = tokenizer(text, return_offsets_mapping=True)
        if list(encoded["input_ids"]) == ids:
            return [tuple(span) for span in encoded["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass
    spans, end = [], 0
    for i in range(len(ids)):
        new_end = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True))
        spans.append((end, new_end))
        end = new_end
    return spans


def subject_token_range(tokenizer, prompt: str, subject: str) -> tuple[int, int]:
    """Token span ``[start, end)`` of the subject in ``tokenizer(prompt)`` (special tokens included)."""
    ids = list(tokenizer(prompt)["input_ids"])
    return _token_span(tokenizer, prompt, subject, ids)


def _token_span(tokenizer, prompt: str, subject: str, ids: list[int]) -> tuple[int, int]:
    char_start, char_end = _subject_char_span(prompt, subject)
    spans = _offsets(tokenizer, prompt, ids)
    inside = [i for i, (a, b) in enumerate(spans) if b > a and a < char_end and b > char_start]
    if not inside:
        raise SubjectNotFoundError(f"subject {subject!r} covers no token of prompt {prompt!r}")
    return inside[0], inside[-1] + 1


def _needs_space(prompt: str, answer: str) -> bool:
    """A space goes between prompt and answer unless either side has whitespace or the prompt ends in CJK."""
    if not prompt or prompt[-1].isspace() or answer[:1].isspace():
        return False
    return ord(prompt[-1]) < 0x2E80


def _answer_ids(tokenizer, prompt: str, prompt_ids: list[int], answer: str) -> list[int]:
    continuation = (" " + answer) if _needs_space(prompt, answer) else answer
    full = list(tokenizer(prompt + continuation)["input_ids"])
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids):]
    return list(tokenizer(continuation, add_special_tokens=False)["input_ids"])


def encode_fact(tokenizer, fact: TraceFact) -> EncodedFact:
    """Tokenize the prompt, locate the subject, and pick the first content token of the answer."""
    ids = list(tokenizer(fact.prompt)["input_ids"])
    subject_range = _token_span(tokenizer, fact.prompt, fact.subject, ids)
    answer_id = None
    if fact.answer is not None:
        answer_ids = _answer_ids(tokenizer, fact.prompt, ids, fact.answer)
        while answer_ids and not tokenizer.decode([answer_ids[0]]).strip():
            ids.append(answer_ids.pop(0))  # whitespace token: part of the prompt, not the answer
        if not answer_ids:
            raise ValueError(f"answer {fact.answer!r} has no content token after prompt {fact.prompt!r}")
        answer_id = answer_ids[0]
    tokens = tuple(tokenizer.convert_ids_to_tokens(ids))
    return EncodedFact(fact, torch.tensor(ids, dtype=torch.long), tokens, subject_range, answer_id,
                       tuple(answer_ids) if fact.answer is not None else ())
