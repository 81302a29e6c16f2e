"""The library entry point: `Transcriber.from_checkpoint(...).transcribe(path) -> Result`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .config import MODES
from .decoding import DecodingOptions
from .errors import AvsrError, MediaError
from .features import SAMPLE_RATE
from .model import AVSRModel, ModalityInputs

SEGMENTATIONS = ("auto", "vad", "off")


@dataclass(frozen=True)
class TranscribeOptions:
    """What to transcribe and how; echoed in every Result so runs are reproducible."""

    mode: str = "asr"
    audio_rate: int | None = None  # compression rate among those the checkpoint was trained with
    video_rate: int | None = None
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    batch_size: int = 1
    # "auto": inputs longer than max_chunk are cut into speech chunks at pauses (Silero VAD); "vad": every
    # input is (speech-only chunks, so timestamps fit the speech: subtitles); "off": decode inputs whole.
    segmentation: str = "auto"
    max_chunk: float | None = None  # seconds; default: the checkpoint's training clip length
    merge_gap: float = 1.0  # speech regions closer than this share a chunk (more context, coarser timing)
    min_duration: float = 0.3  # shorter clips cannot hold a word; refuse rather than hallucinate
    silence_dbfs: float = -60.0  # RMS below this is silence: empty transcript, with a warning

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r} (expected one of {', '.join(MODES)})")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.segmentation not in SEGMENTATIONS:
            raise ValueError(f"unknown segmentation {self.segmentation!r} (expected one of {SEGMENTATIONS})")


@dataclass
class Segment:
    """A timed piece of transcript: one per clip, or one per speech chunk of a long file."""

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
        checkpoint: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        options: TranscribeOptions | None = None,
    ) -> Transcriber:
        """Load a checkpoint directory or model name; None: the built-in offline model (avsr-tiny-en)."""
        from .checkpoint import default_checkpoint, load_checkpoint

        checkpoint = default_checkpoint() if checkpoint is None else checkpoint
        return cls(load_checkpoint(checkpoint, device=device, dtype=dtype), options)

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
        result = next(self.transcribe_loaded([(name, audio, 0.0)], options))
        if isinstance(result, AvsrError):
            raise result
        return result

    def transcribe_many(
        self,
        paths: Iterable[str | Path],
        options: TranscribeOptions | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Iterator[Result | AvsrError]:
        """Yield, in order, a Result or the AvsrError explaining why that file failed."""
        from .media import load_audio

        def loaded() -> Iterator[Loaded]:
            for path in paths:
                start = time.perf_counter()
                try:
                    audio: np.ndarray | AvsrError = load_audio(path)
                except AvsrError as exc:
                    audio = exc
                yield str(path), audio, time.perf_counter() - start

        return self.transcribe_loaded(loaded(), options, on_progress)

    def transcribe_loaded(
        self,
        items: Iterable[Loaded],
        options: TranscribeOptions | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Iterator[Result | AvsrError]:
        """The core loop over decoded inputs `(name, audio or the error loading raised, demux seconds)`.

        Long inputs are cut into speech chunks; chunks of several files share batches; results come in order.
        `on_progress(seconds)` is called as media time is done (per decoded chunk, and for skipped audio).
        """
        report = on_progress or (lambda seconds: None)
        options = options or self.options
        self.check_options(options)
        queue: list[_Job] = []
        pending: list[tuple[_Job, int]] = []
        for name, audio, demux in items:
            job = self._prepare(name, audio, demux, options)
            report(job.duration - sum(e - s for s, e in job.chunks))  # audio that needs no decoding
            queue.append(job)
            pending += [(job, i) for i in range(len(job.chunks))]
            if len(pending) >= options.batch_size:
                self._run_pieces(pending, options, report)
                pending = []
            while queue and queue[0].done():
                yield queue.pop(0).result(self.model.config.name, options)
        if pending:
            self._run_pieces(pending, options, report)
        for job in queue:
            yield job.result(self.model.config.name, options)

    def _prepare(
        self, name: str, audio: np.ndarray | AvsrError, demux: float, options: TranscribeOptions
    ) -> _Job:
        if isinstance(audio, AvsrError):
            return _Job(name, None, error=audio)
        job = _Job(name, audio, timings={"demux": demux})
        duration = len(audio) / SAMPLE_RATE
        if duration < options.min_duration:
            job.error = MediaError(
                f"{name}: audio is only {duration:.2f} s long (at least {options.min_duration:.2f} s needed)"
            )
            return job
        level = rms_dbfs(audio)
        if level < options.silence_dbfs:
            job.warnings.append(f"{name}: no speech: audio is silent ({level:.0f} dBFS RMS)")
            return job
        max_chunk = options.max_chunk or self.model.config.chunk_seconds
        if options.segmentation == "vad" or (options.segmentation == "auto" and duration > max_chunk):
            from .segmentation import ChunkOptions, segment_audio

            start = time.perf_counter()
            job.chunks = [
                (c.start, c.end)
                for c in segment_audio(audio, chunks=ChunkOptions(max_chunk, merge_gap=options.merge_gap))
            ]
            job.timings["segmentation"] = time.perf_counter() - start
            if not job.chunks:
                job.warnings.append(f"{name}: no speech found by voice activity detection")
        elif duration > self.model.config.max_audio_seconds:
            limit = self.model.config.max_audio_seconds
            job.error = MediaError(
                f"{name}: {duration:.1f} s of audio is longer than the {limit:.0f} s this model accepts "
                f"(long-form chunking is off); it would be silently truncated"
            )
        else:
            job.chunks = [(0.0, duration)]
        job.texts = [None] * len(job.chunks)
        return job

    def _run_pieces(
        self, pieces: list[tuple[_Job, int]], options: TranscribeOptions, report: Callable[[float], None]
    ) -> None:
        """Decode a batch of chunks (possibly from several files) and store each text in its job."""
        model, cfg = self.model, self.model.config
        waves = []
        for job, i in pieces:
            start, end = job.chunks[i]
            waves.append(job.audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)])
        t0 = time.perf_counter()
        feats = model.audio_frontend(waves)
        t1 = time.perf_counter()
        frames = model.audio_encoder(feats.input_features, feats.n_frames)
        t2 = time.perf_counter()
        decoding = options.decoding
        if any(len(job.chunks) > 1 for job, _ in pieces) and decoding.max_new_tokens is None:
            # Chunks of long files can hold more words than the reference's 32-token budget allows.
            longest = max(len(w) for w in waves) / SAMPLE_RATE
            budget = max(cfg.decoding.max_new_tokens, math.ceil(longest * LONG_FORM_TOKENS_PER_SECOND))
            decoding = replace(decoding, max_new_tokens=budget)
        rate = cfg.pick_rate("audio", options.audio_rate)
        texts = model.generate(options.mode, ModalityInputs(frames, rate), None, decoding)
        t3 = time.perf_counter()
        share = {"features": (t1 - t0), "encoder": (t2 - t1), "llm": (t3 - t2)}
        for (job, i), text in zip(pieces, texts, strict=True):
            job.texts[i] = text
            report(job.chunks[i][1] - job.chunks[i][0])
            for key, value in share.items():
                job.timings[key] = job.timings.get(key, 0.0) + value / len(pieces)


LONG_FORM_TOKENS_PER_SECOND = 8  # generous: fast English speech is ~3 words (~4-5 tokens) per second
Loaded = tuple[str, "np.ndarray | AvsrError", float]


@dataclass
class _Job:
    """One input file on its way through the batched loop."""

    name: str
    audio: np.ndarray | None
    error: AvsrError | None = None
    chunks: list[tuple[float, float]] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE if self.audio is not None else 0.0

    def done(self) -> bool:
        return self.error is not None or all(t is not None for t in self.texts)

    def result(self, model_name: str, options: TranscribeOptions) -> Result | AvsrError:
        if self.error is not None:
            return self.error
        segments = [Segment(s, e, t) for (s, e), t in zip(self.chunks, self.texts, strict=True) if t]
        if len(self.chunks) > 1:
            from .subtitles import drop_repeated_phrases

            segments = [Segment(s.start, s.end, drop_repeated_phrases(s.text)) for s in segments]
        return Result(
            path=self.name,
            text=" ".join(s.text for s in segments),
            duration=self.duration,
            mode=options.mode,
            model=model_name,
            segments=segments,
            timings=self.timings,
            options=asdict(options),
            warnings=self.warnings,
        )
