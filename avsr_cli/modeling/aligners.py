"""What times words: a checkpoint's own CharCTCHead (on its encoder frames), or a separate character CTC
model such as wav2vec2 (on the chunk's waveform), as whisperX aligns Whisper's words with wav2vec2.

Both answer `align(text, wave, frames)`; the batched loop passes each decoded chunk's text, its 16 kHz
samples and its audio encoder frames, and each aligner reads what it needs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import CheckpointError
from .alignment import align_words

SAMPLE_RATE = 16_000
WAV2VEC2_FILES = ("config.json", "vocab.json")  # besides the safetensors weights


class Aligner(Protocol):
    def align(
        self, text: str, wave: np.ndarray, frames: torch.Tensor
    ) -> list[tuple[str, float, float, float]]:
        """(word, start, end, probability) for each word of `text`, in seconds from the chunk's start."""
        ...


class Wav2Vec2Aligner:
    """A wav2vec2-style character CTC model (transformers' Wav2Vec2ForCTC and its vocab.json) as an aligner:
    the chunk's waveform, normalised as its feature extractor does, -> log-probabilities at the model's frame
    rate (the product of its convolution strides: 320 samples, 20 ms, for wav2vec2 base)."""

    def __init__(self, model, vocab: dict[str, int], blank: int, delimiter: str, normalize: bool) -> None:
        self.model = model
        self.vocab, self.blank, self.delimiter, self.normalize = vocab, blank, delimiter, normalize
        self.frame_seconds = math.prod(model.config.conv_stride) / SAMPLE_RATE

    @classmethod
    def from_dir(cls, folder: Path, device: str | torch.device = "cpu") -> Wav2Vec2Aligner:
        """Load `folder` (config.json, vocab.json, *.safetensors); `.bin` weights are refused, never read."""
        check_wav2vec2_folder(folder)
        config = _read_json(folder / "config.json")
        if "Wav2Vec2ForCTC" not in config.get("architectures", []):
            raise CheckpointError(
                f"{folder / 'config.json'}: not a wav2vec2 CTC model (architectures: "
                f"{', '.join(config.get('architectures', [])) or 'none'})"
            )
        vocab = _read_json(folder / "vocab.json")
        tokens, extractor = (
            _read_json(folder / name) if (folder / name).is_file() else {}
            for name in ("tokenizer_config.json", "preprocessor_config.json")
        )
        rate = extractor.get("sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise CheckpointError(f"{folder}: the model reads {rate} Hz audio, not {SAMPLE_RATE} Hz")
        pad = tokens.get("pad_token", "<pad>")
        blank = vocab.get(pad if isinstance(pad, str) else "<pad>", config.get("pad_token_id", 0))
        delimiter = tokens.get("word_delimiter_token", "|")
        if delimiter not in vocab:
            raise CheckpointError(f"{folder / 'vocab.json'}: has no word delimiter {delimiter!r}")
        # lazy: transformers takes seconds to import; only a separate aligner needs wav2vec2
        from transformers import Wav2Vec2ForCTC

        try:
            model = Wav2Vec2ForCTC.from_pretrained(
                folder, use_safetensors=True, local_files_only=True, dtype=torch.float32
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{folder}: cannot load the wav2vec2 model ({exc})") from None
        if model.config.vocab_size != len(vocab):
            raise CheckpointError(
                f"{folder / 'vocab.json'}: {len(vocab)} entries, the model has {model.config.vocab_size} "
                "classes"
            )
        model = model.to(device).eval().requires_grad_(False)
        return cls(model, vocab, blank, delimiter, bool(extractor.get("do_normalize", True)))

    @torch.no_grad()
    def log_probs(self, wave: np.ndarray) -> np.ndarray:
        """(T, classes) float32 log-probabilities of one 16 kHz mono waveform."""
        x = np.asarray(wave, np.float32)
        if x.size < 2 * math.prod(self.model.config.conv_stride):  # shorter than the convolutions read
            return np.zeros((0, len(self.vocab)), np.float32)
        if self.normalize:  # as Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        param = next(self.model.parameters())
        logits = self.model(torch.from_numpy(x)[None].to(param.device, param.dtype)).logits[0]
        return logits.float().log_softmax(-1).cpu().numpy()

    def align(
        self, text: str, wave: np.ndarray, frames: torch.Tensor | None = None
    ) -> list[tuple[str, float, float, float]]:
        """`text`'s words timed on the chunk's waveform (the encoder frames are not needed)."""
        return align_words(
            text,
            self.log_probs(wave),
            self.frame_seconds,
            vocab=self.vocab,
            blank=self.blank,
            delimiter=self.delimiter,
        )


def check_wav2vec2_folder(folder: Path) -> None:
    """Raise CheckpointError unless `folder` has a wav2vec2 model's config, vocabulary and safetensors
    weights (pickled `.bin` weights are named and refused: unpickling can run code)."""
    missing = [name for name in WAV2VEC2_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: not a wav2vec2 CTC model (no {', '.join(missing)})")
    if not list(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        refused = f"; {', '.join(pickled)} is not read: unpickling can run code" if pickled else ""
        raise CheckpointError(f"{folder}: holds no .safetensors weights{refused}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data
