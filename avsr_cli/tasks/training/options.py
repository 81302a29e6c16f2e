"""What a training run is: its options (`TrainOptions`), the run around them (`TrainSetup`), and the checks
of the flat settings a TOML file and the flags give (type and range, before anything loads)."""

from __future__ import annotations

import math
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import torch

from ...errors import UsageError
from ...frontends.mouth import MouthOptions
from ...modeling.config import ENCODER_WINDOWS, MODE_TO_TASK

REFERENCE_LR = {"asr": 1e-3, "avsr": 1e-3, "vsr": 5e-4}  # Llama-AVSR README training commands
PRECISIONS = ("auto", "fp32", "bf16")
MODE_MODALITIES = {"asr": ("audio",), "vsr": ("video",), "avsr": ("audio", "video")}


@dataclass(frozen=True)
class TrainOptions:
    """What `train` does; defaults follow the reference recipe (the training package docstring). Numeric
    fields carry their range in metadata ("min": at least; "above": more than), which settings are checked
    against."""

    mode: str = "asr"  # asr | vsr | avsr, or a comma list trained together (Omni-AVSR multi-task)
    epochs: int = field(default=3, metadata={"min": 1})
    max_steps: int = field(default=0, metadata={"min": 0})  # optimizer steps; 0: run `epochs` epochs
    lr: float | None = field(default=None, metadata={"min": 0})  # None: REFERENCE_LR[mode]
    weight_decay: float = field(default=0.1, metadata={"min": 0})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    # padded encoder-input seconds per batch (frame budget)
    batch_seconds: float = field(default=60.0, metadata={"above": 0})
    max_batch: int = field(default=16, metadata={"min": 1})
    grad_accum: int = field(default=1, metadata={"min": 1})
    grad_clip: float = field(default=10.0, metadata={"above": 0})
    precision: str = "auto"  # auto (bf16 autocast where GPU or CPU has bf16 kernels, else fp32) | fp32 | bf16
    compile: bool = False  # torch.compile the LLM's decoder body for the steps (a minute to compile first)
    # compression rates to train (matryoshka, one drawn per step and modality); None: the config's rates
    audio_rates: list[int] | None = field(default=None, metadata={"min": 1})
    video_rates: list[int] | None = field(default=None, metadata={"min": 1})
    # several modes: the loss is sum(w_i * loss_i) / n_modes (Omni-AVSR modeling_OmniAVSR.py `matry_weights`,
    # lightning_OmniAVSR.py divides by 3; its README trains with 1, 1.5, 1 for asr, vsr, avsr); None: all 1
    task_weights: list[float] | None = field(default=None, metadata={"min": 0})
    # optimizer steps between validations; 0: at the end of each epoch
    val_every: int = field(default=0, metadata={"min": 0})
    val_limit: int = field(default=100, metadata={"min": 1})  # validation clips decoded each time
    # average the adapters saved at the end of the last N epochs
    average_last: int = field(default=1, metadata={"min": 1})
    # "last": the last epoch(s) (averaged as above; the reference's way); "best": the epoch adapter with the
    # lowest validation WER at an epoch end (needs validation data and val_every 0)
    select: str = "last"
    save_every: int = field(default=100, metadata={"min": 1})  # optimizer steps between resumable states
    seed: int = 0
    train_lora: bool = True
    # Our addition, not in the reference recipe: epochs of CTC pre-alignment of the projectors before the
    # LLM loss (see `ctc_prealign`); helps small LLMs, which otherwise take long to start reading the audio.
    ctc_epochs: int = field(default=0, metadata={"min": 0})
    ctc_lr: float = field(default=2e-3, metadata={"min": 0})
    # Our addition: weight of the same CTC loss kept on during the LLM stage, added to the LLM's
    # cross-entropy, so the projected tokens keep spelling the transcript while the LoRA learns to read them.
    ctc_weight: float = field(default=0.0, metadata={"min": 0})
    # A fresh model's Whisper window (modeling.config.ENCODER_WINDOWS); None: the base's (padded-30s, as the
    # reference). A fine-tuned checkpoint keeps its own: its projector was trained on those frames.
    encoder_window: str | None = None
    # LLM modules that carry LoRA; None: the base's or checkpoint's (q_proj, v_proj, as the reference).
    # Fine-tuning a checkpoint may add modules: theirs start at zero (peft's lora_B = 0), so the model starts
    # exactly where the checkpoint was.
    lora_targets: list[str] | None = None

    def modes(self) -> list[str]:
        """The tasks trained: `mode` split at commas, checked, in order, without repeats."""
        modes = list(dict.fromkeys(m.strip() for m in self.mode.split(",") if m.strip()))
        if not modes or any(m not in MODE_TO_TASK for m in modes):
            raise UsageError(f"unknown mode '{self.mode}' (asr, vsr, avsr, or a list such as asr,vsr,avsr)")
        return modes

    def modalities(self) -> list[str]:
        """The encoders the trained tasks read, audio first."""
        used = {m for mode in self.modes() for m in MODE_MODALITIES[mode]}
        return [m for m in ("audio", "video") if m in used]

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        modes = self.modes()
        return REFERENCE_LR[modes[0]] if len(modes) == 1 else 1e-3  # Omni-AVSR README commands: --lr 1e-3

    def rates(self, modality: str) -> list[int] | None:
        return self.audio_rates if modality == "audio" else self.video_rates

    def check(self) -> None:
        """Raise UsageError for a bad mode, task weights or precision (before any loading)."""
        self.weights()
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{self.precision}' ({', '.join(PRECISIONS)})")
        if self.select not in ("last", "best"):
            raise UsageError(f"unknown select '{self.select}' (last, best)")
        if self.select == "best" and self.val_every:
            raise UsageError("select 'best' compares epoch ends: use it with val_every 0")
        if self.encoder_window is not None and self.encoder_window not in ENCODER_WINDOWS:
            windows = ", ".join(ENCODER_WINDOWS)
            raise UsageError(f"unknown encoder window '{self.encoder_window}' ({windows})")
        if self.ctc_weight < 0:
            raise UsageError(f"ctc weight {self.ctc_weight}: must be 0 or more")
        if self.lora_targets is not None and not self.lora_targets:
            raise UsageError("lora targets: name at least one module (e.g. q_proj,v_proj)")

    def weights(self) -> list[float]:
        """Loss weight per mode (in `modes()` order)."""
        modes = self.modes()
        if self.task_weights is None:
            return [1.0] * len(modes)
        if len(self.task_weights) != len(modes):
            raise UsageError(f"{len(self.task_weights)} task weights for {len(modes)} modes ({self.mode})")
        return [float(w) for w in self.task_weights]


# Keys of a train config file and flags besides the TrainOptions fields: the run's own and the mouth options.
SETUP_KEYS = (
    "data",
    "output_dir",
    "base",
    "checkpoint",
    "video_encoder",
    "val_data",
    "feature_cache",
    "mouth_cache",
    "device",
    "limit",
    "resume",
)
MOUTH_KEYS = {"face_backend": "backend", "detect_every": "detect_every"}  # flag -> MouthOptions field


@dataclass(frozen=True)
class TrainSetup:
    """One training run: the data, where it goes, what it starts from, and how it trains (`options`).

    Built from a TOML file and flags with the same flat keys (`TrainSetup.load`); `train(setup)` trains.
    """

    data: str
    output_dir: str
    options: TrainOptions = field(default_factory=TrainOptions)
    base: str | None = None  # default: the built-in whisper-base-smollm2 (unless `checkpoint`)
    checkpoint: str | None = None  # fine-tune this avsr checkpoint instead of a base
    video_encoder: str | None = None
    val_data: str | None = None
    feature_cache: str | None = None
    mouth: MouthOptions = field(default_factory=MouthOptions)
    mouth_cache: str | None = None
    device: str = "auto"
    limit: int | None = field(default=None, metadata={"min": 1})
    resume: bool = True

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], where: str = "train settings") -> TrainSetup:
        """From flat keys: every TrainOptions field, SETUP_KEYS, and face_backend/detect_every."""
        option_names = {f.name for f in fields(TrainOptions)}
        unknown = sorted(set(settings) - option_names - set(SETUP_KEYS) - set(MOUTH_KEYS))
        if unknown:
            raise UsageError(f"{where}: unknown train settings {', '.join(unknown)}")
        for required in ("data", "output_dir"):
            if not settings.get(required):
                flag = "--" + required.replace("_", "-")
                raise UsageError(f"{flag} is required (as a flag or in the config file)")
        values = check_settings(settings, lambda key, value: f"{where}: {key} = {value!r}")
        try:
            mouth = MouthOptions(**{MOUTH_KEYS[k]: v for k, v in values.items() if k in MOUTH_KEYS})
            options = TrainOptions(**{k: v for k, v in values.items() if k in option_names})
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}: {exc}") from None
        options.check()  # a bad mode, task weights or precision fails before any loading
        own = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in values.items() if k in SETUP_KEYS}
        if own.get("device", "auto") != "auto":
            try:
                torch.device(own["device"])
            except RuntimeError:
                raise UsageError(
                    f"{where}: device = {own['device']!r}: expected auto, cpu, cuda, cuda:N or another torch "
                    "device"
                ) from None
        return cls(options=options, mouth=mouth, **own)

    @classmethod
    def load(cls, path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None) -> TrainSetup:
        """Settings from a TOML file (if any), overridden by `overrides` (flags; None values ignored). Every
        value is checked (type, range) before anything loads: an error names the file or flag and the key."""
        settings = {}
        if path:
            settings = check_settings(_read_toml(path), lambda key, value: f"{path}: {key} = {value!r}")
        flags = {k: v for k, v in (overrides or {}).items() if v is not None}
        settings.update(check_settings(flags, lambda key, value: f"--{key.replace('_', '-')} {value}"))
        return cls.from_settings(settings, str(path) if path else "train settings")


def setting_fields() -> dict[str, tuple[Any, Mapping]]:
    """Each train setting's type and range (field metadata), read from the dataclasses that take it:
    TrainOptions, TrainSetup (SETUP_KEYS) and MouthOptions (MOUTH_KEYS)."""
    found: dict[str, tuple[Any, Mapping]] = {}
    for cls, names in (
        (TrainOptions, None),
        (TrainSetup, dict(zip(SETUP_KEYS, SETUP_KEYS, strict=True))),
        (MouthOptions, MOUTH_KEYS),
    ):
        hints = typing.get_type_hints(cls)
        by_field = {f.name: f for f in fields(cls)}
        for key, name in (names or {n: n for n in by_field}).items():
            found[key] = (hints[name], by_field[name].metadata)
    return found


def check_settings(settings: Mapping[str, Any], label: Callable[[str, Any], str]) -> dict[str, Any]:
    """`settings` with each known key's value checked against its field's type and range (`audio_rates`
    may be "4,16", as the flag takes it): a UsageError `<label(key, value)>: expected <what it takes>`
    otherwise. Unknown keys pass through (`TrainSetup.from_settings` names them)."""
    known = setting_fields()
    checked = dict(settings)
    for key, value in settings.items():
        if key not in known:
            continue
        kind, meta = known[key]
        given, bare = value, _bare(kind)
        if isinstance(value, str) and typing.get_origin(bare) is list:  # "4,16": the flag's spelling
            (item,) = typing.get_args(bare)
            value = [v.strip() for v in value.split(",") if v.strip()]
            with suppress(ValueError):  # else left as text, which the check below refuses
                value = [item(v) for v in value]
        ok, value = _fits(value, kind, meta)
        if not ok:
            raise UsageError(f"{label(key, given)}: expected {_expected(kind, meta)}")
        checked[key] = value
    return checked


def _bare(kind: Any) -> Any:
    """`X` of `X | None`."""
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    return kind


def _fits(value: Any, kind: Any, meta: Mapping) -> tuple[bool, Any]:
    """(whether `value` is of type `kind` within meta's range, the value as the field takes it)."""
    if value is None and type(None) in typing.get_args(kind):
        return True, None
    kind = _bare(kind)
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            return False, value
        items = [_fits(v, typing.get_args(kind)[0], meta) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if kind is bool:
        return isinstance(value, bool), value
    if kind is str:
        return isinstance(value, str | os.PathLike), value
    if kind in (int, float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)) or not math.isfinite(value):
            return False, value
        low, above = meta.get("min"), meta.get("above")
        within = (low is None or value >= low) and (above is None or value > above)
        return within, kind(value)
    return isinstance(value, kind), value


def _expected(kind: Any, meta: Mapping) -> str:
    """What a field takes, in words: "an integer >= 1", "a list of numbers >= 0", "true or false"."""
    kind = _bare(kind)
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        words = {int: "integers", float: "numbers", str: "strings"}
        return f"a list of {words.get(item, item.__name__)}{_range(meta)}"
    if kind is bool:
        return "true or false"
    words = {int: "an integer", float: "a number", str: "a string"}
    return words.get(kind, kind.__name__) + (_range(meta) if kind in (int, float) else "")


def _range(meta: Mapping) -> str:
    if "above" in meta:
        return f" > {meta['above']}"
    return f" >= {meta['min']}" if "min" in meta else ""


def _read_toml(path: str | os.PathLike) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read train config ({exc})") from None
