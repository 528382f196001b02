"""Causal tracing (ROME; LangEdit Appendix A.1, Figure 5): which layers store facts, per language.

    from langedit.tracing import causal_trace, mlp_effect_by_layer, suggest_edit_layers
    result = causal_trace(model, tok, facts, kinds=("hidden", "mlp", "attn"), template="Question: {}\\nAnswer:")
    result.effects          # tidy: language, kind, position_category, layer, prob, indirect_effect, n_facts, ...
    result.counts()         # facts seen / counted per language, clean and corrupted baselines
    curve = mlp_effect_by_layer(result.effects)
    suggest_edit_layers(curve, n_layers=5)
"""
from .core import (KINDS, CleanRun, CorruptedRun, answer_is_greedy, attn_block_out_name, clean_run, corrupted_run,
                   embedding_std, first_computed_layer, make_noise, restoration_grid, restored_answer_probs,
                   restored_layers, screen_facts, state_names)
from .facts import EncodedFact, SubjectNotFoundError, TraceFact, as_trace_fact, encode_fact, subject_token_range
from .run import FactTrace, TracingResult, causal_trace, trace_fact
from .store import TraceStore, model_signature
from .tables import (POSITION_CATEGORIES, POSITION_LABELS, colour_limits, fact_effects, facts_per_panel, heatmap_frame,
                     mlp_effect_by_layer, paper_claims, position_categories,
                     position_effects, suggest_edit_layers, token_effects)

__all__ = [
    "KINDS", "CleanRun", "CorruptedRun", "answer_is_greedy", "attn_block_out_name", "clean_run", "corrupted_run",
    "embedding_std", "first_computed_layer", "make_noise", "restoration_grid", "screen_facts", "colour_limits",
    "facts_per_panel", "fact_effects", "paper_claims",
    "restored_answer_probs", "restored_layers", "state_names", "EncodedFact", "SubjectNotFoundError", "TraceFact",
    "as_trace_fact", "encode_fact", "subject_token_range", "FactTrace", "TracingResult", "causal_trace",
    "trace_fact", "TraceStore", "model_signature", "POSITION_CATEGORIES", "POSITION_LABELS", "heatmap_frame", "mlp_effect_by_layer",
    "position_categories", "position_effects", "suggest_edit_layers", "token_effects",
]
