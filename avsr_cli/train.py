"""Training the projectors + LoRA on top of the frozen encoders and LLM (the Llama-AVSR recipe).

Reference recipe (Llama-AVSR train.py / README commands): AdamW betas (0.9, 0.98), weight decay 0.1,
lr 1e-3 for ASR/AVSR (5e-4 for VSR), cosine schedule, only projectors and LoRA trainable. Omni-AVSR's
matryoshka training draws one compression rate per step (`random.choice`), so any trained rate can be
picked at inference.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .model import AVSRModel, ModalityInputs


@dataclass
class TrainOptions:
    steps: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 0
    batch_size: int = 4
    mode: str = "asr"
    train_lora: bool = True
    grad_clip: float = 10.0
    seed: int = 0


def encode_audio(model: AVSRModel, waveforms: list[np.ndarray]) -> list[torch.Tensor]:
    """Frozen encoder frames, computed once (no_grad) and reused every epoch."""
    feats = model.audio_frontend(waveforms)
    return [f.detach() for f in model.audio_encoder(feats.input_features, feats.n_frames)]


def trainable_parameters(model: AVSRModel, mode: str, train_lora: bool) -> list[torch.nn.Parameter]:
    model._activate(mode)
    params = list(model.projectors.parameters())
    if train_lora and model.config.lora is not None:
        active = set(model.config.lora.active_adapters(mode))
        for name, p in model.llm.named_parameters():
            if "lora_" in name and any(f".{a}." in name for a in active):
                params.append(p)
    for p in params:
        p.requires_grad_(True)
    return params


def fit(
    model: AVSRModel,
    frames: list[torch.Tensor],
    texts: list[str],
    options: TrainOptions,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train on (encoder frames, transcript) pairs for `options.steps` steps; returns the loss per step."""
    rng = random.Random(options.seed)
    torch.manual_seed(options.seed)
    params = trainable_parameters(model, options.mode, options.train_lora)
    opt = torch.optim.AdamW(params, lr=options.lr, betas=(0.9, 0.98), weight_decay=options.weight_decay)

    def lr_at(step: int) -> float:
        if step < options.warmup_steps:
            return (step + 1) / options.warmup_steps
        progress = (step - options.warmup_steps) / max(1, options.steps - options.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    targets = [model.target_ids(t) for t in texts]
    rates = model.config.compression.audio_rates
    order: list[int] = []
    losses = []
    model.train()
    try:
        for step in range(options.steps):
            batch = []
            while len(batch) < min(options.batch_size, len(frames)):
                if not order:
                    order = list(range(len(frames)))
                    rng.shuffle(order)
                batch.append(order.pop())
            rate = rng.choice(rates)
            loss = model.loss(
                options.mode,
                ModalityInputs([frames[i] for i in batch], rate),
                None,
                [targets[i] for i in batch],
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        model.eval()
        for p in params:
            p.requires_grad_(False)
    return losses


def train_checkpoint(
    config, audio_paths: list, texts: list[str], options: TrainOptions, out_dir
) -> tuple[AVSRModel, list[float]]:
    """Build `config`'s model, train it on (audio file, transcript) pairs, save it to `out_dir`."""
    from .checkpoint import build_model, save_checkpoint
    from .media import load_audio

    torch.manual_seed(options.seed)
    model = build_model(config)
    frames = encode_audio(model, [load_audio(p) for p in audio_paths])
    losses = fit(model, frames, texts, options)
    save_checkpoint(model, out_dir)
    return model, losses
