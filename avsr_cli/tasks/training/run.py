"""A training run, `train(setup)`: the data loaded, the model started (fresh from a base, from a checkpoint,
or as the run being resumed), the clips encoded, and the Trainer run; under torchrun on every rank."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ...checkpoints.bases import DEFAULT_VIDEO_RATE, base_config, video_encoder_config
from ...checkpoints.loading import (
    build_model,
    check_config_fits_adapter,
    load_adapter_state,
    load_checkpoint,
    read_adapter,
    resolve_device,
)
from ...checkpoints.locate import find_checkpoint
from ...errors import AvsrError, UsageError
from ...modeling.config import ModelConfig
from ...modeling.model import AVSRModel
from ...runtime import cuda_device_for
from ...storage import cache_root
from ..datasets import Dataset, load_dataset
from ..distributed import World, barrier, distributed_run
from .features import TrainData, prepare_data
from .options import TrainSetup
from .reports import TrainResult
from .state import LOG_FILE, STATE_FILE, read_train_state
from .trainer import StepCallback, Trainer

DEFAULT_BASE = "whisper-base-smollm2"
STARTED_CONFIG = "train_config.json"  # the model config of the run in a folder: a resumed run rebuilds it


def train(
    setup: TrainSetup,
    *,
    on_encode: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train projectors + LoRA on `setup.data` (any layout `load_dataset` reads) into an avsr checkpoint in
    `setup.output_dir`.

    The model starts from `setup.checkpoint` (an avsr checkpoint, fine-tuned further) or else from
    `setup.base` (a built-in recipe or a config .json: encoders + LLM, fresh projectors and LoRA);
    `setup.video_encoder` adds the video side to a base that has none. A run in an output folder that holds
    a training state resumes from it (`resume=False` starts over). `on_encode(done, total)` is told of each
    clip encoded, `on_step` of each step (a `StepInfo`, or a `CTCStepInfo` during CTC pre-alignment).

    Launched by torchrun (or `avsr train --nproc N`), every rank runs this same call and they train
    data-parallel (`Trainer`); rank 0 alone writes the output folder and reports progress.
    """
    with distributed_run() as world:
        main = world is None or world.main
        options = setup.options
        options.check()
        if options.select == "best" and not setup.val_data:
            raise UsageError("select 'best' needs validation data (--val-data)")
        out = Path(setup.output_dir)
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out}: exists and is not a directory")
        train_set = load_dataset(setup.data, setup.limit)
        if not train_set.items:
            raise UsageError(f"{setup.data}: no usable clips ({len(train_set.skipped)} skipped)")
        # only the clips validation decodes (the first val_limit by id) are encoded
        val_set = load_dataset(setup.val_data, options.val_limit) if setup.val_data else None
        resuming = setup.resume and (out / STATE_FILE).exists() and (out / STARTED_CONFIG).exists()
        # an unreadable state stops the run here, before the model loads and the clips are encoded
        saved_state = read_train_state(out / STATE_FILE) if resuming else None
        model = _start_model(setup, resuming, world)
        device = cuda_device_for(world.local_rank) if world and setup.device == "auto" else setup.device
        model.to(resolve_device(device))
        tr, val = _encode(setup, model, train_set, val_set, on_encode if main else None, world)
        val_pairs = (val.frames, val.texts) if val else None
        trainer = Trainer(model, tr.frames, tr.texts, options, out, val_pairs, world, tr.contexts)
        result = trainer.run(setup.resume, on_step, saved_state)
        if world:  # the others wait until rank 0 has written the checkpoint
            barrier(world)
        unusable = [(s.path, s.reason) for d in (train_set, val_set) if d is not None for s in d.skipped]
        result.failed = unusable + tr.failed + (val.failed if val else [])
        return result


def _start_model(setup: TrainSetup, resuming: bool, world: World | None) -> AVSRModel:
    """The model the run trains: the resumed run's, the checkpoint's (its LoRA maybe widened), or a fresh
    one from the base; its config saved in the output folder (stale states and adapters cleared first)."""
    options, out = setup.options, Path(setup.output_dir)
    ckpt_dir = None
    if resuming:
        config = ModelConfig.load(out / STARTED_CONFIG)  # the run being resumed decides the model
    elif setup.checkpoint:
        ckpt_dir = find_checkpoint(setup.checkpoint)
        config = _checkpoint_config(setup, ckpt_dir)
    else:
        config = _base_config(setup)
    added_lora = [] if resuming else widen_lora(config, options.lora_targets, bool(setup.checkpoint))
    for modality in options.modalities():
        if getattr(config, f"{modality}_encoder") is None:
            hint = " (add one with --video-encoder)" if modality == "video" else ""
            raise UsageError(f"mode {options.mode} needs a {modality} encoder; the model has none{hint}")
    main = world is None or world.main
    if world:  # every rank has decided whether it resumes before rank 0 touches the folder
        barrier(world)
    if not resuming and main:
        for stale in (STATE_FILE, LOG_FILE):
            (out / stale).unlink(missing_ok=True)
        for f in (out / "epochs").glob("epoch*.safetensors") if (out / "epochs").is_dir() else []:
            f.unlink()
    if ckpt_dir is not None:
        if added_lora:  # the checkpoint's adapter in a model with more LoRA modules
            model = build_model(config)
            load_adapter_state(model, read_adapter(ckpt_dir), new_lora_modules=added_lora)
        else:
            model = load_checkpoint(ckpt_dir, device="cpu")
            model.config = config
        config.modes = [m for m in ("asr", "vsr", "avsr") if m in {*config.modes, *options.modes()}]
    else:
        torch.manual_seed(options.seed)
        model = build_model(config)
    model.config.name = out.name
    if main:
        out.mkdir(parents=True, exist_ok=True)
        model.config.save(out / STARTED_CONFIG)
    return model


def _checkpoint_config(setup: TrainSetup, ckpt_dir: Path) -> ModelConfig:
    """The config of the checkpoint fine-tuned on, checked against the setup (it keeps its own window)."""
    options = setup.options
    config = absolute_sources(ModelConfig.load(ckpt_dir / "config.json"), ckpt_dir)
    check_config_fits_adapter(config, ckpt_dir)
    if setup.video_encoder and config.video_encoder is None:
        raise UsageError("--video-encoder adds a video side to a base; this checkpoint has none to keep")
    window = config.audio_encoder.window if config.audio_encoder is not None else None
    if options.encoder_window and window and options.encoder_window != window:
        raise UsageError(
            f"--encoder-window {options.encoder_window}: the checkpoint was trained on {window} "
            "frames and keeps them (start from a base to change it)"
        )
    return config


def _base_config(setup: TrainSetup) -> ModelConfig:
    """A fresh model's config: the base's, with the setup's window, video encoder, rates and modes."""
    options = setup.options
    config = base_config(setup.base or DEFAULT_BASE, Path(setup.output_dir).name)
    if options.encoder_window and config.audio_encoder is not None:
        config.audio_encoder.window = options.encoder_window
    if setup.video_encoder:
        config.video_encoder = video_encoder_config(setup.video_encoder)
    for modality in options.modalities():
        rates = options.rates(modality)
        if rates:
            setattr(config.compression, f"{modality}_rates", sorted(set(rates)))
        elif modality == "video" and not config.compression.video_rates:
            config.compression.video_rates = [DEFAULT_VIDEO_RATE]
    config.modes = [m for m in ("asr", "vsr", "avsr") if m in options.modes()]
    return config


def _encode(
    setup: TrainSetup,
    model: AVSRModel,
    train_set: Dataset,
    val_set: Dataset | None,
    on_encode: Callable[[int, int], None] | None,
    world: World | None,
) -> tuple[TrainData, TrainData | None]:
    """The training and validation clips as encoder frames (cached in `setup.feature_cache`)."""
    cache = Path(setup.feature_cache) if setup.feature_cache else cache_root() / "features"
    crops = Path(setup.mouth_cache) if setup.mouth_cache else None
    modalities = setup.options.modalities()
    n_total = len(train_set.items) + (len(val_set.items) if val_set else 0)
    done = [0]

    def encoded() -> None:
        done[0] += 1
        if on_encode:
            on_encode(done[0], n_total)

    tr = prepare_data(model, train_set, modalities, cache, encoded, setup.mouth, crops, world)
    val = None
    if val_set is not None:
        val = prepare_data(model, val_set, modalities, cache, encoded, setup.mouth, crops, world)
    if not tr.frames:
        raise AvsrError(f"{setup.data}: no clip could be encoded ({tr.failed[0][0]}: {tr.failed[0][1]})")
    return tr, val


def widen_lora(config, targets: list[str] | None, fine_tune: bool) -> list[str]:
    """Set `config`'s LoRA modules to `targets`; returns the modules a fine-tuned checkpoint gains. A
    checkpoint keeps the modules it was trained with (their weights are what it learned)."""
    if targets is None:
        return []
    if config.lora is None:
        raise UsageError("--lora-targets: this model has no LoRA")
    targets = list(dict.fromkeys(targets))
    if not fine_tune:
        config.lora.target_modules = targets
        return []
    old = list(config.lora.target_modules)
    if not set(old) <= set(targets):
        raise UsageError(
            f"--lora-targets: the checkpoint's LoRA is on {', '.join(old)}; fine-tuning keeps those "
            "and may add others"
        )
    added = [t for t in targets if t not in old]
    config.lora.target_modules = old + added
    return added


def absolute_sources(config, ckpt_dir: Path):
    """`config` with the sources and weight files it names relative to `ckpt_dir` made absolute, so a
    checkpoint trained from it elsewhere still finds its encoders and LLM."""
    parts = [config.audio_encoder, config.video_encoder, config.llm]
    for part in (p for p in parts if p is not None):
        if part.source and (Path(ckpt_dir) / part.source).is_dir():
            part.source = str((Path(ckpt_dir) / part.source).resolve())
        if part.weights and not Path(part.weights).is_absolute():
            part.weights = str((Path(ckpt_dir) / part.weights).resolve())
    return config
