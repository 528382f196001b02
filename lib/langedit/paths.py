"""Where the suite reads data and writes caches and results.

Every location is a setting: an environment variable, or an explicit argument, with a
default relative to the checkout. Nothing here creates files at import time.
"""
from __future__ import annotations

import os
from pathlib import Path

#: The repository root (lib/langedit/paths.py -> ../../).
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data directory: argument, else $LANGEDIT_DATA_DIR, else ../shared/data beside the checkout."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("LANGEDIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT.parent / "shared" / "data"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: argument, else $LANGEDIT_CACHE_DIR, else ~/.cache/langedit."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("LANGEDIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "langedit"


def results_dir(override: str | os.PathLike | None = None) -> Path:
    """Where tables and figures go: argument, else $LANGEDIT_RESULTS_DIR, else <repo>/results."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("LANGEDIT_RESULTS_DIR")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT / "results"
