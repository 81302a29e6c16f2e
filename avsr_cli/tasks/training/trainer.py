"""The Trainer: projectors + LoRA trained on cached encoder frames, step by step, resumable, data-parallel
under torchrun; validated as it goes, and the selected epoch adapters saved as the checkpoint."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ...checkpoints.loading import adapter_state, load_adapter_state, save_checkpoint
from ...errors import UsageError
from ...modeling.decoding import DecodingOptions
from ...modeling.llm import TrainingKernels
from ...modeling.model import AVSRModel, ModalityInputs
from ...storage import atomic_write_text
from ..distributed import World
from ..scoring import score
from ..transcript import rounded
from .ctc import CTCClasses, ctc_prealign
from .distributed import broadcast_parameters, gather_texts, sum_gradients
from .options import MODE_MODALITIES, TrainOptions
from .reports import CTCStepInfo, StepInfo, TrainResult
from .state import LOG_FILE, STATE_FILE, SUMMARY_FILE, read_train_state, rng_state, rng_tensor, saving
from .steps import FRAMES_PER_SECOND, autocast, autocast_precision, length_batches, trainable_parameters

StepCallback = Callable[[StepInfo | CTCStepInfo], None]


@dataclass
class _Run:
    """One `Trainer.run`: what it trains with, and where it stands (what the training state saves)."""

    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    rng: random.Random  # draws the compression rates
    device: torch.device
    precision: str  # fp32 or bf16 (autocast)
    total: int  # optimizer steps
    n_epochs: int
    ctc: CTCClasses | None = None  # the auxiliary CTC's classes (ctc_weight > 0)
    step: int = 0
    epoch: int = 0
    batch_pos: int = 0  # batches of the epoch already stepped over
    losses: list[float] = field(default_factory=list)
    validations: list[dict] = field(default_factory=list)
    resumed_from: int = 0


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
        contexts: Sequence[str | None] | None = None,
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
        # an initial prompt per clip (a manifest's `context`), checked now: one too long stops the run here
        self.contexts = list(contexts) if contexts else [None] * len(texts)
        if len(self.contexts) != len(texts):
            raise ValueError(f"{len(self.contexts)} contexts for {len(texts)} clips")
        for context in set(self.contexts):
            model.context_ids(context)
        self.kernels = TrainingKernels(model.llm)  # run() sets the steps' dtype and compilation
        self.fps = FRAMES_PER_SECOND[self.modalities[0]]
        self.lengths = [f[self.modalities[0]].shape[0] for f in self.frames]
        self.weights = options.weights()

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
                shares = gather_texts(hyps)
                hyps = [shares[i % self.size][i // self.size] for i in range(len(samples))]
            s = score(list(zip(texts, hyps, strict=True)), "lrs")
            per_mode[mode] = {"wer": s.wer, "cer": s.cer, "clips": len(texts), "example": [texts[0], hyps[0]]}
        first = per_mode[self.modes[0]]
        return {**first, "modes": per_mode} if len(self.modes) > 1 else first

    def run(
        self,
        resume: bool = True,
        on_step: StepCallback | None = None,
        saved_state: dict | None = None,
    ) -> TrainResult:
        """Train (resuming from the state in the output folder, or `saved_state` read from it already)."""
        started = time.monotonic()
        run = self._start()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state_path = self.out_dir / STATE_FILE
        resuming = resume and state_path.exists()
        if self.world:  # every rank starts from rank 0's projectors and LoRA, as DDP does
            broadcast_parameters(run.params)
        if self.options.ctc_epochs and not resuming:
            self._prealign(on_step if self.main else None)
        if resuming:
            self._restore(run, saved_state if saved_state is not None else read_train_state(state_path))
        # the auxiliary CTC's classes, the same for every modality (blank bias fixed at 0: not trained here)
        run.ctc = CTCClasses.of(self.model, self.targets) if self.options.ctc_weight else None
        self._train(run, on_step)
        if run.batch_pos:  # stopped by max_steps inside an epoch: that partial epoch counts as the last
            self._save_epoch_adapter(run.epoch)
            ended = any(v["step"] == run.step for v in run.validations)
            if not self.options.val_every and self.val and not ended:
                run.validations.append(self._validation(run.step, run.epoch))  # its epoch-end validation
        seconds = time.monotonic() - started
        result = TrainResult(
            self.out_dir, run.step, run.epoch, run.losses, run.validations, run.resumed_from, seconds,
            precision=run.precision,
        )  # fmt: skip
        if not self.main:  # rank 0 writes the checkpoint (into the same out_dir)
            return result
        return self._summary(run, result)

    def _start(self) -> _Run:
        """Seeded streams, the trainable parameters, AdamW and its warm-up + cosine schedule."""
        o = self.options
        rng = random.Random(o.seed)
        torch.manual_seed(o.seed)
        device = self.model.llm.get_input_embeddings().weight.device
        precision = autocast_precision(o.precision, device)
        params = trainable_parameters(self.model, self.modes, o.train_lora)
        opt = torch.optim.AdamW(params, lr=o.learning_rate(), betas=(0.9, 0.98), weight_decay=o.weight_decay)
        total, n_epochs = self.total_steps()

        def lr_at(step: int) -> float:
            if step < o.warmup_steps:
                return (step + 1) / o.warmup_steps
            progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        return _Run(params, opt, sched, rng, device, precision, total, n_epochs)

    def _prealign(self, report: StepCallback | None) -> None:
        """The CTC pre-alignment stage, each modality's projector in turn."""
        self.ctc_losses = []
        for modality in self.modalities:
            frames = [f[modality] for f in self.frames]
            rates = self.rates[modality]
            self.ctc_losses += ctc_prealign(
                self.model, frames, self.targets, rates, self.options, report, modality, self.world
            )

    def _restore(self, run: _Run, state: dict) -> None:
        """Put the saved state into `run`, the model and the random streams."""
        state_path = self.out_dir / STATE_FILE
        saved = int(state["batches_per_step"]) if "batches_per_step" in state else None
        if saved is not None and saved != self.batches_per_step():
            raise UsageError(
                f"{state_path}: the run took {saved} batches per step (grad_accum x processes), this "
                f"one takes {self.options.grad_accum} x {self.size} = {self.batches_per_step()}; resume with "
                "the same product (e.g. the same number of processes), or start over with --no-resume"
            )
        load_adapter_state(self.model, state["adapter"])
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        run.step, run.epoch, run.batch_pos = state["step"], state["epoch"], state["batch_pos"]
        run.losses = list(state["losses"])
        run.validations = json.loads(state["validations"])
        run.rng.setstate(rng_state(state["rng"]))
        torch.set_rng_state(state["torch_rng"])
        run.resumed_from = run.step

    def _train(self, run: _Run, on_step: StepCallback | None) -> None:
        """The LLM stage: epochs of steps until `run.total`; the parameters are frozen again after it."""
        self.model.train()
        # On 2 CPU threads, a step of the default model's batches (30 s of 3-10 s clips, ~40-130 positions
        # a row): eager attention 1.10-1.16x faster than SDPA (whose CPU flash-attention backward was 15 % of
        # the step), the frozen weights cast once for bf16 1.11x, compiled 1.6-2.7x (docs/training.md).
        dtype = torch.bfloat16 if run.precision == "bf16" else None
        self.kernels = TrainingKernels(self.model.llm, dtype, compile=self.options.compile)
        with self.kernels.steps():
            try:
                while run.step < run.total and run.epoch < run.n_epochs:
                    self._epoch(run, on_step)
            finally:
                self.model.eval()
                for p in run.params:
                    p.requires_grad_(False)

    def _epoch(self, run: _Run, on_step: StepCallback | None) -> None:
        """The current epoch's remaining steps (up to `run.total`), each logged, reported and saved as due."""
        batches = self._epoch_batches(run.epoch)
        while run.batch_pos < len(batches) and run.step < run.total:
            info = self._step(run, batches[run.batch_pos : run.batch_pos + self.batches_per_step()])
            epoch_done = run.batch_pos >= len(batches)
            info = self._step_end(run, info, epoch_done)
            if self.main:
                self._log(info)
                if on_step:
                    on_step(info)
                if run.step % self.options.save_every == 0 or run.step >= run.total or epoch_done:
                    self._save_state(run)
            if epoch_done:
                break

    def _step(self, run: _Run, group: list[list[int]]) -> StepInfo:
        """One optimizer step over the batches of `group` (this rank backpropagates its share of them)."""
        run.opt.zero_grad()
        # one rate per modality and batch, shared by the tasks (Omni-AVSR random.choice); every rank draws
        # the whole group's rates, so the stream is the same as in one process
        draws = [{m: run.rng.choice(self.rates[m]) for m in self.modalities} for _ in group]
        loss_sum, ctc_sum, mode_losses = self._backward(run, group, draws)
        if self.world:
            loss_sum, ctc_sum, *summed = sum_gradients(run.params, [loss_sum, ctc_sum, *mode_losses.values()])
            mode_losses = dict(zip(self.modes, summed, strict=True))
        torch.nn.utils.clip_grad_norm_(run.params, self.options.grad_clip)
        run.opt.step()
        run.sched.step()
        run.step += 1
        run.batch_pos += len(group)
        run.losses.append(loss_sum)
        return StepInfo(
            step=run.step,
            total=run.total,
            epoch=run.epoch,
            loss=loss_sum,
            rates=[d[self.modalities[0]] if len(d) == 1 else d for d in draws],
            mode_losses=mode_losses if len(self.modes) > 1 else None,
            ctc_loss=ctc_sum if run.ctc is not None else None,
            lr=run.sched.get_last_lr()[0],
        )

    def _backward(
        self, run: _Run, group: list[list[int]], draws: list[dict[str, int]]
    ) -> tuple[float, float, dict[str, float]]:
        """Backpropagate this rank's batches of `group`, each task's loss (and the auxiliary CTC) in turn;
        returns the step's (weighted loss, CTC loss, loss per mode) over its share."""
        loss_sum, ctc_sum, mode_losses = 0.0, 0.0, dict.fromkeys(self.modes, 0.0)
        for batch, drawn in list(zip(group, draws, strict=True))[self.rank :: self.size]:
            samples = [self.frames[i] for i in batch]
            targets = [self.targets[i] for i in batch]
            contexts = [self.contexts[i] for i in batch]
            for mode, weight in zip(self.modes, self.weights, strict=True):
                audio, video = self._inputs(samples, drawn, mode, run.device)
                with autocast(run.precision, run.device):
                    loss = self.model.loss(mode, audio, video, targets, contexts)
                share = weight / len(self.modes) / len(group)
                (loss * share).backward()  # one graph at a time: memory stays one task's
                loss_sum += float(loss.detach()) * share
                mode_losses[mode] += float(loss.detach()) / len(group)
            for modality in self.modalities if run.ctc is not None else []:
                frames = [s[modality].to(run.device) for s in samples]
                with autocast(run.precision, run.device):
                    aux = run.ctc.loss(self.model.projectors[modality], frames, targets, drawn[modality])
                (aux * self.options.ctc_weight / len(group)).backward()
                ctc_sum += float(aux.detach()) / len(group) / len(self.modalities)
        return loss_sum, ctc_sum, mode_losses

    def _step_end(self, run: _Run, info: StepInfo, epoch_done: bool) -> StepInfo:
        """Validate where due (every `val_every` steps, else at epoch ends) and close an epoch that ended
        (its adapter saved); returns `info` with the validation taken."""
        o = self.options
        if o.val_every and run.step % o.val_every == 0:
            run.validations.append(self._validation(run.step, run.epoch))
            info = replace(info, val=run.validations[-1])
        if epoch_done:
            self._save_epoch_adapter(run.epoch)
            if not o.val_every and self.val:
                run.validations.append(self._validation(run.step, run.epoch))
                info = replace(info, val=run.validations[-1])
            run.epoch, run.batch_pos = run.epoch + 1, 0
        return info

    def _summary(self, run: _Run, result: TrainResult) -> TrainResult:
        """Save the checkpoint (`_finish`) and its training.json: the options, steps and validations."""
        result.checkpoint, result.selected = self._finish(run.validations)
        summary = {
            "options": asdict(self.options),
            "steps": run.step,
            "epochs": run.epoch,
            "clips": len(self.frames),
            "final_loss": float(np.mean(run.losses[-10:])) if run.losses else None,
            "validations": run.validations,
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

    def _log(self, info: StepInfo) -> None:
        with open(self.out_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(rounded(info.as_log())) + "\n")

    def _epochs_dir(self) -> Path:
        return self.out_dir / "epochs"

    def _save_epoch_adapter(self, epoch: int) -> None:
        if not self.main:
            return
        d = self._epochs_dir()
        d.mkdir(exist_ok=True)
        with saving(d / f"epoch{epoch:03d}.safetensors", "the epoch adapter") as tmp:
            save_file({k: v.float().cpu() for k, v in adapter_state(self.model).items()}, str(tmp))

    def _save_state(self, run: _Run) -> None:
        state = {
            "adapter": {k: v.cpu() for k, v in adapter_state(self.model).items()},
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "step": run.step,
            "epoch": run.epoch,
            "batch_pos": run.batch_pos,
            "batches_per_step": self.batches_per_step(),
            "losses": torch.tensor(run.losses, dtype=torch.float64),
            "validations": json.dumps(run.validations),
            "rng": rng_tensor(run.rng.getstate()),
            "torch_rng": torch.get_rng_state(),
        }
        with saving(self.out_dir / STATE_FILE, "the training state") as tmp:
            torch.save(state, tmp)

    def _finish(self, validations: list[dict]) -> tuple[Path, list[int]]:
        """Put the selected epoch adapter (the best by validation WER, or the average of the last
        `average_last`) into the model and save the checkpoint."""
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
