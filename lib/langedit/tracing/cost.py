"""How much one fact's trace costs: layer-token evaluations and unembedding rows, then FLOPs.

The counts mirror :func:`langedit.tracing.core.restoration_grid` exactly (a test counts the layer
calls of a real run against them), so a FLOP estimate for a large model needs only its config and
the prompts' token lengths, not the model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .core import first_computed_layer


@dataclass(frozen=True)
class TraceCost:
    """Work of one fact: ``layer_tokens`` = (row, position, layer) triples computed by the body,
    ``head_rows`` = rows that go through the full-vocabulary unembedding."""
    layer_tokens: int
    head_rows: int

    def __add__(self, other: "TraceCost") -> "TraceCost":
        return TraceCost(self.layer_tokens + other.layer_tokens, self.head_rows + other.head_rows)

    def flops(self, flops_per_layer_token: float, flops_per_head_row: float) -> float:
        return self.layer_tokens * flops_per_layer_token + self.head_rows * flops_per_head_row


def grid_cost(kind: str, n_tokens: int, positions: Sequence[int], n_layers: int, n_samples: int, window: int,
              layers_per_forward: int = 1) -> TraceCost:
    """One kind's restoration grid (prefix cache and skipped layers included, as the engine runs it)."""
    layer_tokens = head_rows = 0
    for position in sorted(set(positions)):
        for first in range(0, n_layers, layers_per_forward):
            cells = range(first, min(first + layers_per_forward, n_layers))
            skip = min(first_computed_layer(kind, layer, window, n_layers) for layer in cells)
            rows = n_samples * len(cells)
            layer_tokens += rows * (n_tokens - position) * (n_layers - skip)
            head_rows += rows
    # the corrupted prefix, grown token by token: every prompt token once per sample
    layer_tokens += n_samples * max(positions, default=0) * n_layers
    return TraceCost(layer_tokens, head_rows)


def fact_cost(n_tokens: int, subject_range: tuple[int, int], n_layers: int, n_samples: int,
              kinds: Sequence[str], window: int, layers_per_forward: int = 1) -> TraceCost:
    """A traced fact: clean run, corrupted run (S rows) and each kind's grid over every token from the subject on."""
    positions = list(range(subject_range[0], n_tokens))
    total = TraceCost(n_tokens * n_layers, 1) + TraceCost(n_samples * n_tokens * n_layers, n_samples)
    for kind in kinds:
        total = total + grid_cost(kind, n_tokens, positions, n_layers, n_samples, window, layers_per_forward)
    return total


def decoder_flops(config) -> tuple[float, float]:
    """(FLOPs per layer-token of a llama-like decoder's matmuls, FLOPs per unembedding row), from a HF config.

    Attention scores (~4 x heads x head_dim x length per token) are left out: a few percent at the
    ~20-token prompts traced here.
    """
    d = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q_width = config.num_attention_heads * head_dim
    kv_width = getattr(config, "num_key_value_heads", config.num_attention_heads) * head_dim
    per_token = 2 * (2 * d * q_width + 2 * d * kv_width + 3 * d * config.intermediate_size)
    return float(per_token), float(2 * d * config.vocab_size)
