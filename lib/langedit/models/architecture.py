"""Where each model family keeps the pieces that knowledge editing touches.

An `Architecture` names modules by dotted path, with ``{}`` standing for the layer index:

* ``mlp_out`` – the MLP output matrix W_out. Its *input* is the key k, its *output* the raw value.
* ``post_mlp_norm`` – a norm applied to the MLP output before it joins the residual stream
  (Gemma-2/3's ``post_feedforward_layernorm``). When present, a target in the residual stream is
  *not* the raw W_out output: :mod:`langedit.editing.residual` maps between the two.
* ``block_out`` – the module whose output is added to the residual stream by the MLP branch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class UnsupportedArchitectureError(ValueError):
    """The model has no description here, or lacks a module its description names."""


@dataclass(frozen=True)
class Architecture:
    family: str
    layers: str  # the ModuleList of decoder blocks
    mlp: str
    mlp_out: str
    attn: str
    embed: str
    final_norm: str
    unembed: str
    n_layers_attr: str = "num_hidden_layers"
    post_mlp_norm: str | None = None
    #: Gemma-2/3 also normalise the attention output before adding it (Llama's
    #: ``post_attention_layernorm`` is the pre-MLP norm instead, so the name alone can't tell).
    post_attn_norm: str | None = None
    #: GPT-2's Conv1D stores W_out as [d_in, d_out]; every other family as nn.Linear [d_out, d_in].
    mlp_out_transposed: bool = False
    #: Gemma multiplies the token embeddings by sqrt(d_model) inside the embedding module.
    embed_scale_in_module: bool = False

    def layer_module(self, template: str, layer: int) -> str:
        return f"{self.layers}.{layer}.{template}"

    def mlp_out_name(self, layer: int) -> str:
        return self.layer_module(self.mlp_out, layer)

    def mlp_name(self, layer: int) -> str:
        return self.layer_module(self.mlp, layer)

    def attn_name(self, layer: int) -> str:
        return self.layer_module(self.attn, layer)

    def layer_name(self, layer: int) -> str:
        return f"{self.layers}.{layer}"

    def block_out_name(self, layer: int) -> str:
        """The module whose output the MLP branch adds to the residual stream."""
        return self.layer_module(self.post_mlp_norm or self.mlp, layer)

    def attn_block_out_name(self, layer: int) -> str:
        """The module whose output the attention branch adds to the residual stream."""
        return self.layer_module(self.post_attn_norm or self.attn, layer)

    def post_norm_name(self, layer: int) -> str | None:
        return None if self.post_mlp_norm is None else self.layer_module(self.post_mlp_norm, layer)


_LLAMA_LIKE = dict(
    layers="model.layers", mlp="mlp", mlp_out="mlp.down_proj", attn="self_attn",
    embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
)

#: model_type (config.model_type) -> description.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(family="llama", **_LLAMA_LIKE),
    "qwen2": Architecture(family="qwen2", **_LLAMA_LIKE),
    "mistral": Architecture(family="mistral", **_LLAMA_LIKE),
    "gemma3_text": Architecture(
        family="gemma3", post_mlp_norm="post_feedforward_layernorm", post_attn_norm="post_attention_layernorm",
        embed_scale_in_module=True,
        **_LLAMA_LIKE,
    ),
    "gemma2": Architecture(
        family="gemma2", post_mlp_norm="post_feedforward_layernorm", post_attn_norm="post_attention_layernorm",
        embed_scale_in_module=True,
        **_LLAMA_LIKE,
    ),
    "gptj": Architecture(
        family="gptj", layers="transformer.h", mlp="mlp", mlp_out="mlp.fc_out", attn="attn",
        embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head", n_layers_attr="n_layer",
    ),
    "gpt2": Architecture(
        family="gpt2", layers="transformer.h", mlp="mlp", mlp_out="mlp.c_proj", attn="attn",
        embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head", n_layers_attr="n_layer",
        mlp_out_transposed=True,
    ),
}


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted path, with an error that names the missing part."""
    module = model
    for part in name.split("."):
        if not hasattr(module, part):
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} has no module '{name}' (missing '{part}')"
            )
        module = getattr(module, part)
    return module


def architecture_of(model: nn.Module) -> Architecture:
    """The description of `model`'s family, checked against the model's actual modules."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise UnsupportedArchitectureError(
            f"no architecture description for model_type={model_type!r}; supported: "
            f"{sorted(ARCHITECTURES)}. Add one to langedit.models.architecture.ARCHITECTURES "
            "naming where its MLP output matrix (W_out), final norm and unembedding live."
        )
    names = [arch.mlp_out_name(0), arch.mlp_name(0), arch.attn_name(0), arch.embed, arch.final_norm, arch.unembed]
    if arch.post_mlp_norm:
        names.append(arch.post_norm_name(0))
    for name in names:
        get_module(model, name)
    return arch


def n_layers(model: nn.Module) -> int:
    arch = architecture_of(model)
    return len(get_module(model, arch.layers))


def w_out(model: nn.Module, layer: int) -> torch.Tensor:
    """W_out of `layer` as the Parameter itself (so in-place edits change the model)."""
    arch = architecture_of(model)
    return get_module(model, arch.mlp_out_name(layer)).weight


def w_out_as_matrix(model: nn.Module, layer: int) -> torch.Tensor:
    """W_out oriented [d_value, d_key] for every family (a view: GPT-2's Conv1D is transposed)."""
    weight = w_out(model, layer)
    return weight.T if architecture_of(model).mlp_out_transposed else weight
