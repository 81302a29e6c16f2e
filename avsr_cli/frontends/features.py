"""Audio front end: waveform normalisation and Whisper log-mel features, as the reference computes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from .media import SAMPLE_RATE

ENCODER_FRAME_RATE = 50  # Whisper encoder output frames per second (30 s -> 1500 frames)
MIN_ENCODER_FRAMES = 25


def normalize_waveform(audio: np.ndarray) -> np.ndarray:
    """Whole-utterance `layer_norm(x, x.shape, eps=1e-8)` of the waveform.

    Reference: Llama-AVSR datamodule/transforms.py (test-time audio transform) applies
    `torch.nn.functional.layer_norm(x, x.shape, eps=1e-8)` before the Whisper feature extractor; it changes
    the log-mel features (Whisper clamps at max-8 and scales (x+4)/4), so it must be replicated exactly.
    """
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return torch.nn.functional.layer_norm(x, x.shape, eps=1e-8).numpy()


def encoder_frames(n_samples: int) -> int:
    """Encoder frames kept for a clip: `max(int(samples/16000*50), 25)`.

    Reference: Llama-AVSR models/modeling_AVSRLLM.py (`audio_enc[:, 0:max(int(max_len/16000*50), 25), :]`),
    same in Omni-AVSR; the float expression is kept verbatim so rounding matches.
    """
    return max(int(n_samples / SAMPLE_RATE * ENCODER_FRAME_RATE), MIN_ENCODER_FRAMES)


WINDOW_FRAMES = 1500  # Whisper's 30 s window in encoder frames (max_source_positions)
HOP = SAMPLE_RATE // (2 * ENCODER_FRAME_RATE)  # 160 samples per mel frame, two mel frames per encoder frame


@dataclass
class AudioFeatures:
    """Whisper input features plus the frames to keep per clip: one (B, n_mels, 3000) batch (padded-30s),
    or one (n_mels, 2k) tensor per clip whose k encoder frames cover just the clip (trimmed)."""

    input_features: torch.Tensor | list[torch.Tensor]
    n_frames: list[int]


PREPROCESSOR_FILE = "preprocessor_config.json"
MEL_MAX_HZ = 8000.0  # Whisper's filters span 0-8 kHz whatever the sampling rate


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (6.4x per 27 mels)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    above = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, above, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * 200.0 / 3.0
    above = 1000.0 * np.exp((np.log(6.4) / 27.0) * (np.maximum(mel, 15.0) - 15.0))
    return np.where(mel >= 15.0, above, linear)


def mel_filters(n_mels: int, n_fft: int, sampling_rate: int) -> np.ndarray:
    """(n_fft//2+1, n_mels) Slaney-normalised triangular filters on the Slaney mel scale from 0 to 8 kHz: the
    bank Whisper's feature extractor builds (librosa `filters.mel(norm="slaney")`, transposed), float64."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(MEL_MAX_HZ), n_mels + 2))
    bins = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)[:, None]
    widths = np.diff(edges)
    rising = (bins - edges[None, :-2]) / widths[:-1]
    falling = (edges[None, 2:] - bins) / widths[1:]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[None, :]  # equal area per filter


class LogMel:
    """Whisper's log-mel spectrogram, computed as transformers' `WhisperFeatureExtractor` does with torch
    (its default when torch is installed): right-padded with `padding_value` or cut to `n_samples`, centred
    STFT (reflect padding, periodic Hann window), power, mel filters, log10 floored at 1e-10, floored again
    at 8 below the clip's maximum, then (x + 4) / 4; the last STFT frame is dropped. Settings come from the
    encoder folder's preprocessor_config.json, so importing transformers is not needed for them."""

    def __init__(
        self,
        n_mels: int = 80,
        sampling_rate: int = SAMPLE_RATE,
        n_fft: int = 400,
        hop_length: int = 160,
        chunk_length: int = 30,
        padding_value: float = 0.0,
        dither: float = 0.0,
    ) -> None:
        self.n_mels, self.sampling_rate = n_mels, sampling_rate
        self.n_fft, self.hop_length = n_fft, hop_length
        self.n_samples = chunk_length * sampling_rate
        self.padding_value, self.dither = padding_value, dither
        self.filters = torch.from_numpy(mel_filters(n_mels, n_fft, sampling_rate)).float()
        self.window = torch.hann_window(n_fft)  # periodic, as torch.stft expects

    @classmethod
    def from_dir(cls, folder: Path) -> LogMel:
        """The settings of `folder`'s preprocessor_config.json (transformers' defaults where absent)."""
        path = Path(folder) / PREPROCESSOR_FILE
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{folder}: no {PREPROCESSOR_FILE} (Whisper feature settings)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc})") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{path}: not a JSON object")
        if cfg.get("padding_side", "right") != "right":
            raise CheckpointError(f"{path}: padding_side {cfg['padding_side']!r} (Whisper pads on the right)")
        try:
            settings = {
                "n_mels": int(cfg.get("feature_size", 80)),
                "sampling_rate": int(cfg.get("sampling_rate", SAMPLE_RATE)),
                "n_fft": int(cfg.get("n_fft", 400)),
                "hop_length": int(cfg.get("hop_length", 160)),
                "chunk_length": int(cfg.get("chunk_length", 30)),
                "padding_value": float(cfg.get("padding_value", 0.0)),
                "dither": float(cfg.get("dither", 0.0)),
            }
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad feature setting ({exc})") from None
        if settings["sampling_rate"] != SAMPLE_RATE:
            raise CheckpointError(
                f"{path}: sampling_rate {settings['sampling_rate']}, avsr feeds {SAMPLE_RATE} Hz"
            )
        if min(settings["n_mels"], settings["n_fft"], settings["hop_length"], settings["chunk_length"]) < 1:
            raise CheckpointError(
                f"{path}: feature_size, n_fft, hop_length and chunk_length must be positive"
            )
        return cls(**settings)

    def __call__(self, waveforms: list[np.ndarray], n_samples: int | None = None) -> torch.Tensor:
        """(B, n_mels, n_samples // hop_length) features of `waveforms`, each padded or cut to `n_samples`
        (default: the 30 s window)."""
        n_samples = self.n_samples if n_samples is None else n_samples
        batch = torch.full((len(waveforms), n_samples), self.padding_value, dtype=torch.float32)
        for row, wave in zip(batch, waveforms, strict=True):
            wave = torch.from_numpy(np.asarray(wave, dtype=np.float32)[:n_samples])
            row[: len(wave)] = wave
        if self.dither != 0.0:
            batch += self.dither * torch.randn(batch.shape)
        stft = torch.stft(batch, self.n_fft, self.hop_length, window=self.window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()
        log_spec = torch.clamp(self.filters.T @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


class WhisperFrontEnd:
    """Waveforms -> normalised -> Whisper log-mel features (`LogMel`), padded to 30 s or, with
    `window="trimmed"`, to the clip's own frames rounded up to a multiple of `multiple`."""

    def __init__(
        self,
        log_mel: LogMel,
        window: str = "padded-30s",
        multiple: int = 1,
        input_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.log_mel, self.window, self.multiple = log_mel, window, multiple
        self.input_dtype = input_dtype

    def __call__(self, waveforms: list[np.ndarray]) -> AudioFeatures:
        normalized = [self._as_input(normalize_waveform(w)) for w in waveforms]
        n_frames = [encoder_frames(len(w)) for w in waveforms]
        if self.window == "trimmed":
            feats = [self._trimmed(w, n) for w, n in zip(normalized, n_frames, strict=True)]
            return AudioFeatures(feats, n_frames)
        # Reference: AutoFeatureExtractor(...)(audio, return_tensors="pt", sampling_rate=16000): defaults pad
        # and truncate to 30 s, do_normalize=False.
        return AudioFeatures(self.log_mel(normalized), n_frames)

    def _as_input(self, wave: np.ndarray) -> np.ndarray:
        """The waveform as a half-precision run of the reference sees it. Lightning `bf16-true` casts every
        floating-point tensor of the batch to bf16 before the step (its loops call
        `precision_plugin.convert_input(batch)`), so the layer-normed waveform is rounded to bf16; the model
        then casts it back to float32 for the feature extractor (Llama-AVSR modeling_AVSRLLM.py
        `encode_audio`: `audios.to(torch.float32)`), and the log-mel to bf16 for the encoder."""
        if self.input_dtype == torch.float32:
            return wave
        return torch.from_numpy(wave).to(self.input_dtype).float().numpy()

    def _trimmed(self, wave: np.ndarray, n_frames: int) -> torch.Tensor:
        frames = min(-(-n_frames // self.multiple) * self.multiple, WINDOW_FRAMES)
        return self.log_mel([wave], 2 * frames * HOP)[0]
