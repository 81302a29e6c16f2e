"""The vocabulary of a transcription: what is asked (`TranscribeOptions`) and what comes out (`Result`,
its `Segment`s), and the rounding every JSON avsr writes uses."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from ..frontends.face_backends import BACKENDS
from ..frontends.vad import VadOptions
from ..modeling.config import MODES, DecodingDefaults
from ..modeling.decoding import DecodingOptions, drop_repeated_phrases
from ..storage import display_name

SEGMENTATIONS = ("auto", "vad", "off")

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
    # A segment whose mean token log-probability is below this is flagged low_confidence: the model is
    # guessing rather than hearing. None: the checkpoint's (its card's calibrated value, else
    # faster-whisper's log_prob_threshold default, -1.0).
    logprob_threshold: float | None = None
    # Text given to the model with every chunk (names, jargon, spelling): whisper's initial_prompt, but for
    # every chunk alike, since an LLM decoder has no windows that carry the previous window's text.
    initial_prompt: str | None = None
    # Time every word by forced alignment against the checkpoint's character CTC head (Segment.words).
    word_timestamps: bool = False
    # What times the words instead: a zoo aligner's name (wav2vec2-base-960h) or a wav2vec2 CTC model folder.
    aligner: str | None = None

    def clips_per_batch(self, default_beams: int) -> int:
        """batch_size, or by default DECODER_ROWS decoder rows (clips x beams) and 4 clips at least."""
        if self.batch_size is not None:
            return self.batch_size
        return max(4, DECODER_ROWS // (self.decoding.num_beams or default_beams))

    def resolved(self, defaults: DecodingDefaults) -> TranscribeOptions:
        """These options with the checkpoint's `defaults` where they leave a choice to it."""
        if self.logprob_threshold is not None:
            return self
        return replace(self, logprob_threshold=defaults.logprob_threshold)

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


@dataclass(frozen=True)
class Word:
    """One word's time span (seconds) and the aligner's confidence in it, as whisper writes words: `word`
    carries its leading space, so that joining the words of a segment gives its text."""

    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment:
    """A timed piece of transcript: one per clip, or one per speech chunk of a long file; avg_logprob is the
    mean log-probability of its tokens (None for subtitle cues and other derived pieces); words are set when
    word timestamps were asked for."""

    start: float
    end: float
    text: str
    avg_logprob: float | None = None
    low_confidence: bool = False
    words: list[Word] | None = None

    def without_loops(self) -> Segment:
        """The segment with LLM repeat loops collapsed (`drop_repeated_phrases`), its words kept where they
        remain: the collapsed text is a subsequence of the words, matched left to right."""
        text = drop_repeated_phrases(self.text)
        if self.words is None or text == self.text:
            return replace(self, text=text)
        kept, remaining = [], text.split()
        for word in self.words:
            if remaining and word.word.strip() == remaining[0]:
                kept.append(word)
                remaining.pop(0)
        return replace(self, text=text, words=kept)


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
