"""Shared fixtures. `default_model` loads the real Gemma-3-270M once per session (converted once)."""
from __future__ import annotations

import pytest

from langedit.models import load_model


@pytest.fixture(scope="session")
def default_model():
    return load_model(matmul_dtype="float32")   # the exact path; fast-path tests ask for it explicitly


@pytest.fixture(scope="session")
def default_tokenizer(default_model):
    return default_model.tokenizer
