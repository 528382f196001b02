"""Null-space exhaustion (langedit.exhaustion): the simulated projector rules against a real run on a
tiny model and against projectors built independently (dense SVD bases), the predictions against
explicit eigenvalue counts and the released recursion itself."""

import numpy as np
import pytest
import torch

from langedit.editing import Editor, load_hparams
from langedit.editing.activations import compute_keys
from langedit.editing.nullspace import eigenvalue_cutoff, released_cov_update
from langedit.editing.stats import KeyMoment
from langedit.exhaustion import exhaustion_point, predict, released_c0_scale, simulate
from langedit.models.tiny import build_tiny_model
from edit_requests import CORPUS, INCEPTION, COUNTRY, BORN_EN, BORN_DE


def synthetic_c0(d: int = 24, seed: int = 0) -> tuple[dict[int, KeyMoment], np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    eigenvalues = np.logspace(-4, 1, d)
    cov = basis @ np.diag(eigenvalues) @ basis.T
    return {0: KeyMoment(torch.tensor(cov, dtype=torch.float32), n_tokens=5000)}, cov


def dense_projector_excluding(cov0: np.ndarray, cutoff: float, earlier_keys: np.ndarray) -> np.ndarray:
    """Independent: I - Q Q^T with Q an orthonormal basis (SVD) of C0's directions at or over the cutoff
    and every earlier key."""
    w, v = np.linalg.eigh(cov0)
    span = np.concatenate([v[:, w >= cutoff], earlier_keys.T], axis=1) if len(earlier_keys) else v[:, w >= cutoff]
    u, s, _ = np.linalg.svd(span, full_matrices=False)
    q = u[:, s > 1e-8 * max(s.max(), 1.0)]
    return np.eye(len(cov0)) - q @ q.T


def test_incremental_rule_matches_a_dense_svd_projector_batch_by_batch():
    cov0, cov = synthetic_c0()
    hp = load_hparams("langedit", "gemma3", layers=[0], nullspace_threshold_kind="energy", nullspace_threshold=0.01)
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(3, 24)) for _ in range(4)]
    frame = simulate("langedit:incremental", hp, cov0, [{0: torch.tensor(b)} for b in batches])
    cutoff = eigenvalue_cutoff(torch.tensor(np.linalg.eigh(cov)[0]), "energy", 0.01)
    seen = np.zeros((0, 24))
    for t, keys in enumerate(batches):
        p = dense_projector_excluding(cov, cutoff, seen)
        row = frame[frame["batch"] == t].iloc[0]
        assert row["null_dimension"] == round(np.trace(p))
        assert row["writable"] == pytest.approx(np.linalg.norm(p @ keys.T) / np.linalg.norm(keys), rel=1e-6)
        if len(seen):
            assert row["leak_room"] == pytest.approx(0.0, abs=1e-6)   # earlier keys are out of range(P)
        assert row["c0_room"] == pytest.approx(np.trace(p @ cov) / np.trace(cov), rel=1e-6)
        seen = np.concatenate([seen, keys])
    dims = list(frame["null_dimension"])
    assert dims[0] > dims[1] > dims[2] > dims[3] == max(0, dims[0] - 9)


def test_alphaedit_rule_never_changes_and_lets_earlier_keys_leak():
    cov0, cov = synthetic_c0()
    hp = load_hparams("alphaedit", "gemma3", layers=[0], nullspace_threshold_kind="energy", nullspace_threshold=0.01)
    rng = np.random.default_rng(2)
    frame = simulate("alphaedit", hp, cov0, [{0: torch.tensor(rng.normal(size=(2, 24)))} for _ in range(3)])
    assert frame["null_dimension"].nunique() == 1 and frame["leak_room"].iloc[1:].gt(0.05).all()


@pytest.mark.parametrize("rule", ["alphaedit", "langedit:paper", "langedit:released", "langedit:incremental"])
def test_simulated_null_dimensions_are_those_of_a_real_run_with_one_edited_layer(default_tokenizer, tmp_path, rule):
    # one edited layer: its keys do not depend on the edits, so the simulation on the unedited
    # model's keys must give the null dimensions the real run reports, batch for batch
    method, _, variant = rule.partition(":")
    overrides = dict(layers=[2], v_steps=2, v_lr=0.5, stats_tokens=300, nullspace_threshold_kind="energy",
                     nullspace_threshold=0.05)
    if variant:
        overrides["langedit_variant"] = variant
    lm = build_tiny_model("gemma3_text", tokenizer=default_tokenizer)
    hp = load_hparams(method, "gemma3", **overrides)
    editor = Editor(lm, method=method, hparams=hp, corpus_texts=CORPUS, progress=False, cache=tmp_path)
    batches = [[INCEPTION, COUNTRY], [BORN_EN], [BORN_DE, COUNTRY]]
    reported, templates = [], []
    for batch in batches:
        templates.append(editor.templates_for(batch))
        reported.append(editor.apply(batch).null_dimension[2])
    cov0 = {2: editor.cov0(2)}
    editor.restore()
    keys = [{2: compute_keys(lm.model, lm.tokenizer, lm.arch, b, 2, t)} for b, t in zip(batches, templates)]
    frame = simulate(rule, hp, cov0, keys)
    assert list(frame["null_dimension"]) == reported


def test_predictions_count_eigenvalues_and_follow_the_released_recursion():
    _, cov = synthetic_c0()
    eigenvalues = torch.tensor(np.linalg.eigh(cov)[0])
    prediction = predict(eigenvalues, "absolute", 0.05, n_batches=4, batch_size=2, n0_tokens=5000, key_energy=10.0)
    n0 = int((eigenvalues < 0.05).sum())
    frame = prediction.frame.set_index(["rule", "batch"])["null_dimension"]
    assert prediction.null_dimension_c0 == n0
    assert [frame["alphaedit", t] for t in range(4)] == [n0] * 4
    assert [frame["langedit:incremental", t] for t in range(4)] == [max(0, n0 - 2 * t) for t in range(4)]
    # paper: a key's lift 10 / (5000 + n) frees only the eigenvalues just under the cutoff
    lift = 10 / (5000 + 2)
    near = int(((eigenvalues >= 0.05 - lift) & (eigenvalues < 0.05)).sum())
    assert frame["langedit:paper", 1] == n0 - min(2, near)
    lifted = predict(eigenvalues, "absolute", 0.05, n_batches=3, batch_size=2, n0_tokens=10, key_energy=10.0)
    paper = lifted.frame.set_index(["rule", "batch"])["null_dimension"]["langedit:paper"]
    assert list(paper) == [n0, n0 - 2, n0 - 4]      # every direction is near: one per key, no more
    # the released recursion applied to C0 alone (no edited keys) scales it by released_c0_scale
    running = torch.tensor(cov)
    for t in range(1, 4):
        running = released_cov_update(running, torch.zeros_like(running), t)
    assert torch.allclose(running, torch.tensor(cov) * released_c0_scale(3), rtol=1e-12)
    assert released_c0_scale(0) == 1.0


def test_exhaustion_point_is_the_first_batch_at_the_level():
    import pandas as pd
    frame = pd.DataFrame({"rule": ["r"] * 4 + ["s"] * 2, "layer": [1] * 6, "edits_before": [0, 10, 20, 30, 0, 10],
                          "null_dimension": [5, 3, 0, 0, 4, 4]})
    points = exhaustion_point(frame).set_index("rule").iloc[:, -1]
    assert points["r"] == 20 and np.isnan(points["s"])


def test_bad_inputs_are_refused():
    cov0, _ = synthetic_c0()
    hp = load_hparams("langedit", "gemma3", layers=[0])
    with pytest.raises(ValueError, match="unknown projector rule"):
        simulate("memit", hp, cov0, [{0: torch.ones(1, 24)}])
    with pytest.raises(ValueError, match="no key batches"):
        simulate("alphaedit", hp, cov0, [])
    with pytest.raises(ValueError, match=r"no C0 for layer\(s\) \[3\]"):
        simulate("alphaedit", load_hparams("alphaedit", "gemma3", layers=[3]), cov0, [{3: torch.ones(1, 24)}])
    with pytest.raises(ValueError, match="non-empty"):
        simulate("alphaedit", hp, cov0, [{0: torch.ones(0, 24)}])


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_running_covariance_rules_match_a_hand_recursion_over_all_earlier_keys(variant):
    cov0, cov = synthetic_c0()
    hp = load_hparams("langedit", "gemma3", layers=[0], nullspace_threshold_kind="energy", nullspace_threshold=0.02)
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(2, 24)) * 30 for _ in range(5)]      # keys heavy enough to cross the cutoff
    frame = simulate(f"langedit:{variant}", hp, cov0, [{0: torch.tensor(b)} for b in batches])
    cutoff = eigenvalue_cutoff(torch.tensor(np.linalg.eigh(cov)[0]), "energy", 0.02)
    running, kk_sum, n = cov.copy(), np.zeros((24, 24)), 0
    for t, keys in enumerate(batches):
        if t:
            if variant == "paper":             # Algorithm 1: every key counted once beside n0 tokens of C0
                now = (5000 * cov + kk_sum) / (5000 + n)
            else:                              # the authors' recursion on the previous batch's covariance
                running = 1e5 / (1e5 + t * 100) * running + 100 / (1e5 + t * 100) * kk_sum
                now = running
        else:
            now = cov
        expected = int((np.linalg.eigh(now)[0] < cutoff).sum())
        assert frame["null_dimension"].iloc[t] == expected, t
        kk_sum, n = kk_sum + keys.T @ keys, n + len(keys)
    assert frame["null_dimension"].iloc[-1] < frame["null_dimension"].iloc[0]


def test_unedited_keys_are_compute_keys_per_layer_in_request_order(default_tokenizer, tmp_path):
    from langedit.exhaustion import unedited_keys
    lm = build_tiny_model("gemma3_text", tokenizer=default_tokenizer)
    hp = load_hparams("alphaedit", "gemma3", layers=[1, 2], stats_tokens=300)
    editor = Editor(lm, method="alphaedit", hparams=hp, corpus_texts=CORPUS, progress=False, cache=tmp_path)
    requests = [INCEPTION, BORN_DE, COUNTRY]          # en, de, en: languages interleaved
    batches = unedited_keys(lm, requests, [1, 2], editor.templates_for, batch_size=2)
    assert [len(b[1]) for b in batches] == [2, 1]
    for layer in (1, 2):
        got = torch.cat([b[layer] for b in batches])
        for row, request in enumerate(requests):
            expected = compute_keys(lm.model, lm.tokenizer, lm.arch, [request], layer, editor.templates_for([request]))
            assert torch.allclose(got[row], expected[0], atol=1e-5), (layer, row)
    with pytest.raises(ValueError, match="no requests"):
        unedited_keys(lm, [], [1], editor.templates_for)
