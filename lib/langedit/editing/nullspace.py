"""Null-space projections P: an update dW = X P leaves every key k with P k = 0 untouched (dW k = 0).

* :func:`projector_from_cov` – AlphaEdit / LangEdit: eigen-decompose a (key) covariance, keep the
  eigenvectors whose eigenvalue is below a threshold, P = U_0 U_0^T.
* :func:`released_cov_update` – the LangEdit authors' released covariance recursion.
* :func:`paper_running_cov` – Algorithm 1 of the paper: the count-weighted running covariance of
  the preserved-knowledge keys K0 and all keys edited so far.
* :class:`IncrementalNullSpace` – an exact, cheaper construction for the *hard* constraint "orthogonal
  to the preserved subspace and to every edited key": P_t = P_{t-1} - Q Q^T with Q an orthonormal
  basis of P_{t-1} K_t. O(d^2 n) per batch instead of an O(d^3) eigen-decomposition; equal to the
  zero-eigenvalue projector of U_big U_big^T + K K^T (tested against a dense eigen-decomposition).
"""
from __future__ import annotations

import torch


def projector_from_cov(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = U_0 U_0^T over eigenvectors of the symmetric PSD `cov` with eigenvalue < threshold (float64)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
    null = eigenvectors[:, eigenvalues < threshold]
    return null @ null.T


def null_dimension(projector: torch.Tensor) -> int:
    """Dimension of the space a projector keeps (its trace, rounded)."""
    return int(round(float(projector.diagonal().sum())))


def released_cov_update(cov: torch.Tensor, edited_kk: torch.Tensor, batch_index: int,
                        prior_weight: float = 100000.0, batch_weight: float = 100.0) -> torch.Tensor:
    """The authors' recursion: cov <- w0/(w0 + t w1) cov + w1/(w0 + t w1) sum(k k^T).

    `edited_kk` is the running *sum* of k k^T over all edited keys (their cache_c), `batch_index`
    the number of batches edited before this one. Applied to the previous batch's result, so the
    preserved statistics are down-weighted again at every batch.
    """
    denominator = prior_weight + batch_index * batch_weight
    return prior_weight / denominator * cov + batch_weight / denominator * edited_kk


def paper_running_cov(cov0: torch.Tensor, n0: int, edited_kk: torch.Tensor, n_edited: int) -> torch.Tensor:
    """Algorithm 1: (n0 * C0 + sum k k^T) / (n0 + n_edited), every key counted once."""
    return (n0 * cov0.double() + edited_kk.double()) / (n0 + n_edited)


class IncrementalNullSpace:
    """Projector onto the complement of a growing subspace, updated by Gram-Schmidt on new keys."""

    def __init__(self, projector: torch.Tensor, tolerance: float = 1e-8) -> None:
        self.projector = projector.double().clone()
        self.tolerance = tolerance

    def add_keys(self, keys: torch.Tensor) -> None:
        """keys [n, d]: afterwards P k = 0 for each of them."""
        residual = keys.double() @ self.projector      # rows P k (P symmetric)
        if residual.numel() == 0:
            return
        u, s, _ = torch.linalg.svd(residual.T, full_matrices=False)
        scale = max(float(keys.double().norm(dim=1).max()), 1.0)
        basis = u[:, s > self.tolerance * scale]
        # the columns of u span P K, so they already lie in range(P) and are orthonormal
        self.projector = self.projector - basis @ basis.T
        self.projector = (self.projector + self.projector.T) / 2   # keep it exactly symmetric

    @property
    def dimension(self) -> int:
        return null_dimension(self.projector)
