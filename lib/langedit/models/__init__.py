"""Model loading and per-family architecture descriptions."""
from .architecture import (ARCHITECTURES, Architecture, UnsupportedArchitectureError, architecture_of,
                           get_module, n_layers, w_out, w_out_as_matrix)
from .loading import (DEFAULT_GGUF_SHA256, DEFAULT_MODEL, LoadedModel, ModelLoadError, default_model_dir,
                      ensure_default_model, load_model)

__all__ = [
    "ARCHITECTURES", "Architecture", "UnsupportedArchitectureError", "architecture_of", "get_module",
    "n_layers", "w_out", "w_out_as_matrix", "DEFAULT_GGUF_SHA256", "DEFAULT_MODEL", "LoadedModel",
    "ModelLoadError", "default_model_dir", "ensure_default_model", "load_model",
]
