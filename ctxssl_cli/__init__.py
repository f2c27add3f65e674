"""ctxssl: Contextual Self-Supervised Learning (Gupta et al., NeurIPS 2024, arXiv 2405.18193)."""

__version__ = "0.3.0"
