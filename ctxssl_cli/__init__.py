"""ctxssl: Contextual Self-Supervised Learning (Gupta et al., NeurIPS 2024, arXiv 2405.18193)."""

__version__ = "0.4.0"


# The Python API (api.py), imported on first use so that `import ctxssl_cli` stays cheap (no torch).
_API = ("load", "Model", "Context", "ModelInfo")


def __getattr__(name: str):
    if name in _API:
        from ctxssl_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'ctxssl_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
