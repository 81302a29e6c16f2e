"""Token compression (stacking or average pooling of k encoder frames) and the MLP projector into the LLM."""

from __future__ import annotations

import torch
from torch import nn

COMPRESSION_MODES = ("stack", "avg-pooling")


def compress(frames: torch.Tensor, rate: int, mode: str) -> torch.Tensor:
    """(T, D) encoder frames -> (T // rate, D * rate) stacked or (T // rate, D) average-pooled.

    Reference, Llama-AVSR models/modeling_AVSRLLM.py: "stack" concatenates `enc[:, x:x+K, :].view(B, 1, -1)`
    for x in steps of K, so frame x comes first in the vector; the last partial group is dropped (audio)
    or cut beforehand (video, av_dataset.py). "avg-pooling" is `nn.AvgPool1d(K)` over time, which floors.
    """
    n = frames.shape[0] // rate
    if mode == "stack":
        return frames[: n * rate].reshape(n, rate * frames.shape[1])
    if mode == "avg-pooling":
        return frames[: n * rate].reshape(n, rate, frames.shape[1]).mean(dim=1)
    raise ValueError(f"unknown compression mode {mode!r} (expected one of {COMPRESSION_MODES})")


class Projector(nn.Sequential):
    """Linear(in, intermediate) -> ReLU -> Linear(intermediate, hidden) [-> LayerNorm(hidden)].

    Reference: Llama-AVSR `audio_proj`/`video_proj` = nn.Sequential(Linear, ReLU, Linear), state-dict keys
    `.0.` and `.2.`; `--layernorm-projector True` appends nn.LayerNorm(hidden) as index 3.
    """

    def __init__(self, in_dim: int, intermediate: int, hidden: int, layernorm: bool = False) -> None:
        layers: list[nn.Module] = [
            nn.Linear(in_dim, intermediate),
            nn.ReLU(),
            nn.Linear(intermediate, hidden),
        ]
        if layernorm:
            layers.append(nn.LayerNorm(hidden))
        super().__init__(*layers)


class ModalityProjector(nn.Module):
    """Compression + one projector per trained rate (Omni-AVSR/Llama-MTSK train several rates at once)."""

    def __init__(
        self,
        encoder_dim: int,
        rates: list[int],
        mode: str,
        intermediate: int,
        hidden: int,
        layernorm: bool = False,
    ) -> None:
        super().__init__()
        if mode not in COMPRESSION_MODES:
            raise ValueError(f"unknown compression mode {mode!r}")
        self.mode = mode
        per_rate_in = {r: encoder_dim * r if mode == "stack" else encoder_dim for r in rates}
        self.by_rate = nn.ModuleDict(
            {str(r): Projector(per_rate_in[r], intermediate, hidden, layernorm) for r in rates}
        )

    def forward(self, frames: list[torch.Tensor], rate: int) -> list[torch.Tensor]:
        """Per clip: (T_i, D) frames -> (T_i // rate, hidden) LLM input embeddings."""
        proj = self.by_rate[str(rate)]
        param = next(proj.parameters())
        return [proj(compress(f.to(param.device, param.dtype), rate, self.mode)) for f in frames]
