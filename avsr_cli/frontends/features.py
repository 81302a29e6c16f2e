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


WINDOW_FRAMES = 1500  # Whisper's 30 s window in encoder frames (max_source_positions)
HOP = SAMPLE_RATE // (2 * ENCODER_FRAME_RATE)  # 160 samples per mel frame, two mel frames per encoder frame


@dataclass
class AudioFeatures:
    """Whisper input features plus the frames to keep per clip: one (B, n_mels, 3000) batch (padded-30s),
    or one (n_mels, 2k) tensor per clip whose k encoder frames cover just the clip (trimmed)."""

    input_features: torch.Tensor | list[torch.Tensor]
    n_frames: list[int]


class WhisperFrontEnd:
    """Waveforms -> normalised -> Whisper log-mel features (transformers' extractor), padded to 30 s or, with
    `window="trimmed"`, to the clip's own frames rounded up to a multiple of `multiple`."""

    def __init__(
        self,
        feature_extractor,
        window: str = "padded-30s",
        multiple: int = 1,
        input_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.feature_extractor, self.window, self.multiple = feature_extractor, window, multiple
        self.input_dtype = input_dtype

    def __call__(self, waveforms: list[np.ndarray]) -> AudioFeatures:
        normalized = [self._as_input(normalize_waveform(w)) for w in waveforms]
        n_frames = [encoder_frames(len(w)) for w in waveforms]
        if self.window == "trimmed":
            feats = [self._trimmed(w, n) for w, n in zip(normalized, n_frames, strict=True)]
            return AudioFeatures(feats, n_frames)
        # Reference: AutoFeatureExtractor(...)(audio, return_tensors="pt", sampling_rate=16000): defaults pad
        # and truncate to 30 s, do_normalize=False.
        feats = self.feature_extractor(normalized, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return AudioFeatures(feats.input_features, n_frames)

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
        samples = 2 * frames * HOP
        feats = self.feature_extractor(
            wave, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="max_length", max_length=samples
        )
        return feats.input_features[0]
