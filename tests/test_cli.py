"""The `avsr` command on a tiny random checkpoint: options, outputs, and every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from avsr_cli import __version__
from avsr_cli.cli import app
from tests.support.tiny import ffmpeg

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", str(d / "tone.wav"))
    ffmpeg("-f", "lavfi", "-i", "anoisesrc=d=1.5:a=0.3:seed=1", "-c:a", "aac", str(d / "noise.m4a"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:rate=25:size=64x64", str(d / "video_only.mp4"))
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "2", str(d / "silence.wav"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=0.1", str(d / "short.wav"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=31", str(d / "long.flac"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=500:duration=1", str(d / "-dash.wav"))
    (d / "empty.wav").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (d / "folder").mkdir()
    import numpy as np
    import soundfile as sf

    wave = (0.3 * np.sin(np.arange(32000) / 16000 * 2 * np.pi * 300)).astype(np.float32)
    wave[1000:1100] = np.nan
    sf.write(d / "nan.wav", wave, 16000, subtype="FLOAT")  # a float WAV can carry NaN
    return d


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"avsr {__version__}"
    for args in (["--help"], ["transcribe", "--help"], ["import-checkpoint", "--help"]):
        r = run(*args)
        assert r.exit_code == 0 and "Usage" in r.stdout
    assert "--output-format" in run("transcribe", "--help").stdout


def test_transcribe_writes_every_format(ckpt, media, tmp_path):
    out = tmp_path / "out"
    r = run(
        "transcribe",
        media / "tone.wav",
        media / "noise.m4a",
        "-c",
        ckpt,
        "--output-format",
        "all",
        "--output-dir",
        out,
        "--num-beams",
        "2",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.stderr
    expected = [out / f"{s}.{e}" for s in ("tone", "noise") for e in ("txt", "json", "srt", "vtt", "tsv")]
    assert r.stdout.splitlines() == [str(p) for p in expected]  # with -o, stdout lists the files written
    assert sorted(out.iterdir()) == sorted(expected)
    data = json.loads((out / "tone.json").read_text())
    assert data["mode"] == "asr" and abs(data["duration"] - 2.0) < 0.01
    assert data["options"]["decoding"]["num_beams"] == 2
    assert {"demux", "features", "encoder", "llm"} <= set(data["timings"])
    assert (out / "tone.txt").read_text() == ("".join(s["text"] + "\n" for s in data["segments"]) or "\n")


def test_json_on_stdout_and_env_checkpoint(ckpt, media):
    r = run(
        "transcribe",
        media / "tone.wav",
        "-f",
        "json",
        "--max-new-tokens",
        "3",
        env={"AVSR_CHECKPOINT": str(ckpt)},
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["path"].endswith("tone.wav")


@pytest.mark.parametrize(
    "name,message",
    [
        ("absent.wav", "no such file"),
        ("folder", "is a directory"),
        ("empty.wav", "empty file"),
        ("corrupt.mp4", "cannot read media file"),
        ("video_only.mp4", "has no audio stream"),
        ("short.wav", "only 0.10 s long"),
        ("nan.wav", "audio holds invalid samples (100 of 32000 are NaN or infinite)"),
    ],
)
def test_bad_file_is_reported_and_skipped(ckpt, media, tmp_path, name, message):
    out = tmp_path / "out"
    r = run("transcribe", media / name, media / "tone.wav", "-c", ckpt, "-o", out, "--max-new-tokens", "3")
    assert r.exit_code == 1
    err_lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(err_lines) == 1 and name in err_lines[0] and message in err_lines[0]
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["tone.txt"]  # the good file is still done
    assert len(r.stdout.splitlines()) == 1


def test_long_input_without_chunking_is_refused(ckpt, media, tmp_path):
    r = run("transcribe", media / "long.flac", "-c", ckpt, "--segmentation", "off")
    assert r.exit_code == 1 and "long.flac: 31.0 s of audio is longer than the 30 s" in r.stderr
    r = run("transcribe", media / "long.flac", "-c", ckpt)  # chunked by VAD: a pure tone holds no speech
    assert r.exit_code == 0 and "no speech found by voice activity detection" in r.stderr


def test_silence_gives_empty_transcript_and_a_warning(ckpt, media, tmp_path):
    r = run("transcribe", media / "silence.wav", "-c", ckpt, "-o", tmp_path, "-f", "srt")
    assert r.exit_code == 0
    assert "no speech" in r.stderr and "silence.wav" in r.stderr
    assert r.stdout == f"{tmp_path / 'silence.srt'}\n" and (tmp_path / "silence.srt").read_text() == ""


def test_path_beginning_with_dash(ckpt, media, monkeypatch):
    monkeypatch.chdir(media)
    r = run("transcribe", "-c", ckpt, "--max-new-tokens", "3", "--", "-dash.wav")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1


def test_usage_errors_exit_2_before_any_work(ckpt, media, tmp_path):
    (tmp_path / "file").write_text("x")
    r = run("transcribe", media / "tone.wav", "-c", ckpt, "-o", tmp_path / "file" / "sub")
    assert r.exit_code == 2 and "not writable" in r.stderr and "Traceback" not in r.stderr
    r = run("transcribe", media / "tone.wav", "-c", "no-such-model")
    assert r.exit_code == 2 and "unknown checkpoint 'no-such-model'" in r.stderr
    r = run("transcribe", media / "tone.wav", "-c", ckpt, "--face-backend", "opencv")
    assert r.exit_code == 2 and "Invalid value for '--face-backend'" in r.stderr and "'opencv'" in r.stderr
    r = run("transcribe", media / "tone.wav", "-c", ckpt, "--mode", "vsr")
    assert r.exit_code == 2 and "reads only asr, not vsr" in r.stderr
    r = run("transcribe", media / "tone.wav", "-c", ckpt, "--audio-rate", "7")
    assert r.exit_code == 2 and "rates [4], not 7" in r.stderr


def test_debug_shows_the_traceback(media):
    r = run("--debug", "transcribe", media / "tone.wav", "-c", "no-such-model")
    assert r.exit_code != 0 and isinstance(r.exception, Exception)


def test_python_dash_m_entry_point(ckpt, media):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "avsr_cli",
            "transcribe",
            str(media / "tone.wav"),
            "-c",
            str(ckpt),
            "--max-new-tokens",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 1
    assert "Loading weights" not in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------------------------------------------------
# A batch survives every bad file: one line naming it, exit 1, the other files done, nothing partial
# ---------------------------------------------------------------------------------------------------------


def cli(*args, pre: list[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`avsr ARGS` in a subprocess (optionally under a wrapper such as setpriv or unshare)."""
    cmd = [*(pre or []), sys.executable, "-m", "avsr_cli", *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, timeout=timeout, env={**os.environ, "AVSR_CHECKPOINT": ""}
    )


def errors(r: subprocess.CompletedProcess) -> list[str]:
    err = r.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_fifo_is_refused_before_the_model_loads(ckpt, media, tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    r = cli("transcribe", fifo, "-c", ckpt, "-v", timeout=60)  # would block for ever if opened
    assert r.returncode == 1 and errors(r) == [f"error: {fifo}: is a FIFO (named pipe), not a media file"]
    assert b"loading checkpoint" not in r.stderr  # refused before the 8 s model load (-v says it)
    r = cli("transcribe", fifo, media / "tone.wav", "-c", ckpt, "--max-new-tokens", "3", "-o", tmp_path / "o")
    assert r.returncode == 1 and len(errors(r)) == 1 and (tmp_path / "o" / "tone.txt").is_file()


def test_unreadable_file_fails_alone(ckpt, media, tmp_path):
    locked = tmp_path / "locked.wav"
    locked.write_bytes((media / "tone.wav").read_bytes())
    locked.chmod(0)
    # root reads anything: drop the capabilities that let it, as a normal user has none
    pre = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    out = tmp_path / "out"
    r = cli("transcribe", locked, media / "tone.wav", "-c", ckpt, "--max-new-tokens", "3", "-o", out, pre=pre)
    assert r.returncode == 1, r.stderr
    assert errors(r) == [f"error: {locked}: cannot read (Permission denied)"]
    assert sorted(p.name for p in out.iterdir()) == ["tone.txt"]


def test_output_name_too_long_fails_alone(ckpt, media, tmp_path):
    long = tmp_path / ("x" * 251 + ".wav")  # 255 bytes: a legal name; <stem>.json is 256, too long
    long.write_bytes((media / "tone.wav").read_bytes())
    out = tmp_path / "out"
    r = cli(
        "transcribe", long, media / "tone.wav", "-c", ckpt, "--max-new-tokens", "3", "-o", out, "-f", "all"
    )
    assert r.returncode == 1
    (line,) = errors(r)
    assert str(long) in line and "File name too long" in line
    assert sorted(p.stem for p in out.iterdir()) == ["tone"] * 5  # no txt/srt of the long one left behind


def test_non_utf8_file_name(ckpt, media, tmp_path):
    name = os.fsdecode(b"caf\xe9_\xff.wav")
    (tmp_path / name).write_bytes((media / "tone.wav").read_bytes())
    out = tmp_path / "out"
    r = cli("transcribe", tmp_path / name, "-c", ckpt, "--max-new-tokens", "3", "-o", out, "-f", "json")
    assert r.returncode == 0 and not errors(r)
    (written,) = out.iterdir()
    assert os.fsencode(written.name) == b"caf\xe9_\xff.json"
    data = json.loads(written.read_bytes().decode("utf-8"))  # valid UTF-8 JSON
    assert data["path"].endswith("caf\\xe9_\\xff.wav")


def test_disk_full_fails_per_file_and_leaves_nothing_partial(ckpt, media, tmp_path):
    """A real full disk: a 64 kB tmpfs (in a private mount namespace) with one page left free."""
    out, listing = tmp_path / "small", tmp_path / "listing.txt"
    out.mkdir()
    script = (
        'mount -t tmpfs -o size=64k tmpfs "$OUT" && head -c 61440 /dev/zero > "$OUT/filler" || exit 99; '
        '"$@"; code=$?; ls -A "$OUT" > "$LISTING"; exit $code'
    )
    pre = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]
    env = {**os.environ, "OUT": str(out), "LISTING": str(listing), "AVSR_CHECKPOINT": ""}
    if subprocess.run([*pre, "true"], capture_output=True, env=env).returncode != 0:
        pytest.skip("cannot mount a tmpfs in a user namespace on this machine")
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    for p in (a, b):
        p.write_bytes((media / "tone.wav").read_bytes())
    args = ["transcribe", a, b, "-c", ckpt, "--max-new-tokens", "3", "-o", out, "-f", "txt"]
    cmd = [*pre, sys.executable, "-m", "avsr_cli", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, timeout=300, env=env)
    assert r.returncode == 1, r.stderr
    (line,) = errors(r)
    assert str(b) in line and "No space left on device" in line
    assert listing.read_text().split() == ["a.txt", "filler"]  # b's temp file did not stay


def test_adapter_with_wrong_shapes_is_one_line(ckpt, media, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad-ckpt"
    shutil.copytree(ckpt, bad)
    state = load_file(bad / "adapter.safetensors")
    key = next(k for k in state if k.startswith("projectors.") and k.endswith("weight"))
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, bad / "adapter.safetensors")
    r = run("transcribe", media / "tone.wav", "-c", bad)
    assert r.exit_code == 2 and r.stdout == ""
    # refused by the config check against the adapter's header, before anything is allocated
    message = r.stderr.replace("\n", "")
    assert f"{bad / 'config.json'}: " in message and f"as {key} in adapter.safetensors has shape" in message
    assert "Traceback" not in r.stderr and "size mismatch" not in r.stderr


def test_outputs_get_the_usual_permissions(ckpt, media, tmp_path):
    import stat

    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        r = cli("transcribe", media / "tone.wav", "-c", ckpt, "--max-new-tokens", "3", "-o", out, "-f", "all")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == dict.fromkeys(["tone.txt", "tone.json", "tone.srt", "tone.vtt", "tone.tsv"], 0o644)
