"""Long-form segmentation: speech regions (vad.py) -> chunks no longer than the model's training length,
long regions cut at their quietest point; fixed windows where there is no audio. stream_segmenter.py does the
same on a recording read block by block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .media import SAMPLE_RATE
from .vad import VadOptions, speech_regions


@dataclass(frozen=True)
class ChunkOptions:
    """Speech regions -> model-sized chunks (seconds).

    Regions closer than merge_gap are merged while the chunk stays <= max_chunk. A region longer than
    max_chunk is cut at its quietest point (lowest energy in energy_frame frames, smoothed over
    quiet_span) within the last split_window seconds before the limit, and never in the first half of
    max_chunk (each piece moves the cut on). Chunks shorter than min_chunk are widened into the
    surrounding silence when there is room.
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


def cut_window(start: float, end: float | None, o: ChunkOptions) -> tuple[float, float]:
    """Where the next cut of a piece starting at `start` may fall (`end` None: far beyond max_chunk)."""
    hi = start + o.max_chunk if end is None else min(start + o.max_chunk, end - o.min_chunk)
    # never in the first half: a cut at `start` would never move on (min_chunk 0 with a split_window as
    # long as max_chunk)
    lo = max(start + o.max_chunk - o.split_window, start + o.min_chunk, start + o.max_chunk / 2)
    return lo, hi


def _split(audio: np.ndarray, start: float, end: float, o: ChunkOptions) -> list[tuple[float, float]]:
    pieces = []
    while end - start > o.max_chunk:
        lo, hi = cut_window(start, end, o)
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
