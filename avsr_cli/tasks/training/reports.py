"""What a training run reports: each step as it goes (`StepInfo`, `CTCStepInfo`) and the run at its end
(`TrainResult`). Plain data, light to import: the CLI's progress display reads it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

OPTIONAL = ("mode_losses", "ctc_loss", "val")  # StepInfo fields a log record leaves out when None


@dataclass(frozen=True)
class StepInfo:
    """One optimizer step of the LLM stage; also a line of the run's train_log.jsonl (`as_log`)."""

    step: int  # 1-based, counted over the whole run (resumed runs go on counting)
    total: int  # the steps the run takes
    epoch: int  # 0-based
    loss: float  # the step's (weighted) loss
    rates: list  # per batch: the drawn compression rate, or {modality: rate} for several modalities
    mode_losses: dict[str, float] | None = None  # several modes: each mode's loss
    ctc_loss: float | None = None  # the auxiliary CTC loss (ctc_weight > 0)
    lr: float = 0.0
    val: dict | None = None  # the validation taken after this step: {"step", "epoch", "wer", "cer", ...}

    def as_log(self) -> dict:
        """The step as a log record: the fields, those that do not apply (None) left out."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in record.items() if v is not None or k not in OPTIONAL}


@dataclass(frozen=True)
class CTCStepInfo:
    """One step of the CTC pre-alignment of a modality's projector (before the LLM stage)."""

    step: int  # 1-based, per modality
    epoch: int
    loss: float
    modality: str


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
