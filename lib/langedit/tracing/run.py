"""Trace one fact, or many facts across languages, into tidy tables."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from ..models.architecture import architecture_of
from .core import (KINDS, CleanRun, answer_is_greedy, check_supported, clean_run, corrupted_run, d_model_of,
                   embedding_std, make_noise, n_layers_of, restoration_grid, screen_facts, state_names)
from .facts import EncodedFact, SubjectNotFoundError, as_trace_fact, encode_fact
from .store import TraceStore, model_signature
from .tables import position_effects, positions_for

Answers = Literal["given", "predicted"]
Criterion = Literal["first_token", "full_answer"]


@dataclass
class FactTrace:
    """One fact's trace. ``scores[kind]`` is ``[n_tokens, n_layers]`` mean restored probability.

    Positions before the subject hold ``p_corrupt`` (restoring them changes nothing); positions not
    asked for are NaN.
    """
    fact: EncodedFact
    answer_id: int
    answer_token: str
    top_token: str
    p_clean: float
    p_corrupt: float
    correct: bool
    scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def _answer_id(fact: EncodedFact, answers: Answers) -> int | None:
    if answers not in ("given", "predicted"):
        raise ValueError(f"answers must be 'given' or 'predicted', not {answers!r}")
    if answers == "given" and fact.answer_id is None:
        raise ValueError(f"fact {fact.fact.prompt!r} has no answer; "
                         "pass answers='predicted' to trace the model's top-1 token")
    return fact.answer_id if answers == "given" else None


def _is_correct(model: nn.Module, fact: EncodedFact, clean: CleanRun, answer_id: int, criterion: Criterion) -> bool:
    if criterion == "first_token":
        return clean.top_id == answer_id
    return clean.top_id == answer_id and answer_is_greedy(model, fact)


def _check_options(answers: Answers, criterion: Criterion) -> None:
    if criterion not in ("first_token", "full_answer"):
        raise ValueError(f"criterion must be 'first_token' or 'full_answer', not {criterion!r}")
    if criterion == "full_answer" and answers != "given":
        raise ValueError("criterion='full_answer' needs answers='given'")


def trace_fact(
    model: nn.Module, tokenizer, fact, *, noise_std: float, kinds: Sequence[str] = KINDS, n_samples: int = 10,
    window: int = 10, seed: int = 0, answers: Answers = "given", categories: Sequence[str] | None = None,
    only_if_correct: bool = False, criterion: Criterion = "first_token", max_rows: int = 256,
    layers_per_forward: int = 1,
) -> FactTrace:
    """Corrupt the subject, restore each (token, layer) state per kind, and keep the answer probability.

    "Correct" (`criterion`): ``"first_token"`` (ROME) - the answer's first token is the clean top-1,
    always so with ``answers="predicted"``; ``"full_answer"`` - greedy decoding reproduces every answer
    token. Either way the traced quantity is the first answer token's probability.
    With `only_if_correct`, a wrong fact returns after the clean run (``p_corrupt`` NaN, no grids).
    `max_rows` and `layers_per_forward` shape the forwards (see :func:`restoration_grid`), not the numbers
    (beyond rounding: ~1e-7 in float32; with bfloat16 products ~1e-3 of a probability).
    `categories` limits the grid to the tokens those position categories need. A raw `fact` is read
    by :func:`as_trace_fact` without a template: wrap the prompt yourself, or use :func:`causal_trace`.
    """
    _check_options(answers, criterion)
    encoded = fact if isinstance(fact, EncodedFact) else encode_fact(tokenizer, as_trace_fact(fact))
    arch = architecture_of(model)
    check_supported(model, kinds)
    names = [name for kind in kinds for name in state_names(arch, kind, n_layers_of(model, arch))]
    clean = clean_run(model, encoded, names, _answer_id(encoded, answers))
    answer_id = clean.top_id if answers == "predicted" else encoded.answer_id
    trace = FactTrace(encoded, answer_id, tokenizer.convert_ids_to_tokens(answer_id),
                      tokenizer.convert_ids_to_tokens(clean.top_id), clean.prob, float("nan"),
                      _is_correct(model, encoded, clean, answer_id, criterion))
    if only_if_correct and not trace.correct:
        return trace  # a wrong fact costs one clean forward, nothing more
    noise = make_noise(encoded, n_samples, d_model_of(model), noise_std, seed)
    corrupted = corrupted_run(model, encoded, noise, answer_id)  # shared by every kind's grid
    trace.p_corrupt = float(corrupted.probs.mean())
    positions = positions_for(encoded.n_tokens, encoded.subject_range, categories)
    for kind in kinds:
        scores = restoration_grid(model, encoded, noise, answer_id, clean, kind, positions, window, max_rows,
                                  corrupted=corrupted, layers_per_forward=layers_per_forward)
        scores[: encoded.subject_range[0]] = trace.p_corrupt
        trace.scores[kind] = scores
    return trace


@dataclass
class TracingResult:
    """Everything a notebook draws: ``effects`` (tidy, per language/kind/position/layer), ``facts``
    (one row per fact with its status), the counted ``traces``, and the noise scale used."""
    effects: pd.DataFrame
    facts: pd.DataFrame
    traces: list[FactTrace]
    noise_std: float
    settings: dict

    def counts(self) -> pd.DataFrame:
        """Per language: facts drawn, seen (checked by the first pass), counted (correct before
        corruption), the mean baselines, and whether the pool ran out before the target count."""
        facts = self.facts
        counted = facts[facts["status"] == "counted"]
        summary = facts.groupby("language").size().rename("n_drawn").to_frame()
        summary["n_seen"] = facts[facts["status"] != "language_full"].groupby("language").size()
        summary["n_counted"] = counted.groupby("language").size()
        summary["p_clean"] = counted.groupby("language")["p_clean"].mean()
        summary["p_corrupt"] = counted.groupby("language")["p_corrupt"].mean()
        summary = summary.fillna({"n_counted": 0, "n_seen": 0}).astype({"n_counted": int, "n_seen": int})
        target = self.settings.get("max_facts_per_language")
        summary["pool_exhausted"] = False if target is None else summary["n_counted"] < target
        return summary.reset_index()


def _fact_row(fact, trace: FactTrace | None, status: str) -> dict:
    row = {"language": fact.language, "prompt": fact.prompt, "subject": fact.subject, "answer": fact.answer,
           "status": status}
    if trace is not None:
        row.update(answer_token=trace.answer_token, top_token=trace.top_token, p_clean=trace.p_clean,
                   p_corrupt=trace.p_corrupt, correct=trace.correct, n_tokens=trace.fact.n_tokens,
                   subject_start=trace.fact.subject_range[0], subject_end=trace.fact.subject_range[1])
    return row


def causal_trace(
    model: nn.Module, tokenizer, facts: Iterable, *, kinds: Sequence[str] = KINDS, noise_std: float | None = None,
    noise_multiplier: float = 3.0, n_samples: int = 10, window: int = 10, seed: int = 0, answers: Answers = "given",
    categories: Sequence[str] | None = None, max_facts_per_language: int | None = None, template: str = "{}",
    skip_missing_subject: bool = False, criterion: Criterion = "first_token", max_rows: int = 256,
    screen_batch: int = 16, layers_per_forward: int = 1, store: str | os.PathLike | None = None,
    progress: bool = True,
) -> TracingResult:
    """Causal tracing over many facts, averaged per language (LangEdit Appendix A.1, Figure 5).

    The noise is `noise_multiplier` x the embedding-output std over these facts' subjects unless
    `noise_std` is given. Only facts the model gets right count (`criterion`, see :func:`trace_fact`);
    facts are drawn in the given order, per language, until `max_facts_per_language` count. A batched
    first pass (`screen_batch` prompts per forward, :func:`screen_facts`) finds the facts whose answer's
    first token is the model's top-1; only those are traced (``full_answer`` then also checks the
    remaining answer tokens). Facts come as triples, dicts or edit-request objects (see
    :func:`as_trace_fact`), wrapped by `template`. ``counts()`` reports the facts seen and counted.
    With a `store` folder (one per model), every traced fact is written there as it finishes and read
    back instead of traced again: an interrupted call, repeated, resumes with identical numbers.
    """
    _check_options(answers, criterion)
    if screen_batch < 1:
        raise ValueError(f"screen_batch must be >= 1, got {screen_batch}")
    facts = [as_trace_fact(item, template) for item in facts]
    if noise_std is None:
        noise_std = noise_multiplier * embedding_std(model, tokenizer, [fact.subject for fact in facts])
    settings = dict(kinds=tuple(kinds), noise_std=noise_std, n_samples=n_samples, window=window, seed=seed,
                    answers=answers, categories=categories, template=template, criterion=criterion,
                    max_facts_per_language=max_facts_per_language, layers_per_forward=layers_per_forward)
    encoded = _encode_all(tokenizer, facts, skip_missing_subject)
    traced = _Tracer(model, tokenizer, settings, dict(max_rows=max_rows, layers_per_forward=layers_per_forward),
                     store)
    rows: list[dict | None] = [None] * len(facts)
    traces, counted = [], Counter()
    bar = tqdm(total=len(facts), desc="causal tracing", unit="fact", disable=not progress)
    for language, members in _by_language(facts).items():
        for i in members:
            if encoded[i] is None:
                rows[i] = _fact_row(facts[i], None, "subject_not_found")
                bar.update()
        members = [i for i in members if encoded[i] is not None]
        for first in range(0, len(members), screen_batch):
            batch = members[first:first + screen_batch]
            if max_facts_per_language is not None and counted[language] >= max_facts_per_language:
                for i in batch:
                    rows[i] = _fact_row(facts[i], None, "language_full")
                bar.update(len(batch))
                continue
            answer_ids = [_answer_id(encoded[i], answers) for i in batch]
            screened = screen_facts(model, [encoded[i] for i in batch], answer_ids, screen_batch)
            for i, (top_id, p_answer) in zip(batch, screened):
                bar.update()
                if max_facts_per_language is not None and counted[language] >= max_facts_per_language:
                    rows[i] = _fact_row(facts[i], None, "language_full")
                    continue
                if answers == "given" and top_id != encoded[i].answer_id:
                    rows[i] = _screened_row(tokenizer, facts[i], encoded[i], top_id, p_answer)  # never traced
                    continue
                trace = traced(encoded[i])
                rows[i] = _fact_row(facts[i], trace, "counted" if trace.correct else "wrong_before_corruption")
                if trace.correct:
                    traces.append(trace)
                    counted[language] += 1
                    bar.set_postfix(counted=sum(counted.values()))
    bar.close()
    effects = position_effects(traces) if traces else pd.DataFrame(
        columns=["language", "kind", "position_category", "layer", "prob", "indirect_effect", "n_facts",
                 "p_clean", "p_corrupt"])
    return TracingResult(effects, pd.DataFrame(rows), traces, float(noise_std), settings)


class _Tracer:
    """trace_fact with the call's settings, through the store when there is one."""

    def __init__(self, model: nn.Module, tokenizer, settings: dict, shape: dict, store) -> None:
        self.model, self.tokenizer, self.shape = model, tokenizer, shape
        self.options = {k: settings[k] for k in ("kinds", "noise_std", "n_samples", "window", "seed", "answers",
                                                  "categories", "criterion")}
        self.store = None if store is None else TraceStore(store)
        # the key: what the numbers depend on (the template is already in the fact's prompt); the
        # forwards' shape is in it too, because bfloat16 products round differently per shape
        self.key_settings = {**self.options, **shape}
        self.signature = model_signature(model) if store is not None else None

    def __call__(self, encoded: EncodedFact) -> FactTrace:
        if self.store is None:
            return self._trace(encoded)
        description = self.store.describe(encoded, self.key_settings, self.signature)
        trace = self.store.load(encoded, description)
        if trace is None:
            trace = self._trace(encoded)
            self.store.save(trace, description)
        return trace

    def _trace(self, encoded: EncodedFact) -> FactTrace:
        return trace_fact(self.model, self.tokenizer, encoded, only_if_correct=True, **self.options, **self.shape)


def _encode_all(tokenizer, facts: Sequence, skip_missing_subject: bool) -> list[EncodedFact | None]:
    """Token ids of every fact (None where the subject is not in the prompt and skipping is allowed)."""
    encoded = []
    for fact in facts:
        try:
            encoded.append(encode_fact(tokenizer, fact))
        except SubjectNotFoundError:
            if not skip_missing_subject:
                raise
            encoded.append(None)
    return encoded


def _by_language(facts: Sequence) -> dict[str, list[int]]:
    """Indices of the facts of each language, in the given order (languages in order of first appearance)."""
    groups: dict[str, list[int]] = {}
    for i, fact in enumerate(facts):
        groups.setdefault(fact.language, []).append(i)
    return groups


def _screened_row(tokenizer, fact, encoded: EncodedFact, top_id: int, p_answer: float) -> dict:
    """The row of a fact the first pass found wrong (its answer's first token is not the top-1)."""
    row = _fact_row(fact, None, "wrong_before_corruption")
    row.update(answer_token=tokenizer.convert_ids_to_tokens(encoded.answer_id),
               top_token=tokenizer.convert_ids_to_tokens(top_id), p_clean=p_answer, correct=False,
               n_tokens=encoded.n_tokens)
    return row


