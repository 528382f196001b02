"""The multilingual sequential editing loop, with the paper's variants, written as it goes and resumable.

    run = SequentialRun(lm, method="langedit", requests=load_mzsre(LANGS, 20), order=LANGS,
                        batch_size=10, out_dir=results_dir() / "runs" / "langedit-...")
    table = run.run()          # long table: after_language x eval_language x metric

Modes (the paper's comparisons):
* ``multilingual`` – one model, languages edited one after another (in `order`, or shuffled by seed).
* ``monolingual`` – every language on a fresh copy of the original model; each such model is
                     evaluated on every language (the cross-lingual transfer matrix).
* ``summed``       – each language's update computed separately from the original model, then all
                     updates added ("multilingual summed").
* ``translation``  – the paper's "edits only the English knowledge ... then translates the edited
                     knowledge to other languages": the English twins of every language's facts,
                     one per ``case_id`` (parallel facts: the n facts once, not once per language;
                     disjoint facts: their union), are edited in English in batches (the plan's step
                     is ``en``); then every language is evaluated on its own requests (``after="all"``).

``query_languages`` (cross-lingual transfer, the paper's Tables 6-7): languages whose requests are
given but never edited; they are evaluated wherever the edited languages are (pre-edit, after every
language step, and in the final evaluation of the translation and summed modes), so the gain on
facts never edited in that language shows step by step.

After each language step every language edited so far is evaluated (Efficacy, Generality,
Specificity, locality agreement with the unedited model; Portability if asked), so interference
shows over time. Requests without a locality probe (MLaKE) get no Specificity. Each evaluation's
means go to ``evals.jsonl``, its per-fact scores to ``evals_per_fact.jsonl`` (for paired tests over
facts, langedit.statistics). With a ``probe`` (e.g. ability.AbilityProbe: anything with a
``signature`` and ``summary(model, tokenizer) -> DataFrame``) the model's general ability is scored
after every step too, one record per step in ``probes.jsonl``; a probe whose ``steps`` is ``"final"``
is scored only on the finished models (``final_models``: the last step of a multilingual run, every
language's model of a monolingual run), for a measure too costly to repeat after every step. Each finished batch is appended to ``batches.jsonl`` and the editor
state saved (key statistics included), so an interrupted run resumes from its last finished batch, in a new process, to the
same scores and weights bit for bit as an uninterrupted run (tested for every method, also for a
process killed while saving or evaluating). A run folder belongs to one configuration: reusing it
with different parameters is an error, never a silently stale result.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..models.loading import LoadedModel
from .editor import Editor, family_of
from .hparams import Hparams, load_hparams
from .metrics import edit_metrics, locality_predictions

MODES = ("multilingual", "monolingual", "summed", "translation")
METRICS = ("efficacy", "generality", "specificity", "locality_agreement")
#: The request field a metric needs (edit_metrics leaves requests without it out of that metric).
_METRIC_FIELD = {"efficacy": None, "generality": "paraphrase", "specificity": "locality_prompt",
                 "locality_agreement": "locality_prompt", "portability": "portability_prompt"}
PER_FACT_FILE = "evals_per_fact.jsonl"
PROBE_FILE = "probes.jsonl"       # a general-ability probe's summary after every step (optional)


@dataclass
class RunConfig:
    method: str
    order: tuple[str, ...]
    n_per_language: int
    batch_size: int
    mode: str = "multilingual"
    shuffle_seed: int | None = None      # None: languages in the given order
    portability: bool = False            # also score the multi-hop / portability question
    overrides: dict = field(default_factory=dict)
    model: str = ""
    hparams: dict = field(default_factory=dict)   # the resolved hyperparameters (files + overrides)
    query_languages: tuple[str, ...] = ()          # evaluated, never edited (cross-lingual transfer)
    translation_plan: str = ""                     # TRANSLATION_PLAN in mode "translation"

    def key(self) -> str:
        described = asdict(self)
        # fields added after runs were committed count only when set, so those runs keep their keys
        for name, default in _LATER_FIELDS.items():
            if described[name] == default:
                del described[name]
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:12]


#: RunConfig fields added later, with the value that leaves a run's key as it was before them.
_LATER_FIELDS = {"query_languages": (), "translation_plan": ""}
#: What mode "translation" edits; in the run's key, so runs of the former rule (every language's
#: English twins, re-editing parallel facts once per language) are never reused for it.
TRANSLATION_PLAN = "english twins of all languages' facts, one per case_id"


def resolved_hparams(lm: LoadedModel, method: str, hparams: Hparams | None = None, **overrides) -> dict:
    """The hyperparameters an Editor of `method` on `lm` would use, as plain data for run keys: a
    change of the hparams file then makes a new run instead of silently reusing an old one."""
    resolved = (hparams or load_hparams(method, family_of(lm))).with_overrides(**overrides)
    return {name: value for name, value in asdict(resolved).items() if name != "source"}


class StaleRunError(RuntimeError):
    """The run folder holds results of a different configuration."""


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def per_fact_record(after: str, language: str, requests: Sequence, scores: Mapping[str, list[float]]) -> dict:
    """One evaluation's per-fact scores (fractions in [0, 1]) aligned to the requests: ``case_ids`` and,
    per metric, one score per request (None where the request has no probe for that metric)."""
    record = {"after": after, "language": language,
              "case_ids": [getattr(r, "case_id", index) for index, r in enumerate(requests)]}
    for name, values in scores.items():
        field_name = _METRIC_FIELD.get(name)
        scored = [i for i, r in enumerate(requests) if field_name is None or getattr(r, field_name, None)]
        if len(scored) != len(values):
            raise ValueError(f"{name}: {len(values)} scores for {len(scored)} requests that have its probe")
        aligned: list[float | None] = [None] * len(requests)
        for index, value in zip(scored, values):
            aligned[index] = value
        record[name] = aligned
    return record


def read_per_fact(folder: str | os.PathLike) -> pd.DataFrame:
    """Long table of a run folder's per-fact scores: after, language, case_id and one column per
    metric in percent (NaN where a fact has no probe); empty for runs recorded before per-fact
    scores were kept. An evaluation recorded twice (interrupted between its two files) counts once."""
    latest = {(r["after"], r["language"]): r for r in _read_jsonl(Path(folder) / PER_FACT_FILE)}
    frames = []
    for record in latest.values():
        columns = {k: v for k, v in record.items() if k not in ("after", "language", "case_ids")}
        frame = pd.DataFrame({"case_id": record["case_ids"],
                              **{k: 100.0 * pd.to_numeric(pd.Series(v, dtype=object), errors="coerce")
                                 for k, v in columns.items()}})
        frame.insert(0, "after", record["after"])
        frame.insert(1, "language", record["language"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["after", "language", "case_id"])


def check_query_languages(order: Sequence[str], query_languages: Sequence[str],
                          requests: Mapping[str, Sequence]) -> tuple[str, ...]:
    """The languages queried but never edited, checked: none edited, none twice, each with requests."""
    if isinstance(query_languages, str):
        raise TypeError(f"query_languages must be a sequence of language codes, got the string {query_languages!r}")
    query_languages = tuple(query_languages)
    edited = sorted(set(query_languages) & set(order))
    if edited:
        raise ValueError(f"query language(s) {edited} are also edited (in order {list(order)}); a queried "
                         f"language is one that is never edited")
    repeated = sorted({lang for lang in query_languages if query_languages.count(lang) > 1})
    if repeated:
        raise ValueError(f"query language(s) {repeated} given more than once")
    without = [lang for lang in query_languages if lang not in requests or not requests[lang]]
    if without:
        raise ValueError(f"no requests to query for query language(s) {without}")
    return query_languages


def translation_plan(requests: Mapping[str, Sequence], order: Sequence[str]) -> list:
    """The English twins of every language's requests in `order`, each fact (case_id) once, in the
    order first met; English requests are their own twins. A non-English request without an English
    twin is an error (there is nothing to edit in English for it)."""
    twins, seen = [], set()
    for language in order:
        for request in requests[language]:
            twin = request if request.language == "en" else request.english_twin
            if twin is None:
                raise ValueError(f"translation mode: request {getattr(request, 'case_id', '?')} of {language!r} "
                                 f"has no English twin to edit")
            if twin.case_id not in seen:
                seen.add(twin.case_id)
                twins.append(twin)
    return twins


def language_order(order: Sequence[str], shuffle_seed: int | None) -> list[str]:
    order = list(order)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    return order


PROBE_STEPS = ("every", "final")


def probe_steps_of(probe) -> str:
    """When a probe is scored: ``probe.steps`` ("every" step, the default, or the "final" models only)."""
    steps = getattr(probe, "steps", "every")
    if steps not in PROBE_STEPS:
        raise ValueError(f"probe.steps must be one of {PROBE_STEPS}, got {steps!r}")
    return steps


def final_models(mode: str, steps: Sequence[str]) -> list[str]:
    """The steps after which a model is finished: the last of a multilingual run (one model edited step
    by step); every edited step of the other modes (each is a model of its own, or the one final model)."""
    edited = [step for step in steps if step != "pre-edit"]
    return edited[-1:] if mode == "multilingual" else edited


class SequentialRun:
    def __init__(self, lm: LoadedModel, method: str, requests: Mapping[str, Sequence], order: Sequence[str],
                 batch_size: int, out_dir: str | os.PathLike, mode: str = "multilingual",
                 shuffle_seed: int | None = None, progress: bool = True, portability: bool = False,
                 editor_factory: Callable[..., Editor] | None = None, hparams: Hparams | None = None,
                 probe=None, query_languages: Sequence[str] = (), keep_states: bool = False,
                 **overrides) -> None:
        """`keep_states`: the caller will load the final editor states (e.g. notebook_support.edited_model),
        so a finished run whose checkpoints are missing is edited again to save them."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        missing = [lang for lang in order if lang not in requests or not requests[lang]]
        if missing:
            raise ValueError(f"no edit requests for language(s) {missing}")
        query_languages = check_query_languages(order, query_languages, requests)
        sizes = {len(requests[lang]) for lang in order}
        probe_steps_of(probe)       # an unknown `steps` fails now, not after the first edit
        self.lm, self.requests, self.progress, self.probe = lm, requests, progress, probe
        self.keep_states = keep_states
        self.order = language_order(order, shuffle_seed)
        self.query_languages = list(query_languages)
        # with an editor_factory, the key holds `hparams` (or the defaults) + overrides: pass the ones it uses
        self.config = RunConfig(method, tuple(self.order), max(sizes), batch_size, mode, shuffle_seed,
                                portability, dict(overrides), lm.name, resolved_hparams(lm, method, hparams, **overrides),
                                query_languages=tuple(query_languages),
                                translation_plan=TRANSLATION_PLAN if mode == "translation" else "")
        self.out_dir = Path(out_dir)
        self._factory = editor_factory or (lambda: Editor(lm, method=method, hparams=hparams, progress=progress,
                                                          **overrides))

    # ----- files ---------------------------------------------------------------------------
    def _claim_folder(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.out_dir / "config.json"
        mine = {**asdict(self.config), "key": self.config.key()}
        if config_path.exists():
            theirs = json.loads(config_path.read_text())
            if theirs.get("key") != mine["key"]:
                raise StaleRunError(f"{self.out_dir} holds a run with a different configuration "
                                    f"({theirs}); use another folder or delete it")
        else:
            config_path.write_text(json.dumps(mine, indent=1, default=str))

    @property
    def batches_path(self) -> Path:
        return self.out_dir / "batches.jsonl"

    @property
    def evals_path(self) -> Path:
        return self.out_dir / "evals.jsonl"

    @property
    def per_fact_path(self) -> Path:
        return self.out_dir / PER_FACT_FILE

    @property
    def probe_path(self) -> Path:
        return self.out_dir / PROBE_FILE

    # ----- plan ----------------------------------------------------------------------------
    @property
    def evaluated_languages(self) -> list[str]:
        """Every language this run evaluates: the edited ones in editing order, then the queried ones."""
        return self.order + self.query_languages

    def edit_plan(self) -> list[tuple[str, list]]:
        """[(language step, batch of requests)] in editing order (translation: one step, ``en``)."""
        if self.config.mode == "translation":
            pools = [("en", translation_plan(self.requests, self.order))]
        else:
            pools = [(language, list(self.requests[language])) for language in self.order]
        plan = []
        for language, pool in pools:
            for start in range(0, len(pool), self.config.batch_size):
                plan.append((language, pool[start:start + self.config.batch_size]))
        return plan

    # ----- evaluation ----------------------------------------------------------------------
    def _reference_locality(self) -> dict[str, list[list[int]]]:
        path = self.out_dir / "reference_locality.json"
        if path.exists():
            return json.loads(path.read_text())
        ref = {lang: locality_predictions(self.lm.model, self.lm.tokenizer, self.lm.arch, self.requests[lang])
               for lang in self.evaluated_languages}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ref))
        os.replace(tmp, path)
        return ref

    def _evaluate(self, after: str, languages: Sequence[str], reference, done: set) -> None:
        for language in languages:
            if (after, language) in done:
                continue
            scores = edit_metrics(self.lm.model, self.lm.tokenizer, self.lm.arch, self.requests[language],
                                  reference_predictions=reference[language] or None,
                                  portability=self.config.portability)
            # per-fact scores first: an evaluation is done once its summary is written, and a
            # per-fact record repeated after an interruption is read once (read_per_fact)
            _append_jsonl(self.per_fact_path, per_fact_record(after, language, self.requests[language], scores))
            record = {"after": after, "language": language, "n": len(self.requests[language])}
            record.update({name: 100.0 * sum(values) / len(values) for name, values in scores.items()})
            _append_jsonl(self.evals_path, record)
            done.add((after, language))
        if languages:
            self._probe(after)

    def _probe(self, after: str) -> None:
        """General ability of the model as it is now (the probe's summary per language), once per step."""
        if self.probe is None:
            return
        if probe_steps_of(self.probe) == "final" and after not in self.expected_records()[2]:
            return
        signature = self.probe.signature
        if any(r["after"] == after and r["probe"] == signature for r in _read_jsonl(self.probe_path)):
            return
        summary = self.probe.summary(self.lm.model, self.lm.tokenizer)
        # one record per step (all languages), so an interruption never leaves a step half recorded
        _append_jsonl(self.probe_path, {"after": after, "probe": signature, "rows": summary.to_dict("records")})

    # ----- the loop ------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        self._claim_folder()
        if self.is_recorded() and (not self.keep_states or self.states_saved()):
            # every batch, evaluation and probe step is on disk: editing again would only reproduce them
            return self.table()
        reference = self._reference_locality()
        done_evals = {(r["after"], r["language"]) for r in _read_jsonl(self.evals_path)}
        self._evaluate("pre-edit", self.evaluated_languages, reference, done_evals)
        if self.config.mode == "multilingual" or self.config.mode == "translation":
            self._run_one_model(reference, done_evals)
        elif self.config.mode == "monolingual":
            self._run_monolingual(reference, done_evals)
        else:
            self._run_summed(reference, done_evals)
        return self.table()

    def expected_records(self) -> tuple[dict[str, int], list[tuple[str, str]], list[str]]:
        """What a finished run has recorded: batch records per checkpoint, (after, language) evaluations
        and the steps the probe scores, in the order the loop writes them."""
        plan, mode, queried = self.edit_plan(), self.config.mode, self.query_languages
        steps = list(dict.fromkeys(language for language, _ in plan))
        evals = [("pre-edit", language) for language in self.evaluated_languages]
        if mode == "multilingual":
            batches = {"checkpoint": len(plan)}
            evals += [(step, language) for i, step in enumerate(steps) for language in self.order[:i + 1] + queried]
        elif mode == "translation":
            batches = {"checkpoint": len(plan)}
            evals += [("all", language) for language in self.evaluated_languages]
        else:
            batches = {f"checkpoint-{step}": sum(1 for language, _ in plan if language == step) for step in steps}
            if mode == "monolingual":
                evals += [(step, language) for step in steps for language in self.evaluated_languages]
            else:
                evals += [("all (summed)", language) for language in self.evaluated_languages]
        probe_steps = list(dict.fromkeys(after for after, _ in evals))
        if probe_steps_of(self.probe) == "final":
            probe_steps = final_models(mode, probe_steps)
        return batches, evals, probe_steps

    def is_recorded(self) -> bool:
        """True when the folder holds every record a finished run of this configuration writes (batches,
        evaluations with their per-fact scores, and this run's probe after every step). A fresh clone has
        the committed records but no checkpoints; such a run is read back, not edited again."""
        batches, evals, probe_steps = self.expected_records()
        done_batches = {}
        for record in _read_jsonl(self.batches_path):
            done_batches.setdefault(record.get("checkpoint"), set()).add(record.get("batch"))
        if any(done_batches.get(name, set()) != set(range(n)) for name, n in batches.items()):
            return False
        done_evals = {(r["after"], r["language"]) for r in _read_jsonl(self.evals_path)}
        done_facts = {(r["after"], r["language"]) for r in _read_jsonl(self.per_fact_path)}
        if not set(evals) <= done_evals or not set(evals) <= done_facts:
            return False
        return self.probe is None or set(probe_steps) <= self._probed_steps()

    def _probed_steps(self) -> set[str]:
        return {r["after"] for r in _read_jsonl(self.probe_path) if r["probe"] == self.probe.signature}

    def states_saved(self) -> bool:
        """True when every checkpoint of a finished run holds its editor state."""
        batches, _, _ = self.expected_records()
        return all((self.out_dir / name / "state.json").exists() for name in batches)

    def _unprobed_steps(self, done_plan) -> list[str]:
        """Steps finished in `done_plan` whose probe score is missing (a probe added to a finished run)."""
        if self.probe is None:
            return []
        _, _, probe_steps = self.expected_records()
        probed = self._probed_steps()
        done_steps = [step for i, (step, _) in enumerate(done_plan)
                      if i == len(done_plan) - 1 or done_plan[i + 1][0] != step]
        return [step for step in done_steps if step in probe_steps and step not in probed]

    def _resume(self, editor: Editor, checkpoint: Path, plan) -> int:
        """Load the last saved editor state; drop batch records written after it. Returns batches done.

        Without a saved state (a fresh clone has the committed logs but not the checkpoints), or when a
        step before the saved state lacks the probe's score, the batches are edited again from the
        start and their old records dropped; the recorded evaluations stay (editing is deterministic,
        the same weights come back)."""
        finished = 0
        state = checkpoint / "state.json"
        if state.exists():
            saved = json.loads(state.read_text())["n_batches"]
            if not self._unprobed_steps(plan[:saved]):
                editor.load(checkpoint)
                finished = editor.n_batches
        if self.batches_path.exists():
            records = _read_jsonl(self.batches_path)
            own = [r for r in records if r.get("checkpoint") == checkpoint.name]
            kept = [r for r in records if r.get("checkpoint") != checkpoint.name] + own[:finished]
            self.batches_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        return finished

    def _edit_batches(self, editor: Editor, plan, checkpoint: Path, reference, done_evals,
                      evaluate_after: Callable[[str], Sequence[str]] | None) -> None:
        finished = self._resume(editor, checkpoint, plan)
        last_of_language = lambda index: index == len(plan) - 1 or plan[index + 1][0] != plan[index][0]
        if finished and last_of_language(finished - 1) and evaluate_after is not None:
            # interrupted while evaluating the state just loaded: the missing evaluations are of it
            language = plan[finished - 1][0]
            self._evaluate(language, evaluate_after(language), reference, done_evals)
        bar = tqdm(total=len(plan), initial=finished, desc=f"{self.config.method} ({checkpoint.name})",
                   disable=not self.progress, unit="batch")
        for index, (language, batch) in enumerate(plan):
            if index < finished:
                continue
            report = editor.apply(batch)
            # record first, then the state: a record beyond the saved state is dropped on resume,
            # a saved state without its record could not be recorded again
            _append_jsonl(self.batches_path, {"checkpoint": checkpoint.name, "batch": index, "language": language,
                                              **report.to_dict()})
            editor.save(checkpoint)
            bar.update(1)
            if last_of_language(index) and evaluate_after is not None:
                self._evaluate(language, evaluate_after(language), reference, done_evals)
        bar.close()

    def _run_one_model(self, reference, done_evals) -> None:
        editor = self._factory()
        plan = self.edit_plan()
        if self.config.mode == "translation":
            evaluate_after = None           # the English edits are one step; every language is scored after it
        else:
            evaluate_after = lambda language: self.order[: self.order.index(language) + 1] + self.query_languages
        try:
            self._edit_batches(editor, plan, self.out_dir / "checkpoint", reference, done_evals, evaluate_after)
            if self.config.mode == "translation":
                self._evaluate("all", self.evaluated_languages, reference, done_evals)
        finally:
            editor.restore()

    def _run_monolingual(self, reference, done_evals) -> None:
        plan = self.edit_plan()
        for language in self.order:
            editor = self._factory()
            try:
                own = [step for step in plan if step[0] == language]
                self._edit_batches(editor, own, self.out_dir / f"checkpoint-{language}", reference, done_evals,
                                   lambda lang: self.evaluated_languages)
            finally:
                editor.restore()

    def _run_summed(self, reference, done_evals) -> None:
        plan = self.edit_plan()
        updates: dict[int, torch.Tensor] = {}
        editor = None
        for language in self.order:
            editor = self._factory()
            try:
                own = [step for step in plan if step[0] == language]
                self._edit_batches(editor, own, self.out_dir / f"checkpoint-{language}", reference, done_evals, None)
                for layer in editor.layers:
                    delta = editor.raw_update(layer)     # PRUNE: the raw updates add, restrained once below
                    updates[layer] = delta if layer not in updates else updates[layer] + delta
            finally:
                editor.restore()
        editor.add_raw_updates(updates)
        try:
            # the probe (in _evaluate) is scored here too, on the summed model
            self._evaluate("all (summed)", self.evaluated_languages, reference, done_evals)
        finally:
            editor.restore()

    # ----- results -------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """Long table: after, language, n, and one column per metric (percent)."""
        frame = pd.DataFrame(_read_jsonl(self.evals_path))
        if not frame.empty:
            frame.insert(0, "method", self.config.method)
            frame.insert(1, "mode", self.config.mode)
        return frame

    def batches(self) -> pd.DataFrame:
        return pd.DataFrame(_read_jsonl(self.batches_path))

    def probes(self) -> pd.DataFrame:
        """The probe's summary rows after every step (this run's probe only; empty without one)."""
        records = _read_jsonl(self.probe_path)
        if self.probe is not None:
            records = [r for r in records if r["probe"] == self.probe.signature]
        return pd.DataFrame([{"after": r["after"], **row} for r in records for row in r["rows"]])

    def per_fact(self) -> pd.DataFrame:
        """Per-fact scores of every evaluation (read_per_fact)."""
        return read_per_fact(self.out_dir)
