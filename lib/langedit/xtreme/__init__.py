"""Few-shot XTREME evaluation (XNLI, PAWS-X, MLQA, WikiANN) of general ability, as in LangEdit.

    from langedit.models import load_model
    from langedit.xtreme import evaluate_xtreme, f1_average
    lm = load_model()
    df = evaluate_xtreme(lm.model, lm.tokenizer, n_per_task=100, seed=0)   # mode="loglik"
    f1_average(df)
"""
from .cache import weights_fingerprint
from .evaluate import (MAX_NEW_TOKENS, MODES, PROTOCOL_VERSION, evaluate_task, evaluate_xtreme, f1_average,
                       f1_table, method_for)
from .probe import XtremeProbe, constant_guess_f1, f1_by_step
from .prompts import build_prompt, label_words
from .scoring import binary_f1, entity_f1, macro_f1, mean_squad_f1, parse_choice, parse_entities, squad_f1
from .tasks import TASK_NAMES, TASKS, load_task, select_split

__all__ = [
    "MAX_NEW_TOKENS", "MODES", "PROTOCOL_VERSION", "TASK_NAMES", "TASKS", "binary_f1", "build_prompt",
    "entity_f1", "evaluate_task", "evaluate_xtreme", "f1_average", "f1_table", "label_words", "load_task",
    "macro_f1", "mean_squad_f1", "method_for", "parse_choice", "parse_entities", "select_split", "squad_f1",
    "weights_fingerprint", "XtremeProbe", "constant_guess_f1", "f1_by_step",
]
