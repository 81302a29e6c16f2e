"""The library entry point: `Transcriber.from_checkpoint(...).transcribe(path) -> Result`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import AvsrError, MediaError
from ..frontends.face_backends import BACKENDS
from ..frontends.features import SAMPLE_RATE
from ..frontends.media import VIDEO_FPS
from ..frontends.vad import VadOptions
from ..modeling.config import MODES
from ..modeling.decoding import DecodingOptions
from ..modeling.model import AVSRModel, Hypothesis, ModalityInputs
from ..storage import display_name

SEGMENTATIONS = ("auto", "vad", "off")
# The same words for every file, so a batch can say it once.
LIPS_UNUSED = (
    "lips are not used: checkpoint '{name}' reads audio only "
    "(avsr download-checkpoint --list shows the models that read lips)"
)


DECODER_ROWS = 16  # default batch: 16 rows; 4 clips x 4 beams was the fastest on CPU (docs/benchmarks.md)


@dataclass(frozen=True)
class TranscribeOptions:
    """What to transcribe and how; echoed in every Result so runs are reproducible."""

    mode: str = "auto"  # asr, vsr, avsr, or auto: per file, by its streams and the checkpoint's modes
    audio_rate: int | None = None  # compression rate among those the checkpoint was trained with
    video_rate: int | None = None
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    # Chunks decoded together: at most batch_size of them (None: DECODER_ROWS rows, so 16 clips greedy and
    # 4 with 4 or more beams), and no more seconds of media than batch_seconds (the KV cache grows with
    # both). Batches change no text. Greedy on 2 CPU threads: 10 short clips (3 s) 14.1 s at 4
    # clips, 8.9 s at 16; a 2-minute recording (21 chunks) 22.9 s at 4, 15.6 s with 60 s a batch (1.39 GB
    # peak), 16.6 s with 45 s (1.35 GB), 18.3 s with 30 s (1.27 GB; 1.25 GB at 4 clips).
    batch_size: int | None = None
    batch_seconds: float = 30.0
    # "auto": inputs longer than max_chunk are cut into speech chunks at pauses (Silero VAD); "vad": every
    # input is (speech-only chunks, so timestamps fit the speech: subtitles); "off": decode inputs whole.
    segmentation: str = "auto"
    max_chunk: float | None = None  # seconds; default: the checkpoint's training clip length
    merge_gap: float = 1.0  # speech regions closer than this share a chunk (more context, coarser timing)
    min_duration: float = 0.3  # shorter clips cannot hold a word; refuse rather than hallucinate
    silence_dbfs: float = -60.0  # RMS below this is silence: empty transcript, with a warning
    face_backend: str = "dlib"  # vsr/avsr: face landmarks by dlib, face-alignment or mediapipe (mouth.py)
    detect_every: int = 10  # vsr/avsr: run the face detector every N frames, track in between
    mouth_cache: str | None = None  # vsr/avsr: keep mouth crops in this folder (shared by models, modes)
    vad: VadOptions = field(default_factory=VadOptions)  # speech regions for segmentation "auto"/"vad"
    # A segment whose mean token log-probability is below this is flagged low_confidence (faster-whisper's
    # log_prob_threshold default, -1.0): the model is guessing rather than hearing.
    logprob_threshold: float = -1.0

    def clips_per_batch(self, default_beams: int) -> int:
        """batch_size, or by default DECODER_ROWS decoder rows (clips x beams) and 4 clips at least."""
        if self.batch_size is not None:
            return self.batch_size
        return max(4, DECODER_ROWS // (self.decoding.num_beams or default_beams))

    def __post_init__(self) -> None:
        if self.mode not in (*MODES, "auto"):
            raise ValueError(f"unknown mode {self.mode!r} (expected auto or one of {', '.join(MODES)})")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.batch_seconds <= 0:
            raise ValueError("batch_seconds must be > 0")
        if self.face_backend not in BACKENDS:
            raise ValueError(f"unknown face backend {self.face_backend!r} (expected one of {BACKENDS})")
        if self.segmentation not in SEGMENTATIONS:
            raise ValueError(f"unknown segmentation {self.segmentation!r} (expected one of {SEGMENTATIONS})")


@dataclass
class Segment:
    """A timed piece of transcript: one per clip, or one per speech chunk of a long file; avg_logprob is the
    mean log-probability of its tokens (None for subtitle cues and other derived pieces)."""

    start: float
    end: float
    text: str
    avg_logprob: float | None = None
    low_confidence: bool = False


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
    notes: list[str] = field(default_factory=list)  # e.g. LIPS_UNUSED: worth saying once, not a problem
    avg_logprob: float | None = None  # the segments' avg_logprob, weighted by their duration
    low_confidence: bool = False  # avg_logprob below the options' logprob_threshold

    def to_dict(self) -> dict:
        """JSON-ready: times rounded to the millisecond, scores to 4 digits."""
        return rounded({**asdict(self), "path": display_name(self.path)})


def rounded(value, as_time: bool = False):
    """`value` with every float rounded: times (keys start, end, duration, seconds, *_s, and everything under
    timings) to the millisecond, other numbers (rates, scores) to 4 digits. Every JSON avsr writes uses it."""
    if isinstance(value, dict):
        return {k: rounded(v, as_time or k in TIME_KEYS or k.endswith("_s")) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, as_time) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        return round(value, 3 if as_time else 4)
    return value


TIME_KEYS = ("start", "end", "duration", "seconds", "timings", "max_chunk", "merge_gap", "min_duration")


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
        from ..checkpoints.loading import default_checkpoint, load_checkpoint

        checkpoint = default_checkpoint() if checkpoint is None else checkpoint
        return cls(load_checkpoint(checkpoint, device=device, dtype=dtype), options)

    def check_options(self, options: TranscribeOptions) -> None:
        """Raise a user-facing error if this model cannot run `options` (mode, rates)."""
        from ..errors import CheckpointError

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

    def mode_for(self, path: str | Path, requested: str) -> str:
        """The mode for one file: `requested`, checked against the file's streams, or for "auto" the richest
        the checkpoint supports (avsr, then asr, then vsr). Raises MediaError naming what is missing."""
        return self._choose_mode(path, requested)[0]

    def _choose_mode(self, path: str | Path, requested: str) -> tuple[str, list[str]]:
        """(mode, notes): a note when "auto" leaves a video stream unused by an audio-only checkpoint."""
        from ..frontends.media import probe

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
                _stage(on_progress, f"{Path(path).name}: reading")
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
        queue: list[_Job] = []
        pending: list[tuple[_Job, int]] = []
        clips = options.clips_per_batch(self.model.config.decoding.num_beams)
        for item in items:
            job = self._prepare(item, options)
            queue.append(job)
            for group in self._chunk_groups(job, options, report):
                # a long file's chunks join the queue shortest first: chunks of like length share a batch,
                # which runs until its longest transcript ends (a 2-minute recording: 17.9 -> 16.8 s, the
                # same text)
                by_length = sorted(group, key=lambda i: job.chunks[i][1] - job.chunks[i][0])
                pending += [(job, i) for i in by_length]
                # batches are capped even within one long file (21 chunks x 4 beams in one batch spent its
                # time copying the KV cache: capped at 4 it ran 1.43x faster, same text)
                while n := _full_batch(pending, clips, options.batch_seconds):
                    self._run_pieces(pending[:n], options, report)
                    pending = pending[n:]
            if job.error is not None:  # a recording that failed part way: its chunks are not decoded
                pending = [(j, i) for j, i in pending if j is not job]
            while queue and queue[0].done():
                yield queue.pop(0).result(self.model.config.name, options)
        if pending:
            self._run_pieces(pending, options, report)
        for job in queue:
            yield job.result(self.model.config.name, options)

    def _chunk_groups(
        self, job: _Job, options: TranscribeOptions, report: Callable[[float], None]
    ) -> Iterator[list[int]]:
        """The job's chunks (indices) in groups: all at once, or, for a recording read from its file, by
        STREAM_GROUP_SECONDS of speech as they are found. Reports the audio that needs no decoding."""
        if job.stream is None or not job.open:
            report(job.duration - sum(e - s for s, e in job.chunks))
            if job.chunks:
                yield list(range(len(job.chunks)))
            return
        from ..frontends.media import iter_audio
        from ..frontends.segmentation import ChunkOptions
        from ..frontends.stream_segmenter import StreamSegmenter

        max_chunk = options.max_chunk or self.model.config.chunk_seconds
        segmenter = StreamSegmenter(options.vad, ChunkOptions(max_chunk, merge_gap=options.merge_gap))
        group: list[int] = []
        done = seconds = 0.0  # media time reported; seconds of chunks in the group

        def take(chunks) -> None:
            nonlocal seconds
            for c in chunks:
                group.append(len(job.chunks))
                job.waves[len(job.chunks)] = segmenter.audio[
                    int(c.start * SAMPLE_RATE) : int(c.end * SAMPLE_RATE)
                ]
                job.chunks.append((c.start, c.end))
                job.hypotheses.append(None)
                seconds += c.duration

        def flush(until: float) -> list[int]:
            nonlocal done, seconds
            report(until - done - seconds)  # the audio between the chunks
            batch, done, seconds = group[:], until, 0.0
            group.clear()
            return batch

        timings = job.timings
        try:
            with closing(iter_audio(job.stream.path)) as blocks:  # closed early: ffmpeg is stopped
                while True:
                    start = time.perf_counter()
                    block = next(blocks, None)
                    middle = time.perf_counter()
                    take(segmenter.push(block) if block is not None else segmenter.finish())
                    timings["demux"] += middle - start
                    timings["segmentation"] = timings.get("segmentation", 0.0) + time.perf_counter() - middle
                    if block is None:
                        break
                    if seconds >= STREAM_GROUP_SECONDS:
                        yield flush(job.chunks[group[-1]][1])
            if len(segmenter.audio) != job.stream.samples:
                raise MediaError(
                    f"{display_name(job.name)}: the file changed while it was read "
                    f"({job.stream.samples} samples, then {len(segmenter.audio)})"
                )
        except AvsrError as exc:
            job.error = exc
            job.waves.clear()
            return
        finally:
            job.open = False
        if group:
            yield flush(job.chunks[group[-1]][1])
        report(job.duration - done - seconds)
        if not job.chunks:
            job.warnings.append(f"{job.name}: no speech found by voice activity detection")

    def _prepare(self, item: MediaInput, options: TranscribeOptions) -> _Job:
        if item.error is not None:
            return _Job(item.name, None, error=item.error)
        job = _Job(item.name, item.audio, video=item.video, mode=item.mode, timings={"demux": item.seconds})
        job.stream = item.stream
        job.warnings += item.warnings
        job.notes += item.notes
        duration = job.duration
        if duration < options.min_duration:
            what = "video" if item.mode == "vsr" else "audio"
            job.error = MediaError(
                f"{item.name}: {what} is only {duration:.2f} s long "
                f"(at least {options.min_duration:.2f} s needed)"
            )
            return job
        if item.mode == "asr":
            level = item.stream.level if item.stream is not None else rms_dbfs(item.audio)
            if level < options.silence_dbfs:
                job.warnings.append(f"{item.name}: no speech: audio is silent ({level:.0f} dBFS RMS)")
                return job
        max_chunk = options.max_chunk or self.model.config.chunk_seconds
        long = options.segmentation == "vad" or (options.segmentation == "auto" and duration > max_chunk)
        if long and item.mode == "vsr":
            from ..frontends.segmentation import fixed_windows

            # No audio to find pauses in: fixed windows over the span where a face was found.
            start, end = item.face_span or (0.0, duration)
            job.chunks = [(c.start, c.end) for c in fixed_windows(start, end, max_chunk)]
        elif long and job.stream is not None:
            job.open = True  # cut into chunks as the file is read (`_chunk_groups`)
        elif long:
            from ..frontends.segmentation import ChunkOptions, segment_audio

            start = time.perf_counter()
            job.chunks = [
                (c.start, c.end)
                for c in segment_audio(
                    item.audio, options.vad, ChunkOptions(max_chunk, merge_gap=options.merge_gap)
                )
            ]
            job.timings["segmentation"] = time.perf_counter() - start
            if not job.chunks:
                job.warnings.append(f"{item.name}: no speech found by voice activity detection")
        elif duration > self.model.config.max_audio_seconds:
            limit = self.model.config.max_audio_seconds
            what = "video" if item.mode == "vsr" else "audio"
            job.error = MediaError(
                f"{item.name}: {duration:.1f} s of {what} is longer than the {limit:.0f} s this model "
                f"accepts (long-form chunking is off); it would be silently truncated"
            )
        else:
            if job.stream is not None:  # scanned as long, but one chunk with these options
                from ..frontends.media import load_audio

                job.audio, job.stream = load_audio(job.stream.path), None
            job.chunks = [(0.0, duration)]
        job.hypotheses = [None] * len(job.chunks)
        return job

    def _run_pieces(
        self, pieces: list[tuple[_Job, int]], options: TranscribeOptions, report: Callable[[float], None]
    ) -> None:
        """Decode a batch of chunks (possibly from several files; one batch per mode) into their jobs."""
        for mode in dict.fromkeys(job.mode for job, _ in pieces):
            self._decode(mode, [(job, i) for job, i in pieces if job.mode == mode], options, report)

    def _decode(
        self,
        mode: str,
        pieces: list[tuple[_Job, int]],
        options: TranscribeOptions,
        report: Callable[[float], None],
    ) -> None:
        model, cfg = self.model, self.model.config
        spans = [job.chunks[i] for job, i in pieces]
        names = list(dict.fromkeys(Path(job.name).name for job, _ in pieces))
        where = names[0] if len(names) == 1 else f"{len(names)} files"
        chunks = f"{len(pieces)} chunk" + ("s" if len(pieces) > 1 else "")
        _stage(report, f"{where}: encoding {chunks}")
        t0 = t_features = time.perf_counter()
        audio = video = None
        if mode in ("asr", "avsr"):
            waves = [job.samples(i) for job, i in pieces]
            feats = model.audio_frontend(waves)
            t_features = time.perf_counter()
            frames = model.audio_encoder(feats.input_features, feats.n_frames)
            audio = ModalityInputs(frames, cfg.pick_rate("audio", options.audio_rate))
        t1 = time.perf_counter()
        if mode in ("vsr", "avsr"):
            from ..modeling.avhubert import encode_mouth_clips

            clips = [
                job.video[round(s * VIDEO_FPS) : round(e * VIDEO_FPS)]
                for (job, _), (s, e) in zip(pieces, spans, strict=True)
            ]
            frames = encode_mouth_clips(model.video_encoder, clips)
            video = ModalityInputs(frames, cfg.pick_rate("video", options.video_rate))
        t2 = time.perf_counter()
        decoding = options.decoding
        if any(len(job.chunks) > 1 for job, _ in pieces) and decoding.max_new_tokens is None:
            # Chunks of long files can hold more words than the reference's 32-token budget allows.
            longest = max(e - s for s, e in spans)
            budget = max(cfg.decoding.max_new_tokens, math.ceil(longest * LONG_FORM_TOKENS_PER_SECOND))
            decoding = replace(decoding, max_new_tokens=budget)
        tokens = decoding.max_new_tokens or cfg.decoding.max_new_tokens
        step = f"{where}: decoding {chunks}"
        _stage(report, step, 0, tokens)
        on_step = (lambda n: _stage(report, step, n, tokens)) if hasattr(report, "stage") else None
        hypotheses = model.decode(mode, audio, video, decoding, on_step=on_step)
        t3 = time.perf_counter()
        share = {"llm": t3 - t2}
        if audio is not None:
            share.update(features=t_features - t0, encoder=t1 - t_features)
        if video is not None:
            share["video_encoder"] = t2 - t1
        for (job, i), hypothesis in zip(pieces, hypotheses, strict=True):
            job.hypotheses[i] = hypothesis
            report(job.chunks[i][1] - job.chunks[i][0])
            for key, value in share.items():
                job.timings[key] = job.timings.get(key, 0.0) + value / len(pieces)


def _stage(report, what: str, done: int | None = None, total: int | None = None) -> None:
    """Tell a progress callback that takes steps (see `transcribe_many`) the step now running."""
    stage = getattr(report, "stage", None)
    if stage is not None:
        stage(what, done, total)


def _full_batch(pending: list[tuple[_Job, int]], clips: int, max_seconds: float) -> int:
    """How many pending chunks make the next batch (`clips` of them or `max_seconds` of media, whichever
    comes first; one chunk at least); 0 while more could still join it."""
    seconds = 0.0
    for n, (job, i) in enumerate(pending, 1):
        start, end = job.chunks[i]
        seconds += end - start
        if seconds > max_seconds:
            return max(n - 1, 1)
        if n == clips or seconds == max_seconds:
            return n
    return 0


LONG_FORM_TOKENS_PER_SECOND = 8  # generous: fast English speech is ~3 words (~4-5 tokens) per second


def load_media(
    path: str | Path,
    mode: str,
    options: TranscribeOptions,
    audio_path: str | Path | None = None,
    whole_seconds: float = math.inf,
) -> MediaInput:
    """Decode what `mode` needs from `path`: 16 kHz audio (from `audio_path` when given) and/or the mouth
    crops (face backend loaded once per process; crops cached in `options.mouth_cache` when set).

    Mode asr: audio longer than `whole_seconds` is not kept: it is read through once for its length and
    level (`AudioStream`), then again block by block when transcribed, so memory does not grow with it.
    """
    if mode == "asr":
        return _audio_input(str(path), audio_path or path, whole_seconds)
    from ..frontends.media import aligned_audio
    from ..frontends.mouth import MouthOptions, cached_mouth_frames, shared_backend

    mouth = MouthOptions(backend=options.face_backend, detect_every=options.detect_every)
    backend = shared_backend(options.face_backend)
    crops, found, warnings = cached_mouth_frames(path, mouth, options.mouth_cache, backend)
    hits = np.flatnonzero(found)
    span = (hits[0] / VIDEO_FPS, (hits[-1] + 1) / VIDEO_FPS) if len(hits) else None
    audio = aligned_audio(audio_path or path, len(crops)) if mode == "avsr" else None
    if mode == "avsr" and audio is None:
        raise MediaError(f"{audio_path or path}: mode avsr needs an audio stream; the file has none")
    return MediaInput(str(path), audio, crops, mode, face_span=span, warnings=list(warnings))


# A streamed recording's chunks join the batches by groups of this much speech (38 MB), shortest first within
# a group: up to 10 minutes of speech, the batches of the whole array. Other batches change no segmentation;
# like --batch-size they can change a near-tie token of an untrained model (the built-in model's text on a
# 2-minute recording in 30 s groups: the same).
STREAM_GROUP_SECONDS = 600.0


def _audio_input(name: str, path: str | Path, whole_seconds: float) -> MediaInput:
    """The audio of `path`: whole when it lasts `whole_seconds` or less, else its `AudioStream`."""
    from ..frontends.media import iter_audio

    blocks: list[np.ndarray] | None = []
    samples, squares = 0, 0.0
    for block in iter_audio(path):
        samples += len(block)
        squares += float(np.square(block, dtype=np.float64).sum())
        if blocks is not None:
            blocks.append(block)
            if samples > whole_seconds * SAMPLE_RATE:
                blocks = None  # too long to hold: read again when transcribed
    if blocks is not None:
        return MediaInput(name, np.concatenate(blocks) if blocks else np.zeros(0, np.float32), mode="asr")
    rms = math.sqrt(squares / samples)
    level = 20 * math.log10(rms) if rms > 0 else float("-inf")
    return MediaInput(name, mode="asr", stream=AudioStream(Path(path), samples, level))


@dataclass(frozen=True)
class AudioStream:
    """A recording too long to hold: read block by block from `path` when transcribed."""

    path: Path
    samples: int  # 16 kHz mono samples, counted when it was scanned
    level: float  # RMS in dBFS


@dataclass
class MediaInput:
    """A decoded input: 16 kHz audio and/or 25 fps mouth crops for `mode`, or the error loading raised.
    A long audio-only input has `stream` instead of `audio` (`load_media`)."""

    name: str
    audio: np.ndarray | None = None
    video: np.ndarray | None = None  # (T, 96, 96) uint8 mouth crops
    mode: str = "asr"
    error: AvsrError | None = None
    seconds: float = 0.0  # time spent decoding
    face_span: tuple[float, float] | None = None  # seconds: first to last frame with a face found
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # information, not a problem (see Result.notes)
    stream: AudioStream | None = None


@dataclass
class _Job:
    """One input file on its way through the batched loop."""

    name: str
    audio: np.ndarray | None
    error: AvsrError | None = None
    video: np.ndarray | None = None  # (T, 96, 96) uint8 mouth crops at 25 fps
    mode: str = "asr"
    chunks: list[tuple[float, float]] = field(default_factory=list)
    hypotheses: list[Hypothesis | None] = field(default_factory=list)  # per chunk, once decoded
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    stream: AudioStream | None = None  # audio read from its file as it is cut into chunks
    open: bool = False  # more chunks of the stream may come
    waves: dict[int, np.ndarray] = field(default_factory=dict)  # stream: samples of chunks not yet decoded

    @property
    def duration(self) -> float:
        if self.video is not None:
            return len(self.video) / VIDEO_FPS
        if self.stream is not None:
            return self.stream.samples / SAMPLE_RATE
        return len(self.audio) / SAMPLE_RATE if self.audio is not None else 0.0

    def samples(self, i: int) -> np.ndarray:
        """The audio of chunk i (a streamed chunk's samples are handed over once)."""
        if self.stream is not None:
            return self.waves.pop(i)
        s, e = self.chunks[i]
        return self.audio[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)]

    def done(self) -> bool:
        return self.error is not None or (not self.open and all(h is not None for h in self.hypotheses))

    def result(self, model_name: str, options: TranscribeOptions) -> Result | AvsrError:
        if self.error is not None:
            return self.error
        threshold = options.logprob_threshold
        segments = [
            Segment(float(s), float(e), h.text, h.avg_logprob, h.avg_logprob < threshold)
            for (s, e), h in zip(self.chunks, self.hypotheses, strict=True)
            if h.text
        ]
        if len(self.chunks) > 1:
            from ..modeling.decoding import drop_repeated_phrases

            segments = [replace(s, text=drop_repeated_phrases(s.text)) for s in segments]
        weight = sum(s.end - s.start for s in segments)
        avg = sum((s.end - s.start) * s.avg_logprob for s in segments) / weight if weight > 0 else None
        return Result(
            path=self.name,
            text=" ".join(s.text for s in segments),
            duration=self.duration,
            mode=self.mode,
            model=model_name,
            segments=segments,
            timings=self.timings,
            options=asdict(options),
            warnings=self.warnings,
            notes=self.notes,
            avg_logprob=avg,
            low_confidence=avg is not None and avg < threshold,
        )
