"""A checkpoint's config.json is untrusted input: every number in it is checked (type, integer-ness, range,
and against the shapes in adapter.safetensors) before the model is built, so an absurd size is one line
naming the file and the key, exit 2, never an allocation that fails or exhausts memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tiny import ffmpeg

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 12 << 30  # address space of a CLI run: a config that still allocates fails, not the machine


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media") / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", str(path))
    return path


def edited(tiny_ckpt: Path, dst: Path, key: str, value) -> Path:
    """A copy of the tiny checkpoint whose config.json has `value` at the dotted `key`."""
    shutil.copytree(tiny_ckpt, dst)
    config = json.loads((dst / "config.json").read_text())
    *parents, last = key.split(".")
    table = config
    for name in parents:
        table = table[name]
    table[last] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def transcribe(ckpt: Path, audio: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "AVSR_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "avsr_cli", "transcribe", str(audio), "-c", str(ckpt), "--device", "cpu"]
    cmd += ["--num-beams", "1", "--max-new-tokens", "2", "--output-dir", str(tmp_path / "out")]
    return subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "projector.intermediate_size",
            10**9,
            "projector.intermediate_size is 1000000000: it must be an integer from 1 to 262144",
        ),
        (
            "compression.audio_rates",
            [10**9],
            "compression.audio_rates[0] is 1000000000: it must be an integer from 1 to 1500",
        ),
        ("lora.r", 10**6, "lora.r is 1000000: it must be an integer from 1 to 65536"),
        (
            "decoding.num_beams",
            10**9,
            "decoding.num_beams is 1000000000: it must be an integer from 1 to 256",
        ),
        (
            "projector.intermediate_size",
            True,
            "projector.intermediate_size must be an integer from 1 to 262144, not true",
        ),
        (
            "projector.intermediate_size",
            48.5,
            "projector.intermediate_size must be an integer from 1 to 262144, not 48.5",
        ),
        ("audio_encoder.dim", "32", 'audio_encoder.dim must be an integer from 1 to 65536, not "32"'),
        (
            "max_audio_seconds",
            1e300,
            "max_audio_seconds is 1e+300: it must be a number above 0 and at most 3600",
        ),
        # in range, but not what the weights present hold
        (
            "projector.intermediate_size",
            200_000,
            "projector.intermediate_size is 200000: it must be 48, as "
            "projectors.audio.4.0.weight in adapter.safetensors has shape (48, 128)",
        ),
        (
            "compression.audio_rates",
            [4, 1500],
            "compression.audio_rates has 1500, but adapter.safetensors "
            "holds no audio projector for that rate (its audio rates: [4])",
        ),
        ("lora.r", 64, "lora.r is 64: it must be 4, as llm.lora.shared."),
    ],
)
def test_absurd_config_number_is_one_line_exit_2(tiny_ckpt, tone, tmp_path, key, value, expected):
    ckpt = edited(tiny_ckpt, tmp_path / "ck", key, value)
    r = transcribe(ckpt, tone, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-3000:])
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, r.stderr
    assert line.startswith(f"error: {ckpt / 'config.json'}: ") and expected in line, line
    assert not list((tmp_path / "out").glob("*")) and r.stdout == ""  # nothing written


def test_projectors_too_large_for_any_machine_are_refused_without_weights(tiny_ckpt, tone, tmp_path):
    """No adapter to compare with: the sizes together are still bounded (a 65536-wide encoder stacked at rate
    1500 feeds 98 million inputs to the projector: at most 10 units fit in 2**30 parameters)."""
    ckpt = edited(tiny_ckpt, tmp_path / "ck", "audio_encoder.dim", 65536)
    config = json.loads((ckpt / "config.json").read_text())
    config["compression"]["audio_rates"] = [1500]
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "adapter.safetensors").unlink()
    r = transcribe(ckpt, tone, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-3000:])
    expected = (
        f"{ckpt / 'config.json'}: projector.intermediate_size is 48: with these encoder widths, rates and "
        "llm.hidden_size it must be an integer from 1 to 10 (projectors of at most 1073741824 parameters)"
    )
    assert expected in r.stderr, r.stderr
