"""What an evaluation scores: its conditions (mode x SNR x mouth occlusion) and how each transcribes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .transcript import TranscribeOptions

CLEAN = math.inf  # the "SNR" of a clean condition


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate; echoed into summary.json."""

    modes: tuple[str, ...] = ("asr",)
    snrs: tuple[float, ...] = (CLEAN,)  # dB; inf = clean
    noise: str = "babble"  # a noise file, or a built-in generator: "white" or "babble"
    seed: int = 0
    normalizer: str = "lrs"
    limit: int | None = None
    workers: int = 1  # processes that decode and mix audio while the model decodes
    resume: bool = False
    occlusion: str | None = None  # vsr/avsr: corrupt the mouth crops (noise.OCCLUSIONS) at each level
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    # (i, n): score only shard i of n (1-based): every n-th clip by id, starting at the i-th, into its own
    # results.shard-i-of-n.jsonl; merge_reports() joins the shards into the unsharded summary.
    shard: tuple[int, int] | None = None
    # How each clip is transcribed (its mode is set per condition); mouth_cache None: <avsr cache>/mouth
    # (crops shared by models, modes, conditions).
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)

    def __post_init__(self) -> None:
        if self.shard is not None and not (len(self.shard) == 2 and 1 <= self.shard[0] <= self.shard[1]):
            raise ValueError(f"shard must be I/N with 1 <= I <= N, not {self.shard}")

    def occlusions(self, mode: str) -> list[str]:
        """The video conditions of `mode`: "none", then "kind:level" for each level (video modes only)."""
        if mode == "asr" or not self.occlusion:
            return ["none"]
        return ["none", *(f"{self.occlusion}:{level}" for level in self.levels)]

    def snrs_for(self, mode: str) -> tuple[float, ...]:
        """vsr hears nothing: it is scored once, on the clean condition."""
        return (CLEAN,) if mode == "vsr" else self.snrs

    def transcribe_options(self, mode: str) -> TranscribeOptions:
        return replace(self.transcribe, mode=mode)


def snr_key(snr: float) -> str:
    return "clean" if snr == CLEAN else f"{snr:g}"
