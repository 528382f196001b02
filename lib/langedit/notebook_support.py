"""What the notebooks share: profiles (scales), method colours, saving figures and tables, and
sequential runs cached on disk by their parameters (so 02, 03 and 04 reuse one run, never a stale one).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from .paths import results_dir

LANGUAGES = ("en", "de", "nl", "es", "fr", "zh")
METHOD_ORDER = ("pre-edit", "ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit")
METHOD_LABELS = {"pre-edit": "Pre-edited", "ft": "FT", "rome": "ROME", "memit": "MEMIT", "prune": "PRUNE",
                 "rect": "RECT", "alphaedit": "AlphaEdit", "langedit": "LangEdit"}
#: One colour per method in every figure of the suite (colour-blind-safe Okabe-Ito + greys).
METHOD_COLOURS = {"pre-edit": "#7f7f7f", "ft": "#bcbd22", "rome": "#56B4E9", "memit": "#009E73", "prune": "#F0E442",
                  "rect": "#CC79A7", "alphaedit": "#0072B2", "langedit": "#D55E00"}

#: Scales per profile. smoke: CI, every notebook in minutes on 2 CPU cores. default: the committed
#: results on Gemma-3-270M (CPU). paper: the paper's scales on a GPU (Llama-3-8B etc.).
PROFILES: dict[str, dict] = {
    "smoke": dict(languages=("en", "de"), n_per_language=2, batch_size=2, seeds=(0,),
                  methods=("memit", "alphaedit", "langedit"),
                  overrides=dict(v_steps=3, stats_tokens=600), xtreme=dict(tasks=("xnli",), n_per_task=2),
                  tracing=dict(facts_per_language=1, n_samples=2, kinds=("mlp",))),
    "default": dict(languages=LANGUAGES, n_per_language=10, batch_size=10, seeds=(0,),
                    methods=("ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit"),
                    overrides=dict(), xtreme=dict(tasks=("xnli", "pawsx", "mlqa", "wikiann"), n_per_task=20),
                    tracing=dict(facts_per_language=10, n_samples=5, kinds=("hidden", "mlp", "attn"))),
    "paper": dict(languages=LANGUAGES, n_per_language=400, batch_size=100, seeds=(0, 1, 2),
                  methods=("ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit"),
                  overrides=dict(), xtreme=dict(tasks=("xnli", "pawsx", "mlqa", "wikiann"), n_per_task=100),
                  tracing=dict(facts_per_language=100, n_samples=10, kinds=("hidden", "mlp", "attn"))),
}


def profile_settings(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    return dict(PROFILES[profile])


def output_dir(out_dir: str | os.PathLike | None, notebook: str) -> Path:
    """results/<notebook>/ (or the caller's folder), created."""
    folder = Path(out_dir) if out_dir else results_dir() / notebook
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, folder: str | os.PathLike, name: str) -> list[Path]:
    """PNG (200 dpi) and PDF side by side."""
    paths = [Path(folder) / f"{name}.png", Path(folder) / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=200, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def save_table(frame: pd.DataFrame, folder: str | os.PathLike, name: str) -> Path:
    path = Path(folder) / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def run_folder(kind: str, method: str, mode: str, model: str, params: dict) -> Path:
    """A folder under results/runs named by everything that determines the run's numbers."""
    import hashlib
    import json

    key = hashlib.sha256(json.dumps({"model": model, "method": method, "mode": mode, **params},
                                    sort_keys=True, default=str).encode()).hexdigest()[:10]
    safe_model = model.replace("/", "_")
    return results_dir() / "runs" / f"{kind}-{safe_model}-{method}-{mode}-{key}"


def sequential_run(lm, method: str, requests, order: Sequence[str], batch_size: int, mode: str = "multilingual",
                   shuffle_seed: int | None = None, progress: bool = True, **overrides):
    """Run (or resume, or reload) a sequential editing run; returns (evals table, batches table)."""
    from .editing.sequential import SequentialRun

    params = dict(order=list(order), n=max(len(v) for v in requests.values()), batch_size=batch_size,
                  shuffle_seed=shuffle_seed, case_ids={k: [r.case_id for r in v] for k, v in requests.items()},
                  overrides=overrides)
    folder = run_folder("seq", method, mode, lm.name, params)
    run = SequentialRun(lm, method, requests, order, batch_size, folder, mode=mode, shuffle_seed=shuffle_seed,
                        progress=progress, **overrides)
    return run.run(), run.batches()
