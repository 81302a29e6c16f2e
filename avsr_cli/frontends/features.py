"""Audio front end: waveform normalisation and Whisper log-mel features, as the reference computes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


@dataclass
class AudioFeatures:
    """Whisper input features for a batch: (B, n_mels, 3000) plus frames to keep per clip."""

    input_features: torch.Tensor
    n_frames: list[int]


class WhisperFrontEnd:
    """Waveforms -> normalised -> Whisper log-mel features padded to 30 s (transformers' extractor)."""

    def __init__(self, feature_extractor) -> None:
        self.feature_extractor = feature_extractor

    def __call__(self, waveforms: list[np.ndarray]) -> AudioFeatures:
        normalized = [normalize_waveform(w) for w in waveforms]
        # Reference: AutoFeatureExtractor(...)(audio, return_tensors="pt", sampling_rate=16000): defaults pad
        # and truncate to 30 s, do_normalize=False.
        feats = self.feature_extractor(normalized, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return AudioFeatures(feats.input_features, [encoder_frames(len(w)) for w in waveforms])
