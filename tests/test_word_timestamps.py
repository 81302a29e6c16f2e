"""Word timestamps: the CTC forced alignment, the aligner a checkpoint carries, and their accuracy on speech
with known word boundaries."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from avsr_cli.errors import CheckpointError
from avsr_cli.modeling.alignment import align_words, viterbi, word_targets
from avsr_cli.modeling.ctc_head import CHARS, AlignerConfig, CharCTCHead, load_aligner
from avsr_cli.tasks.transcribe import Transcriber
from avsr_cli.tasks.transcript import TranscribeOptions
from tests.support.speech import available_voices, make_word_clip, synthesize

ROOT = Path(__file__).resolve().parents[1]


def posteriors(n_frames: int, fire: dict[int, int], floor: float = -9.0) -> np.ndarray:
    """Log-probabilities where class fire[t] dominates frame t and blank every other frame."""
    lp = np.full((n_frames, len(CHARS) + 1), floor)
    lp[:, 0] = -0.001
    for t, c in fire.items():
        lp[t, c], lp[t, 0] = -0.001, floor
    return lp


def test_viterbi_finds_the_frames_each_character_fires_on():
    targets, spans = word_targets(["Too", "late!"])
    assert spans == [(0, 3), (4, 8)]  # "too", a space, "late" (the "!" is not a character of the head)
    frames = [3, 4, 6, 12, 20, 21, 23, 24]
    path = viterbi(posteriors(30, dict(zip(frames, targets, strict=True))), targets)
    assert [t for t, k in enumerate(path) if k >= 0] == frames
    # repeated letters need a blank between them: "oo" fits 2 frames only with one more for the blank
    assert viterbi(posteriors(3, {}), word_targets(["too"])[0]) is None
    assert viterbi(posteriors(4, {}), word_targets(["too"])[0]) is not None


def test_word_times_come_from_the_aligned_frames():
    words = ["Hi", "Bob,", "42", "ok"]
    targets, _ = word_targets(words)
    frames = [5, 6, 10, 20, 21, 23, 30, 40, 41]  # h i _ b o b _ o k
    timed = align_words(" ".join(words), posteriors(60, dict(zip(frames, targets, strict=True))), 0.02)
    assert [w for w, *_ in timed] == words
    starts_ends = [(round(a, 3), round(b, 3)) for _, a, b, _ in timed]
    assert starts_ends[0] == (0.1, 0.14) and starts_ends[1] == (0.4, 0.48) and starts_ends[3] == (0.8, 0.84)
    assert starts_ends[2] == (0.48, 0.8)  # a number the head cannot spell sits between its neighbours
    assert timed[2][3] == 0.0 and all(0.9 < p <= 1.0 for i, (*_, p) in enumerate(timed) if i != 2)


def test_too_few_frames_spread_the_words_unaligned():
    timed = align_words("a long sentence here", posteriors(5, {}), 0.02)
    assert [w for w, *_ in timed] == ["a", "long", "sentence", "here"]
    assert timed[0][1] == 0.0 and timed[-1][2] == pytest.approx(0.1)
    assert all(p == 0.0 for *_, p in timed) and all(a <= b for _, a, b, _ in timed)


@pytest.fixture(scope="module")
def aligned_ckpt(tiny_ckpt, tmp_path_factory):
    """The tiny random checkpoint with a random aligner of its encoder's width."""
    folder = tmp_path_factory.mktemp("aligned") / "tiny"
    shutil.copytree(tiny_ckpt, folder)
    torch.manual_seed(1)
    CharCTCHead(AlignerConfig(encoder_dim=32, hidden=16, width=16)).save(folder)
    return folder


def test_segments_carry_words_that_spell_their_text(aligned_ckpt, tmp_path):
    clip = synthesize("Have you seen my phone charger? I left it on the table.", tmp_path / "a.wav")
    options = TranscribeOptions(word_timestamps=True, mode="asr")
    transcriber = Transcriber.from_checkpoint(aligned_ckpt, options=options)
    result = transcriber.transcribe(clip)
    assert result.segments
    for seg in result.segments:
        assert seg.words and "".join(w.word for w in seg.words).strip() == seg.text
        assert all(w.word.startswith(" ") for w in seg.words)
        starts = [w.start for w in seg.words]
        assert starts == sorted(starts)
        assert all(seg.start <= w.start <= w.end <= seg.end + 0.02 for w in seg.words)
        assert all(0.0 <= w.probability <= 1.0 for w in seg.words)
    payload = result.to_dict()["segments"][0]["words"][0]
    assert set(payload) == {"word", "start", "end", "probability"}
    without = transcriber.transcribe(clip, replace(options, word_timestamps=False))
    assert all(s.words is None for s in without.segments) and without.text == result.text


def test_a_checkpoint_without_an_aligner_says_so(tiny_ckpt, tmp_path):
    transcriber = Transcriber.from_checkpoint(tiny_ckpt)
    clip = synthesize("Hello there.", tmp_path / "a.wav")
    with pytest.raises(CheckpointError, match="has no aligner"):
        transcriber.transcribe(clip, TranscribeOptions(word_timestamps=True))
    assert load_aligner(tiny_ckpt) is None


def test_a_damaged_aligner_is_refused(aligned_ckpt, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(aligned_ckpt, folder)
    config = json.loads((folder / "aligner.json").read_text())
    (folder / "aligner.json").write_text(json.dumps({**config, "hidden": 17}))
    with pytest.raises(CheckpointError, match="aligner.safetensors: not the aligner its config describes"):
        load_aligner(folder)


# Words spoken one at a time by a voice the built-in model never trained on, joined by known silences.
WORD_LISTS = [
    "the old harbour lights were shining across the water tonight",
    "please remember to bring your umbrella and a warm coat",
    "seven children painted the fence before their lunch break",
    "nobody expected the library to close so early on sunday",
]


@pytest.mark.slow
def test_built_in_model_word_starts_are_accurate(tmp_path):
    voices = available_voices()
    if not voices:
        pytest.skip("no offline TTS voice installed")
    voice = "hibari:heart" if "hibari:heart" in voices else voices[0]
    rng = random.Random(0)
    truth, clips = [], []
    for i, text in enumerate(WORD_LISTS):
        words = text.split()
        gaps = [0.3] + [rng.uniform(0.05, 0.35) for _ in words[1:]]
        path = tmp_path / f"words{i}.wav"
        truth.append(list(zip(words, make_word_clip(words, gaps, path, voice), strict=True)))
        clips.append(path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "avsr_cli", "transcribe", *map(str, clips), "--word-timestamps"]
    cmd += ["-f", "json", "-o", str(out), "--threads", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    errors, matched, total = [], 0, 0
    for path, known in zip(clips, truth, strict=True):
        result = json.loads((out / f"{path.stem}.json").read_text())
        heard = [w for s in result["segments"] for w in s["words"]]
        # each reference word against the first unused heard word that spells it
        k = 0
        for word, (start, _) in known:
            total += 1
            for j in range(k, len(heard)):
                if heard[j]["word"].strip().strip(".,?!").lower() == word:
                    errors.append(abs(heard[j]["start"] - start))
                    matched, k = matched + 1, j + 1
                    break
    assert matched >= 0.5 * total, f"only {matched}/{total} words recognised"
    errors.sort()
    median, p90 = statistics.median(errors), errors[int(0.9 * (len(errors) - 1))]
    print(f"word starts: {matched}/{total} words, median error {median:.3f} s, 90th percentile {p90:.3f} s")
    assert median <= 0.08 and p90 <= 0.2
