"""avsr: speech recognition from audio, lips, or both, with a multimodal LLM (Llama-AVSR family)."""

__version__ = "0.1.0"
