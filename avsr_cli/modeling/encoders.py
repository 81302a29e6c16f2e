"""Frozen pretrained encoders: Whisper for audio (AV-HuBERT for video plugs in beside it)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..errors import CheckpointError
from .whisper_encoder import WhisperEncoder, WhisperEncoderConfig

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


# The safetensors format (huggingface/safetensors README): u64 little-endian header size, a JSON header of
# {name: {dtype, shape, data_offsets}}, then the data; offsets count from the end of the header.
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_tensor_unmapped(
    paths: list[Path], name: str, out: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Tensor `name` of safetensors files read with plain file reads, or None where absent (or, with `out`,
    where its shape or dtype differ from `out`'s). With `out` (contiguous, on the CPU), read into it.

    safetensors' own readers memory-map the file, and every page they touch stays in the process's resident
    set while any tensor of that file lives. Read this way, the pages stay in the page cache only; used for a
    matrix read once into a larger one (the embedding, into its resized matrix)."""
    for path in paths:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            info = json.loads(f.read(size)).get(name)
            if info is None:
                continue
            dtype = SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                return None
            if out is None:
                out = torch.empty(info["shape"], dtype=dtype)
            elif out.dtype != dtype or list(out.shape) != list(info["shape"]):
                return None
            start, end = info["data_offsets"]
            f.seek(8 + size + start)
            if f.readinto(out.view(-1).view(torch.uint8).numpy()) != end - start:
                raise CheckpointError(f"{path}: tensor {name} is truncated")
            return out
    return None


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

    def __init__(self, encoder: WhisperEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.dim = encoder.config.d_model

    @classmethod
    def from_dir(cls, model_dir: Path, weights: Path | None = None) -> WhisperAudioEncoder:
        config = WhisperEncoderConfig.from_dir(model_dir)
        # Built on the meta device and given the file's tensors (memory-mapped by safetensors) rather than
        # random weights overwritten by a copy: no second copy in memory, and no time spent initialising.
        with torch.device("meta"):
            encoder = WhisperEncoder(config)
        if weights is not None:  # an encoder-only file written by the importer
            state = read_safetensors([weights])
        else:
            state = read_safetensors(safetensors_files(model_dir), WHISPER_ENCODER_PREFIXES)
        missing, _ = encoder.load_state_dict(state, strict=False, assign=True)
        tensors = [*encoder.named_parameters(), *encoder.named_buffers()]  # state_dict() is slower (hooks)
        missing += [name for name, t in tensors if t.is_meta and name not in missing]
        if missing:
            raise CheckpointError(f"{model_dir}: Whisper encoder weights missing: {', '.join(missing[:5])}")
        return cls(encoder.eval())

    @torch.no_grad()
    def forward(
        self, input_features: torch.Tensor | list[torch.Tensor], n_frames: list[int]
    ) -> list[torch.Tensor]:
        """The last hidden state of each clip, cut to its `n_frames`. A list of per-clip features (trimmed
        windows) is encoded in batches of equal length, so a clip's frames never depend on its batch."""
        param = next(self.encoder.parameters())
        if isinstance(input_features, torch.Tensor):
            hidden = self.encoder(input_features.to(param.device, param.dtype))
            return [hidden[i, :n] for i, n in enumerate(n_frames)]
        out: list[torch.Tensor | None] = [None] * len(input_features)
        by_length: dict[int, list[int]] = {}
        for i, feats in enumerate(input_features):
            by_length.setdefault(feats.shape[-1], []).append(i)
        for indices in by_length.values():
            batch = torch.stack([input_features[i] for i in indices]).to(param.device, param.dtype)
            hidden = self.trimmed_forward(batch)
            for row, i in enumerate(indices):
                out[i] = hidden[row, : n_frames[i]]
        return out

    def trimmed_forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """The last hidden state of a window shorter than 30 s: the convolutions, the first T positional
        embeddings, the layers and the final LayerNorm (faster-whisper and whisper.cpp run shorter windows
        the same way). On a full 3000-frame input it equals transformers' WhisperEncoder forward."""
        return self.encoder(input_features)
