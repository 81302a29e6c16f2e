"""A character CTC head on the audio encoder's frames: the aligner behind word timestamps.

A checkpoint may carry one (`aligner.json` + `aligner.safetensors` next to its adapter): stacked encoder
frames -> MLP -> `rate` character slots per stacked token, so its posteriors keep the encoder's frame rate
(Whisper: 50 per second, 20 ms). It reads the same frozen encoder frames the projector reads, so timing words
costs one small MLP on frames the model computed anyway.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from .alignment import CHARS, align_words

ALIGNER_CONFIG = "aligner.json"
ALIGNER_WEIGHTS = "aligner.safetensors"


@dataclass(frozen=True)
class AlignerConfig:
    """Shape of a CharCTCHead and the time one output frame covers."""

    encoder_dim: int = 512
    rate: int = 2  # encoder frames stacked per token
    hidden: int = 1024
    width: int = 576
    chars: str = CHARS
    frame_seconds: float = 0.02  # Whisper's encoder: 50 frames a second

    @classmethod
    def load(cls, path: Path) -> AlignerConfig:
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: not a readable aligner config ({exc})") from None


class CharCTCHead(nn.Module):
    """(T, D) encoder frames -> (T // rate * rate, len(chars) + 1) character log-probabilities."""

    def __init__(self, config: AlignerConfig = AlignerConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        self.body = nn.Sequential(
            nn.Linear(c.encoder_dim * c.rate, c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.width)
        )
        self.readout = nn.Linear(c.width, c.rate * (len(c.chars) + 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Logits for (B, T, D) frames: (B, T // rate * rate, classes)."""
        b, t, d = frames.shape
        rate, n = self.config.rate, t // self.config.rate
        x = frames[:, : n * rate].reshape(b, n, d * rate)
        return self.readout(self.body(x)).reshape(b, n * rate, len(self.config.chars) + 1)

    @torch.no_grad()
    def log_probs(self, frames: torch.Tensor) -> torch.Tensor:
        """One clip's (T, D) frames -> (T', classes) float32 log-probabilities (T' = T cut to the rate)."""
        param = next(self.parameters())
        logits = self(frames[None].to(param.device, param.dtype))[0]
        return logits.float().log_softmax(-1).cpu()

    def align(
        self, text: str, wave: np.ndarray, frames: torch.Tensor
    ) -> list[tuple[str, float, float, float]]:
        """`text`'s words timed on one chunk's (T, D) encoder frames (the waveform is not needed)."""

        lp = self.log_probs(frames).numpy()
        return align_words(text, lp, self.config.frame_seconds, self.config.chars)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ALIGNER_CONFIG).write_text(json.dumps(asdict(self.config), indent=1) + "\n")
        save_file(
            {k: v.detach().float().contiguous() for k, v in self.state_dict().items()},
            str(folder / ALIGNER_WEIGHTS),
        )


def load_aligner(folder: Path) -> CharCTCHead | None:
    """The checkpoint's aligner, or None when it has none (safetensors: nothing is unpickled)."""
    if not (folder / ALIGNER_CONFIG).is_file():
        return None
    head = CharCTCHead(AlignerConfig.load(folder / ALIGNER_CONFIG))
    try:
        head.load_state_dict(load_file(str(folder / ALIGNER_WEIGHTS)))
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{folder / ALIGNER_WEIGHTS}: not the aligner its config describes ({exc})"
        ) from None
    return head.eval().requires_grad_(False)
