"""The library entry point: `Transcriber.from_checkpoint(...).transcribe(path) -> Result`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import MODES
from .decoding import DecodingOptions
from .errors import AvsrError, MediaError
from .features import SAMPLE_RATE
from .model import AVSRModel, ModalityInputs


@dataclass(frozen=True)
class TranscribeOptions:
    """What to transcribe and how; echoed in every Result so runs are reproducible."""

    mode: str = "asr"
    audio_rate: int | None = None  # compression rate among those the checkpoint was trained with
    video_rate: int | None = None
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    batch_size: int = 1
    min_duration: float = 0.3  # shorter clips cannot hold a word; refuse rather than hallucinate
    silence_dbfs: float = -60.0  # RMS below this is silence: empty transcript, with a warning

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r} (expected one of {', '.join(MODES)})")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


@dataclass
class Segment:
    """A timed piece of transcript (one per clip for now; long-form segmentation adds more)."""

    start: float
    end: float
    text: str


@dataclass
class Result:
    """The transcript of one file, with what produced it and how long each stage took (seconds)."""

    path: str
    text: str
    duration: float
    mode: str
    model: str
    segments: list[Segment]
    timings: dict[str, float]
    options: dict
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def rms_dbfs(audio: np.ndarray) -> float:
    if audio.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


class Transcriber:
    """Loads a model once and transcribes many files (batched; a bad file never stops the others)."""

    def __init__(self, model: AVSRModel, options: TranscribeOptions | None = None) -> None:
        self.model = model
        self.options = options or TranscribeOptions()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        options: TranscribeOptions | None = None,
    ) -> Transcriber:
        from .checkpoint import load_checkpoint

        return cls(load_checkpoint(checkpoint, device=device, dtype=dtype), options)

    @property
    def model_name(self) -> str:
        return self.model.config.name

    def check_options(self, options: TranscribeOptions) -> None:
        """Raise a user-facing error if this model cannot run `options` (mode, rates)."""
        from .errors import CheckpointError

        cfg = self.model.config
        if options.mode not in cfg.modes:
            raise CheckpointError(
                f"checkpoint '{cfg.name}' supports modes {', '.join(cfg.modes)}, not {options.mode}"
            )
        if options.mode != "asr":
            raise CheckpointError(f"mode {options.mode} needs the video path, which avsr does not have yet")
        cfg.pick_rate("audio", options.audio_rate)

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
        self.check_options(options)
        self._check_audio(name, audio, options)
        return self._run_batch([(name, audio, {"demux": 0.0})], options)[0]

    def transcribe_many(
        self, paths: Iterable[str | Path], options: TranscribeOptions | None = None
    ) -> Iterator[Result | AvsrError]:
        """Yield, in order, a Result or the AvsrError explaining why that file failed."""
        from .media import load_audio

        options = options or self.options
        self.check_options(options)
        pending: list[tuple[str, np.ndarray, dict[str, float]]] = []
        order: list[str | Result | AvsrError] = []

        def flush() -> Iterator[Result | AvsrError]:
            results = iter(self._run_batch(pending, options)) if pending else iter(())
            for item in order:
                yield next(results) if isinstance(item, str) else item
            pending.clear()
            order.clear()

        for path in paths:
            start = time.perf_counter()
            try:
                audio = load_audio(path)
                self._check_audio(str(path), audio, options)
            except AvsrError as exc:
                order.append(exc)
            else:
                pending.append((str(path), audio, {"demux": time.perf_counter() - start}))
                order.append(str(path))
            if len(pending) >= options.batch_size:
                yield from flush()
        yield from flush()

    def _check_audio(self, name: str, audio: np.ndarray, options: TranscribeOptions) -> None:
        duration = len(audio) / SAMPLE_RATE
        if duration < options.min_duration:
            raise MediaError(
                f"{name}: audio is only {duration:.2f} s long (at least {options.min_duration:.2f} s needed)"
            )
        limit = self.model.config.max_audio_seconds
        if duration > limit:
            raise MediaError(
                f"{name}: {duration:.1f} s of audio is longer than the {limit:.0f} s this model "
                f"accepts; cut it into shorter clips (it would be silently truncated)"
            )

    def _run_batch(
        self, batch: list[tuple[str, np.ndarray, dict[str, float]]], options: TranscribeOptions
    ) -> list[Result]:
        model, cfg = self.model, self.model.config
        texts: dict[int, str] = {}
        warnings: dict[int, list[str]] = {i: [] for i in range(len(batch))}
        speech = []
        for i, (name, audio, _) in enumerate(batch):
            level = rms_dbfs(audio)
            if level < options.silence_dbfs:
                texts[i] = ""
                warnings[i].append(f"{name}: no speech: audio is silent ({level:.0f} dBFS RMS)")
            else:
                speech.append(i)
        timings = {"features": 0.0, "encoder": 0.0, "llm": 0.0}
        if speech:
            t0 = time.perf_counter()
            feats = model.audio_frontend([batch[i][1] for i in speech])
            t1 = time.perf_counter()
            frames = model.audio_encoder(feats.input_features, feats.n_frames)
            t2 = time.perf_counter()
            rate = cfg.pick_rate("audio", options.audio_rate)
            out = model.generate(options.mode, ModalityInputs(frames, rate), None, options.decoding)
            t3 = time.perf_counter()
            timings = {"features": t1 - t0, "encoder": t2 - t1, "llm": t3 - t2}
            texts.update(zip(speech, out, strict=True))
        echo = asdict(options)
        results = []
        for i, (name, audio, own) in enumerate(batch):
            duration = len(audio) / SAMPLE_RATE
            results.append(
                Result(
                    path=name,
                    text=texts[i],
                    duration=duration,
                    mode=options.mode,
                    model=cfg.name,
                    segments=[Segment(0.0, duration, texts[i])] if texts[i] else [],
                    timings={**own, **timings, "batch_size": len(speech)},
                    options=echo,
                    warnings=warnings[i],
                )
            )
        return results
