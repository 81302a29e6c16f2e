"""The batched loop under `Transcriber`: decoded inputs become jobs, long ones are cut into speech chunks,
chunks of several files share batches, and results come out in input order."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import AvsrError, MediaError
from ..frontends.features import SAMPLE_RATE
from ..frontends.media import VIDEO_FPS, iter_audio, load_audio
from ..frontends.segmentation import ChunkOptions, fixed_windows, segment_audio
from ..frontends.stream_segmenter import StreamSegmenter
from ..modeling.aligners import Aligner
from ..modeling.avhubert import encode_mouth_clips
from ..modeling.model import AVSRModel, Hypothesis, ModalityInputs
from ..storage import display_name
from .media_inputs import AudioStream, MediaInput
from .transcript import Result, Segment, TranscribeOptions, Word

# A streamed recording's chunks join the batches by groups of this much speech (38 MB), shortest first within
# a group: up to 10 minutes of speech, the batches of the whole array. Other batches change no segmentation;
# like --batch-size they can change a near-tie token of an untrained model (the built-in model's text on a
# 2-minute recording in 30 s groups: the same).
STREAM_GROUP_SECONDS = 600.0

LONG_FORM_TOKENS_PER_SECOND = 8  # generous: fast English speech is ~3 words (~4-5 tokens) per second


def rms_dbfs(audio: np.ndarray) -> float:
    if audio.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


class BatchLoop:
    """Decodes inputs with one model, in batches of chunks (see `Transcriber.transcribe_loaded`)."""

    def __init__(self, model: AVSRModel, aligner: Aligner | None = None) -> None:
        self.model = model
        self.aligner = aligner  # times the words of each chunk when word timestamps are asked for

    def run(
        self, items: Iterable[MediaInput], options: TranscribeOptions, report: Callable[[float], None]
    ) -> Iterator[Result | AvsrError]:
        """Yield, in input order, each input's Result or the AvsrError that stopped it."""
        options = options.resolved(self.model.config.decoding)
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
            # No audio to find pauses in: fixed windows over the span where a face was found.
            start, end = item.face_span or (0.0, duration)
            job.chunks = [(c.start, c.end) for c in fixed_windows(start, end, max_chunk)]
        elif long and job.stream is not None:
            job.open = True  # cut into chunks as the file is read (`_chunk_groups`)
        elif long:
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
        report_stage(report, f"{where}: encoding {chunks}")
        t0 = t_features = time.perf_counter()
        audio = video = None
        waves: list[np.ndarray] = []
        if mode in ("asr", "avsr"):
            waves = [job.samples(i) for job, i in pieces]
            feats = model.audio_frontend(waves)
            if not options.word_timestamps:  # kept only for an aligner that reads the waveform
                waves = []
            t_features = time.perf_counter()
            frames = model.audio_encoder(feats.input_features, feats.n_frames)
            audio = ModalityInputs(frames, cfg.pick_rate("audio", options.audio_rate))
        t1 = time.perf_counter()
        if mode in ("vsr", "avsr"):
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
        report_stage(report, step, 0, tokens)
        on_step = (lambda n: report_stage(report, step, n, tokens)) if hasattr(report, "stage") else None
        prompt = options.initial_prompt
        hypotheses = model.decode(mode, audio, video, decoding, on_step=on_step, context=prompt)
        t3 = time.perf_counter()
        share = {"llm": t3 - t2}
        if audio is not None:
            share.update(features=t_features - t0, encoder=t1 - t_features)
        if video is not None:
            share["video_encoder"] = t2 - t1
        if options.word_timestamps and audio is not None and self.aligner is not None:
            t4 = time.perf_counter()
            for (job, i), hypothesis, wave, clip in zip(pieces, hypotheses, waves, audio.frames, strict=True):
                job.words[i] = self.aligner.align(hypothesis.text, wave, clip)
            share["alignment"] = time.perf_counter() - t4
        for (job, i), hypothesis in zip(pieces, hypotheses, strict=True):
            job.hypotheses[i] = hypothesis
            report(job.chunks[i][1] - job.chunks[i][0])
            for key, value in share.items():
                job.timings[key] = job.timings.get(key, 0.0) + value / len(pieces)


def report_stage(report, what: str, done: int | None = None, total: int | None = None) -> None:
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
    words: dict[int, list[tuple[str, float, float, float]]] = field(default_factory=dict)  # per chunk, timed

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

    def _words(self, i: int) -> list[Word] | None:
        """Chunk i's timed words in seconds of the file (as whisper: each word with its leading space)."""
        if i not in self.words:
            return None
        start = self.chunks[i][0]
        return [Word(f" {w}", start + a, start + b, p) for w, a, b, p in self.words[i]]

    def done(self) -> bool:
        return self.error is not None or (not self.open and all(h is not None for h in self.hypotheses))

    def result(self, model_name: str, options: TranscribeOptions) -> Result | AvsrError:
        if self.error is not None:
            return self.error
        threshold = options.logprob_threshold
        segments = [
            Segment(float(s), float(e), h.text, h.avg_logprob, h.avg_logprob < threshold, self._words(i))
            for i, ((s, e), h) in enumerate(zip(self.chunks, self.hypotheses, strict=True))
            if h.text
        ]
        if len(self.chunks) > 1:
            segments = [s.without_loops() for s in segments]
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
