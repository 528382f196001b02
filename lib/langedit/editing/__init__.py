"""Knowledge editing: keys, value targets, null spaces, the seven methods behind one Editor."""
from .editor import BatchReport, Editor, leakage
from .hparams import METHODS, Hparams, load_hparams
from .templates import STARTERS, context_templates
from .tokens import SubjectNotFoundError

__all__ = ["BatchReport", "Editor", "leakage", "METHODS", "Hparams", "load_hparams", "STARTERS",
           "context_templates", "SubjectNotFoundError"]
