"""Null-space thresholds (absolute / relative / energy) against eigenvectors selected by hand from a
numpy eigen-decomposition, and the rule that LangEdit's updated covariances are cut at C0's level."""

import numpy as np
import pytest
import torch

from langedit.editing import Editor, load_hparams
from langedit.editing.hparams import Hparams
from langedit.editing.nullspace import (THRESHOLD_KINDS, check_threshold, eigenvalue_cutoff, null_dimension,
                                        projector_from_cov, reference_projector)
from langedit.models.tiny import build_tiny_model
from edit_requests import CORPUS, MIXED_REQUESTS

D = 40


@pytest.fixture
def cov():
    """A PSD matrix with a spread spectrum (1e-4 .. 10) in a random basis."""
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((D, D)))
    spectrum = np.logspace(-4, 1, D)
    return torch.from_numpy((basis * spectrum) @ basis.T)


def by_hand(matrix: np.ndarray, kind: str, value: float) -> np.ndarray:
    """Indices (into numpy's eigh order) of the eigenvectors the threshold keeps, chosen explicitly."""
    w = np.linalg.eigh(matrix)[0]
    if kind == "absolute":
        return np.flatnonzero(w < value)
    if kind == "relative":
        return np.flatnonzero(w < value * w.max())
    order = np.argsort(w)                       # energy: smallest first, as many as fit in value * trace
    kept, total = [], 0.0
    for index in order:
        if total + max(w[index], 0.0) > value * np.clip(w, 0, None).sum():
            break
        total += max(w[index], 0.0)
        kept.append(index)
    return np.array(kept, dtype=int)


def hand_projector(matrix: np.ndarray, selected: np.ndarray) -> np.ndarray:
    vectors = np.linalg.eigh(matrix)[1][:, selected]
    return vectors @ vectors.T


CASES = [("absolute", 2e-2), ("absolute", 0.5), ("relative", 1e-3), ("relative", 0.05), ("energy", 1e-3),
         ("energy", 0.02), ("energy", 0.3)]


@pytest.mark.parametrize("kind,value", CASES)
def test_each_kind_keeps_the_eigenvectors_chosen_by_hand(cov, kind, value):
    selected = by_hand(cov.numpy(), kind, value)
    assert 0 < len(selected) < D                 # the case is not trivial
    projector, cutoff = reference_projector(cov, kind, value)
    assert np.allclose(projector.numpy(), hand_projector(cov.numpy(), selected), atol=1e-10)
    assert null_dimension(projector) == len(selected)
    w = np.linalg.eigh(cov.numpy())[0]
    assert w[selected].max() < cutoff <= np.delete(w, selected).min()
    assert torch.allclose(projector_from_cov(cov, cutoff), projector, atol=1e-12)   # the cutoff reproduces P


@pytest.mark.parametrize("value", [1e-3, 0.02, 0.3])
def test_energy_keeps_at_most_eps_of_the_trace_and_no_fewer_directions_than_fit(cov, value):
    projector, _ = reference_projector(cov, "energy", value)
    share = float(torch.trace(projector @ cov) / torch.trace(cov))          # = E|Pk|^2 / E|k|^2 for k ~ cov
    w = np.sort(np.linalg.eigh(cov.numpy())[0])
    next_one = w[null_dimension(projector)] / w.sum()
    assert share <= value < share + next_one


def test_energy_cutoff_lies_strictly_between_kept_and_dropped(cov):
    # so a covariance rescaled by n0 / (n0 + n) ~ 1 (LangEdit paper) keeps the same C0 directions
    _, cutoff = reference_projector(cov, "energy", 0.02)
    w = np.sort(np.linalg.eigh(cov.numpy())[0])
    kept = len(by_hand(cov.numpy(), "energy", 0.02))
    assert w[kept - 1] < cutoff < w[kept]
    assert null_dimension(projector_from_cov(cov * (1 - 1e-6), cutoff)) == kept


@pytest.mark.parametrize("kind,value", [("relative", 1e-3), ("energy", 0.02)])
def test_relative_kinds_are_scale_free_and_the_absolute_one_is_not(cov, kind, value):
    small, _ = reference_projector(cov, kind, value)
    large, _ = reference_projector(cov * 1000, kind, value)
    assert torch.allclose(small, large, atol=1e-9)
    assert null_dimension(projector_from_cov(cov, 2e-2)) != null_dimension(projector_from_cov(cov * 1000, 2e-2))


def test_a_zero_covariance_is_all_null_space():
    zero = torch.zeros(5, 5, dtype=torch.float64)
    assert eigenvalue_cutoff(torch.zeros(5), "energy", 0.1) == float("inf")
    assert null_dimension(reference_projector(zero, "energy", 0.1)[0]) == 5


@pytest.mark.parametrize("kind,value,message", [("bogus", 0.1, "unknown nullspace_threshold_kind"),
                                                ("absolute", 0.0, "must be > 0"),
                                                ("energy", 1.0, r"must lie in \(0, 1\)"),
                                                ("relative", -0.1, r"must lie in \(0, 1\)")])
def test_bad_thresholds_are_refused(kind, value, message):
    with pytest.raises(ValueError, match=message):
        check_threshold(kind, value)
    with pytest.raises(ValueError, match=message):
        eigenvalue_cutoff(torch.ones(3), kind, value)


def test_every_hparams_file_names_a_known_kind():
    from langedit.editing.hparams import available_families
    for family in available_families():
        for method in ("alphaedit", "langedit"):
            hp = load_hparams(method, family)
            assert hp.nullspace_threshold_kind in THRESHOLD_KINDS
            check_threshold(hp.nullspace_threshold_kind, hp.nullspace_threshold)
    assert Hparams(layers=(1,)).nullspace_threshold_kind == "absolute"     # the papers' reading by default


# ----- on a tiny model: the methods use the cutoff fixed on C0 --------------------------------------

REQUESTS = MIXED_REQUESTS


def tiny_editor(tok, method, cache, **overrides):
    lm = build_tiny_model("gemma3_text", tokenizer=tok)
    hp = load_hparams(method, "gemma3", layers=[1, 2], v_steps=4, v_lr=0.5, stats_tokens=300, **overrides)
    return Editor(lm, method=method, hparams=hp, corpus_texts=CORPUS, progress=False, cache=cache)


def hand_cutoff(cov0: np.ndarray, kind: str, value: float) -> tuple[np.ndarray, float]:
    """C0's kept eigenvalues by hand, and a level between the last kept and the first dropped one."""
    w = np.sort(np.linalg.eigh(cov0)[0])
    kept = len(by_hand(cov0, kind, value))
    return kept, (w[kept - 1], w[kept])


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_langedit_cuts_the_updated_covariance_at_the_level_fixed_on_c0(default_tokenizer, variant, tmp_path):
    editor = tiny_editor(default_tokenizer, "langedit", tmp_path, langedit_variant=variant,
                         nullspace_threshold_kind="energy", nullspace_threshold=0.05)
    editor.apply(REQUESTS[:2])
    # as if the edited keys weighed as much as many edits: their energy then raises the trace a lot, so
    # an energy threshold re-read on the updated spectrum would admit C0 directions the fixed cutoff does not
    editor.edited_kk = {layer: kk * 300 for layer, kk in editor.edited_kk.items()}
    kk = {layer: editor.edited_kk[layer].numpy().copy() for layer in editor.layers}
    editor.apply(REQUESTS[2:])
    for layer in editor.layers:
        stat = editor.cov0(layer)
        cov0 = stat.moment.double().numpy()
        kept, (below, above) = hand_cutoff(cov0, "energy", 0.05)
        cutoff = editor.method.cutoffs[layer]
        assert below < cutoff < above
        if variant == "paper":       # Algorithm 1 after the first batch of two edits
            cov = (stat.n_tokens * cov0 + kk[layer]) / (stat.n_tokens + 2)
        else:                        # the released recursion's second step: w0/(w0+w1) C0 + w1/(w0+w1) sum kk
            cov = 1e5 / (1e5 + 100) * cov0 + 100 / (1e5 + 100) * kk[layer]
        w = np.linalg.eigh(cov)[0]
        expected = hand_projector(cov, np.flatnonzero(w < cutoff))
        assert np.allclose(editor.method.projectors[layer].numpy(), expected, atol=1e-9), layer


def test_alphaedit_projector_and_cutoffs_survive_save_and_load(default_tokenizer, tmp_path):
    editor = tiny_editor(default_tokenizer, "alphaedit", tmp_path, nullspace_threshold_kind="relative",
                         nullspace_threshold=1e-2)
    editor.apply(REQUESTS[:2])
    for layer in editor.layers:
        cov0 = editor.cov0(layer).moment.double().numpy()
        expected = hand_projector(cov0, by_hand(cov0, "relative", 1e-2))
        assert np.allclose(editor.method.projectors[layer].numpy(), expected, atol=1e-9)
    cutoffs = dict(editor.method.cutoffs)
    editor.save(tmp_path / "state")
    editor.restore()
    again = tiny_editor(default_tokenizer, "alphaedit", tmp_path, nullspace_threshold_kind="relative",
                        nullspace_threshold=1e-2)
    again.load(tmp_path / "state")
    assert again.method.cutoffs == cutoffs and set(cutoffs) == {1, 2}


def test_an_unknown_kind_is_refused_when_the_editor_is_made(default_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown nullspace_threshold_kind 'eigen'"):
        tiny_editor(default_tokenizer, "langedit", tmp_path, nullspace_threshold_kind="eigen")
