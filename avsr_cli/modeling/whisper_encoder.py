"""Whisper's audio encoder in plain torch: the parameters of transformers' WhisperEncoder under the same
names, and its forward (pre-LayerNorm blocks, unmasked attention, exact GELU); no transformers import."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

CONFIG_KEYS = (
    "d_model",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_ffn_dim",
    "num_mel_bins",
    "max_source_positions",
)


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """The encoder's part of a Whisper config.json."""

    d_model: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    num_mel_bins: int
    max_source_positions: int

    @classmethod
    def from_dir(cls, model_dir: Path) -> WhisperEncoderConfig:
        """Read `model_dir`/config.json; raises CheckpointError naming the file for anything this encoder
        cannot run (a missing or non-integer size, an activation other than exact GELU)."""
        path = model_dir / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: cannot read the Whisper config: {e}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: the Whisper config is not a JSON object")
        # transformers' WhisperConfig defaults to gelu; an explicit other activation is refused
        activation = data.get("activation_function", "gelu")
        if activation != "gelu":
            raise CheckpointError(
                f"{path}: Whisper activation_function {activation!r} is not supported (only gelu)"
            )
        values = {}
        for key in CONFIG_KEYS:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"{path}: Whisper {key} must be a positive integer, not {value!r}")
            values[key] = value
        config = cls(**values)
        if config.d_model % config.encoder_attention_heads:
            raise CheckpointError(
                f"{path}: Whisper d_model {config.d_model} is not a multiple of "
                f"encoder_attention_heads {config.encoder_attention_heads}"
            )
        return config


class WhisperSelfAttention(nn.Module):
    """Whisper's encoder self-attention (its key projection has no bias)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scaling = self.head_dim**-0.5
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.heads, self.head_dim)
        # The query is scaled before the product and the product left unscaled, in the order transformers uses
        # (an attention kernel that scaled the product instead could round differently).
        q = (self.q_proj(x) * self.scaling).view(shape).transpose(1, 2).contiguous()
        k = self.k_proj(x).view(shape).transpose(1, 2).contiguous()
        v = self.v_proj(x).view(shape).transpose(1, 2).contiguous()
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.out_proj(out.transpose(1, 2).reshape(*x.shape[:-1], -1))


class WhisperEncoderLayer(nn.Module):
    """A pre-LayerNorm block: self-attention, then a GELU feed-forward, each around a residual."""

    def __init__(self, config: WhisperEncoderConfig) -> None:
        super().__init__()
        dim = config.d_model
        self.self_attn = WhisperSelfAttention(dim, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        if x.dtype == torch.float16:  # as transformers does, keep float16 activations finite
            limit = torch.finfo(x.dtype).max - 1000
            x = x.clamp(min=-limit, max=limit)
        return x


class WhisperEncoder(nn.Module):
    """The convolutions, positional embeddings, layers and final LayerNorm of Whisper's encoder."""

    def __init__(self, config: WhisperEncoderConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        # an uninitialised weight (the checkpoint's is assigned): nn.Embedding's random init would import
        # torch._dynamo on the meta device, 1.4 s of a one-clip call
        empty = torch.empty(config.max_source_positions, dim)
        self.embed_positions = nn.Embedding(config.max_source_positions, dim, _weight=empty)
        self.layers = nn.ModuleList(WhisperEncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """The last hidden state (batch, frames / 2, d_model) of log-mel features (batch, mels, frames) of
        any length up to Whisper's 30 s: the first positional embeddings are added, as faster-whisper and
        whisper.cpp do for shorter windows; on 30 s it is transformers' WhisperEncoder output."""
        x = F.gelu(self.conv1(input_features))
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)
        positions = self.embed_positions.weight
        if x.shape[1] > positions.shape[0]:
            raise ValueError(f"{x.shape[1]} encoder frames exceed Whisper's {positions.shape[0]}")
        x = x + positions[: x.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)
