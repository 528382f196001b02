"""Hyperparameters per (method, model family), read from small JSON files in langedit/hparams/.

Each file holds a ``common`` section and one section per method that overrides it; keyword
overrides given by the caller win over both. Unknown keys are an error (a typo must not be
silently ignored).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from importlib.resources import files

METHODS = ("ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit")
LANGEDIT_VARIANTS = ("paper", "released", "incremental")


@dataclass(frozen=True)
class Hparams:
    layers: tuple[int, ...]
    # value targets (MEMIT's compute_z)
    v_steps: int = 25
    v_lr: float = 0.1
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    v_weight_decay: float = 0.5
    early_stop_loss: float = 5e-2
    v_chunk_requests: int = 16              # requests per forward/backward of the value optimisation (memory only)
    # preserved-knowledge statistics (editing.stats.StatsSettings; data.corpus for the corpus specs)
    stats_corpus: str = "wikitext"          # built-in name, "hf:<dataset>:<config>...", "json:<glob>", "text:<glob>"
    stats_tokens: int | None = 100_000      # token positions (BOS included); None: no token limit
    stats_texts: int | None = None          # texts read at most (the references' mom2_n_samples); None: no limit
    stats_window: int = 1024                # positions per forward sequence (prefix included)
    stats_overflow: str = "windows"         # text beyond a window: "windows" (next window) or "truncate"
    stats_batch_tokens: int = 4096          # padded positions per forward pass (memory only, but in the key)
    # closed-form solvers
    mom2_update_weight: float = 15000.0     # MEMIT / PRUNE / RECT: lambda in (lambda C0 + K K^T)
    nullspace_threshold: float = 2e-2       # AlphaEdit / LangEdit, read as nullspace_threshold_kind says:
    nullspace_threshold_kind: str = "absolute"  # absolute eigenvalue | relative (to the largest) | energy
                                            # (trace fraction); relative kinds are resolved on C0 (editing.nullspace)
    l2: float = 10.0                        # AlphaEdit / LangEdit (released): L2 on the update
    paper_ridge: float = 1.0                # LangEdit (paper / incremental): the "+ I" of the closed form
    langedit_variant: str = "released"
    residual_damping: float = 1e-3          # post-MLP-norm models only, see editing.residual
    # ROME (kmeng01/rome; AlphaEdit's copy): v* at W_out's output, its own templates and settings
    rome_layer: int | None = None
    rome_v_steps: int = 20
    rome_v_lr: float = 0.5
    rome_clamp_norm_factor: float = 4.0
    rome_kl_factor: float = 0.0625
    rome_v_weight_decay: float = 0.5
    rome_mom2_adjustment: bool = True       # u = C0^-1 k (False: u = k, AlphaEdit's Llama3-8B setting)
    rome_template_lengths: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))   # (tokens, templates) pairs
    # FT (kmeng01/rome baselines/ft): every target token predicted at the prompt's last position
    ft_layer: int | None = None
    ft_lr: float = 5e-4
    ft_steps: int = 25
    ft_norm_constraint: float | None = 5e-4  # each W_out entry within +-this of its value before the batch; None: free
    ft_weight_decay: float = 0.0            # Adam's
    ft_batch_size: int = 128                # prompts per optimiser step
    ft_early_stop_loss: float = 1e-2        # a batch below it takes no step; a pass below it ends FT
    # PRUNE: singular values of the accumulated update above max sigma(W0) go through a log
    prune_log_base: float = 2.718281828459045
    # RECT: fraction of update entries (largest relative change) kept. 0.4: the AlphaEdit code base the
    # LangEdit authors ran (memit/memit_rect_main.py, k_percent = 40); RECT's own code keeps 0.2
    # (JasonForJoy/Model-Editing-Hurt, easyeditor/models/rome/rome_main.py, set_min_to_zero(..., 0.8))
    rect_keep_fraction: float = 0.4
    source: str = field(default="", compare=False)

    @property
    def value_layer(self) -> int:
        return self.layers[-1]

    def value_settings(self, layer: int | None = None):
        """Settings of the value-target optimisation at `layer` (default: the last edited layer)."""
        from .values import ValueSettings
        return ValueSettings(layer=self.value_layer if layer is None else layer, steps=self.v_steps, lr=self.v_lr,
                             clamp_norm_factor=self.clamp_norm_factor, kl_factor=self.kl_factor,
                             weight_decay=self.v_weight_decay, early_stop_loss=self.early_stop_loss,
                             chunk_requests=self.v_chunk_requests)

    def with_overrides(self, **overrides) -> "Hparams":
        _check_keys(overrides, "overrides")
        if "layers" in overrides:
            overrides["layers"] = tuple(overrides["layers"])
        if "rome_template_lengths" in overrides:
            overrides["rome_template_lengths"] = tuple(tuple(pair) for pair in overrides["rome_template_lengths"])
        return replace(self, **overrides)


def _check_keys(values: dict, where: str) -> None:
    known = {f.name for f in fields(Hparams)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} in {where}; known: {sorted(known)}")


def available_families() -> list[str]:
    return sorted(p.name[:-5] for p in files("langedit.hparams").iterdir() if p.name.endswith(".json"))


def load_hparams(method: str, family: str, **overrides) -> Hparams:
    """Hyperparameters of `method` for a model `family` (e.g. "gemma3", "llama", "qwen2", "gptj")."""
    if method not in METHODS:
        raise ValueError(f"unknown editing method {method!r}; choose from {METHODS}")
    resource = files("langedit.hparams").joinpath(f"{family}.json")
    if not resource.is_file():
        raise ValueError(f"no hyperparameter file for model family {family!r}; available: {available_families()}")
    spec = json.loads(resource.read_text())
    values = {**spec.get("common", {}), **spec.get(method, {})}
    values.pop("_comment", None)
    _check_keys(values, f"hparams/{family}.json")
    if "layers" not in values:
        raise ValueError(f"hparams/{family}.json gives no 'layers' for {method}")
    values["layers"] = tuple(values["layers"])
    if "rome_template_lengths" in values:
        values["rome_template_lengths"] = tuple(tuple(pair) for pair in values["rome_template_lengths"])
    hp = Hparams(**values, source=f"hparams/{family}.json[{method}]").with_overrides(**overrides)
    if hp.langedit_variant not in LANGEDIT_VARIANTS:
        raise ValueError(f"unknown LangEdit variant {hp.langedit_variant!r}; choose from {LANGEDIT_VARIANTS}")
    return hp
