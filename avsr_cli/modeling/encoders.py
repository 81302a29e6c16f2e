"""Frozen pretrained encoders: Whisper for audio (AV-HuBERT for video plugs in beside it)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..errors import CheckpointError

WHISPER_ENCODER_PREFIXES = ("model.encoder.", "encoder.", "audio_encoder.")


def read_safetensors(paths: list[Path], prefixes: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
    """Tensors whose names start with one of `prefixes` (prefix stripped) from safetensors files."""
    out: dict[str, torch.Tensor] = {}
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                for prefix in prefixes:
                    if key.startswith(prefix):
                        out[key[len(prefix) :]] = f.get_tensor(key)
                        break
    return out


def safetensors_files(model_dir: Path) -> list[Path]:
    """The weight files of a Hugging Face model directory (single or sharded safetensors)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no .safetensors weights found")
    return files


class WhisperAudioEncoder(nn.Module):
    """Whisper's encoder, frozen; returns the last hidden state cut to each clip's speech length.

    Reference: Llama-AVSR models/modeling_AVSRLLM.py uses `WhisperModel.from_pretrained(name).encoder`,
    `requires_grad_(False)`, the encoder's `last_hidden_state` (after its final LayerNorm), truncated to
    `max(int(samples/16000*50), 25)` frames (see features.encoder_frames).
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.dim = encoder.config.d_model

    @classmethod
    def from_dir(cls, model_dir: Path, weights: Path | None = None) -> WhisperAudioEncoder:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig.from_pretrained(model_dir)
        encoder = WhisperEncoder(config)
        if weights is not None:  # an encoder-only file written by the importer
            state = read_safetensors([weights])
        else:
            state = read_safetensors(safetensors_files(model_dir), WHISPER_ENCODER_PREFIXES)
        missing, _ = encoder.load_state_dict(state, strict=False)
        if missing:
            raise CheckpointError(f"{model_dir}: Whisper encoder weights missing: {', '.join(missing[:5])}")
        return cls(encoder.eval())

    @torch.no_grad()
    def forward(self, input_features: torch.Tensor, n_frames: list[int]) -> list[torch.Tensor]:
        param = next(self.encoder.parameters())
        hidden = self.encoder(input_features.to(param.device, param.dtype)).last_hidden_state
        return [hidden[i, :n] for i, n in enumerate(n_frames)]
