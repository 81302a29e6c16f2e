"""The network: checkpoint configuration, encoders (Whisper, AV-HuBERT), compression and projectors, the LLM
with LoRA, and decoding. Knows nothing of files beyond the weights it is handed."""
