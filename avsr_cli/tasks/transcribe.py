"""The library entry point: `Transcriber.from_checkpoint(...).transcribe(path) -> Result`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..checkpoints.aligners import aligner_hint, load_zoo_aligner
from ..checkpoints.loading import DEFAULT_MODEL, default_checkpoint, load_checkpoint
from ..checkpoints.locate import find_checkpoint
from ..checkpoints.zoo import shipped_dir
from ..errors import AvsrError, CheckpointError, MediaError, UsageError
from ..frontends.media import probe
from ..modeling.aligners import Aligner
from ..modeling.model import AVSRModel
from .batching import BatchLoop, report_stage
from .media_inputs import MediaInput, load_media
from .transcript import Result, TranscribeOptions

# The same words for every file, so a batch can say it once.
LIPS_UNUSED = (
    "lips are not used: checkpoint '{name}' reads audio only "
    "(avsr download-checkpoint --list shows the models that read lips)"
)


class Transcriber:
    """Loads a model once and transcribes many files (batched; a bad file never stops the others)."""

    def __init__(self, model: AVSRModel, options: TranscribeOptions | None = None) -> None:
        self.model = model
        self.options = options or TranscribeOptions()
        self.aligners: dict[str, Aligner] = {}  # --aligner: loaded once, by name or folder

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        options: TranscribeOptions | None = None,
    ) -> Transcriber:
        """Load a checkpoint directory or model name; None: the built-in offline model (avsr-tiny-en)."""
        ckpt_dir = default_checkpoint() if checkpoint is None else find_checkpoint(str(checkpoint))
        # The built-in model decodes with its LoRA folded into the LLM (the weights peft's merge_and_unload
        # gives, without importing peft); other checkpoints keep peft's unmerged path their parity tests pin.
        merge = ckpt_dir.resolve() == (shipped_dir() / DEFAULT_MODEL).resolve()
        transcriber = cls(load_checkpoint(ckpt_dir, device=device, dtype=dtype, merge_lora=merge), options)
        if options is not None and options.word_timestamps:
            transcriber.aligner(options)  # a missing aligner says so before any file is read
        return transcriber

    def check_options(self, options: TranscribeOptions) -> None:
        """Raise a user-facing error if this model cannot run `options` (mode, rates, prompt length)."""
        cfg = self.model.config
        if options.mode != "auto" and options.mode not in cfg.modes:
            raise CheckpointError(
                f"checkpoint '{cfg.name}' supports modes {', '.join(cfg.modes)}, not {options.mode}"
            )
        modes = cfg.modes if options.mode == "auto" else [options.mode]
        if any(m in ("asr", "avsr") for m in modes):
            cfg.pick_rate("audio", options.audio_rate)
        if any(m in ("vsr", "avsr") for m in modes):
            cfg.pick_rate("video", options.video_rate)
        self.model.context_ids(options.initial_prompt)
        if options.word_timestamps and modes == ["vsr"]:
            raise UsageError("word timestamps are aligned on the audio: mode vsr has none")
        if options.word_timestamps:
            self.aligner(options)

    def aligner(self, options: TranscribeOptions) -> Aligner | None:
        """What times words for `options`: the aligner it names (a zoo name or folder, loaded once), else the
        checkpoint's own; None without word timestamps. Raises CheckpointError when there is none."""
        if not options.word_timestamps:
            return None
        if options.aligner is None:
            if self.model.aligner is None:
                raise CheckpointError(
                    f"checkpoint '{self.model.config.name}' has no aligner (aligner.json), so it cannot time "
                    f"words: {aligner_hint()}"
                )
            return self.model.aligner
        if options.aligner not in self.aligners:
            device = next(self.model.parameters()).device
            self.aligners[options.aligner] = load_zoo_aligner(options.aligner, device)
        return self.aligners[options.aligner]

    def mode_for(self, path: str | Path, requested: str) -> str:
        """The mode for one file: `requested`, checked against the file's streams, or for "auto" the richest
        the checkpoint supports (avsr, then asr, then vsr). Raises MediaError naming what is missing."""
        return self._choose_mode(path, requested)[0]

    def _choose_mode(self, path: str | Path, requested: str) -> tuple[str, list[str]]:
        """(mode, notes): a note when "auto" leaves a video stream unused by an audio-only checkpoint."""
        info = probe(path)
        streams = {"audio": info.has_audio, "video": info.has_video}
        needs = {"asr": ("audio",), "vsr": ("video",), "avsr": ("audio", "video")}
        if requested != "auto":
            missing = [s for s in needs[requested] if not streams[s]]
            if missing:
                article = "an" if missing[0] == "audio" else "a"
                raise MediaError(
                    f"{path}: mode {requested} needs {article} {missing[0]} stream; the file has none"
                )
            return requested, []
        cfg = self.model.config
        for mode in ("avsr", "asr", "vsr"):
            if mode in cfg.modes and all(streams[s] for s in needs[mode]):
                reads_lips = any(m in cfg.modes for m in ("vsr", "avsr"))
                notes = [LIPS_UNUSED.format(name=cfg.name)] if streams["video"] and not reads_lips else []
                return mode, notes
        lacking = "audio" if not streams["audio"] else "video"
        modes = ", ".join(cfg.modes)
        raise MediaError(f"{path}: has no {lacking} stream, and checkpoint '{cfg.name}' reads only {modes}")

    def transcribe(self, path: str | Path, options: TranscribeOptions | None = None) -> Result:
        """Transcribe one media file; raises AvsrError (MediaError, CheckpointError) on bad input."""
        result = next(self.transcribe_many([path], options))
        if isinstance(result, AvsrError):
            raise result
        return result

    def transcribe_audio(
        self, audio: np.ndarray, name: str = "<array>", options: TranscribeOptions | None = None
    ) -> Result:
        """Transcribe a 16 kHz mono float32 waveform."""
        options = options or self.options
        if options.mode == "auto":
            options = replace(options, mode="asr")
        result = next(self.transcribe_loaded([MediaInput(name, audio, mode="asr")], options))
        if isinstance(result, AvsrError):
            raise result
        return result

    def transcribe_many(
        self,
        paths: Iterable[str | Path],
        options: TranscribeOptions | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Iterator[Result | AvsrError]:
        """Yield, in order, a Result or the AvsrError explaining why that file failed.

        `on_progress(seconds)` is called as media time is done; if it has a method `stage(what, done, total)`
        it is also told each step as it starts (reading a file, encoding, decoding: tokens generated)."""
        options = options or self.options
        self.check_options(options)

        def loaded() -> Iterator[MediaInput]:
            for path in paths:
                report_stage(on_progress, f"{Path(path).name}: reading")
                start = time.perf_counter()
                try:
                    item = self.load_media(path, options)
                except AvsrError as exc:
                    item = MediaInput(str(path), error=exc)
                item.seconds = time.perf_counter() - start
                yield item

        return self.transcribe_loaded(loaded(), options, on_progress)

    def load_media(self, path: str | Path, options: TranscribeOptions) -> MediaInput:
        """Decode what the file's mode (`options.mode`, or chosen by `mode_for`) needs."""
        mode, notes = ("asr", []) if options.mode == "asr" else self._choose_mode(path, options.mode)
        item = load_media(path, mode, options, whole_seconds=self.whole_seconds(options))
        item.notes += notes
        return item

    def whole_seconds(self, options: TranscribeOptions) -> float:
        """The longest audio held whole (what is decoded as one chunk); longer audio is cut into chunks, and
        read from its file block by block as they are found (`load_media`)."""
        cfg = self.model.config
        return max(options.max_chunk or cfg.chunk_seconds, cfg.max_audio_seconds)

    def transcribe_loaded(
        self,
        items: Iterable[MediaInput],
        options: TranscribeOptions | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Iterator[Result | AvsrError]:
        """The core loop over decoded inputs (each a MediaInput: audio and/or crops, or the loading error).

        Long inputs are cut into speech chunks; chunks of several files share batches; results come in order.
        `on_progress(seconds)` is called as media time is done (per decoded chunk, and for skipped audio).
        """
        report = on_progress or (lambda seconds: None)
        options = options or self.options
        self.check_options(options)
        yield from BatchLoop(self.model, self.aligner(options)).run(items, options, report)
