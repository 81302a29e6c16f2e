"""Long recordings through `avsr transcribe` and `avsr export-subtitles`: read and segmented block by block,
so that memory does not grow with their length, with the output the whole array gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avsr_cli.cli.app import app
from avsr_cli.frontends.media import find_ffmpeg, load_audio
from tests.support.speech import available_voices, make_clip

FFMPEG = find_ffmpeg()
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="no ffmpeg binary (apt install ffmpeg)")
MB = 1 << 20


def noise(path: Path, seconds: float) -> Path:
    """White noise at -45 dBFS RMS, 16 kHz 16-bit FLAC: above the silence level, so the VAD reads it all."""
    source = f"anoisesrc=a=0.01:c=white:r=16000:d={seconds}:seed=1"
    args = ["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "1", "-sample_fmt", "s16"]
    subprocess.run([FFMPEG, *args, str(path)], check=True)
    return path


def peak_rss(args: list[str], tmp_path: Path) -> tuple[int, str]:
    """Run `avsr ARGS` in a child process: (its peak resident memory in bytes, its stderr)."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "avsr_cli", *args], stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children
    message = err.read_text()
    assert os.waitstatus_to_exitcode(status) == 0, message
    return usage.ru_maxrss * 1024, message  # Linux: kilobytes


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_recordings_length(tiny_ckpt, tmp_path) -> None:
    """`avsr transcribe` of two hours of audio peaks within 300 MB of a 10-second file (the whole-file
    decode took 1.3 GB more: float32 samples, their clipped copy, float64 squares)."""
    peaks = {}
    for seconds in (10, 7200):
        path = noise(tmp_path / f"noise{seconds}.flac", seconds)
        peaks[seconds], message = peak_rss(["transcribe", path, "-c", tiny_ckpt, "--device", "cpu"], tmp_path)
        if seconds > 10:  # the VAD read it all (it was not skipped as silence)
            assert "no speech found by voice activity detection" in message, message
    print(f"peak RSS: 10 s {peaks[10] / MB:.0f} MB, 2 h {peaks[7200] / MB:.0f} MB")
    assert peaks[7200] - peaks[10] < 300 * MB


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> Path:
    """About 45 s of speech with pauses (longer than the 30 s held whole, so it is streamed)."""
    if not available_voices():
        pytest.skip("no offline TTS voice (see tests/support/speech.py)")
    from tests.test_segmentation import TALK

    path = tmp_path_factory.mktemp("long") / "talk.wav"
    make_clip(TALK[:9], path, tail=0.5)
    return path


@pytest.mark.parametrize("container", ["wav", "mp4"])
def test_export_subtitles_of_a_streamed_recording_are_the_whole_arrays(talk, tiny_ckpt, container) -> None:
    """Read from its file block by block (a WAV by libsndfile, the AAC track of an MP4 through ffmpeg's
    pipe), a recording gets the subtitles its whole decoded array gets."""
    from avsr_cli.modeling.decoding import DecodingOptions
    from avsr_cli.tasks.subtitles import CueOptions
    from avsr_cli.tasks.transcribe import TranscribeOptions, Transcriber
    from avsr_cli.tasks.writers import to_srt

    path = talk
    if container == "mp4":
        path = talk.with_suffix(".mp4")
        video = ["-f", "lavfi", "-i", "testsrc=s=64x48:r=25", "-i", str(talk), "-shortest"]
        codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]
        subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", *video, *codecs, str(path)], check=True)
    t = Transcriber.from_checkpoint(tiny_ckpt, device="cpu")
    # export-subtitles' options: chunks by VAD, regions 0.5 s apart merged, 4 new tokens at most
    options = TranscribeOptions(segmentation="vad", merge_gap=0.5, decoding=DecodingOptions(max_new_tokens=4))
    audio = load_audio(path)
    assert len(audio) / 16000 > t.whole_seconds(options)
    assert t.load_media(path, options).audio is None  # streamed
    whole = t.transcribe_audio(audio, str(path), options)
    assert len(whole.segments) > 3
    r = CliRunner().invoke(app, ["export-subtitles", str(path), "-c", tiny_ckpt, "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == to_srt(whole, CueOptions())


FRAGMENTS = """
import json, sys
import numpy as np
from avsr_cli.runtime import return_freed_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

trimmed = return_freed_memory() if sys.argv[1] == "on" else False
big = np.ones(2 << 20)  # 16 MB, freed: glibc's default then raises its mmap threshold to that size
del big
before = rss_mb()
blocks, pins = [], []
for _ in range(40):  # 4 MB blocks, each followed by a small live allocation
    blocks.append(np.ones(1 << 19))
    pins.append(np.ones(4096))
blocks.clear()
print(json.dumps({"trimmed": trimmed, "kept_mb": rss_mb() - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_blocks_go_back_to_the_system():
    """With return_freed_memory (the CLI calls it first), blocks freed between live allocations leave the
    process; with glibc's defaults, after one large free, they stay resident."""
    got = {}
    for mode in ("off", "on"):
        done = subprocess.run(
            [sys.executable, "-c", FRAGMENTS, mode], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        got[mode] = json.loads(done.stdout)
    assert got["on"]["trimmed"] is True
    assert got["off"]["kept_mb"] > 100 and got["on"]["kept_mb"] < 20, got
