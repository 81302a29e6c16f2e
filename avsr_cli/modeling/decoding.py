"""Decoding options and the transformers GenerationConfig built from them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import DecodingDefaults

STRATEGIES = ("beam", "reference")


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode. `None` fields take the checkpoint's defaults (reference: 15 beams, 32 new tokens).

    strategy "beam": deterministic beam search (greedy with num_beams=1), the default.
    strategy "reference": what the reference code actually runs: generate() inherits the base Llama 3
    generation_config.json (do_sample=True, temperature 0.6, top_p 0.9; top_k 50), so with num_beams > 1
    it is transformers' beam *sampling* (Llama-AVSR README: results vary between runs). Seeded here.
    """

    strategy: str = "beam"
    num_beams: int | None = None
    max_new_tokens: int | None = None
    seed: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int | None = None  # None: the checkpoint's (0: off)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown decoding strategy {self.strategy!r} (expected one of {STRATEGIES})")
        if self.num_beams is not None and self.num_beams < 1:
            raise ValueError("num_beams must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 0:
            raise ValueError("no_repeat_ngram_size must be >= 0")


def repeat_guard(options: DecodingOptions, defaults: DecodingDefaults) -> int:
    """The n of the n-gram no hypothesis may repeat (0: none)."""
    if options.no_repeat_ngram_size is not None:
        return options.no_repeat_ngram_size
    return defaults.no_repeat_ngram_size


def generation_config(options: DecodingOptions, defaults: DecodingDefaults, ids):
    """A complete GenerationConfig, so nothing leaks in from the LLM's own generation_config.json."""
    from transformers import GenerationConfig  # lazy: the CLI imports this module for DecodingOptions

    sample = options.strategy == "reference"
    num_beams = options.num_beams or defaults.num_beams
    return GenerationConfig(
        num_beams=num_beams,
        max_new_tokens=options.max_new_tokens or defaults.max_new_tokens,
        do_sample=sample,
        temperature=defaults.temperature if sample else None,
        top_p=defaults.top_p if sample else None,
        top_k=defaults.top_k if sample else None,
        length_penalty=options.length_penalty,
        no_repeat_ngram_size=repeat_guard(options, defaults) or None,
        early_stopping=False,  # transformers default, as in the reference
        eos_token_id=ids.eos,
        bos_token_id=ids.bos,
        pad_token_id=ids.pad,
        use_cache=True,
        output_scores=True,  # for avg_logprob (greedy search runs in greedy.py, one float a token)
        return_dict_in_generate=True,
    )


class StepCounter:
    """A logits processor that changes nothing and tells `on_step(n)` as generation step n runs."""

    def __init__(self, on_step) -> None:
        self.on_step, self.step = on_step, 0

    def __call__(self, input_ids, scores):
        self.step += 1
        self.on_step(self.step)
        return scores


def drop_repeated_phrases(text: str, max_words: int = 6, min_repeats: int = 3) -> str:
    """Collapse LLM repeat loops: a phrase of 1..max_words words said min_repeats+ times running is kept once.

    Words compare case- and punctuation-insensitively; a partial repeat that ends the text after a
    collapsed loop (a loop cut off by the token budget) is dropped too; runs until nothing changes.
    """
    words = text.split()
    while True:
        collapsed = _collapse(words, max_words, min_repeats)
        if len(collapsed) == len(words):
            return " ".join(words)
        words = collapsed


def _collapse(words: list[str], max_words: int, min_repeats: int) -> list[str]:
    keys = [re.sub(r"[^\w']", "", w.lower()) or w for w in words]
    out, i = [], 0
    while i < len(words):
        for n in range(1, max_words + 1):
            count = 1
            while keys[i + count * n : i + (count + 1) * n] == keys[i : i + n]:
                count += 1
            if count >= min_repeats:
                out += words[i : i + n]
                i += count * n
                rest = keys[i:]
                if rest and len(rest) < n and rest == keys[i - n : i - n + len(rest)]:
                    i = len(words)
                break
        else:
            out.append(words[i])
            i += 1
    return out
