"""MLASM: multi-level local alignment and semantic matching for image-text retrieval."""

__version__ = "0.1.0"
