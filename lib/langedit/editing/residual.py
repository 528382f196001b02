"""From a wanted change of the residual stream to a wanted change of W_out's output.

Llama, Qwen, GPT-J and GPT-2 add W_out's output to the residual stream as it is, so the two are
the same. Gemma-2/3 first pass it through an RMSNorm with a learned gain (``post_feedforward_
layernorm``); on Gemma-3-270M that gain reaches ~700 while W_out's raw output has norm ~3. A
residual target handed to W_out unchanged is then wrong by orders of magnitude, which is why the
reference AlphaEdit blows up on Gemma (residual spread 57 -> 1,311 -> 8,671).

For a norm f, we want dy with f(y + dy) - f(y) = r. The edits ask for residual changes as large
as the MLP branch's whole output (|r| ~ |f(y)| ~ 2,000 on Gemma-3-270M), far outside the range
where f is linear, and an RMSNorm's output can only lie on an ellipsoid (g * u with |u| = sqrt(d)),
so part of r may be unreachable. We therefore solve the nonlinear least-squares problem

    min_dy |f(y + dy) - f(y) - r|^2

by Levenberg-Marquardt on the model's own norm module (Jacobians by autograd), starting from the
damped linear solution. It realises r exactly when r is reachable and the closest reachable change
otherwise. The multi-layer update re-measures the residual after every layer, so what one layer
cannot reach is passed on to the next.
"""
from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from ..models.architecture import get_module


def norm_jacobians(norm: torch.nn.Module, y: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """d norm(y_b) / d y_b for every row b: [B, d, d] float64."""
    def f(row: torch.Tensor) -> torch.Tensor:
        return norm(row.to(next(norm.parameters()).dtype)).double()
    parts = [vmap(jacrev(f))(y[i:i + chunk].double()) for i in range(0, y.shape[0], chunk)]
    return torch.cat(parts)


def _damped_step(jac: torch.Tensor, err: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """(J^T J + lam I)^-1 J^T err per row."""
    gram = jac.transpose(1, 2) @ jac
    scale = lam * gram.diagonal(dim1=1, dim2=2).mean(dim=1)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    rhs = jac.transpose(1, 2) @ err.unsqueeze(-1)
    return torch.linalg.solve(gram + scale[:, None, None] * eye, rhs).squeeze(-1)


def residual_to_value_shift(model, arch, layer: int, y: torch.Tensor, r: torch.Tensor, damping: float = 1e-3,
                            iterations: int = 20) -> torch.Tensor:
    """W_out output change dy [B, d] that moves the residual stream by r [B, d] (or as close as the
    norm allows) at `layer`. `y` is W_out's current raw output there. Identity for families
    without a post-MLP norm."""
    if arch.post_mlp_norm is None:
        return r
    norm = get_module(model, arch.post_norm_name(layer))
    dtype = next(norm.parameters()).dtype
    f = lambda v: norm(v.to(dtype)).double()
    y, r = y.double(), r.double()
    with torch.no_grad():
        base = f(y)
        # Norms ignore the input's scale; then we keep |y + dy| = |y| (same output, bounded dy),
        # else a far target drives y + dy towards zero where the norm is hypersensitive.
        scale_free = bool(torch.allclose(f(2 * y), base, rtol=1e-4, atol=1e-4 * float(base.abs().max())))
        keep = (lambda v: v * (y.norm(dim=1, keepdim=True) / v.norm(dim=1, keepdim=True).clamp_min(1e-12))) \
            if scale_free else (lambda v: v)
        lam = torch.full((y.shape[0],), damping, dtype=torch.float64, device=y.device)
        dy = torch.zeros_like(y)
        err = f(y + dy) - base - r
        cost = err.pow(2).sum(dim=1)
        for _ in range(iterations):
            step = _damped_step(norm_jacobians(norm, y + dy), -err, lam)
            trial = keep(y + dy + step) - y
            trial_err = f(y + trial) - base - r
            trial_cost = trial_err.pow(2).sum(dim=1)
            better = trial_cost < cost
            dy = torch.where(better[:, None], trial, dy)
            err = torch.where(better[:, None], trial_err, err)
            cost = torch.where(better, trial_cost, cost)
            lam = torch.where(better, lam / 3, lam * 4)     # Levenberg-Marquardt trust adjustment
    return dy.float()
