"""A plain Llama's config.json (what avsr's Llama decoder can run) and its safetensors weights, read without
transformers."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from .encoders import SAFETENSORS_DTYPES


@dataclass(frozen=True)
class LlamaSettings:
    """The parts of a Llama config.json the decoder uses (the file's own dict kept in `raw`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    initializer_range: float
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> LlamaSettings:
        """Settings of a plain Llama config; raises CheckpointError naming what this decoder cannot run."""
        reason = unsupported(raw)
        if reason:
            raise CheckpointError(f"{where}: {reason}: avsr's Llama decoder runs plain Llama models only")
        heads = raw["num_attention_heads"]
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(_rope(raw).get("rope_theta", 10000.0)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            initializer_range=float(raw.get("initializer_range", 0.02)),
            raw=raw,
        )

    @classmethod
    def read(cls, model_dir: Path) -> LlamaSettings:
        path = Path(model_dir) / "config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc})") from None
        return cls.from_dict(raw, str(path))


def _rope(raw: dict) -> dict:
    """RoPE settings in either config layout: transformers 5's `rope_parameters` or the older top-level
    `rope_theta` with `rope_scaling`."""
    params = dict(raw.get("rope_parameters") or {})
    if "rope_theta" not in params and "rope_theta" in raw:
        params["rope_theta"] = raw["rope_theta"]
    scaling = raw.get("rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind and "rope_type" not in params:
        params["rope_type"] = kind
    return params


def unsupported(raw: dict) -> str | None:
    """Why the config `raw` is not a plain Llama this decoder reproduces exactly, or None when it is."""
    if raw.get("model_type") != "llama":
        return f"model type {raw.get('model_type')!r} is not llama"
    rope_type = _rope(raw).get("rope_type", "default")
    if rope_type != "default":
        return f"RoPE scaling {rope_type!r} is not supported (only the default rotary frequencies)"
    if raw.get("hidden_act", "silu") != "silu":
        return f"activation {raw.get('hidden_act')!r} is not silu"
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        return "biased projections are not supported"
    if (raw.get("pretraining_tp") or 1) != 1:
        return "pretraining_tp other than 1 is not supported"
    missing = [
        k
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        if not isinstance(raw.get(k), int)
    ]
    if missing:
        return f"{missing[0]} is missing"
    return None


def expected_shapes(s: LlamaSettings) -> dict[str, list[int]]:
    """LlamaForCausalLM's weights for the config `s`, with their shapes."""
    hidden, q, kv = s.hidden_size, s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
    shapes = {"model.embed_tokens.weight": [s.vocab_size, hidden], "model.norm.weight": [hidden]}
    if not s.tie_word_embeddings:
        shapes["lm_head.weight"] = [s.vocab_size, hidden]
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": [q, hidden], p + "self_attn.o_proj.weight": [hidden, q]}
        shapes |= {p + "self_attn.k_proj.weight": [kv, hidden], p + "self_attn.v_proj.weight": [kv, hidden]}
        for name in ("gate_proj", "up_proj"):
            shapes[p + f"mlp.{name}.weight"] = [s.intermediate_size, hidden]
        shapes[p + "mlp.down_proj.weight"] = [hidden, s.intermediate_size]
        shapes |= {p + "input_layernorm.weight": [hidden], p + "post_attention_layernorm.weight": [hidden]}
    return shapes


CONVERT_BLOCK_BYTES = 8 << 20


class SafetensorsReader:
    """Tensors of safetensors files read with plain file reads (each header parsed once): no memory map
    whose pages would stay resident beside the copies; or, asked for (`mapped`), a view of a private map."""

    def __init__(self, files: list[Path]) -> None:
        self.where: dict[str, tuple[Path, int, dict]] = {}
        self.metadata: dict[str, str] = {}  # the files' `__metadata__`
        self.sizes: dict[Path, int] = {}
        self.maps: dict[Path, torch.Tensor] = {}
        for path in files:
            try:
                self.sizes[path] = path.stat().st_size
                with open(path, "rb") as f:
                    (size,) = struct.unpack("<Q", f.read(8))
                    if size > self.sizes[path] - 8:
                        raise ValueError("header longer than the file")
                    header = json.loads(f.read(size))
            except (OSError, ValueError, struct.error) as exc:
                raise CheckpointError(f"{path}: unreadable safetensors ({exc})") from None
            if not isinstance(header, dict):
                raise CheckpointError(f"{path}: unreadable safetensors (its header is not a table)")
            self.metadata |= header.get("__metadata__") or {}
            for name, info in header.items():
                if name != "__metadata__":
                    self.where[name] = (path, 8 + size, info)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> list[int]:
        return list(self.where[name][2]["shape"])

    def stored_dtype(self, name: str) -> torch.dtype:
        return self._span(name)[1]

    def read(self, name: str, dtype: torch.dtype, rows: int | None = None) -> torch.Tensor:
        """Tensor `name` in `dtype`; with `rows`, in the first rows of a (rows, ...) matrix."""
        shape = self.shape(name)
        out = torch.empty([rows or shape[0], *shape[1:]] if shape else shape, dtype=dtype)
        self._into(name, out[: shape[0]] if shape else out)
        return out

    def read_joined(self, names: list[str], dtype: torch.dtype) -> torch.Tensor:
        """Matrices `names` (of one width) stacked by rows."""
        shapes = [self.shape(n) for n in names]
        if any(len(s) != 2 or s[1] != shapes[0][1] for s in shapes):
            raise CheckpointError(f"{self.where[names[0]][0]}: {', '.join(names)} differ in width")
        out = torch.empty((sum(s[0] for s in shapes), shapes[0][1]), dtype=dtype)
        start = 0
        for name, shape in zip(names, shapes, strict=True):
            self._into(name, out[start : start + shape[0]])
            start += shape[0]
        return out

    def mapped(self, name: str) -> torch.Tensor:
        """Tensor `name` as stored, a view of a private memory map of its file (pages are read when first
        touched, never written back)."""
        path, stored, shape, start, end = self._span(name)
        if end > self.sizes[path]:
            raise CheckpointError(f"{path}: tensor {name} is truncated")
        if start % stored.itemsize:
            raise CheckpointError(f"{path}: tensor {name} is not aligned to its dtype")
        if path not in self.maps:
            storage = torch.UntypedStorage.from_file(str(path), False, self.sizes[path])
            self.maps[path] = torch.empty(0, dtype=torch.uint8).set_(storage)
        return self.maps[path][start:end].view(stored).view(shape)

    def _span(self, name: str) -> tuple[Path, torch.dtype, list[int], int, int]:
        """(file, stored dtype, shape, first byte, end byte) of tensor `name`, its header checked."""
        path, base, info = self.where[name]
        stored = SAFETENSORS_DTYPES.get(info["dtype"])
        if stored is None:
            raise CheckpointError(f"{path}: tensor {name} has dtype {info['dtype']} (expected F32/F16/BF16)")
        shape = list(info["shape"])
        start, end = info["data_offsets"]
        if end - start != math.prod(shape) * stored.itemsize:
            raise CheckpointError(
                f"{path}: tensor {name} holds {end - start} bytes, not a {shape} {info['dtype']}"
            )
        return path, stored, shape, base + start, base + end

    def _into(self, name: str, target: torch.Tensor) -> None:
        path, stored, shape, start, end = self._span(name)
        parts = [target]
        if shape and shape[0] and stored != target.dtype:
            # converted a block of rows at a time: no second whole copy of a large matrix in memory
            rows = max(1, CONVERT_BLOCK_BYTES * shape[0] // (end - start or 1))
            flat = target.view(shape[0], -1)
            parts = [flat[i : i + rows] for i in range(0, shape[0], rows)]
        with open(path, "rb") as f:
            f.seek(start)
            for part in parts:
                buffer = part if stored == part.dtype else torch.empty(part.shape, dtype=stored)
                size = buffer.numel() * buffer.element_size()
                if f.readinto(buffer.reshape(-1).view(torch.uint8).numpy()) != size:
                    raise CheckpointError(f"{path}: tensor {name} is truncated")
                if buffer is not part:
                    part.copy_(buffer)
