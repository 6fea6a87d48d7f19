"""diffinv — Difference Inversion (CVPR 2025) for image analogies A : A′ :: B : B′.

The public names are imported lazily, so that `diffinv --help` answers without loading
torch, diffusers and transformers.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "DifferenceInversion": "pipeline",
    "DiffTokens": "tokens",
    "InversionConfig": "config",
    "DiffinvError": "errors",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'diffinv' has no attribute {name!r}")
