"""Voice activity: Silero VAD speech probabilities of 16 kHz audio -> speech regions (seconds).

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
        import onnxruntime as ort  # lazy: only files long enough to need the VAD load it
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
    audio = _mono(audio)
    vad = _VadStream()
    return np.concatenate([vad.push(audio), vad.finish()])


def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    return audio


class _VadStream:
    """Speech probabilities of audio given in pieces (`push`, then `finish`): the model sees VAD_BLOCK windows
    a call (the last call fewer), each window with the VAD_CONTEXT samples before it (zeros before the first),
    and the LSTM state of the call before; so the calls, and the probabilities, are the same however the
    audio is cut into pieces."""

    def __init__(self) -> None:
        self.session, self.batched = _session()
        self.h = self.c = np.zeros((1, 1, 128), np.float32)
        self.state, self.rate = np.zeros((2, 1, 128), np.float32), np.array(SAMPLE_RATE, np.int64)
        self.context = np.zeros(VAD_CONTEXT, np.float32)  # the samples before the next call's first window
        self.pending: list[np.ndarray] = []  # samples not yet seen by the model
        self.n_pending = 0

    def push(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities of the windows this audio completes (whole calls of VAD_BLOCK windows only)."""
        size, probs = VAD_BLOCK * VAD_WINDOW, [np.zeros(0, np.float32)]
        if self.n_pending + len(audio) < size:
            if len(audio):
                self.pending.append(audio)
                self.n_pending += len(audio)
            return probs[0]
        if self.pending:  # complete the held samples to a call
            need = size - self.n_pending
            probs.append(self._run(np.concatenate([*self.pending, audio[:need]])))
            audio, self.pending, self.n_pending = audio[need:], [], 0
        whole = len(audio) // size * size
        probs += [self._run(audio[i : i + size]) for i in range(0, whole, size)]
        if whole < len(audio):
            self.pending, self.n_pending = [audio[whole:]], len(audio) - whole
        return np.concatenate(probs)

    def finish(self) -> np.ndarray:
        """Probabilities of the last windows (the last one zero-padded)."""
        if not self.n_pending:
            return np.zeros(0, np.float32)
        held = np.concatenate(self.pending)
        self.pending, self.n_pending = [], 0
        return self._run(np.pad(held, (0, -len(held) % VAD_WINDOW)))

    def _run(self, samples: np.ndarray) -> np.ndarray:
        padded = np.concatenate([self.context, samples])
        self.context = padded[-VAD_CONTEXT:]
        windows = np.lib.stride_tricks.sliding_window_view(padded, VAD_CONTEXT + VAD_WINDOW)[::VAD_WINDOW]
        if self.batched:
            p, self.h, self.c = self.session.run(
                None, {"input": np.ascontiguousarray(windows), "h": self.h, "c": self.c}
            )
            return p.reshape(-1).astype(np.float32)
        probs = []
        for window in windows:
            p, self.state = self.session.run(
                None, {"input": window[None], "state": self.state, "sr": self.rate}
            )
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
