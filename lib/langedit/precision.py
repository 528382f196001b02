"""The fast path: bfloat16 matrix products where the hardware has units for them, float32 elsewhere.

Which tensors are in which precision (a model loaded in float32 with ``matmul_dtype=bfloat16``):

* bfloat16 *operands*: the weights of every ``nn.Linear`` except the MLP output matrices W_out
  (attention projections, MLP input projections, the unembedding), and the activations entering
  them (cast at the module's input). Each product accumulates in float32 inside the kernel.
* float32: everything else — the residual stream, norms, attention softmax, activations between
  modules (every converted module's output is cast back to float32), embeddings, the logits'
  log-softmax, and **all W_out matrices** (of every layer, so any method may edit any layer): an
  update whose entries are below bfloat16's resolution of the weight (relative 2^-8) would vanish
  if W_out were stored in bfloat16, and their products are the skinny shapes where bfloat16 is not
  faster on CPUs without matrix tiles (benchmarks/bench_matmul.py).
* float32 / float64: value targets (delta, Adam), keys and the closed-form solves (float64).

The unembedding's logits come out of a bfloat16 product: on CUDA as float32 (``out_dtype``); on CPU
the product returns bfloat16 and is cast to float32 (logits rounded to 8 significant bits; the
log-softmax after it runs in float32). The unedited weights of the default model were quantised to
4 bits before dequantisation, so storing them in bfloat16 loses nothing that matters relative to the
source. ``matmul_dtype=float32`` keeps the exact float32 path.

Models loaded in bfloat16 or float16 (e.g. an 8B model on a GPU) keep their storage dtype; the
Editor upcasts only the W_out modules it edits (:func:`keep_in_float32`), whose inputs are cast up
and outputs cast back to the model's dtype.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

MATMUL_DTYPES = ("auto", "float32", "bfloat16")
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return frozenset(match.group(1).split()) if match else frozenset()


def has_bf16_units(device: torch.device | str) -> bool:
    """Whether `device` has hardware bfloat16 matrix units (CUDA with bf16 support; CPU with
    AMX-BF16 or AVX512-BF16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in _cpu_flags() for flag in _CPU_BF16_FLAGS)
    return False


def resolve_matmul_dtype(setting: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """``"auto"`` (or None): bfloat16 where :func:`has_bf16_units`, else float32; or an explicit dtype."""
    if isinstance(setting, torch.dtype):
        if setting not in (torch.float32, torch.bfloat16):
            raise ValueError(f"matmul_dtype must be float32 or bfloat16, got {setting}")
        return setting
    setting = "auto" if setting is None else str(setting).replace("torch.", "")
    aliases = {"bf16": "bfloat16", "fp32": "float32"}
    setting = aliases.get(setting, setting)
    if setting not in MATMUL_DTYPES:
        raise ValueError(f"unknown matmul_dtype {setting!r}; choose from {MATMUL_DTYPES}")
    if setting == "auto":
        return torch.bfloat16 if has_bf16_units(device) else torch.float32
    return torch.float32 if setting == "float32" else torch.bfloat16


def _cast_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].to(module.weight.dtype),) + tuple(args[1:])


def _cast_output_to_float32(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def w_out_module_names(model: nn.Module, arch) -> set[str]:
    from .models.architecture import n_layers
    return {arch.mlp_out_name(layer) for layer in range(n_layers(model))}


def use_bf16_matmuls(model: nn.Module, arch) -> list[str]:
    """Store every float32 ``nn.Linear`` except the W_out modules in bfloat16 and cast activations
    around it (input to bfloat16, output back to float32). Tied weights (Gemma's unembedding shares
    the embedding matrix) are untied: the embedding keeps its float32 matrix. Returns the converted
    module names. Idempotent."""
    keep = w_out_module_names(model, arch)
    converted = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name in keep or module.weight.dtype != torch.float32:
            continue
        module.weight = nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach().to(torch.bfloat16), requires_grad=False)
        module.register_forward_pre_hook(_cast_input)
        module.register_forward_hook(_cast_output_to_float32)
        converted.append(name)
    if converted and hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False   # a later tie_weights() must not re-tie to the bf16 copy
    return converted


def _cast_output_back(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.to(module._langedit_io_dtype)


def keep_in_float32(module: nn.Module) -> bool:
    """Make a linear module (W_out) float32 in a model stored in lower precision: its weight is
    upcast (exactly: bf16/fp16 values are float32 values), its input cast up, its output cast back
    to the model's dtype. Returns whether anything changed. Idempotent."""
    weight = module.weight
    if weight.dtype == torch.float32:
        return False
    module._langedit_io_dtype = weight.dtype
    module.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
    if getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(module.bias.detach().float(), requires_grad=False)
    module.register_forward_pre_hook(_cast_input)
    module.register_forward_hook(_cast_output_back)
    return True


def linear_float32_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """hidden W^T (+ b) as float32, with operands in the weight's dtype (a bf16 unembedding on the fast path)."""
    hidden = hidden.to(weight.dtype)
    if weight.dtype != torch.float32 and hidden.is_cuda and bias is None and hidden.dim() == 2:
        return torch.mm(hidden, weight.T, out_dtype=torch.float32)
    return nn.functional.linear(hidden, weight, bias).float()
