"""LangEdit reproducibility suite: multilingual sequential knowledge editing."""
from .models import DEFAULT_MODEL, load_model
from .paths import cache_dir, data_dir, results_dir

__version__ = "0.1.0"
__all__ = ["DEFAULT_MODEL", "load_model", "cache_dir", "data_dir", "results_dir", "__version__"]
