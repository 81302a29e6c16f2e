"""Long-form segmentation as a stream: `StreamSegmenter` finds the chunks of `segmentation.segment_audio` in
a recording pushed block by block, holding only the audio undecided chunks may still need.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from .media import SAMPLE_RATE
from .segmentation import Chunk, ChunkOptions, _quietest, cut_window
from .vad import VAD_WINDOW, VadOptions, _mono, _VadStream

STEP = VAD_WINDOW / SAMPLE_RATE  # seconds per VAD window
# Audio a StreamSegmenter keeps in memory at most (19 MB); it needs about max_chunk + 20 s of it, more only
# while the VAD cannot decide whether speech goes on (that audio waits in a temporary file).
HOLD_SECONDS = 300.0


class StreamSegmenter:
    """`segment_audio` for a recording read block by block: `push` each block, then `finish`; each returns
    the chunks that became final, in order, and the two together return exactly the chunks `segment_audio`
    finds in the whole array (tests/test_segmentation.py compares them).

    Every stage of `speech_regions` and `chunk_regions` runs as the audio arrives and hands a decision on as
    soon as no later audio can change it: a speech region's padded end once the next region starts or the
    silence after it is longer than two pads, a cut in a long region once the region is known to go on past
    the cut's search window, a chunk once the next one starts. Only the audio that undecided chunks may still
    need is kept (`audio`): about max_chunk + 20 s however long the recording, in memory up to `hold`
    seconds, beyond that in a temporary file (while the VAD stays undecided for minutes: probabilities between
    neg_threshold and threshold, or a min_silence of minutes). The samples of the chunks a call returns stay
    there until the next call.
    """

    def __init__(
        self,
        vad: VadOptions = VadOptions(),
        chunks: ChunkOptions = ChunkOptions(),
        hold: float = HOLD_SECONDS,
    ) -> None:
        self.vad, self.chunk_options = vad, chunks
        self.audio = _Recent(round(hold * SAMPLE_RATE))
        self._probs = _VadStream()
        self._ended = False
        self._min_silence = max(1, round(vad.min_silence / STEP))
        self._frame = max(1, round(chunks.energy_frame * SAMPLE_RATE))
        # speech spans in VAD windows (`_regions_from_probs`): the open one, and whether it is long enough
        self._i, self._start, self._quiet, self._kept = 0, None, None, False
        self._last_end: float | None = None  # end (s) of the last kept span
        self._region: list | None = None  # [start, span end or None] of the last region while its end is open
        self._unions: list[list] = []  # merged regions being cut: [next piece start, end or None, last end]
        self._building: list[float] | None = None  # the chunk pieces are merged into
        self._waiting: list[float] | None = None  # a short chunk waiting for the next one's start to widen
        self._emitted_end: float | None = None
        self._ready: list[Chunk] = []
        self._returned: list[Chunk] = []

    @property
    def duration(self) -> float:
        """Seconds of audio pushed so far."""
        return len(self.audio) / SAMPLE_RATE

    def push(self, block: np.ndarray) -> list[Chunk]:
        """Take the next block of 16 kHz mono float32 samples; return the chunks now final."""
        if self._ended:
            raise ValueError("push after finish")
        block = _mono(block)
        self.audio.drop_before(self._keep_from())
        self.audio.append(block)
        self._windows(self._probs.push(block))
        self._advance()
        return self._take()

    def finish(self) -> list[Chunk]:
        """The end of the recording: return the remaining chunks."""
        if self._ended:
            return []
        self.audio.drop_before(self._keep_from())
        self._windows(self._probs.finish())
        if self._start is not None:  # speech up to the end
            self._close(self._start, self._quiet if self._quiet is not None else self._i)
        if self._region is not None:
            end = self._region[1]
            self._region = None
            self._region_end(min(end + self.vad.speech_pad, self.duration), final=True)
        self._ended = True
        self._advance()
        return self._take()

    # speech spans: `_regions_from_probs`, one window at a time
    def _windows(self, probs: np.ndarray) -> None:
        o = self.vad
        for p in probs:  # float32 scalars, as `_regions_from_probs` compares them with the thresholds
            i = self._i
            if p >= o.threshold:
                self._start = i if self._start is None else self._start
                self._quiet = None
            elif self._start is not None and p < o.off_threshold:
                self._quiet = i if self._quiet is None else self._quiet
                if i + 1 - self._quiet >= self._min_silence:
                    self._close(self._start, self._quiet)
            self._i = i + 1
            if self._start is not None and not self._kept:
                # the span ends at its first quiet window, or later: kept if that is long enough already
                lower = self._quiet if self._quiet is not None else self._i
                if (lower - self._start) * STEP >= o.min_speech:
                    self._kept = True
                    self._span_start(self._start)

    def _close(self, start: int, end: int) -> None:
        if not self._kept and (end - start) * STEP >= self.vad.min_speech:
            self._span_start(start)
            self._kept = True
        if self._kept:
            # the span's end, in the array's words min(end * step, duration): before the end of the
            # recording end * step is below the duration already (the window's samples have all come)
            self._region[1] = self._last_end = min(end * STEP, self.duration)
        self._start = self._quiet = None
        self._kept = False

    # regions: spans padded by speech_pad, meeting halfway where closer than two pads
    def _span_start(self, start: int) -> None:
        s, pad = start * STEP, self.vad.speech_pad
        if self._region is not None:  # the previous region ends now that this one's start is known
            e = self._region[1]
            self._region_end(min(e + pad, (e + s) / 2), final=False)
        prev = self._last_end
        lo = max(s - pad, (prev + s) / 2 if prev is not None else 0.0)
        self._region = [lo, None]
        # chunk_regions: the union of the regions (clamped to the audio; they never overlap, they may touch)
        lo = max(0.0, lo)
        union = self._unions[-1] if self._unions else None
        if union is not None and union[1] is None and lo <= union[2]:
            union[2] = None  # joined: the union ends where this region does
        else:
            if union is not None and union[1] is None:
                union[1] = union[2]
            self._unions.append([lo, None, None])

    def _region_end(self, hi: float, final: bool) -> None:
        union = self._unions[-1]
        union[2] = min(self.duration, hi)
        if final:  # no later region can touch it
            union[1] = union[2]

    def _future_start(self) -> float:
        """A time no later speech span starts before."""
        return (self._start if self._start is not None else self._i) * STEP

    def _union_end_bound(self) -> float:
        """A time the open union (the last one) is known to reach: its last span's end, or where that span
        has got to (a region ends at its span's end or later)."""
        union = self._unions[-1]
        if union[2] is not None:
            return union[2]
        if self._region[1] is not None:
            return self._region[1]
        lower = self._quiet if self._quiet is not None else self._i
        return min(lower * STEP, self.duration)

    def _advance(self) -> None:
        pad = self.vad.speech_pad
        region = self._region
        if region is not None and region[1] is not None and not self._ended:
            # No later span starts before _future_start: once that is two pads (and a window, for rounding)
            # past this span's end, this region's end is end + pad, whatever comes.
            end = region[1]
            if self._future_start() >= end + 2 * pad + STEP and end + pad <= self.duration:
                self._region = None
                self._region_end(end + pad, final=True)
        self._split()
        o = self.chunk_options
        if self._building is not None and self._next_piece_start() - self._building[1] >= o.merge_gap:
            self._finalize(self._building)  # no later piece can join it
            self._building = None
        if self._waiting is not None:
            c = self._waiting
            if self._ended and not self._unions and self._building is None:
                self._emit(self._widened(c, self.duration))
                self._waiting = None
            else:
                # the next chunk starts at _next_piece_start or later, or there is none and the audio goes on
                # to duration or later: enough room there decides the widening
                bound = min(self._next_piece_start(), self.duration)
                if bound - c[1] >= self._room_wanted(c):
                    self._emit(self._widened(c, bound))
                    self._waiting = None

    def _next_piece_start(self) -> float:
        """A time the next piece starts at or after."""
        if self._unions:
            return self._unions[0][0]
        if self._ended:
            return math.inf
        return self._future_start() - self.vad.speech_pad

    # `_split`, one cut at a time: a cut needs the union's end only when the end is near
    def _split(self) -> None:
        o = self.chunk_options
        while self._unions:
            union = self._unions[0]
            start, end = union[0], union[1]
            if end is not None and not end - start > o.max_chunk:
                self._piece(start, end)
                self._unions.pop(0)
                continue
            if end is None:
                # the end is unknown but past bound: with a window to spare, min(start + max_chunk,
                # end - min_chunk) is start + max_chunk and the union is longer than max_chunk
                if not self._union_end_bound() - o.min_chunk >= start + o.max_chunk + STEP:
                    return
            lo, hi = cut_window(start, end, o)
            if hi > lo:
                if not self._ended and len(self.audio) < round(hi * SAMPLE_RATE) + self._frame // 2:
                    return  # `_quietest` reads up to there
                cut = _quietest(self.audio, lo, hi, o)
            else:
                cut = hi
            self._piece(start, cut)
            union[0] = cut

    # chunk_regions' merging of pieces and widening of short chunks
    def _piece(self, start: float, end: float) -> None:
        o, chunk = self.chunk_options, self._building
        if chunk is not None and start - chunk[1] < o.merge_gap and end - chunk[0] <= o.max_chunk:
            chunk[1] = end
            return
        if chunk is not None:
            self._finalize(chunk)
        if self._waiting is not None:  # the chunk after it starts here
            self._emit(self._widened(self._waiting, start))
            self._waiting = None
        self._building = [start, end]

    def _finalize(self, chunk: list[float]) -> None:
        if self.chunk_options.min_chunk - (chunk[1] - chunk[0]) > 0:
            self._waiting = chunk
        else:
            self._emit(Chunk(chunk[0], chunk[1]))

    def _room_wanted(self, chunk: list[float]) -> float:
        """How far a short chunk widens to the right when there is room (`chunk_regions`' right)."""
        need = self.chunk_options.min_chunk - (chunk[1] - chunk[0])
        room_lo = chunk[0] - (self._emitted_end if self._emitted_end is not None else 0.0)
        return max(need / 2, need - room_lo)

    def _widened(self, chunk: list[float], next_start: float) -> Chunk:
        start, end = chunk
        need = self.chunk_options.min_chunk - (end - start)
        room_lo = start - (self._emitted_end if self._emitted_end is not None else 0.0)
        room_hi = next_start - end
        right = min(room_hi, max(need / 2, need - room_lo))
        left = min(room_lo, need - right)
        return Chunk(start - left, end + right)

    def _emit(self, chunk: Chunk) -> None:
        self._ready.append(chunk)
        self._emitted_end = chunk.end

    def _take(self) -> list[Chunk]:
        """The final chunks whose samples have all come."""
        n = 0
        while n < len(self._ready) and (
            self._ended or len(self.audio) >= math.ceil(self._ready[n].end * SAMPLE_RATE)
        ):
            n += 1
        self._returned, self._ready = self._ready[:n], self._ready[n:]
        return self._returned

    def _keep_from(self) -> int:
        """The first sample anything may still read: returned chunks (until the next call), the chunks still
        to come (widening moves a start back by less than min_chunk), `_quietest` (half a frame before)."""
        starts = [c.start for c in (*self._returned, *self._ready)]
        pending = [c[0] for c in (self._waiting, self._building) if c is not None]
        if self._unions:
            pending.append(self._unions[0][0])
        elif not self._ended:
            pending.append(self._next_piece_start())
        if pending:
            starts.append(min(pending) - self.chunk_options.min_chunk)
        if not starts:
            return len(self.audio)
        return max(0, math.floor(min(starts) * SAMPLE_RATE) - self._frame - 1)


class _Recent:
    """The samples of a stream, indexed from its start as one array would be, of which only those from
    `start` on are kept: the last `hold` in memory, older ones in a temporary file (only while the VAD cannot
    decide for a long stretch: then its audio may still be needed, however long). Slices are copies; one
    reaching before `start` is a bug and raises."""

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.blocks: list[np.ndarray] = []
        self.start = 0  # the first sample kept
        self.end = 0
        self.memory_start = 0  # index of blocks[0][0]; samples from start to here are in the file
        self.file = None
        self.file_start = 0  # index of the file's first sample

    def __len__(self) -> int:
        return self.end

    @property
    def held(self) -> int:
        """Samples held in memory."""
        return self.end - self.memory_start

    def append(self, block: np.ndarray) -> None:
        if not len(block):
            return
        self.blocks.append(block)
        self.end += len(block)
        while self.held > self.hold and len(self.blocks) > 1:
            if self.file is None:
                self.file, self.file_start = tempfile.TemporaryFile(prefix="avsr-audio-"), self.memory_start
            oldest = self.blocks.pop(0)
            self.file.seek(0, os.SEEK_END)
            self.file.write(np.ascontiguousarray(oldest, np.float32).tobytes())
            self.memory_start += len(oldest)

    def drop_before(self, index: int) -> None:
        self.start = max(self.start, min(index, self.end))
        while self.blocks and self.memory_start + len(self.blocks[0]) <= self.start:
            self.memory_start += len(self.blocks.pop(0))
        if self.file is not None and self.start >= self.memory_start:
            self.file.close()
            self.file = None

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("only contiguous slices are kept")
        a, b, _ = key.indices(self.end)
        if b <= a:
            return np.zeros(0, np.float32)
        if a < self.start:
            raise IndexError(f"samples before {self.start} are no longer held (asked from {a})")
        parts, pos = [], self.memory_start
        if a < pos:
            self.file.seek(4 * (a - self.file_start))
            parts.append(np.frombuffer(self.file.read(4 * (min(b, pos) - a)), np.float32))
        for block in self.blocks:
            if pos >= b:
                break
            lo, hi = max(a, pos), min(b, pos + len(block))
            if lo < hi:
                parts.append(block[lo - pos : hi - pos])
            pos += len(block)
        return np.concatenate(parts)
