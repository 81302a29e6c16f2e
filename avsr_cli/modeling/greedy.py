"""Greedy decoding with the LLM's key/value cache: the tokens and scores of transformers' generate() with one
beam and no sampling, without generate()'s set-up on every call (its validation, processors and stopping
criteria), which costs as much as several tokens of a small LLM."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .llama import LlamaDecoder, greedy_choice


@torch.no_grad()
def greedy_decode(
    llm: nn.Module,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    eos: int,
    pad: int,
    max_new_tokens: int,
    on_step: Callable[[int], None] | None = None,
    no_repeat_ngram: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, log-probabilities), each (batch, steps), for left-padded `embeds` (batch, length, hidden)
    whose real positions `mask` marks. Rows that emitted `eos` continue with `pad`; decoding stops when
    every row has ended or after `max_new_tokens`. The log-probability is that of the chosen token
    (log-softmax of the float32 logits), what compute_transition_scores(normalize_logits=True) gives on
    generate()'s scores, kept as one float a row and step rather than generate()'s full-vocabulary scores
    of every step (batch x 49k floats a token: 380 MB for 8 long-form chunks). `no_repeat_ngram`: as
    generate()'s no_repeat_ngram_size (llama.greedy_choice).

    The forward calls are generate()'s own: positions from the mask (0 on padding), the mask dropped when it
    masks nothing, the logits of the last position only, the cache the model returns passed back."""
    if isinstance(llm, LlamaDecoder):  # avsr's own Llama: the same loop over a preallocated cache
        return llm.greedy_decode(embeds, mask, eos, pad, max_new_tokens, on_step, no_repeat_ngram)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    attention = None if bool((mask == 1).all()) else mask
    unfinished = torch.ones(embeds.shape[0], dtype=torch.long, device=embeds.device)
    tokens, scores = [], []
    out = llm(
        inputs_embeds=embeds,
        attention_mask=attention,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        return_dict=True,
    )
    cache_key = "cache" if out.get("cache") is not None else "past_key_values"  # transformers 5 / 4
    for step in range(1, max_new_tokens + 1):
        if on_step is not None:
            on_step(step)
        chosen, score, unfinished = greedy_choice(
            out.logits[:, -1], unfinished, eos, pad, tokens, no_repeat_ngram
        )
        tokens.append(chosen)
        scores.append(score)
        if step == max_new_tokens or int(unfinished.max()) == 0:
            break
        positions = positions[:, -1:] + 1
        if attention is not None:
            attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=-1)
        out = llm(
            input_ids=chosen[:, None],
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
            **{cache_key: out[cache_key]},
        )
    return torch.stack(tokens, dim=1), torch.stack(scores, dim=1)
