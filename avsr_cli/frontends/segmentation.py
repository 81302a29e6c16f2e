"""Long-form segmentation: speech regions (Silero VAD) -> chunks no longer than the model's training length.

The VAD is the ONNX model shipped inside the `silero-vad` PyPI package, run with onnxruntime (no torch,
no network). The package is located with `importlib.util.find_spec`, never imported: importing
`silero_vad` calls `torch.set_num_threads(1)` for the whole process.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .media import SAMPLE_RATE

VAD_WINDOW = 512  # samples per VAD decision at 16 kHz (32 ms), as silero-vad requires
VAD_CONTEXT = 64  # samples of the previous window prepended to each one (silero-vad utils_vad.OnnxWrapper)
VAD_BLOCK = 512  # windows per onnxruntime call with the sequence model (silero-vad sequence_vad.py)
SEQUENCE_MODEL = "silero_vad_16k_sequence.onnx"  # batched, bit-exact with the streaming model (>= 6.2)
STREAMING_MODEL = "silero_vad.onnx"  # one window per call (silero-vad >= 5)


@dataclass(frozen=True)
class VadOptions:
    """Silero VAD decisions -> speech regions (times in seconds).

    A region starts at a window with probability >= threshold and ends after min_silence of windows below
    neg_threshold (default threshold - 0.15, silero's hysteresis); regions shorter than min_speech are
    dropped, the rest padded by speech_pad on each side (without overlapping each other).
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech: float = 0.25
    min_silence: float = 0.3
    speech_pad: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError("neg_threshold must be in [0, threshold]")
        if min(self.min_speech, self.min_silence, self.speech_pad) < 0:
            raise ValueError("min_speech, min_silence and speech_pad must be >= 0")

    @property
    def off_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True)
class ChunkOptions:
    """Speech regions -> model-sized chunks (seconds).

    Regions closer than merge_gap are merged while the chunk stays <= max_chunk. A region longer than
    max_chunk is cut at its quietest point (lowest energy in energy_frame frames, smoothed over
    quiet_span) within the last split_window seconds before the limit. Chunks shorter than min_chunk are
    widened into the surrounding silence when there is room.
    """

    max_chunk: float = 16.0  # the checkpoint's training length (Llama-AVSR: LRS3 clips up to ~16 s)
    min_chunk: float = 1.0
    merge_gap: float = 1.0
    split_window: float = 4.0
    energy_frame: float = 0.03
    quiet_span: float = 0.1

    def __post_init__(self) -> None:
        if self.max_chunk <= 0:
            raise ValueError("max_chunk must be > 0")
        if not 0 <= self.min_chunk <= self.max_chunk:
            raise ValueError("min_chunk must be in [0, max_chunk]")
        if self.merge_gap < 0:
            raise ValueError("merge_gap must be >= 0")
        if self.split_window <= 0:
            raise ValueError("split_window must be > 0")
        if self.energy_frame <= 0 or self.quiet_span < 0:
            raise ValueError("energy_frame must be > 0 and quiet_span >= 0")


@dataclass(frozen=True)
class Chunk:
    """A span of the recording in seconds."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    def samples(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """The part of `audio` this chunk covers."""
        return audio[round(self.start * sample_rate) : round(self.end * sample_rate)]


def vad_model_path(name: str = SEQUENCE_MODEL) -> Path:
    """Path of a model file inside the installed `silero-vad` package (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("voice activity detection needs silero-vad: pip install silero-vad onnxruntime")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


@functools.cache
def _session():
    """(onnxruntime session, batched?) for the sequence model, else the streaming one; loaded once."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("voice activity detection needs onnxruntime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.inter_op_num_threads = options.intra_op_num_threads = 1  # a 128-unit LSTM: threads only cost
    options.log_severity_level = 3
    for name, batched in ((SEQUENCE_MODEL, True), (STREAMING_MODEL, False)):
        path = vad_model_path(name)
        if path.is_file():
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), batched
    raise UsageError(f"silero-vad has no {SEQUENCE_MODEL} or {STREAMING_MODEL}: pip install -U silero-vad")


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero VAD speech probability of each 512-sample (32 ms) window of 16 kHz mono `audio`."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    n = -(-len(audio) // VAD_WINDOW)
    session, batched = _session()
    probs = [np.zeros(0, np.float32)]
    h = c = np.zeros((1, 1, 128), np.float32)
    state, rate = np.zeros((2, 1, 128), np.float32), np.array(SAMPLE_RATE, np.int64)
    for i in range(0, n, VAD_BLOCK):  # block by block: an hour of audio never sits in memory 1.1 times
        block = audio[max(0, i * VAD_WINDOW - VAD_CONTEXT) : (i + VAD_BLOCK) * VAD_WINDOW]
        lead = VAD_CONTEXT if i else 0  # zeros before the first window, as the streaming model starts
        m = min(VAD_BLOCK, n - i)
        padded = np.zeros(VAD_CONTEXT + m * VAD_WINDOW, np.float32)
        padded[VAD_CONTEXT - lead : VAD_CONTEXT - lead + len(block)] = block
        windows = np.lib.stride_tricks.sliding_window_view(padded, VAD_CONTEXT + VAD_WINDOW)[::VAD_WINDOW]
        if batched:
            p, h, c = session.run(None, {"input": np.ascontiguousarray(windows), "h": h, "c": c})
            probs.append(p.reshape(-1))
        else:
            for window in windows:
                p, state = session.run(None, {"input": window[None], "state": state, "sr": rate})
                probs.append(p.reshape(-1))
    return np.concatenate(probs).astype(np.float32)


def _regions_from_probs(probs: np.ndarray, o: VadOptions, duration: float) -> list[tuple[float, float]]:
    step = VAD_WINDOW / SAMPLE_RATE
    min_silence = max(1, round(o.min_silence / step))
    spans, start, quiet = [], None, None
    for i, p in enumerate(probs):
        if p >= o.threshold:
            start = i if start is None else start
            quiet = None
        elif start is not None and p < o.off_threshold:
            quiet = i if quiet is None else quiet
            if i + 1 - quiet >= min_silence:
                spans.append((start, quiet))
                start = quiet = None
    if start is not None:
        spans.append((start, quiet if quiet is not None else len(probs)))
    spans = [(s * step, min(e * step, duration)) for s, e in spans if (e - s) * step >= o.min_speech]
    regions = []
    for i, (s, e) in enumerate(spans):  # pad, meeting halfway where neighbours are closer than 2 pads
        lo = max(s - o.speech_pad, (spans[i - 1][1] + s) / 2 if i else 0.0)
        hi = min(e + o.speech_pad, (e + spans[i + 1][0]) / 2 if i + 1 < len(spans) else duration)
        regions.append((lo, hi))
    return regions


def speech_regions(audio: np.ndarray, options: VadOptions = VadOptions()) -> list[tuple[float, float]]:
    """(start, end) seconds of each stretch of speech in 16 kHz mono float32 `audio`, in order."""
    return _regions_from_probs(speech_probabilities(audio), options, len(audio) / SAMPLE_RATE)


def _quietest(audio: np.ndarray, lo: float, hi: float, o: ChunkOptions) -> float:
    """Time in [lo, hi] at the middle of the longest near-minimum stretch of smoothed frame energy."""
    frame = max(1, round(o.energy_frame * SAMPLE_RATE))
    hop = max(1, frame // 3)
    i0 = max(0, round(lo * SAMPLE_RATE) - frame // 2)
    x = audio[i0 : round(hi * SAMPLE_RATE) + frame // 2].astype(np.float64)
    if len(x) < frame:
        return hi
    power = np.lib.stride_tricks.sliding_window_view(x**2, frame)[::hop].mean(axis=1)
    k = max(1, round(o.quiet_span * SAMPLE_RATE / hop))
    if k > 1 and len(power) >= k:
        power = np.convolve(power, np.ones(k) / k, mode="same")
    level = 10 * np.log10(power + 1e-10)
    quiet = np.concatenate([[False], level <= level.min() + 3.0, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    best = int(np.argmax((ends - starts)[::-1]))  # longest run, the latest among equals
    mid = (starts[::-1][best] + ends[::-1][best] - 1) / 2
    return float(np.clip((i0 + mid * hop + frame / 2) / SAMPLE_RATE, lo, hi))


def _split(audio: np.ndarray, start: float, end: float, o: ChunkOptions) -> list[tuple[float, float]]:
    pieces = []
    while end - start > o.max_chunk:
        hi = min(start + o.max_chunk, end - o.min_chunk)
        lo = max(start + o.max_chunk - o.split_window, start + o.min_chunk)
        cut = _quietest(audio, lo, hi, o) if hi > lo else hi
        pieces.append((start, cut))
        start = cut
    return [*pieces, (start, end)]


def chunk_regions(
    audio: np.ndarray, regions: list[tuple[float, float]], options: ChunkOptions = ChunkOptions()
) -> list[Chunk]:
    """Merge close `regions` into ordered, non-overlapping chunks <= max_chunk, long ones cut at pauses."""
    o, duration = options, len(audio) / SAMPLE_RATE
    union: list[list[float]] = []
    for s, e in sorted(regions):
        s, e = max(0.0, s), min(duration, e)
        if e <= s:
            continue
        if union and s <= union[-1][1]:
            union[-1][1] = max(union[-1][1], e)
        else:
            union.append([s, e])
    chunks: list[Chunk] = []
    for s, e in (piece for region in union for piece in _split(audio, *region, o)):
        if chunks and s - chunks[-1].end < o.merge_gap and e - chunks[-1].start <= o.max_chunk:
            chunks[-1] = Chunk(chunks[-1].start, e)
        else:
            chunks.append(Chunk(s, e))
    for i, c in enumerate(chunks):  # widen short chunks into the silence around them
        need = o.min_chunk - c.duration
        if need > 0:
            room_lo = c.start - (chunks[i - 1].end if i else 0.0)
            room_hi = (chunks[i + 1].start if i + 1 < len(chunks) else duration) - c.end
            right = min(room_hi, max(need / 2, need - room_lo))
            left = min(room_lo, need - right)
            chunks[i] = Chunk(c.start - left, c.end + right)
    return chunks


def fixed_windows(start: float, end: float, window: float, overlap: float = 0.0) -> list[Chunk]:
    """Windows of `window` seconds every `window - overlap` seconds over [start, end] (video without audio).

    The last window is moved back to end at `end` (so all have the same length, the last overlapping its
    neighbour more); a span shorter than `window` is one chunk; an empty span gives none.
    """
    if window <= 0 or not 0 <= overlap < window:
        raise ValueError("need window > 0 and 0 <= overlap < window")
    if end <= start:
        return []
    if end - start <= window:
        return [Chunk(start, end)]
    step = window - overlap
    n = int(np.ceil((end - start - window) / step - 1e-9)) + 1
    starts = [min(start + i * step, end - window) for i in range(n)]
    return [Chunk(s, s + window) for s in starts]


def segment_audio(
    audio: np.ndarray, vad: VadOptions = VadOptions(), chunks: ChunkOptions = ChunkOptions()
) -> list[Chunk]:
    """16 kHz mono float32 `audio` -> chunks of speech the model can transcribe one by one."""
    return chunk_regions(audio, speech_regions(audio, vad), chunks)
