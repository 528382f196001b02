"""Null-space projections P: an update dW = X P leaves every key k with P k = 0 untouched (dW k = 0).

* :func:`projector_from_cov` – AlphaEdit / LangEdit: eigen-decompose a (key) covariance, keep the
  eigenvectors whose eigenvalue is below a threshold, P = U_0 U_0^T.
* :func:`eigenvalue_cutoff` / :func:`reference_projector` – how ``nullspace_threshold`` is read
  (``nullspace_threshold_kind``): ``absolute`` (an eigenvalue, the papers' 2e-2), ``relative`` (a
  fraction of the largest eigenvalue) or ``energy`` (keep the smallest eigenvalues that together carry
  at most a fraction eps of the trace). The relative kinds are resolved once, on the preserved keys'
  C0, into an absolute eigenvalue cutoff that every later (edited-key-updated) covariance is cut at.
* :func:`released_cov_update` – the LangEdit authors' released covariance recursion.
* :func:`paper_running_cov` – Algorithm 1 of the paper: the count-weighted running covariance of
  the preserved-knowledge keys K0 and all keys edited so far.
* :class:`IncrementalNullSpace` – an exact, cheaper construction for the *hard* constraint "orthogonal
  to the preserved subspace and to every edited key": P_t = P_{t-1} - Q Q^T with Q an orthonormal
  basis of P_{t-1} K_t. O(d^2 n) per batch instead of an O(d^3) eigen-decomposition; equal to the
  zero-eigenvalue projector of U_big U_big^T + K K^T (tested against a dense eigen-decomposition).

Why the relative kinds refer to C0's spectrum, fixed once, and not to each updated covariance: LangEdit
excludes an edited key when it lifts a direction's eigenvalue over the cutoff, so the cutoff must be the
same yardstick at every batch. Re-read on C_t, an energy threshold's budget eps * tr(C_t) grows with the
edited keys' own energy (the released recursion adds ~1e-3 * sum k k^T again every batch) and re-admits
preserved directions the more one edits; a threshold relative to the largest eigenvalue jumps once an
edited direction becomes the largest. With the cutoff fixed on C0, the paper's running covariance keeps
C0's directions on their side of it (C0's weight n0 / (n0 + n) stays ~1, and the energy cutoff lies
between two eigenvalues); the released recursion down-weights C0 by prod w0 / (w0 + s w1) (0.95 after
10 batches), so C0 directions just above the cutoff drift into P exactly as with the authors' absolute 2e-2.
"""
from __future__ import annotations

import torch


#: How ``nullspace_threshold`` is read; see :func:`eigenvalue_cutoff`.
THRESHOLD_KINDS = ("absolute", "relative", "energy")


def check_threshold(kind: str, value: float) -> None:
    """Refuse an unknown kind or a value outside its range (absolute > 0; relative, energy in (0, 1))."""
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f"unknown nullspace_threshold_kind {kind!r}; choose from {THRESHOLD_KINDS}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"nullspace_threshold must be a number, got {value!r}")
    if kind == "absolute" and not value > 0:
        raise ValueError(f"an absolute nullspace_threshold must be > 0 (an eigenvalue), got {value}")
    if kind != "absolute" and not 0 < value < 1:
        raise ValueError(f"a {kind} nullspace_threshold must lie in (0, 1), got {value}")


def eigenvalue_cutoff(eigenvalues: torch.Tensor, kind: str, value: float) -> float:
    """The eigenvalue below which a direction of the reference spectrum `eigenvalues` is kept in P.

    * ``absolute``: `value` itself (AlphaEdit's and LangEdit's 2e-2, tied to the keys' scale).
    * ``relative``: `value` * the largest eigenvalue (a numerical-rank tolerance).
    * ``energy``: keep the m smallest eigenvalues whose sum is at most `value` * trace (m as large as
      possible); the cutoff lies midway between the m-th and the (m+1)-th, so that a slightly rescaled
      covariance (LangEdit's running ones) is not cut exactly at one of its eigenvalues. For keys
      distributed as the reference, E|P k|^2 / E|k|^2 = tr(P C0) / tr(C0) <= value: `value` is the
      share of the preserved keys' energy an update dW = X P can still touch.
    Rounding negatives count as zero energy.
    """
    check_threshold(kind, value)
    if kind == "absolute":
        return float(value)
    ascending = torch.sort(eigenvalues.double().clamp_min(0)).values
    if kind == "relative":
        return float(value * ascending[-1])
    cumulative = torch.cumsum(ascending, 0)
    kept = int((cumulative <= value * cumulative[-1]).sum())
    if kept == len(ascending):               # a zero covariance: nothing to preserve
        return float("inf")
    below = float(ascending[kept - 1]) if kept else 0.0
    return (below + float(ascending[kept])) / 2


def null_projector(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, cutoff: float) -> torch.Tensor:
    """P = U_0 U_0^T over the eigenvectors (columns) whose eigenvalue is < cutoff."""
    null = eigenvectors[:, eigenvalues < cutoff]
    return null @ null.T


def projector_from_cov(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = U_0 U_0^T over eigenvectors of the symmetric PSD `cov` with eigenvalue < threshold (float64)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
    return null_projector(eigenvalues, eigenvectors, threshold)


def reference_projector(cov: torch.Tensor, kind: str, value: float) -> tuple[torch.Tensor, float]:
    """P of the reference covariance (C0) with the threshold read against its own spectrum, and the
    absolute eigenvalue cutoff that this fixes for every later covariance (one eigen-decomposition)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
    cutoff = eigenvalue_cutoff(eigenvalues, kind, value)
    return null_projector(eigenvalues, eigenvectors, cutoff), cutoff


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
