"""Helpers the benchmarks share: a quickly trained checkpoint, a noisy clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avsr_cli.checkpoints.loading import build_model
from avsr_cli.errors import AvsrError
from avsr_cli.frontends.media import load_audio
from avsr_cli.modeling.model import AVSRModel
from avsr_cli.tasks.datasets import Item
from avsr_cli.tasks.evaluate import EvaluateOptions, prepare_item
from avsr_cli.tasks.training.features import encode_audio
from avsr_cli.tasks.training.options import TrainOptions
from avsr_cli.tasks.training.trainer import Trainer


def train_checkpoint(
    config, audio_paths: list, texts: list[str], options: TrainOptions, out_dir
) -> tuple[AVSRModel, list[float]]:
    """Build `config`'s model, train it on (audio file, transcript) pairs, save it to `out_dir`."""
    torch.manual_seed(options.seed)
    model = build_model(config)
    frames = encode_audio(model, [load_audio(p) for p in audio_paths])
    result = Trainer(model, frames, texts, options, Path(out_dir)).run(resume=False)
    return model, result.losses


def prepare_clip(item: Item, snr: float, noise_spec: str, seed: int) -> tuple[np.ndarray | AvsrError, float]:
    """Decode a clip's audio, mix noise at `snr` (seeded per clip id); returns (audio or error, seconds)."""
    media = prepare_item(item, "asr", snr, "none", EvaluateOptions(noise=noise_spec, seed=seed))
    return (media.error if media.error is not None else media.audio), media.seconds
