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

by Levenberg-Marquardt on the model's own norm module, starting from the damped linear solution.
For an RMSNorm f(x) = c * x / s(x), s = sqrt(mean(x^2) + eps), the Jacobian is diagonal minus
rank one, J = diag(c / s) - a x^T with a = c * x / (d s^3), so each damped step is solved in O(d)
by the Woodbury identity instead of a dense [d, d] solve per row (the dense path took ~190 s of a
100-edit batch on Gemma-3-270M on 2 CPU cores). The structure is checked against the autograd
Jacobian of the module itself; any other norm takes the dense path. It realises r exactly when r is reachable and the closest reachable change
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


def _rms_epsilon(norm: torch.nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon"):
        value = getattr(norm, name, None)
        if isinstance(value, float):
            return value
    return None


@torch.no_grad()
def rms_norm_form(norm: torch.nn.Module, probe: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """(c, eps) if `norm` computes c * x / sqrt(mean(x^2) + eps), checked by comparing the Jacobian
    this implies with the module's autograd Jacobian at `probe` [d]; None for any other norm."""
    eps = _rms_epsilon(norm)
    if eps is None:
        return None
    dtype = next(norm.parameters()).dtype
    ones = torch.ones(1, probe.shape[0], dtype=dtype, device=probe.device)
    gain = norm(ones).double()[0] * (1.0 + eps) ** 0.5   # whatever the module's gain convention (w or 1 + w)
    diag, a = rms_jacobian_factors(gain, eps, probe[None].double())
    implied = torch.diag(diag[0]) - torch.outer(a[0], probe.double())
    actual = norm_jacobians(norm, probe[None])[0]
    if not torch.allclose(implied, actual, rtol=1e-4, atol=1e-5 * float(actual.abs().max())):
        return None
    return gain, eps


def rms_jacobian_factors(gain: torch.Tensor, eps: float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag, a) with d f(x_b)/d x_b = diag(diag_b) - a_b x_b^T for f(x) = gain * x / sqrt(mean(x^2) + eps)."""
    s = (x.pow(2).mean(dim=1) + eps).sqrt()
    return gain / s[:, None], gain * x / (x.shape[1] * s[:, None] ** 3)


def _damped_step_rms(diag: torch.Tensor, a: torch.Tensor, x: torch.Tensor, err: torch.Tensor,
                     lam: torch.Tensor) -> torch.Tensor:
    """_damped_step for J = diag(diag) - a x^T, by Woodbury: J^T J + mu I = A + U C U^T with
    A = diag^2 + mu, U = [diag*a, x], C = [[0, -1], [-1, |a|^2]]."""
    da = diag * a
    q = a.pow(2).sum(dim=1)
    gram_diag = diag.pow(2) - 2 * da * x + q[:, None] * x.pow(2)
    big_a = diag.pow(2) + (lam * gram_diag.mean(dim=1))[:, None]
    u = torch.stack([da, x], dim=-1)                                     # [B, d, 2]
    c_inv = torch.stack([torch.stack([-q, -torch.ones_like(q)], -1),
                         torch.stack([-torch.ones_like(q), torch.zeros_like(q)], -1)], -2)  # [B, 2, 2]
    rhs = diag * err - x * (a * err).sum(dim=1, keepdim=True)             # J^T err
    a_inv_rhs = rhs / big_a
    a_inv_u = u / big_a[..., None]
    small = c_inv + u.transpose(1, 2) @ a_inv_u
    correction = a_inv_u @ torch.linalg.solve(small, u.transpose(1, 2) @ a_inv_rhs[..., None])
    return a_inv_rhs - correction.squeeze(-1)


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
        rms = rms_norm_form(norm, y[0])
        for _ in range(iterations):
            if rms is not None:
                step = _damped_step_rms(*rms_jacobian_factors(*rms, y + dy), y + dy, -err, lam)
            else:
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
