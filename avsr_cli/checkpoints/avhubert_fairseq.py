"""Official AV-HuBERT fairseq checkpoints (`large_vox_iter5.pt`, ...) -> the avsr AV-HuBERT folder:
`config.json` + `model.safetensors` with fairseq's key names, the weight-normed positional convolution folded.

The `.pt` is read with the restricted unpickler (safe_pickle.restricted_load), never plain pickle.
"""

from __future__ import annotations

import json
import re
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from ..errors import CheckpointError
from ..modeling.avhubert import (
    CONFIG_FILE,
    FORMAT_NAME,
    PRELU_KEY,
    PRETRAIN_ONLY,
    WEIGHTS_FILE,
    AVHubertConfig,
    check_state,
)
from ..storage import atomic_write_bytes, atomic_write_text
from .safe_pickle import restricted_load


def _fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch.nn.utils.weight_norm: w = g * v / ||v||, the norm over every dim where g has size 1."""
    dims = tuple(i for i, n in enumerate(g.shape) if n == 1)
    g32, v32 = g.float(), v.float()
    return (v32 * (g32 / v32.norm(dim=dims, keepdim=True))).to(v.dtype)


def avhubert_state_from_fairseq(
    state: Mapping[str, torch.Tensor], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Our state dict from fairseq AVHubertModel keys under `prefix` ("video_encoder." in a Llama-AVSR .pth).

    Keys are kept as they are (LoRA's `encoder.layers.N.self_attn.lora_{down,up}_{Q,V}.weight` too), except:
    pretraining-only parts (PRETRAIN_ONLY) are dropped, and `encoder.pos_conv.0.{weight_g, weight_v, bias}`
    (or torch's parametrizations.weight.original0/1) become `encoder.pos_conv.{weight, bias}`.
    """
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    out = {k: v for k, v in out.items() if not k.startswith(PRETRAIN_ONLY)}
    if not out:
        raise CheckpointError(f"no AV-HuBERT weights found (expected keys starting with '{prefix}encoder.')")
    pos = "encoder.pos_conv.0."
    g = out.pop(pos + "weight_g", None)
    v = out.pop(pos + "weight_v", None)
    if g is None:
        g = out.pop(pos + "parametrizations.weight.original0", None)
        v = out.pop(pos + "parametrizations.weight.original1", None)
    if g is not None and v is not None:
        out["encoder.pos_conv.weight"] = _fold_weight_norm(g, v)
    elif pos + "weight" in out:
        out["encoder.pos_conv.weight"] = out.pop(pos + "weight")
    if pos + "bias" in out:
        out["encoder.pos_conv.bias"] = out.pop(pos + "bias")
    return out


def infer_config(
    state: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any] | None = None
) -> AVHubertConfig:
    """An AVHubertConfig from our state dict's shapes, cross-checked with fairseq's model config if given.

    Shapes fix everything but the head count and layer_norm_first; without a config those default to
    dim // 64 and True (both hold for the Base and Large pretrain configs).
    """
    cfg = dict(model_cfg or {})
    try:
        dim = state["encoder.layer_norm.weight"].shape[0]
        pos_w = state["encoder.pos_conv.weight"]
        layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
        found = {
            "layers": 1 + max(layer_ids),
            "dim": dim,
            "ffn_dim": state["encoder.layers.0.fc1.weight"].shape[0],
            "conv_pos": pos_w.shape[-1],
            "conv_pos_groups": dim // pos_w.shape[1],
            "resnet_relu": "prelu" if PRELU_KEY in state else "relu",
            "fuse": "concat" if state["layer_norm.weight"].shape[0] == 2 * dim else "add",
        }
    except (KeyError, ValueError) as exc:  # ValueError: max() of no layers
        raise CheckpointError(f"not an AV-HuBERT state dict (missing {exc})") from None
    down = state.get("encoder.layers.0.self_attn.lora_down_Q.weight")
    found["lora_rank"] = 0 if down is None else down.shape[0]
    names = {
        "layers": "encoder_layers",
        "dim": "encoder_embed_dim",
        "ffn_dim": "encoder_ffn_embed_dim",
        "conv_pos": "conv_pos",
        "conv_pos_groups": "conv_pos_groups",
        "resnet_relu": "resnet_relu_type",
        "fuse": "modality_fuse",
    }
    for ours, theirs in names.items():
        if cfg.get(theirs) is not None and cfg[theirs] != found[ours]:
            raise CheckpointError(
                f"checkpoint config says {theirs}={cfg[theirs]}, the weights say {found[ours]}"
            )
    if cfg.get("sub_encoder_layers", 0):
        raise CheckpointError(
            "AV-HuBERT with per-modality sub-encoders (sub_encoder_layers > 0) is not supported"
        )
    if cfg.get("activation_fn", "gelu") != "gelu":
        raise CheckpointError(
            f"AV-HuBERT with activation_fn={cfg['activation_fn']} is not supported (gelu only)"
        )
    heads = int(cfg.get("encoder_attention_heads") or max(1, dim // 64))
    return AVHubertConfig(heads=heads, layer_norm_first=bool(cfg.get("layer_norm_first", True)), **found)


def save_avhubert(
    out_dir: Path, config: AVHubertConfig, state: Mapping[str, torch.Tensor], source: str = ""
) -> Path:
    """Write `out_dir/config.json` + `out_dir/model.safetensors` (float32) after checking keys and shapes."""
    check_state(config, state, source or str(out_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    atomic_write_bytes(
        out_dir / WEIGHTS_FILE, save(tensors, metadata={"format": FORMAT_NAME, "source": source})
    )
    atomic_write_text(
        out_dir / CONFIG_FILE, json.dumps({**config.to_dict(), "source": source}, indent=2) + "\n"
    )
    return out_dir


def _model_cfg(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """fairseq's model settings: `cfg["model"]` (hydra-era dict) or the legacy `args` Namespace.

    A cfg unpickled as an inert omegaconf record gives None: the shapes then decide (infer_config).
    """
    cfg = ckpt.get("cfg")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), (Mapping, Namespace)):
        model = cfg["model"]
        return dict(vars(model) if isinstance(model, Namespace) else model)
    args = ckpt.get("args")
    return dict(vars(args)) if isinstance(args, Namespace) else None


def convert_fairseq_avhubert(pt_path: Path, out_dir: Path) -> Path:
    """Convert an official AV-HuBERT fairseq checkpoint (e.g. `large_vox_iter5.pt`) to `out_dir`.

    The file is read with a restricted unpickler (safe_pickle.restricted_load), never plain pickle. Writes
    `model.safetensors` (our keys, float32) and `config.json` (AVHubertConfig); load with
    `AVHubertVideoEncoder.from_dir(out_dir)`.
    """
    pt_path = Path(pt_path)
    ckpt = restricted_load(pt_path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(f"{pt_path}: not a fairseq checkpoint (no 'model' state dict)")
    model_state = ckpt["model"]
    if any(k.startswith("encoder.w2v_model.") for k in model_state):
        raise CheckpointError(
            f"{pt_path}: a fine-tuned AV-HuBERT seq2seq checkpoint; use the self-supervised pretrain "
            f"checkpoint (e.g. large_vox_iter5.pt), as Llama-AVSR does"
        )
    state = avhubert_state_from_fairseq(model_state)
    config = infer_config(state, _model_cfg(ckpt))
    return save_avhubert(out_dir, config, state, source=pt_path.name)
