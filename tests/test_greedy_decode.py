"""avsr's greedy loop over the KV cache against transformers' generate() on tiny random models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from avsr_cli.modeling.decoding import DecodingOptions, generation_config
from avsr_cli.modeling.greedy import greedy_decode
from avsr_cli.modeling.model import ModalityInputs
from tests.support.tiny import trained_tiny_model

MAX_NEW = 12


@pytest.fixture(scope="module", params=["peft", "merged"])
def model(request, tiny_dirs):
    m = trained_tiny_model(*tiny_dirs, seed=7)
    if request.param == "merged":
        m.merge_lora()
    return m


def inputs(m, seconds):
    rng = np.random.RandomState(3)
    audio = [(0.1 * rng.randn(int(s * 16000))).astype(np.float32) for s in seconds]
    feats = m.audio_frontend(audio)
    frames = m.audio_encoder(feats.input_features, feats.n_frames)
    seqs, labels = m.sequences("asr", ModalityInputs(frames, 4), None)
    embeds, mask, _ = m._pad_left(seqs, labels)
    return ModalityInputs(frames, 4), embeds, mask


def generated(m, embeds, mask):
    """transformers' greedy search: tokens and the log-probability of each chosen token."""
    gen = generation_config(DecodingOptions(num_beams=1, max_new_tokens=MAX_NEW), m.config.decoding, m.ids)
    with torch.no_grad():
        out = m.llm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=gen)
    return out.sequences, m.llm.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)


def until_eos(ids, eos):
    ends = (ids == eos).nonzero()
    return int(ends[0, 0]) + 1 if len(ends) else len(ids)


@pytest.mark.parametrize("seconds", [(1.3,), (1.0, 2.3, 0.6)], ids=["batch1", "batch3-left-padded"])
def test_greedy_loop_equals_generate(model, seconds):
    audio, embeds, mask = inputs(model, seconds)
    free, _ = generated(model, embeds, mask)
    eos_before = model.ids.eos
    # An end token the model does emit: row 0 ends at its third token, the other rows later or never.
    model.ids.eos = int(free[0, 2])
    try:
        ids, scores = generated(model, embeds, mask)
        steps: list[int] = []
        ours, our_scores = greedy_decode(
            model.llm, embeds, mask, model.ids.eos, model.ids.pad, MAX_NEW, on_step=steps.append
        )
        hyps = model.decode("asr", audio, None, DecodingOptions(num_beams=1, max_new_tokens=MAX_NEW))
    finally:
        model.ids.eos = eos_before
    assert until_eos(ids[0], int(free[0, 2])) <= 3
    assert torch.equal(ours, ids)
    assert steps == list(range(1, ids.shape[1] + 1))
    if len(seconds) > 1:
        assert (ids == model.ids.pad).any()  # a row that ended early was padded while the others went on
    for row, (want, got) in enumerate(zip(scores, our_scores, strict=True)):
        n = until_eos(ids[row], int(free[0, 2]))
        torch.testing.assert_close(got[:n], want[:n], rtol=1e-5, atol=1e-6)
        assert hyps[row].avg_logprob == pytest.approx(float(want[:n].mean()), rel=1e-5, abs=1e-6)


def repeats_ngram(row: list[int], n: int) -> bool:
    grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
    return len(set(grams)) < len(grams)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_repeat_guard_equals_generate(model, n):
    """no_repeat_ngram_size: avsr's greedy loop chooses the tokens and scores of generate() with transformers'
    NoRepeatNGramLogitsProcessor, and the model's decode takes it from the options or the card."""
    audio, embeds, mask = inputs(model, (1.0, 2.3, 0.6))
    eos, pad = model.ids.eos, model.ids.pad
    free, _ = greedy_decode(model.llm, embeds, mask, eos, pad, MAX_NEW)
    assert any(repeats_ngram(row, n) for row in free.tolist())  # a random model loops: the guard has work
    options = DecodingOptions(num_beams=1, max_new_tokens=MAX_NEW, no_repeat_ngram_size=n)
    gen = generation_config(options, model.config.decoding, model.ids)
    with torch.no_grad():
        out = model.llm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=gen)
    want_scores = model.llm.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    ours, scores = greedy_decode(model.llm, embeds, mask, eos, pad, MAX_NEW, no_repeat_ngram=n)
    assert torch.equal(ours, out.sequences)
    assert not any(repeats_ngram([t for t in row if t != pad], n) for row in ours.tolist())
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-6)
    guarded = model.decode("asr", audio, None, options)
    card = model.config.decoding
    try:
        model.config.decoding = dataclasses.replace(card, no_repeat_ngram_size=n)
        from_card = model.decode("asr", audio, None, DecodingOptions(num_beams=1, max_new_tokens=MAX_NEW))
        off = model.decode("asr", audio, None, dataclasses.replace(options, no_repeat_ngram_size=0))
    finally:
        model.config.decoding = card
    assert [h.text for h in from_card] == [h.text for h in guarded]
    assert [h.text for h in off] != [h.text for h in guarded]


def test_repeat_guard_in_beam_search(model):
    """Beam search gets the guard through generate()'s own processor: its sequences repeat no bigram."""
    audio, embeds, mask = inputs(model, (1.0, 2.3))
    options = DecodingOptions(num_beams=3, max_new_tokens=MAX_NEW, no_repeat_ngram_size=2)
    gen = generation_config(options, model.config.decoding, model.ids)
    sequences, _ = model._search(embeds, mask, gen, 0, None)
    pad = model.ids.pad
    assert not any(repeats_ngram([t for t in row if t != pad], 2) for row in sequences.tolist())
    free = model.decode("asr", audio, None, dataclasses.replace(options, no_repeat_ngram_size=0))
    assert [h.text for h in model.decode("asr", audio, None, options)] != [h.text for h in free]
