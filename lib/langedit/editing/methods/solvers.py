"""Closed-form updates of W_out [d_value, d_key] from keys K [n, d_key] and value residuals R [n, d_value].

All in float64. Row convention for K and R (one edit per row); the formulas in the comments use
the papers' column convention K_c = K^T, R_c = R^T.
"""
from __future__ import annotations

from fractions import Fraction

import torch


def memit_update(keys: torch.Tensor, resid: torch.Tensor, cov0: torch.Tensor, lam: float) -> torch.Tensor:
    """MEMIT: dW = R_c K_c^T (lam C0 + K_c K_c^T)^-1."""
    k, r = keys.double(), resid.double()
    a = lam * cov0.double() + k.T @ k
    return torch.linalg.solve(a, k.T @ r).T          # A symmetric: (R K^T A^-1)^T = A^-1 K R^T


def alphaedit_update(keys: torch.Tensor, resid: torch.Tensor, projector: torch.Tensor, edited_kk: torch.Tensor,
                     l2: float) -> torch.Tensor:
    """AlphaEdit (and the LangEdit released code): (P (K K^T + K_p K_p^T) + l2 I) X = P K R^T, dW = X^T."""
    k, r, p = keys.double(), resid.double(), projector.double()
    a = p @ (k.T @ k + edited_kk.double()) + l2 * torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    return torch.linalg.solve(a, p @ k.T @ r).T


def langedit_paper_update(keys: torch.Tensor, resid: torch.Tensor, projector: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """LangEdit, paper eq.: dW = R_c K_c^T P (K_c K_c^T P + ridge I)^-1."""
    k, r, p = keys.double(), resid.double(), projector.double()
    eye = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    left = r.T @ k @ p                                # R K^T P  [d_v, d_k]
    return torch.linalg.solve((k.T @ k @ p + ridge * eye).T, left.T).T   # X M^-1 = (M^-T X^T)^T


def rank_one_update(key: torch.Tensor, resid: torch.Tensor, cov0: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """ROME: dW = r u^T / (u^T k) with u = C0^-1 k, so dW k = r exactly (one key, one residual)."""
    c = cov0.double()
    c = c + eps * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    u = torch.linalg.solve(c, key.double())
    return torch.outer(resid.double(), u) / (u @ key.double())


def prune_restrain(total_update: torch.Tensor, sigma_bound: float, base: float) -> torch.Tensor:
    """PRUNE: singular values of the accumulated update above `sigma_bound` (max sigma of W0) become
    bound + log_base(sigma / bound); the others and the singular vectors are kept."""
    u, s, vh = torch.linalg.svd(total_update.double(), full_matrices=False)
    big = s > sigma_bound
    restrained = torch.where(big, sigma_bound + torch.log(s / sigma_bound) / torch.log(torch.tensor(base, dtype=s.dtype)), s)
    return (u * restrained) @ vh


#: RECT's guard against zero weights in |dW / (W + eps)| (the reference's epsilon).
RECT_EPSILON = 1e-8


def rect_sparsify(update: torch.Tensor, weight: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """RECT: keep the entries whose relative change |dW / (W + eps)| is at least its
    floor((1 - keep_fraction) n)-th smallest value (of n), zero the rest; the reference's threshold
    rule (AlphaEdit memit_rect_main.py: kthvalue, then >=), so about `keep_fraction` of the entries."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"rect_keep_fraction must be in (0, 1], got {keep_fraction}")
    relative = (update.double() / (weight + RECT_EPSILON).double()).abs().reshape(-1)   # W + eps in W's dtype, as there
    # exact rational arithmetic: 0.6 * n in floats can fall just below an integer and drop one more entry
    rank = int(relative.numel() * (1 - Fraction(str(keep_fraction))))
    if rank == 0:
        return update.clone()
    threshold = torch.kthvalue(relative, rank).values
    return update * (relative >= threshold).view_as(update)
