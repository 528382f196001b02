"""XTREME few-shot evaluation of a causal LM: F1 per task and language, cached on disk.

Default mode is ``"loglik"``: XNLI and PAWS-X are classified by comparing the summed
log-probability of the two label words (e.g. " Yes" / " No") after the prompt. Mode
``"generate"`` instead decodes greedily and parses the answer, as the authors' reported F1 does.
MLQA and WikiANN need a free-form answer, so they are always generated greedily, in both modes.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Sequence

import pandas as pd
import torch

from . import prompts, scoring
from .cache import (cache_key, default_cache_root, entry_path, read_entry, tokenizer_fingerprint,
                    weights_fingerprint, write_entry)
from .inference import choice_logprobs, fit, greedy_generate, max_length, pad_id
from .tasks import TASK_NAMES, check_language, get_task, gold_label, load_task, select_split, task_file

#: Bump when prompts, parsing or scoring change, so that old cache entries are not reused.
PROTOCOL_VERSION = 1
MODES = ("loglik", "generate")
#: Greedy decoding budget per task (the authors use 3 for classification, 20 for MLQA and WikiANN;
#: WikiANN gets more because entity lists are long and a cut list loses recall).
MAX_NEW_TOKENS = {"xnli": 4, "pawsx": 4, "mlqa": 20, "wikiann": 32}


def method_for(task: str, mode: str) -> str:
    """What actually runs for `task` in `mode`: only classification tasks can use log-likelihood."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return "loglik" if mode == "loglik" and get_task(task).kind == "classification" else "generate"


def _file_sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _continuation_ids(tokenizer, prompt: str, prompt_ids: list[int], word: str) -> list[int]:
    """Token ids of ' <word>' as the tokenizer splits it right after `prompt`."""
    joint = tokenizer(f"{prompt} {word}")["input_ids"]
    if joint[:len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
        return joint[len(prompt_ids):]
    return tokenizer(f" {word}", add_special_tokens=False)["input_ids"]


def _predict_loglik(model, tokenizer, task, language, texts, ids, batch_size, progress):
    yes, no = prompts.label_words(task, language)
    choices = [[_continuation_ids(tokenizer, t, p, yes), _continuation_ids(tokenizer, t, p, no)]
               for t, p in zip(texts, ids)]
    scores = choice_logprobs(model, ids, choices, pad_id(model, tokenizer), batch_size,
                             desc=f"xtreme {task}/{language} (loglik)", progress=progress)
    predictions = [1 if s_yes > s_no else 0 for s_yes, s_no in scores]
    return predictions, [{"logprob_yes": s[0], "logprob_no": s[1]} for s in scores]


def _predict_generate(model, tokenizer, task, language, ids, batch_size, progress):
    kind = get_task(task).kind
    is_done = scoring.entities_complete if kind == "ner" else scoring.answer_complete
    texts = greedy_generate(model, tokenizer, ids, MAX_NEW_TOKENS[task], is_done, pad_id(model, tokenizer),
                            batch_size, desc=f"xtreme {task}/{language} (generate)", progress=progress)
    if kind == "classification":
        yes, no = prompts.label_words(task, language)
        predictions = [scoring.parse_choice(t, yes, no) for t in texts]
    elif kind == "qa":
        predictions = [scoring.first_line(t) for t in texts]
    else:
        predictions = [scoring.parse_entities(t) for t in texts]
    return predictions, [{"generated": t} for t in texts]


def _score(task: str, language: str, predictions: list, tests: list[dict]) -> float:
    kind = get_task(task).kind
    if kind == "classification":
        return scoring.macro_f1([gold_label(task, x) for x in tests], predictions)
    if kind == "qa":
        return scoring.mean_squad_f1(predictions, [x["answer"] for x in tests], language)
    return scoring.entity_f1(predictions, [scoring.parse_entities(x["label"]) for x in tests])


def _run_task(model, tokenizer, task, language, items, split, method, batch_size, progress) -> dict:
    """Predictions, F1 and timing for one (task, language)."""
    started = time.perf_counter()
    tests = [items[i] for i in split.test]
    demos = [items[i] for i in split.demos]
    texts = [prompts.build_prompt(task, language, demos, x) for x in tests]
    limit = max_length(model)
    budget = None if limit is None else limit - (MAX_NEW_TOKENS[task] if method == "generate" else 8)
    ids = [tokenizer(t)["input_ids"] for t in texts]
    ids = [fit(i, budget, keep_first=i[0] == tokenizer.bos_token_id) for i in ids]
    if method == "loglik":
        predictions, outputs = _predict_loglik(model, tokenizer, task, language, texts, ids, batch_size, progress)
    else:
        predictions, outputs = _predict_generate(model, tokenizer, task, language, ids, batch_size, progress)
    return {"f1": _score(task, language, predictions, tests), "n": len(tests), "predictions": predictions,
            "outputs": outputs, "seconds": time.perf_counter() - started,
            "max_prompt_tokens": max(len(i) for i in ids)}


def evaluate_task(model: torch.nn.Module, tokenizer, task: str, language: str, n: int = 100, seed: int = 0,
                  mode: str = "loglik", batch_size: int = 8, cache: bool = True,
                  data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True, fingerprint: str | None = None) -> dict:
    """F1 of one (task, language), with predictions; read from / written to the cache.

    The returned dict holds ``f1`` (0-100), ``n``, ``method``, ``predictions``, ``outputs`` (raw
    generations or label-word log-probabilities), ``test_indices`` and ``demo_indices`` (into the
    task file), ``seconds`` (time of the original computation) and ``cached``.
    """
    check_language(task, language)
    method = method_for(task, mode)
    items = load_task(task, language, data_dir)
    split = select_split(items, task, language, n, seed)
    parts = {"protocol": PROTOCOL_VERSION, "task": task, "language": language, "n": n, "seed": seed,
             "method": method, "max_new_tokens": MAX_NEW_TOKENS[task] if method == "generate" else None,
             "data_sha256": _file_sha256(task_file(task, language, data_dir)),
             "tokenizer": tokenizer_fingerprint(tokenizer)}
    if cache:
        parts["weights"] = fingerprint or weights_fingerprint(model)
        key = cache_key(parts)
        path = entry_path(default_cache_root(cache_dir), parts["weights"], task, language, key)
        entry = read_entry(path, key)
        if entry is not None:
            return {**entry, "cached": True}
    result = _run_task(model, tokenizer, task, language, items, split, method, batch_size, progress)
    entry = {"key": cache_key(parts) if cache else None, "parts": parts, "method": method,
             "test_indices": list(split.test), "demo_indices": list(split.demos), **result}
    if cache:
        write_entry(path, entry)
    return {**entry, "cached": False}


def _plan(tasks: Iterable[str] | str, languages: Sequence[str] | str | None) -> list[tuple[str, str]]:
    """(task, language) pairs to run; ValueError for an unknown task or a language no task has."""
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if not tasks:
        raise ValueError("no task given")
    specs = [get_task(t) for t in tasks]
    if languages is None:
        return [(s.name, lang) for s in specs for lang in s.languages]
    languages = (languages,) if isinstance(languages, str) else tuple(languages)
    for lang in languages:
        if not any(lang in s.languages for s in specs):
            available = sorted({x for s in specs for x in s.languages})
            raise ValueError(f"no selected task has language {lang!r}; available: {', '.join(available)}")
    return [(s.name, lang) for s in specs for lang in languages if lang in s.languages]


def _unpack(model, tokenizer):
    """Accept a LoadedModel (or anything with .model and .tokenizer) in place of (model, tokenizer)."""
    if tokenizer is None and hasattr(model, "model") and hasattr(model, "tokenizer"):
        return model.model, model.tokenizer
    if tokenizer is None:
        raise ValueError("pass a tokenizer, or a LoadedModel as `model`")
    return model, tokenizer


def evaluate_xtreme(model, tokenizer=None, tasks: Iterable[str] | str = TASK_NAMES,
                    languages: Sequence[str] | str | None = None, n_per_task: int = 100, seed: int = 0,
                    mode: str = "loglik", batch_size: int = 8, cache: bool = True,
                    data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """Few-shot F1 (0-100) of a causal LM on XNLI, PAWS-X, MLQA and WikiANN.

    `languages=None` runs every language each task has; a list runs those of its languages that
    each task has. Returns one row per (task, language) with columns task, language, f1, n,
    mode (as requested), method (what ran: loglik or generate), seed, seconds, cached.
    Use `f1_average` for the paper's single "F1 (avg.)" number.
    """
    model, tokenizer = _unpack(model, tokenizer)
    for task in ((tasks,) if isinstance(tasks, str) else tuple(tasks)):
        method_for(task, mode)  # validates mode and task names before any work
    plan = _plan(tasks, languages)
    was_training = model.training
    model.eval()
    try:
        fingerprint = weights_fingerprint(model) if cache else None
        rows = []
        for task, language in plan:
            r = evaluate_task(model, tokenizer, task, language, n=n_per_task, seed=seed, mode=mode,
                              batch_size=batch_size, cache=cache, data_dir=data_dir, cache_dir=cache_dir,
                              progress=progress, fingerprint=fingerprint)
            rows.append({"task": task, "language": language, "f1": r["f1"], "n": r["n"], "mode": mode,
                         "method": r["method"], "seed": seed, "seconds": r["seconds"], "cached": r["cached"]})
    finally:
        model.train(was_training)
    return pd.DataFrame(rows)


def f1_average(df: pd.DataFrame, by: str = "task") -> float:
    """The paper's "F1 (avg.)": the mean over tasks of each task's mean over its languages.

    Averaging per task first keeps XNLI and WikiANN (six languages) from outweighing PAWS-X and
    MLQA (four). `by="row"` gives the plain mean over all (task, language) rows instead.
    """
    if df.empty:
        raise ValueError("no scores to average")
    if by == "task":
        return float(df.groupby("task")["f1"].mean().mean())
    if by == "row":
        return float(df["f1"].mean())
    raise ValueError(f"unknown averaging {by!r}; use 'task' or 'row'")


def f1_table(df: pd.DataFrame) -> pd.DataFrame:
    """Wide view: one row per task, one column per language, plus the task's mean ('avg')."""
    wide = df.pivot_table(index="task", columns="language", values="f1", aggfunc="mean")
    wide["avg"] = df.groupby("task")["f1"].mean()
    order = [t for t in TASK_NAMES if t in wide.index]
    return wide.loc[order]
