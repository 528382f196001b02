"""XTREME as a probe of a sequential run: F1 per task and language of the model as it is after every
language step (the references' ``downstream_eval_steps``), with the interface of
:class:`langedit.ability.AbilityProbe` (``signature`` and ``summary``), so ``SequentialRun(probe=...)``
records it once per step (``probes.jsonl``) and a resumed run does not score a step twice.

    probe = XtremeProbe(tasks=("xnli", "pawsx"), n_per_task=10, seed=0)
    result = sequential_run(lm, "langedit", requests, order, 3, probe=probe)
    result.probes          # after, task, language, f1, n, ...

``steps="final"`` scores only the finished models (the last step of a multilingual run).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import pandas as pd

from ..editing.sequential import PROBE_STEPS
from . import scoring
from .evaluate import PROTOCOL_VERSION, _plan, evaluate_xtreme, method_for
from .tasks import TASK_NAMES, get_task, gold_label, load_task, select_split


class XtremeProbe:
    """Few-shot XTREME F1 of whatever state the model is in, one row per (task, language)."""

    def __init__(self, tasks: Sequence[str] | str = TASK_NAMES, languages: Sequence[str] | None = None,
                 n_per_task: int = 100, seed: int = 0, mode: str = "loglik", batch_size: int = 8,
                 data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 steps: str = "every") -> None:
        """`steps`: "every" language step (and the unedited model), or only the "final" models of a run
        (SequentialRun's final_models: e.g. the four XTREME tasks, too costly to score after every step)."""
        if steps not in PROBE_STEPS:
            raise ValueError(f"steps must be one of {PROBE_STEPS}, got {steps!r}")
        self.steps = steps
        self.tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        if not self.tasks:
            raise ValueError("an XTREME probe needs at least one task")
        for task in self.tasks:
            method_for(task, mode)      # unknown task or mode: fail now, not after the first edit
        if isinstance(n_per_task, bool) or not isinstance(n_per_task, int) or n_per_task <= 0:
            raise ValueError(f"n_per_task must be a positive int, got {n_per_task!r}")
        self.languages = None if languages is None else tuple(languages)
        self.n_per_task, self.seed, self.mode, self.batch_size = n_per_task, seed, mode, batch_size
        self.data_dir, self.cache_dir = data_dir, cache_dir

    @property
    def signature(self) -> str:
        """A short hash of what is scored (tasks, languages, items, seed, mode, protocol)."""
        what = ("xtreme", PROTOCOL_VERSION, self.tasks, self.languages, self.n_per_task, self.seed, self.mode)
        if self.steps != "every":       # added only then, so the signatures recorded before stay valid
            what += (self.steps,)
        return hashlib.sha256(repr(what).encode()).hexdigest()[:12]

    def summary(self, model, tokenizer) -> pd.DataFrame:
        """One row per (task, language): task, language, f1, n, method."""
        scores = evaluate_xtreme(model, tokenizer, tasks=self.tasks, languages=self.languages,
                                 n_per_task=self.n_per_task, seed=self.seed, mode=self.mode,
                                 batch_size=self.batch_size, data_dir=self.data_dir, cache_dir=self.cache_dir,
                                 progress=False)
        return scores[["task", "language", "f1", "n", "method"]].reset_index(drop=True)


def f1_by_step(probes: pd.DataFrame) -> pd.DataFrame:
    """The paper's "F1 (avg.)" after every recorded step of a run's XTREME probe: columns after, f1
    (mean over tasks of each task's mean over languages), in the order the steps were recorded."""
    if probes is None or probes.empty:
        raise ValueError("the run has no XTREME probe records (was it run with probe=XtremeProbe(...)?)")
    missing = {"after", "task", "f1"} - set(probes.columns)
    if missing:
        raise ValueError(f"probe records lack column(s) {sorted(missing)}: not an XTREME probe")
    steps = list(dict.fromkeys(probes["after"]))
    f1 = [float(probes[probes["after"] == s].groupby("task")["f1"].mean().mean()) for s in steps]
    return pd.DataFrame({"after": steps, "f1": f1})


def constant_guess_f1(tasks: Sequence[str] | str, languages: Sequence[str] | None = None, n_per_task: int = 100,
                      seed: int = 0, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """What a model that ignores its input scores on the very items the suite scores: per (task,
    language), the better of the two constant guesses (always "yes", always "no") under the same macro F1,
    for the classification tasks; an empty answer (F1 0) for MLQA and WikiANN. Columns task, language, f1,
    guess. Average with ``f1_average`` for the chance line of "F1 (avg.)"."""
    rows = []
    for task, language in _plan(tasks, languages):
        if get_task(task).kind != "classification":
            rows.append({"task": task, "language": language, "f1": 0.0, "guess": "empty answer"})
            continue
        items = load_task(task, language, data_dir)
        golds = [gold_label(task, items[i]) for i in select_split(items, task, language, n_per_task, seed).test]
        by_guess = {label: scoring.macro_f1(golds, [label] * len(golds)) for label in (0, 1)}
        best = max(by_guess, key=by_guess.get)
        rows.append({"task": task, "language": language, "f1": by_guess[best], "guess": "yes" if best else "no"})
    return pd.DataFrame(rows)
