"""The four XTREME tasks the LangEdit authors use, their data, and seeded test/demonstration splits.

The data are the authors' own evaluation subsets (``glue_eval/dataset/*.pkl`` in VRCMF/LangEdit),
kept as JSON in ``<data_dir>/xtreme/{task}_{language}.json``. The split is ours, not theirs: the
authors take the first 10 items as the demonstration pool and the next N items as the test set;
we draw both with a seed, so that a different seed gives an independent estimate and the test
items are never demonstrations.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import cache_dir as _cache_dir
from ..paths import data_dir as _data_dir

#: Where the authors' original pickles live (the JSON copies were converted from these, unchanged).
SOURCE_REPO = "VRCMF/LangEdit"
SOURCE_COMMIT = "bb16b51cbd5516d46ef15aa06f433cdef63a9acf"
SOURCE_URL = "https://raw.githubusercontent.com/{repo}/{commit}/glue_eval/dataset/{task}_{language}.pkl"


@dataclass(frozen=True)
class TaskSpec:
    """What differs between tasks: languages, number of demonstrations, fields, answer format."""
    name: str
    languages: tuple[str, ...]
    n_shots: int
    kind: str  # "classification" (XNLI, PAWS-X), "qa" (MLQA) or "ner" (WikiANN)
    fields: tuple[str, ...]


TASKS: dict[str, TaskSpec] = {
    "xnli": TaskSpec("xnli", ("en", "de", "es", "fr", "nl", "zh"), 2, "classification",
                     ("sentence1", "sentence2", "label")),
    "pawsx": TaskSpec("pawsx", ("en", "de", "es", "fr"), 2, "classification",
                      ("sentence1", "sentence2", "label")),
    "mlqa": TaskSpec("mlqa", ("en", "de", "es", "zh"), 2, "qa", ("context", "question", "answer")),
    "wikiann": TaskSpec("wikiann", ("en", "de", "es", "fr", "nl", "zh"), 3, "ner", ("text", "label")),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
#: How figures and tables name the tasks.
TASK_LABELS: dict[str, str] = {"xnli": "XNLI", "pawsx": "PAWS-X", "mlqa": "MLQA", "wikiann": "WikiANN"}
#: WikiANN demonstrations: one item containing each entity type, in the authors' order.
NER_TYPES: tuple[str, ...] = ("ORG", "PER", "LOC")


@dataclass(frozen=True)
class Split:
    """Indices into a task file: the test items and the demonstrations (disjoint)."""
    test: tuple[int, ...]
    demos: tuple[int, ...]


def get_task(task: str) -> TaskSpec:
    """The spec of `task`; a clear ValueError for unknown names."""
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown XTREME task {task!r}; choose from {', '.join(TASK_NAMES)}") from None


def check_language(task: str, language: str) -> None:
    """Raise ValueError naming `language` if `task` has no data for it."""
    spec = get_task(task)
    if language not in spec.languages:
        raise ValueError(f"task {task!r} has no language {language!r}; available: {', '.join(spec.languages)}")


def gold_label(task: str, item: dict) -> int:
    """Binary label of a classification item: 1 = entailment / paraphrase, 0 = not."""
    if task == "xnli":
        if item["label"] not in ("entailment", "not_entailment"):
            raise ValueError(f"unexpected XNLI label {item['label']!r}")
        return int(item["label"] == "entailment")
    if task == "pawsx":
        return int(item["label"])
    raise ValueError(f"task {task!r} is not a classification task")


def _restricted_unpickle(raw: bytes):
    """Unpickle plain containers only: the authors' pickles are lists of dicts of str/int."""
    class NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a downloaded pickle")

    return NoGlobals(io.BytesIO(raw)).load()


def _validate(items, task: str, source: str) -> list[dict]:
    spec = get_task(task)
    if not isinstance(items, list) or not items or not all(isinstance(x, dict) for x in items):
        raise ValueError(f"{source}: expected a non-empty list of records")
    missing = [f for f in spec.fields if f not in items[0]]
    if missing:
        raise ValueError(f"{source}: records lack field(s) {missing}; expected {list(spec.fields)}")
    return items


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=".tmp-", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def download_task_file(task: str, language: str, dest_dir: str | os.PathLike | None = None) -> Path:
    """Fetch the authors' pickle for (task, language) from GitHub and store it as JSON.

    Needs network access. The pickle is read with an unpickler that refuses every class, so only
    plain lists/dicts/strings can come out of it.
    """
    check_language(task, language)
    url = SOURCE_URL.format(repo=SOURCE_REPO, commit=SOURCE_COMMIT, task=task, language=language)
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (fixed https URL)
        items = _validate(_restricted_unpickle(response.read()), task, url)
    dest = Path(dest_dir) if dest_dir is not None else _cache_dir() / "xtreme_data"
    path = dest / f"{task}_{language}.json"
    _atomic_write_text(path, json.dumps(items, ensure_ascii=False))
    return path


def task_file(task: str, language: str, data_dir: str | os.PathLike | None = None,
              download: bool = True) -> Path:
    """The JSON file for (task, language): in the data directory, else a downloaded copy."""
    check_language(task, language)
    name = f"{task}_{language}.json"
    local = _data_dir(data_dir) / "xtreme" / name
    if local.exists():
        return local
    downloaded = _cache_dir() / "xtreme_data" / name
    if downloaded.exists():
        return downloaded
    if not download:
        raise FileNotFoundError(f"{local} not found (and download=False)")
    try:
        return download_task_file(task, language)
    except OSError as error:
        raise FileNotFoundError(
            f"{local} not found and downloading the original from {SOURCE_REPO} failed ({error}); "
            f"set $LANGEDIT_DATA_DIR to a folder holding xtreme/{name}") from error


def load_task(task: str, language: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """All items of (task, language), in file order."""
    path = task_file(task, language, data_dir)
    with open(path, encoding="utf-8") as handle:
        return _validate(json.load(handle), task, str(path))


def _rng(seed: int, task: str, language: str) -> np.random.Generator:
    """A generator that depends on (seed, task, language) only, stably across Python runs."""
    digest = hashlib.sha256(f"{seed}|{task}|{language}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _demo_predicates(task: str):
    """One predicate per demonstration slot, in prompt order (class-balanced, as the authors do)."""
    if task == "xnli":
        return [lambda x: x["label"] == "not_entailment", lambda x: x["label"] == "entailment"]
    if task == "pawsx":
        return [lambda x: int(x["label"]) == 0, lambda x: int(x["label"]) == 1]
    if task == "wikiann":
        return [lambda x, t=t: f"{t}:" in x["label"] for t in NER_TYPES]
    return [lambda x: True] * get_task(task).n_shots


def select_split(items: list[dict], task: str, language: str, n: int, seed: int) -> Split:
    """A seeded test subset of `n` items and demonstrations drawn from the remaining items.

    One permutation of the file decides both: its first `n` entries are the test set; the
    demonstrations are the first later entries that fill each slot (one per class for XNLI and
    PAWS-X, one item mentioning ORG, PER, LOC for WikiANN, any two items for MLQA).
    """
    spec = get_task(task)
    if n < 1 or n > len(items) - spec.n_shots:
        raise ValueError(f"{task}/{language}: n_per_task must be in [1, {len(items) - spec.n_shots}], got {n}")
    order = _rng(seed, task, language).permutation(len(items)).tolist()
    test, pool = order[:n], order[n:]
    demos: list[int] = []
    for wanted in _demo_predicates(task):
        pick = next((i for i in pool if i not in demos and wanted(items[i])), None)
        if pick is None:
            raise ValueError(f"{task}/{language}: no item left to serve as a demonstration")
        demos.append(pick)
    return Split(test=tuple(test), demos=tuple(demos))
