"""Closed forms and null spaces against independent computations (least squares, dense SVD)."""
import math

import numpy as np
import pytest
import torch

from langedit.editing.methods.solvers import (alphaedit_update, langedit_paper_update, memit_update, prune_restrain,
                                              rank_one_update, rect_sparsify)
from langedit.editing.nullspace import (IncrementalNullSpace, null_dimension, paper_running_cov, projector_from_cov,
                                        released_cov_update)

D_KEY, D_VALUE, N = 24, 10, 6


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(N, D_KEY, generator=g, dtype=torch.float64)
    resid = torch.randn(N, D_VALUE, generator=g, dtype=torch.float64)
    k0 = torch.randn(200, D_KEY, generator=g, dtype=torch.float64) @ torch.diag(torch.linspace(0.01, 2, D_KEY, dtype=torch.float64))
    cov0 = k0.T @ k0 / len(k0)
    previous = torch.randn(4, D_KEY, generator=g, dtype=torch.float64)
    return keys, resid, cov0, previous


def restricted_lstsq(keys, resid, basis, extra_keys, ridge):
    """argmin ||dW K - R||^2 + ||dW Kp||^2 + ridge ||dW||^2 over dW = Z U^T, by stacked least squares."""
    rows = [keys @ basis, extra_keys @ basis, math.sqrt(ridge) * torch.eye(basis.shape[1], dtype=basis.dtype)]
    targets = [resid, torch.zeros(len(extra_keys), resid.shape[1], dtype=resid.dtype),
               torch.zeros(basis.shape[1], resid.shape[1], dtype=resid.dtype)]
    z = torch.linalg.lstsq(torch.cat(rows), torch.cat(targets)).solution   # [r, d_v]
    return (basis @ z).T


def null_basis(cov, threshold):
    u, s, _ = torch.linalg.svd(cov)          # an SVD, independent of the eigh used by the code
    return u[:, s < threshold]


def test_memit_matches_least_squares(problem):
    keys, resid, cov0, _ = problem
    lam = 3.0
    root = torch.linalg.cholesky(cov0)       # cov0 = L L^T, so lam tr(dW C0 dW^T) = ||sqrt(lam) dW L||^2
    design = torch.cat([keys, math.sqrt(lam) * root.T])
    target = torch.cat([resid, torch.zeros(D_KEY, D_VALUE, dtype=resid.dtype)])
    expected = torch.linalg.lstsq(design, target).solution.T
    assert torch.allclose(memit_update(keys, resid, cov0, lam), expected, atol=1e-9)


def test_alphaedit_matches_restricted_least_squares(problem):
    keys, resid, cov0, previous = problem
    threshold = 0.05
    basis = null_basis(cov0, threshold)
    assert 0 < basis.shape[1] < D_KEY
    projector = projector_from_cov(cov0, threshold)
    got = alphaedit_update(keys, resid, projector, previous.T @ previous, l2=2.0)
    expected = restricted_lstsq(keys, resid, basis, previous, ridge=2.0)
    assert torch.allclose(got, expected, atol=1e-9)
    assert torch.allclose(got @ (torch.eye(D_KEY, dtype=got.dtype) - projector), torch.zeros_like(got), atol=1e-9)


def test_langedit_paper_form_matches_restricted_least_squares(problem):
    keys, resid, cov0, _ = problem
    projector = projector_from_cov(cov0, 0.05)
    got = langedit_paper_update(keys, resid, projector, ridge=1.0)
    expected = restricted_lstsq(keys, resid, null_basis(cov0, 0.05), keys[:0], ridge=1.0)
    assert torch.allclose(got, expected, atol=1e-9)


def test_rank_one_writes_the_residual_and_is_minimal_in_c0_norm(problem):
    keys, resid, cov0, _ = problem
    update = rank_one_update(keys[0], resid[0], cov0, eps=0.0)
    assert torch.allclose(update @ keys[0], resid[0], atol=1e-9)
    g = torch.Generator().manual_seed(1)
    other = torch.randn(D_VALUE, D_KEY, generator=g, dtype=torch.float64)
    other = other - torch.outer(other @ keys[0], keys[0]) / keys[0].dot(keys[0])   # other k = 0
    cost = lambda w: torch.trace(w @ cov0 @ w.T)
    assert cost(update) <= cost(update + other) + 1e-12


def test_prune_restrains_exactly_the_large_singular_values():
    g = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    sigma = torch.tensor([50.0, 20.0, 6.0, 4.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    total = (u * sigma) @ v.T
    out = prune_restrain(total, sigma_bound=5.0, base=math.e)
    got = torch.linalg.svdvals(out)
    expected = torch.tensor([5 + math.log(10), 5 + math.log(4), 5 + math.log(1.2), 4, 2, 1, 0.5, 0.1], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-9)
    assert float(got.max()) <= 5.0 + math.log(50 / 5) + 1e-9


@pytest.mark.parametrize("percent", [10, 20, 25, 40, 100])
def test_rect_keeps_the_entries_with_largest_relative_change_by_the_reference_rule(percent):
    """The reference: rank = int(n (100 - k) / 100); keep |dW / (W + 1e-8)| >= its rank-th smallest."""
    g = torch.Generator().manual_seed(3)
    update, weight = torch.randn(12, 20, generator=g, dtype=torch.float64), torch.randn(12, 20, generator=g)
    out = rect_sparsify(update, weight, percent / 100)
    relative = np.abs(update.numpy() / (weight.numpy() + np.float32(1e-8)).astype(np.float64))
    rank = relative.size * (100 - percent) // 100
    expected = relative >= np.sort(relative, axis=None)[rank - 1] if rank else np.ones_like(relative, dtype=bool)
    kept = (out != 0).numpy()
    assert (kept == expected).all()
    assert int(kept.sum()) == (relative.size - rank + 1 if rank else relative.size)   # no ties in random data
    assert torch.equal(out[out != 0], update[out != 0])
    with pytest.raises(ValueError, match="rect_keep_fraction"):
        rect_sparsify(update, weight, 0.0)


def test_projector_from_cov_matches_dense_svd(problem):
    _, _, cov0, _ = problem
    basis = null_basis(cov0, 0.05)
    projector = projector_from_cov(cov0, 0.05)
    assert torch.allclose(projector, basis @ basis.T, atol=1e-10)
    assert null_dimension(projector) == basis.shape[1]


def test_incremental_null_space_equals_dense_hard_construction(problem):
    keys, _, cov0, previous = problem
    threshold = 0.05
    incremental = IncrementalNullSpace(projector_from_cov(cov0, threshold))
    incremental.add_keys(previous)
    incremental.add_keys(keys[:3])
    big = torch.linalg.svd(cov0)[0][:, torch.linalg.svdvals(cov0) >= threshold]
    spanned = torch.cat([big, previous.T, keys[:3].T], dim=1)        # everything the update must avoid
    u, s, _ = torch.linalg.svd(spanned, full_matrices=True)
    rank = int((s > 1e-9).sum())
    expected = u[:, rank:] @ u[:, rank:].T
    assert torch.allclose(incremental.projector, expected, atol=1e-9)
    assert incremental.dimension == D_KEY - rank
    assert float((incremental.projector @ previous.T).abs().max()) < 1e-9


def test_released_recursion_and_paper_running_covariance(problem):
    _, _, cov0, previous = problem
    kk = previous.T @ previous
    assert torch.allclose(released_cov_update(cov0, kk, 3), 100000 / 100300 * cov0 + 100 / 100300 * kk)
    n0 = 200
    g = torch.Generator().manual_seed(0)
    k0 = torch.randn(n0, D_KEY, generator=g, dtype=torch.float64)
    all_keys = torch.cat([k0, previous])
    expected = all_keys.T @ all_keys / len(all_keys)                  # every key counted once
    assert torch.allclose(paper_running_cov(k0.T @ k0 / n0, n0, kk, len(previous)), expected, atol=1e-12)
