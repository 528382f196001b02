"""From a wanted change of the residual stream to a wanted change of W_out's output.

Llama, Qwen, GPT-J and GPT-2 add W_out's output to the residual stream as it is, so the two are
the same. Gemma-2/3 first pass it through an RMSNorm with a learned gain (``post_feedforward_
layernorm``); on Gemma-3-270M that gain reaches ~700 while W_out's raw output has norm ~3. A
residual target handed to W_out unchanged is then wrong by orders of magnitude, which is why the
reference AlphaEdit blows up on Gemma (residual spread 57 -> 1,311 -> 8,671).

For a norm f, we want dy with f(y + dy) - f(y) = r. We linearise at the current output y and
take the damped least-squares solution  dy = (J^T J + lam I)^-1 J^T r,  J = df/dy (the exact
Jacobian of the model's own norm module, by autograd), lam = damping * mean(diag J^T J). The
damping keeps dy finite along the norm's scale direction (RMSNorm ignores scale: J y = 0) and
where the gain is near zero. The multi-layer update re-measures the residual after every layer,
so the linearisation error is corrected by the layers that follow.
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


def residual_to_value_shift(model, arch, layer: int, y: torch.Tensor, r: torch.Tensor, damping: float = 1e-3) -> torch.Tensor:
    """W_out output change dy [B, d] that moves the residual stream by about r [B, d] at `layer`.

    `y` is W_out's current raw output at the same positions. Identity for families without a
    post-MLP norm.
    """
    if arch.post_mlp_norm is None:
        return r
    norm = get_module(model, arch.post_norm_name(layer))
    jac = norm_jacobians(norm, y)                                   # [B, d, d]
    gram = jac.transpose(1, 2) @ jac                               # J^T J
    lam = damping * gram.diagonal(dim1=1, dim2=2).mean(dim=1)      # [B]
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    rhs = (jac.transpose(1, 2) @ r.double().unsqueeze(-1))
    return torch.linalg.solve(gram + lam[:, None, None] * eye, rhs).squeeze(-1).to(r.dtype)
