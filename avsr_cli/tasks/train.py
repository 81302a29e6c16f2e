"""Training the projectors + LoRA on top of the frozen encoders and LLM (the Llama-AVSR recipe).

Reference recipe (Llama-AVSR train.py / README commands): AdamW betas (0.9, 0.98), weight
decay 0.1, lr 1e-3 for ASR/AVSR and 5e-4 for VSR, cosine schedule (`--warmup-epochs 0` by default),
gradient clip 10, batches by a frame budget (`--max-frames-audiovisual 1500`: 60 s of 25 fps frames per
device), bf16 on GPU, only projectors and LoRA trainable, checkpoint averaging of the last epochs. Omni-AVSR's
matryoshka training draws one compression rate per step (`random.choice`), so any trained rate can be picked
at inference.

Modes: asr (Whisper frames), vsr (AV-HuBERT frames of the mouth crops), avsr (both; the audio cut or padded
to 640 samples per video frame, Llama-AVSR av_dataset.py), or several at once (Omni-AVSR multi-task: every
step computes each task's loss on the same batch and rates and trains on their (weighted) mean, Omni-AVSR
lightning_OmniAVSR.py `training_step`).

Here the frozen encoders run once per clip under `torch.no_grad()` and their frames are cached on disk
(`FeatureCache`), so epochs after the first cost only the projector + LLM. The price: no per-epoch video
augmentation (the reference's train-time RandomCrop(88) + AdaptiveTimeMask); the crops use the test-time
centre crop.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..checkpoints.bases import DEFAULT_VIDEO_RATE, base_config
from ..errors import AvsrError, OutputError, UsageError
from ..frontends.mouth import MouthOptions
from ..modeling.config import ENCODER_WINDOWS, MODE_TO_TASK
from ..modeling.llm import TrainingKernels
from ..modeling.model import AVSRModel, ModalityInputs
from ..storage import atomic_path, atomic_write_text, cache_root
from .datasets import Dataset, Item
from .distributed import World, distributed_run
from .transcript import rounded

REFERENCE_LR = {"asr": 1e-3, "avsr": 1e-3, "vsr": 5e-4}  # Llama-AVSR README training commands
PRECISIONS = ("auto", "fp32", "bf16")
MODE_MODALITIES = {"asr": ("audio",), "vsr": ("video",), "avsr": ("audio", "video")}
FRAMES_PER_SECOND = {"audio": 50.0, "video": 25.0}  # Whisper encoder frames; AV-HuBERT frames (25 fps video)
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "training.json"


@dataclass(frozen=True)
class TrainOptions:
    """What `train` does; defaults follow the reference recipe (module docstring). Numeric fields carry
    their range in metadata ("min": at least; "above": more than), which settings are checked against."""

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


@dataclass
class TrainResult:
    """Where the checkpoint went and how training went."""

    checkpoint: Path
    steps: int
    epochs: int
    losses: list[float]  # per optimizer step
    validations: list[dict] = field(default_factory=list)  # {"step", "epoch", "wer", "cer", "clips"}
    resumed_from: int = 0  # optimizer step resumed from (0: fresh start)
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)  # clips that could not be used, and why
    selected: list[int] = field(default_factory=list)  # epochs (0-based) whose adapters form the checkpoint
    precision: str = "fp32"  # what the steps computed in: fp32 or bf16 (autocast)


# ------------------------------------------------------------------------------------------ features


class FeatureCache:
    """Frozen-encoder frames of each clip, computed once and kept as safetensors files in `root`.

    The key covers the encoder (source, revision, weights, width), the file (absolute path, size, mtime), the
    modality and whatever else changes the frames (the mouth-crop options; the video length audio is cut to),
    so a changed file, encoder or option never reuses stale frames. Mouth crops are cached too
    (`mouth_cache`, default `<avsr cache>/mouth`, the folder `avsr evaluate` uses).
    """

    def __init__(
        self,
        root: Path,
        model: AVSRModel,
        mouth: MouthOptions | None = None,
        mouth_cache: Path | None = None,
    ) -> None:

        self.root = Path(root)
        self.model = model
        self.mouth = mouth or MouthOptions()
        self.mouth_cache = Path(mouth_cache) if mouth_cache else cache_root() / "mouth"

    def _key(self, path: Path, modality: str, extra: dict | None = None) -> Path:
        enc = getattr(self.model.config, f"{modality}_encoder")
        st = path.stat()
        ident = [asdict(enc), modality, str(path.resolve()), st.st_size, st.st_mtime_ns]
        if extra is not None:
            ident.append(extra)
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{modality}-{digest}.safetensors"

    def frames(
        self, items: Sequence[Item], modalities: Sequence[str], on_clip: Callable[[], None] | None = None
    ) -> list:
        """Per item: {modality: encoder frames}, or the AvsrError that made the clip unusable."""
        self.root.mkdir(parents=True, exist_ok=True)
        out: list = []
        for item in items:
            try:
                out.append(self._item(item, modalities))
            except AvsrError as exc:
                out.append(exc)
            except OSError as exc:
                out.append(AvsrError(f"{exc.filename or item.media}: {exc.strerror or exc}"))
            if on_clip:
                on_clip()
        return out

    def _item(self, item: Item, modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        from ..frontends.mouth import aligned_audio

        frames: dict[str, torch.Tensor] = {}
        if "video" in modalities:
            mouth = asdict(self.mouth)
            frames["video"] = self._cached(
                self._key(item.media, "video", mouth), lambda: self._encode_video(item.media)
            )
        if "audio" in modalities:
            path = item.audio_path
            if "video" in frames:  # avsr: audio cut or padded to the video (Llama-AVSR av_dataset.py)
                n = frames["video"].shape[0]

                def load():
                    wave = aligned_audio(path, n)
                    if wave is None:
                        raise AvsrError(f"{path}: mode avsr needs an audio stream; the file has none")
                    return wave

                key = self._key(path, "audio", {"video_frames": n})
            else:
                from ..frontends.media import load_audio

                key, load = self._key(path, "audio"), lambda: load_audio(path)
            frames["audio"] = self._cached(key, lambda: self._encode_audio(path, load()))
        return frames

    def _cached(self, key: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key.exists():
            return load_file(str(key))["frames"]
        frames = compute().detach().float().cpu().contiguous()
        with atomic_path(key) as tmp:
            save_file({"frames": frames}, str(tmp))
        return frames

    def _encode_audio(self, path: Path, wave: np.ndarray) -> torch.Tensor:
        if len(wave) / 16000 > 30:  # the Whisper window; longer clips would be cut (reference: 30 s)
            raise AvsrError(f"{path}: longer than 30 s, too long for one training clip")
        return encode_audio(self.model, [wave])[0]

    def _encode_video(self, path: Path) -> torch.Tensor:
        from ..frontends.mouth import cached_mouth_frames, shared_backend
        from ..modeling.avhubert import encode_mouth_clips

        crops, _, _ = cached_mouth_frames(
            path, self.mouth, self.mouth_cache, shared_backend(self.mouth.backend)
        )
        return encode_mouth_clips(self.model.video_encoder, [crops])[0]


def encode_audio(model: AVSRModel, waveforms: list[np.ndarray]) -> list[torch.Tensor]:
    """Frozen Whisper frames of in-memory 16 kHz waveforms (no_grad, not inference_mode: the frames feed a
    graph later)."""
    with torch.no_grad():
        feats = model.audio_frontend(waveforms)
        return [f.detach() for f in model.audio_encoder(feats.input_features, feats.n_frames)]


# ------------------------------------------------------------------------------------------- batching


def length_batches(
    lengths: Sequence[int], frames_per_second: float, options: TrainOptions, rng: random.Random
) -> list[list[int]]:
    """Length-bucketed batches: clips sorted by length (with random tie order) and cut so that the padded
    size (longest clip x clips) stays within `options.batch_seconds`; the batch order is shuffled."""
    budget = options.batch_seconds * frames_per_second
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches, batch, longest = [], [], 0
    for i in order:
        if batch and (
            max(longest, lengths[i]) * (len(batch) + 1) > budget or len(batch) >= options.max_batch
        ):
            batches.append(batch)
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, lengths[i])
    if batch:
        batches.append(batch)
    rng.shuffle(batches)
    return batches


def ctc_prealign(
    model: AVSRModel,
    frames: list[torch.Tensor],
    targets: list[list[int]],
    rates: list[int],
    options: TrainOptions,
    on_step: Callable[[dict], None] | None = None,
    modality: str = "audio",
    world: World | None = None,
) -> list[float]:
    """Pre-align a modality's projectors with the LLM's token embeddings: CTC over the projected tokens
    scored against the (frozen) input embeddings of the transcripts' tokens, so the LLM's first look at the
    audio or video is a blank-padded spelling of the transcript. Only the tokens that occur in the
    transcripts (plus a blank) are classes, which keeps the logits small. Returns the loss per step.

    A step takes `grad_accum` batches per rank; with a `world` the ranks' gradients are summed, so the steps
    are those of one process with N times the grad_accum."""
    projector = model.projectors[modality]
    ctc = CTCClasses.of(model, targets)
    blank_bias = ctc.blank_bias.requires_grad_(True)
    params = [*projector.parameters(), blank_bias]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=options.ctc_lr, betas=(0.9, 0.98), weight_decay=options.weight_decay)
    rng = random.Random(options.seed + 7)
    lengths = [f.shape[0] for f in frames]
    fps = FRAMES_PER_SECOND[modality]
    losses = []
    size, rank = (world.size, world.rank) if world else (1, 0)
    projector.train()
    try:
        for epoch in range(options.ctc_epochs):
            batches = length_batches(lengths, fps, options, random.Random(options.seed * 1000 + 500 + epoch))
            per_step = options.grad_accum * size
            for start in range(0, len(batches), per_step):
                group = batches[start : start + per_step]
                drawn = [rng.choice(rates) for _ in group]  # every rank draws every batch's rate: same stream
                opt.zero_grad()
                loss_sum = 0.0
                for batch, rate in list(zip(group, drawn, strict=True))[rank::size]:
                    loss = ctc.loss(projector, [frames[i] for i in batch], [targets[i] for i in batch], rate)
                    (loss / len(group)).backward()
                    loss_sum += float(loss.detach()) / len(group)
                if world:
                    from .distributed import sum_gradients

                    (loss_sum,) = sum_gradients(params, [loss_sum])
                torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
                opt.step()
                losses.append(loss_sum)
                if on_step:
                    on_step(
                        {"ctc_step": len(losses), "epoch": epoch, "loss": losses[-1], "modality": modality}
                    )
    finally:
        projector.eval()
        blank_bias.requires_grad_(False)  # the projector stays trainable for the LLM phase
    return losses


@dataclass
class CTCClasses:
    """CTC classes for projected tokens: a blank (index 0) and every token the transcripts use (EOS is no
    class), scored by dot products with the LLM's frozen input embeddings of those tokens."""

    classes: torch.Tensor  # (1 + n_tokens, hidden): row 0, the blank, is zeros
    index: dict[int, int]  # token id -> class
    blank_bias: torch.Tensor  # added to the blank's logit (trained by pre-alignment)

    @classmethod
    def of(cls, model: AVSRModel, targets: list[list[int]]) -> CTCClasses:
        vocab = sorted({t for tg in targets for t in tg[:-1]})
        emb = model.llm.get_input_embeddings().weight.detach()
        classes = torch.cat([torch.zeros(1, emb.shape[1], device=emb.device), emb[vocab].float()])
        index = {t: i + 1 for i, t in enumerate(vocab)}
        return cls(classes, index, torch.zeros(1, device=emb.device))

    def loss(
        self, projector, frames: list[torch.Tensor], targets: list[list[int]], rate: int
    ) -> torch.Tensor:
        """Mean CTC loss of one batch of projected frames against its transcripts' token classes."""
        import torch.nn.functional as F

        outs = projector(frames, rate)
        logits = [o.float() @ self.classes.T for o in outs]
        for lg in logits:
            lg[:, 0] = lg[:, 0] + self.blank_bias
        tgt = [torch.tensor([self.index[t] for t in tg[:-1]]) for tg in targets]
        t_max = max(lg.shape[0] for lg in logits)
        padded = torch.zeros(t_max, len(frames), self.classes.shape[0], device=self.classes.device)
        for k, lg in enumerate(logits):
            padded[: lg.shape[0], k] = lg
        return F.ctc_loss(
            padded.log_softmax(-1),
            torch.cat(tgt),
            torch.tensor([lg.shape[0] for lg in logits]),
            torch.tensor([len(t) for t in tgt]),
            blank=0,
            zero_infinity=True,
        )


def trainable_parameters(model: AVSRModel, modes: list[str], train_lora: bool) -> list[torch.nn.Parameter]:
    """The projectors and the LoRA adapters `modes` use (shared and/or task-specific), set trainable."""
    params = list(model.projectors.parameters())
    if train_lora and model.config.lora is not None:
        active = {a for mode in modes for a in model.config.lora.active_adapters(mode)}
        for name, p in model.llm.named_parameters():
            if "lora_" in name and any(f".{a}." in name for a in active):
                params.append(p)
    for p in params:
        p.requires_grad_(True)
    return params


def autocast_precision(precision: str, device: torch.device) -> str:
    """The precision a run computes in: 'auto' is bf16 autocast where the device computes bf16 natively (a
    bf16 GPU, or a CPU whose oneDNN has bf16 kernels: AVX512-BF16 or AMX), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # On an AVX512-BF16 CPU a step of the default model trains 1.43x faster under bf16 autocast,
    # with the same losses to 2-3 digits (8 steps: 4.1 against 2.9 s a step); without native kernels bf16
    # is emulated and slower.
    native = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if native else "fp32"


def _autocast(precision: str, device: torch.device):
    """The context a step computes in, for a precision `autocast_precision` resolved."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# ------------------------------------------------------------------------------------------- training


class Trainer:
    """Trains `model`'s projectors + LoRA on (encoder frames, transcript) pairs; resumable from `out_dir`.

    `frames` holds per clip a {modality: frames} dict (or, for a single-modality mode, the frames alone).
    Batches are bucketed on the first modality's length: audio when the modes read audio, else video.

    Data-parallel with a `world` (torchrun): an optimizer step takes `grad_accum` x ranks batches of the
    epoch's (seeded, identical on every rank) batch list, each rank backpropagates its own share, and the
    gradients are summed in one all_reduce before the step, so N ranks follow exactly the optimisation of
    one process with N times the grad_accum. Only rank 0 writes (state, log, checkpoint).
    """

    def __init__(
        self,
        model: AVSRModel,
        frames: Sequence[torch.Tensor | dict[str, torch.Tensor]],
        texts: list[str],
        options: TrainOptions,
        out_dir: Path,
        val: tuple[Sequence[torch.Tensor | dict[str, torch.Tensor]], list[str]] | None = None,
        world: World | None = None,
    ) -> None:
        self.modes, self.modalities = options.modes(), options.modalities()
        self.world = world
        self.size, self.rank = (world.size, world.rank) if world else (1, 0)
        self.main = self.rank == 0
        if not frames:
            raise UsageError("no training clips")
        self.model, self.texts = model, texts
        self.options, self.out_dir = options, Path(out_dir)
        self.frames = [self._as_dict(f) for f in frames]
        self.val = ([self._as_dict(f) for f in val[0]], val[1]) if val else None
        self.rates: dict[str, list[int]] = {}
        for modality in self.modalities:
            have = model.config.rates(modality)
            if modality not in model.projectors:
                raise UsageError(f"mode {options.mode} needs a {modality} projector; this model has none")
            self.rates[modality] = options.rates(modality) or have
            missing = set(self.rates[modality]) - set(have)
            if missing:
                raise UsageError(f"rates {sorted(missing)} not among the model's {modality} rates {have}")
        self.targets = [model.target_ids(t) for t in texts]
        self.kernels = TrainingKernels(model.llm)  # run() sets the steps' dtype and compilation
        self.fps = FRAMES_PER_SECOND[self.modalities[0]]
        self.lengths = [f[self.modalities[0]].shape[0] for f in self.frames]

    def _as_dict(self, frames: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(frames, dict):
            return frames
        if len(self.modalities) != 1:
            raise UsageError(f"mode {self.options.mode} needs audio and video frames per clip")
        return {self.modalities[0]: frames}

    def _inputs(self, samples: list[dict[str, torch.Tensor]], rates: dict[str, int], mode: str, device):
        """(audio, video) ModalityInputs of a batch for `mode` (None for a modality it does not read)."""
        used = MODE_MODALITIES[mode]
        return tuple(
            ModalityInputs([s[m].to(device) for s in samples], rates[m]) if m in used else None
            for m in ("audio", "video")
        )

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        return length_batches(
            self.lengths, self.fps, self.options, random.Random(self.options.seed * 1000 + epoch)
        )

    def batches_per_step(self) -> int:
        """The global batch of one optimizer step, in batches: grad_accum on each of the ranks."""
        return self.options.grad_accum * self.size

    def total_steps(self) -> tuple[int, int]:
        """(optimizer steps, epochs) the run will take."""
        per_epoch = math.ceil(len(self._epoch_batches(0)) / self.batches_per_step())
        if self.options.max_steps:
            return self.options.max_steps, math.ceil(self.options.max_steps / per_epoch)
        return per_epoch * self.options.epochs, self.options.epochs

    def validate(self, limit: int) -> dict | None:
        """Greedy-decoded WER/CER on the first `limit` validation clips, per mode (the first mode's at top
        level), at each modality's first rate. With a world, rank r decodes clips r, r + N, ... and the
        transcripts are gathered, so every rank gets the same scores."""
        if not self.val:
            return None
        samples, texts = self.val[0][:limit], self.val[1][:limit]
        with self.kernels.decoding():
            return self._validate(samples, texts)

    def _validate(self, samples: list[dict[str, torch.Tensor]], texts: list[str]) -> dict:
        from ..modeling.decoding import DecodingOptions
        from .scoring import score

        self.model.eval()
        device = self.model.llm.get_input_embeddings().weight.device
        rates = {m: r[0] for m, r in self.rates.items()}
        per_mode = {}
        mine = samples[self.rank :: self.size]
        for mode in self.modes:
            hyps = []
            for i in range(0, len(mine), 8):
                audio, video = self._inputs(mine[i : i + 8], rates, mode, device)
                hyps += self.model.generate(mode, audio, video, DecodingOptions(num_beams=1))
            if self.world:
                from .distributed import gather_texts

                shares = gather_texts(hyps)
                hyps = [shares[i % self.size][i // self.size] for i in range(len(samples))]
            s = score(list(zip(texts, hyps, strict=True)), "lrs")
            per_mode[mode] = {"wer": s.wer, "cer": s.cer, "clips": len(texts), "example": [texts[0], hyps[0]]}
        first = per_mode[self.modes[0]]
        return {**first, "modes": per_mode} if len(self.modes) > 1 else first

    def run(
        self,
        resume: bool = True,
        on_step: Callable[[dict], None] | None = None,
        saved_state: dict | None = None,
    ) -> TrainResult:
        """Train (resuming from the state in the output folder, or `saved_state` read from it already)."""
        o, model = self.options, self.model
        started = time.monotonic()
        rng = random.Random(o.seed)
        torch.manual_seed(o.seed)
        device = model.llm.get_input_embeddings().weight.device
        precision = autocast_precision(o.precision, device)
        params = trainable_parameters(model, self.modes, o.train_lora)
        weights = o.weights()
        opt = torch.optim.AdamW(params, lr=o.learning_rate(), betas=(0.9, 0.98), weight_decay=o.weight_decay)
        total, n_epochs = self.total_steps()

        def lr_at(step: int) -> float:
            if step < o.warmup_steps:
                return (step + 1) / o.warmup_steps
            progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        step, epoch, batch_pos, losses, validations = 0, 0, 0, [], []
        state_path = self.out_dir / STATE_FILE
        resumed_from = 0
        resuming = resume and state_path.exists()
        report = on_step if self.main else None
        if self.world:  # every rank starts from rank 0's projectors and LoRA, as DDP does
            from .distributed import broadcast_parameters

            broadcast_parameters(params)
        if o.ctc_epochs and not resuming:
            self.ctc_losses = []
            for modality in self.modalities:
                frames = [f[modality] for f in self.frames]
                rates = self.rates[modality]
                self.ctc_losses += ctc_prealign(
                    model, frames, self.targets, rates, o, report, modality, self.world
                )
        if resuming:
            state = saved_state if saved_state is not None else read_train_state(state_path)
            from ..checkpoints.loading import load_adapter_state

            saved = int(state["batches_per_step"]) if "batches_per_step" in state else None
            if saved is not None and saved != self.batches_per_step():
                raise UsageError(
                    f"{state_path}: the run took {saved} batches per step (grad_accum x processes), this "
                    f"one takes {o.grad_accum} x {self.size} = {self.batches_per_step()}; resume with the "
                    "same product (e.g. the same number of processes), or start over with --no-resume"
                )

            load_adapter_state(model, state["adapter"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            step, epoch, batch_pos = state["step"], state["epoch"], state["batch_pos"]
            losses = list(state["losses"])
            validations = json.loads(state["validations"])
            rng.setstate(_rng_state(state["rng"]))
            torch.set_rng_state(state["torch_rng"])
            resumed_from = step
        # the auxiliary CTC's classes, the same for every modality (blank bias fixed at 0: not trained here)
        ctc = CTCClasses.of(model, self.targets) if o.ctc_weight else None
        model.train()
        # On 2 CPU threads, a step of the default model's batches (30 s of 3-10 s clips, ~40-130 positions
        # a row): eager attention 1.10-1.16x faster than SDPA (whose CPU flash-attention backward was 15 % of
        # the step), the frozen weights cast once for bf16 1.11x, compiled 1.6-2.7x (docs/training.md).
        dtype = torch.bfloat16 if precision == "bf16" else None
        self.kernels = TrainingKernels(model.llm, dtype, compile=o.compile)
        with self.kernels.steps():
            try:
                while step < total and epoch < n_epochs:
                    batches = self._epoch_batches(epoch)
                    while batch_pos < len(batches) and step < total:
                        group = batches[batch_pos : batch_pos + self.batches_per_step()]
                        opt.zero_grad()
                        loss_sum, ctc_sum, mode_losses = 0.0, 0.0, dict.fromkeys(self.modes, 0.0)
                        # one rate per modality and batch, shared by the tasks (Omni-AVSR random.choice);
                        # every rank draws the whole group's rates, so the stream is the same as in one
                        # process
                        draws = [{m: rng.choice(self.rates[m]) for m in self.modalities} for _ in group]
                        rates = [d[self.modalities[0]] if len(d) == 1 else d for d in draws]
                        for batch, drawn in list(zip(group, draws, strict=True))[self.rank :: self.size]:
                            samples = [self.frames[i] for i in batch]
                            targets = [self.targets[i] for i in batch]
                            for mode, weight in zip(self.modes, weights, strict=True):
                                audio, video = self._inputs(samples, drawn, mode, device)
                                with _autocast(precision, device):
                                    loss = model.loss(mode, audio, video, targets)
                                share = weight / len(self.modes) / len(group)
                                (loss * share).backward()  # one graph at a time: memory stays one task's
                                loss_sum += float(loss.detach()) * share
                                mode_losses[mode] += float(loss.detach()) / len(group)
                            for modality in self.modalities if ctc is not None else []:
                                frames = [s[modality].to(device) for s in samples]
                                with _autocast(precision, device):
                                    aux = ctc.loss(
                                        model.projectors[modality], frames, targets, drawn[modality]
                                    )
                                (aux * o.ctc_weight / len(group)).backward()
                                ctc_sum += float(aux.detach()) / len(group) / len(self.modalities)
                        if self.world:
                            from .distributed import sum_gradients

                            loss_sum, ctc_sum, *summed = sum_gradients(
                                params, [loss_sum, ctc_sum, *mode_losses.values()]
                            )
                            mode_losses = dict(zip(self.modes, summed, strict=True))
                        torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
                        opt.step()
                        sched.step()
                        step += 1
                        batch_pos += len(group)
                        losses.append(loss_sum)
                        info = {"step": step, "total": total, "epoch": epoch, "loss": loss_sum}
                        info["rates"] = rates
                        if len(self.modes) > 1:
                            info["mode_losses"] = mode_losses
                        if ctc is not None:
                            info["ctc_loss"] = ctc_sum
                        info["lr"] = sched.get_last_lr()[0]
                        if o.val_every and step % o.val_every == 0:
                            validations.append(self._validation(step, epoch))
                            info["val"] = validations[-1]
                        epoch_done = batch_pos >= len(batches)
                        if epoch_done:
                            self._save_epoch_adapter(epoch)
                            if not o.val_every and self.val:
                                validations.append(self._validation(step, epoch))
                                info["val"] = validations[-1]
                            epoch, batch_pos = epoch + 1, 0
                        if self.main:
                            self._log(info)
                            if on_step:
                                on_step(info)
                            if step % o.save_every == 0 or step >= total or epoch_done:
                                self._save_state(opt, sched, step, epoch, batch_pos, losses, validations, rng)
                        if epoch_done:
                            break
            finally:
                model.eval()
                for p in params:
                    p.requires_grad_(False)
        if batch_pos:  # stopped by max_steps inside an epoch: that partial epoch counts as the last
            self._save_epoch_adapter(epoch)
            if not o.val_every and self.val and not any(v["step"] == step for v in validations):
                validations.append(self._validation(step, epoch))  # its epoch-end validation
        result = TrainResult(
            self.out_dir,
            step,
            epoch,
            losses,
            validations,
            resumed_from,
            time.monotonic() - started,
            precision=precision,
        )
        if not self.main:  # rank 0 writes the checkpoint (into the same out_dir)
            return result
        result.checkpoint, result.selected = self._finish(validations)
        summary = {
            "options": asdict(o),
            "steps": step,
            "epochs": epoch,
            "clips": len(self.frames),
            "final_loss": float(np.mean(losses[-10:])) if losses else None,
            "validations": validations,
            "seconds_this_run": round(result.seconds, 1),
            "selected_epochs": result.selected,
            "precision": result.precision,
        }
        atomic_write_text(result.checkpoint / SUMMARY_FILE, json.dumps(rounded(summary), indent=1) + "\n")
        return result

    def _validation(self, step: int, epoch: int) -> dict:
        was_training = self.model.training
        v = self.validate(self.options.val_limit) or {}
        if was_training:
            self.model.train()
        return {"step": step, "epoch": epoch, **v}

    def _log(self, info: dict) -> None:
        with open(self.out_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(rounded(info)) + "\n")

    def _epochs_dir(self) -> Path:
        return self.out_dir / "epochs"

    def _save_epoch_adapter(self, epoch: int) -> None:
        from ..checkpoints.loading import adapter_state

        if not self.main:
            return
        d = self._epochs_dir()
        d.mkdir(exist_ok=True)
        with _saving(d / f"epoch{epoch:03d}.safetensors", "the epoch adapter") as tmp:
            save_file({k: v.float().cpu() for k, v in adapter_state(self.model).items()}, str(tmp))

    def _save_state(self, opt, sched, step, epoch, batch_pos, losses, validations, rng) -> None:
        from ..checkpoints.loading import adapter_state

        state = {
            "adapter": {k: v.cpu() for k, v in adapter_state(self.model).items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "epoch": epoch,
            "batch_pos": batch_pos,
            "batches_per_step": self.batches_per_step(),
            "losses": torch.tensor(losses, dtype=torch.float64),
            "validations": json.dumps(validations),
            "rng": _rng_tensor(rng.getstate()),
            "torch_rng": torch.get_rng_state(),
        }
        with _saving(self.out_dir / STATE_FILE, "the training state") as tmp:
            torch.save(state, tmp)

    def _finish(self, validations: list[dict]) -> tuple[Path, list[int]]:
        """Put the selected epoch adapter (the best by validation WER, or the average of the last
        `average_last`) into the model and save the checkpoint."""
        from ..checkpoints.loading import load_adapter_state, save_checkpoint

        files = sorted(self._epochs_dir().glob("epoch*.safetensors"))[-max(1, self.options.average_last) :]
        if self.options.select == "best":
            ends = [v for v in validations if "wer" in v]  # val_every 0: all taken at epoch ends
            if not ends:
                raise UsageError("select 'best' needs validation data (--val-data)")
            best = min(ends, key=lambda v: (v["wer"], -v["epoch"]))  # ties: the later epoch
            files = [self._epochs_dir() / f"epoch{best['epoch']:03d}.safetensors"]
        if files:
            states = [load_file(str(f)) for f in files]
            avg = {k: sum(s[k].float() for s in states) / len(states) for k in states[0]}
            load_adapter_state(self.model, avg)
        return save_checkpoint(self.model, self.out_dir), [int(f.stem[len("epoch") :]) for f in files]


@contextmanager
def _saving(path: Path, what: str) -> Iterator[Path]:
    """A temporary path to save `what` into, renamed over `path` once written and synced to disk, so the
    previous file stays whole until the new one is; a failed write (a full disk) is an OutputError."""
    from safetensors import SafetensorError

    try:
        with atomic_path(path, durable=True) as tmp:
            yield tmp
    except (OSError, RuntimeError, SafetensorError) as exc:  # torch.save: RuntimeError (iostream error)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the write failed: disk full?"
        raise OutputError(
            f"{path}: cannot save {what} ({detail}); the one saved before is kept: make room and run the "
            "same command again to resume from it"
        ) from exc


STATE_KEYS = ("adapter", "optimizer", "scheduler", "step", "epoch", "batch_pos", "losses", "validations")
STATE_KEYS += ("rng", "torch_rng")


def read_train_state(path: Path) -> dict:
    """The resumable state saved in a run's folder, read whole (torch.load with weights_only: tensors and
    plain containers, nothing unpickled). A state that cannot be read (truncated by a full disk or a killed
    copy, or not a state at all) is a UsageError naming the ways out: --no-resume, or the last epoch
    adapter as the checkpoint to fine-tune on from."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        complete = isinstance(state, dict) and all(k in state for k in STATE_KEYS)
    except Exception:  # torch raises RuntimeError, EOFError or UnpicklingError for a broken file
        complete = False
    if complete:
        return state
    empty = path.is_file() and path.stat().st_size == 0
    out = path.parent
    epochs = sorted((out / "epochs").glob("epoch*.safetensors")) if (out / "epochs").is_dir() else []
    keep = (
        f", or train on from the last epoch adapter {epochs[-1]} (copy it into a folder as "
        f"adapter.safetensors with {out / 'train_config.json'} as config.json, and give that folder to "
        "--checkpoint)"
        if epochs and (out / "train_config.json").is_file()
        else ""
    )
    what = "empty" if empty else "truncated or corrupt"
    raise UsageError(
        f"{path}: cannot resume: the training state is unreadable ({what}): start over with --no-resume "
        f"(it removes the state and the epoch adapters){keep}"
    )


def _rng_tensor(state) -> torch.Tensor:
    version, internal, gauss = state
    return torch.tensor([version, *internal, -1 if gauss is None else 1], dtype=torch.int64)


def _rng_state(t: torch.Tensor):
    values = t.tolist()
    return values[0], tuple(values[1:-1]), None


# ------------------------------------------------------------------------------------- entry points


@dataclass
class TrainData:
    """A dataset resolved to encoder frames ({modality: frames} per clip) and texts; failures are
    (item id, reason)."""

    frames: list[dict[str, torch.Tensor]]
    texts: list[str]
    failed: list[tuple[str, str]]


def prepare_data(
    model: AVSRModel,
    dataset: Dataset,
    modalities: Sequence[str],
    cache_dir: Path,
    on_clip: Callable[[], None] | None = None,
    mouth: MouthOptions | None = None,
    mouth_cache: Path | None = None,
    world: World | None = None,
) -> TrainData:
    """Encoder frames (from the cache, else computed and cached) and transcripts of `dataset`'s items.

    With a `world`, rank r first encodes items r, r + N, ... into the cache; after a barrier every rank
    reads all the frames from it (the cache must be one folder all ranks see: a shared filesystem across
    nodes)."""
    for modality in modalities:
        if getattr(model, f"{modality}_encoder") is None:
            raise UsageError(
                f"training on {modality} needs a model with a {modality} encoder; this one has none"
            )
    cache = FeatureCache(cache_dir, model, mouth, mouth_cache)
    if world:
        from .distributed import barrier

        cache.frames(dataset.items[world.rank :: world.size], modalities, on_clip)
        barrier(world)
        on_clip = None
    results = cache.frames(dataset.items, modalities, on_clip)
    data = TrainData([], [], [])
    for item, r in zip(dataset.items, results, strict=True):
        if isinstance(r, Exception):
            data.failed.append((item.id, str(r)))
        else:
            data.frames.append(r)
            data.texts.append(item.reference)
    return data


def fit(
    model: AVSRModel,
    frames: Sequence[torch.Tensor | dict[str, torch.Tensor]],
    texts: list[str],
    options: TrainOptions,
    out_dir: Path,
    val: tuple[Sequence[torch.Tensor | dict[str, torch.Tensor]], list[str]] | None = None,
    resume: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train on in-memory (encoder frames, transcript) pairs and save the checkpoint to `out_dir`."""
    return Trainer(model, frames, texts, options, out_dir, val).run(resume, on_step)


def train(
    data: str | os.PathLike,
    output_dir: str | os.PathLike,
    options: TrainOptions | None = None,
    base: str | None = "whisper-base-smollm2",
    init_checkpoint: str | None = None,
    val_data: str | os.PathLike | None = None,
    feature_cache: str | os.PathLike | None = None,
    device: str = "auto",
    limit: int | None = None,
    resume: bool = True,
    on_encode: Callable[[int, int], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
    video_encoder: str | None = None,
    mouth: MouthOptions | None = None,
    mouth_cache: str | os.PathLike | None = None,
) -> TrainResult:
    """Train projectors + LoRA on a dataset (any layout `load_dataset` reads) into an avsr checkpoint.

    The model starts from `init_checkpoint` (an avsr checkpoint, fine-tuned further) or else from `base` (a
    built-in recipe or a config .json: encoders + LLM, fresh projectors and LoRA); `video_encoder` (an
    AV-HuBERT directory, Hub id or fairseq .pt) adds the video side to a base that has none. A run in an
    `output_dir` that holds a training state resumes from it (`resume=False` starts over). `feature_cache`
    defaults to `<avsr cache>/features`; `mouth` says how mouths are found and cut for vsr/avsr, and
    `mouth_cache` (default `<avsr cache>/mouth`, shared with `avsr evaluate`) keeps the crops.

    Launched by torchrun (or `avsr train --nproc N`), every rank runs this same call and they train
    data-parallel (`Trainer`); rank 0 alone writes `output_dir`.
    """
    with distributed_run() as world:
        from ..checkpoints.loading import (
            build_model,
            check_config_fits_adapter,
            load_adapter_state,
            load_checkpoint,
            read_adapter,
            resolve_device,
        )
        from ..modeling.config import ModelConfig
        from .datasets import load_dataset
        from .distributed import barrier

        main = world is None or world.main
        if not main:  # encoding progress is rank 0's to print (Trainer guards its own step reports)
            on_encode = None

        options = options or TrainOptions()
        options.check()
        if options.select == "best" and not val_data:
            raise UsageError("select 'best' needs validation data (--val-data)")
        modes, modalities = options.modes(), options.modalities()
        out = Path(output_dir)
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out}: exists and is not a directory")
        train_set = load_dataset(data, limit)
        if not train_set.items:
            raise UsageError(f"{data}: no usable clips ({len(train_set.skipped)} skipped)")
        # only the clips validation decodes (the first val_limit by id) are encoded
        val_set = load_dataset(val_data, options.val_limit) if val_data else None
        started_config = out / "train_config.json"
        resuming = resume and (out / STATE_FILE).exists() and started_config.exists()
        # an unreadable state stops the run here, before the model loads and the clips are encoded
        saved_state = read_train_state(out / STATE_FILE) if resuming else None
        if resuming:
            config = ModelConfig.load(started_config)  # the run being resumed decides the model
        elif init_checkpoint:
            from ..checkpoints.download import find_checkpoint

            ckpt_dir = find_checkpoint(init_checkpoint)
            config = absolute_sources(ModelConfig.load(ckpt_dir / "config.json"), ckpt_dir)
            check_config_fits_adapter(config, ckpt_dir)
            if video_encoder and config.video_encoder is None:
                raise UsageError(
                    "--video-encoder adds a video side to a base; this checkpoint has none to keep"
                )
            window = config.audio_encoder.window if config.audio_encoder is not None else None
            if options.encoder_window and window and options.encoder_window != window:
                raise UsageError(
                    f"--encoder-window {options.encoder_window}: the checkpoint was trained on {window} "
                    "frames and keeps them (start from a base to change it)"
                )
        else:
            config = base_config(base or "whisper-base-smollm2", out.name)
            if options.encoder_window and config.audio_encoder is not None:
                config.audio_encoder.window = options.encoder_window
            if video_encoder:
                from ..checkpoints.bases import video_encoder_config

                config.video_encoder = video_encoder_config(video_encoder)
            for modality in modalities:
                rates = options.rates(modality)
                if rates:
                    setattr(config.compression, f"{modality}_rates", sorted(set(rates)))
                elif modality == "video" and not config.compression.video_rates:
                    config.compression.video_rates = [DEFAULT_VIDEO_RATE]
            config.modes = [m for m in ("asr", "vsr", "avsr") if m in modes]
        added_lora = [] if resuming else widen_lora(config, options.lora_targets, bool(init_checkpoint))
        for modality in modalities:
            if getattr(config, f"{modality}_encoder") is None:
                hint = " (add one with --video-encoder)" if modality == "video" else ""
                raise UsageError(f"mode {options.mode} needs a {modality} encoder; the model has none{hint}")
        if world:  # every rank has decided whether it resumes before rank 0 touches the folder
            barrier(world)
        if not resuming and main:
            for stale in (STATE_FILE, LOG_FILE):
                (out / stale).unlink(missing_ok=True)
            for f in (out / "epochs").glob("epoch*.safetensors") if (out / "epochs").is_dir() else []:
                f.unlink()
        if init_checkpoint and not resuming:
            if added_lora:  # the checkpoint's adapter in a model with more LoRA modules
                model = build_model(config)
                load_adapter_state(model, read_adapter(ckpt_dir), new_lora_modules=added_lora)
            else:
                model = load_checkpoint(ckpt_dir, device="cpu")
                model.config = config
            config.modes = [m for m in ("asr", "vsr", "avsr") if m in {*config.modes, *modes}]
        else:
            torch.manual_seed(options.seed)
            model = build_model(config)
        model.config.name = out.name
        if main:
            out.mkdir(parents=True, exist_ok=True)
            model.config.save(started_config)
        cache = Path(feature_cache) if feature_cache else cache_root() / "features"
        n_total = len(train_set.items) + (len(val_set.items) if val_set else 0)
        done = [0]

        def encoded() -> None:
            done[0] += 1
            if on_encode:
                on_encode(done[0], n_total)

        if world and device == "auto":
            from ..runtime import cuda_device_for

            device = cuda_device_for(world.local_rank)
        model.to(resolve_device(device))
        crops = Path(mouth_cache) if mouth_cache else None
        tr = prepare_data(model, train_set, modalities, cache, encoded, mouth, crops, world)
        val = (
            prepare_data(model, val_set, modalities, cache, encoded, mouth, crops, world) if val_set else None
        )
        if not tr.frames:
            raise AvsrError(f"{data}: no clip could be encoded ({tr.failed[0][0]}: {tr.failed[0][1]})")
        val_pairs = (val.frames, val.texts) if val else None
        trainer = Trainer(model, tr.frames, tr.texts, options, out, val_pairs, world)
        result = trainer.run(resume, on_step, saved_state)
        if world:  # the others wait until rank 0 has written the checkpoint
            barrier(world)
        unusable = [(s.path, s.reason) for d in (train_set, val_set) if d is not None for s in d.skipped]
        result.failed = unusable + tr.failed + (val.failed if val else [])
        return result


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

    Built from a TOML file and flags with the same flat keys (`TrainSetup.load`); `run()` trains.
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

    def run(
        self,
        on_encode: Callable[[int, int], None] | None = None,
        on_step: Callable[[dict], None] | None = None,
    ) -> TrainResult:
        video = self.options.modalities() != ["audio"]
        return train(
            self.data,
            self.output_dir,
            self.options,
            base=self.base,
            init_checkpoint=self.checkpoint,
            val_data=self.val_data,
            feature_cache=self.feature_cache,
            device=self.device,
            limit=self.limit,
            resume=self.resume,
            on_encode=on_encode,
            on_step=on_step,
            video_encoder=self.video_encoder,
            mouth=self.mouth if video else None,
            mouth_cache=self.mouth_cache,
        )


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
