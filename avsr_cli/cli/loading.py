"""What the commands that run a model share: their flags as TranscribeOptions, the checks made before any
model loads (checkpoint, modes, language), and the load itself, each failure one line."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

from rich.markup import escape

from ..modeling.config import CONFIG_FILE, ModelConfig
from ..modeling.decoding import DecodingOptions
from ..runtime import collection_paused
from .app import fail, run_guarded, stderr


def transcribe_options(flags: dict[str, Any], **fixed: Any):
    """The TranscribeOptions of transcribe, export-subtitles and evaluate from the command's flags
    (`ctx.params`): the decoding flags become its DecodingOptions (None: the checkpoint's defaults), every
    flag named like one of its fields maps onto that field, and `fixed` sets what the command decides."""
    # lazy: numpy (the options' segmentation and face backends), which --help never needs
    from ..frontends.vad import VadOptions
    from ..tasks.transcript import TranscribeOptions

    values = {k: v.value if isinstance(v, enum.Enum) else v for k, v in flags.items()}
    strategy = DecodingOptions(
        strategy=values["decoding"],
        num_beams=values["num_beams"],
        max_new_tokens=values["max_new_tokens"],
        seed=values["seed"],
        length_penalty=values["length_penalty"],
        no_repeat_ngram_size=values["no_repeat_ngram_size"],
    )
    names = {f.name for f in dataclasses.fields(TranscribeOptions)} - {"decoding", "vad"}
    chosen = {k: str(v) if isinstance(v, Path) else v for k, v in values.items() if k in names}
    if "vad_threshold" in values:  # --vad-threshold etc. are the VadOptions fields, prefixed
        vad_names = {f.name for f in dataclasses.fields(VadOptions)}
        chosen["vad"] = run_guarded(
            VadOptions, **{k[4:]: v for k, v in values.items() if k.startswith("vad_") and k[4:] in vad_names}
        )
    return run_guarded(TranscribeOptions, decoding=strategy, **{**chosen, **fixed})


def checkpoint_config(checkpoint: str | None):
    """The ModelConfig of --checkpoint (or the built-in model), read without loading any weights."""
    # lazy: the Hub client needs http and ssl, which --help never needs; the loader torch, only for the
    # built-in model (an unknown checkpoint is named without it)
    from ..checkpoints.locate import find_checkpoint

    if checkpoint is None:
        with collection_paused():  # importing torch
            from ..checkpoints.loading import default_checkpoint

        path = run_guarded(default_checkpoint)
    else:
        path = run_guarded(find_checkpoint, checkpoint)
    return run_guarded(ModelConfig.load, path / CONFIG_FILE)


def check_modes(config, modes: list[str]) -> None:
    """Before any model loads: a mode the checkpoint lacks is a usage error that names the zoo models that
    have it, with their download size and what they need to run."""
    from ..checkpoints.locate import zoo_status  # lazy: the Hub client needs http and ssl, --help never

    lacking = [m for m in modes if m not in config.modes]
    if not lacking:
        return
    offers = [
        f"{r.name} ({r.download_size}, {r.memory})"
        for r in zoo_status()
        if r.kind == "checkpoint" and all(m in r.modes for m in lacking)
    ]
    where = f"; models that do: {', '.join(offers)} (avsr download-checkpoint NAME)" if offers else ""
    raise fail(
        f"checkpoint '{config.name}' reads only {', '.join(config.modes)}, not {', '.join(lacking)}{where}"
    )


def check_language(language: str | None, checkpoint: str | None) -> None:
    """Before any model loads: --language must be one the checkpoint (the built-in model without one)
    transcribes, by its model card."""
    if language is None:
        return
    # lazy: the Hub client needs http and ssl, which --help never needs; the loader torch (built-in model)
    from ..checkpoints.locate import check_language as check

    checkpoint_config(checkpoint)  # an unknown or broken checkpoint says so first
    if checkpoint is None:
        from ..checkpoints.loading import DEFAULT_MODEL

        checkpoint = DEFAULT_MODEL
    run_guarded(check, language, checkpoint)


def load_transcriber(checkpoint: str | None, device: str, dtype: str, quiet: bool, verbose: bool = False):
    """The model of --checkpoint, loaded once (errors become one-line messages)."""
    with collection_paused():  # importing torch, then loading the model
        return _load_transcriber(checkpoint, device, dtype, quiet, verbose)


def _load_transcriber(checkpoint: str | None, device: str, dtype: str, quiet: bool, verbose: bool):
    # lazy: torch, which --help never needs
    from ..checkpoints.loading import DEFAULT_MODEL, default_checkpoint
    from ..tasks.transcribe import Transcriber

    if checkpoint is None:
        checkpoint = str(run_guarded(default_checkpoint))
        if not quiet and stderr.is_terminal:
            stderr.print(
                f"[dim]model: built-in {DEFAULT_MODEL} (English, audio only; --model picks another)[/dim]"
            )
    elif verbose:
        stderr.print(f"loading checkpoint {escape(checkpoint)} ...")
    return run_guarded(Transcriber.from_checkpoint, checkpoint, device=device, dtype=dtype)
