"""One set of CLI conventions on every command: -q/-v, outputs and re-runs, stdin, confidence,
VAD settings, modes the checkpoint lacks, the zoo listing, completion, placeholders, evaluate's stdout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from avsr_cli.cli import app
from tests.support.tiny import ffmpeg

runner = CliRunner()


def run(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def cli(*args, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m avsr_cli ARGS` in a subprocess: real stdout/stderr, no terminal."""
    return subprocess.run(
        [sys.executable, "-m", "avsr_cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=300,
        env={**os.environ, "AVSR_CHECKPOINT": "", **(env or {})},
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("conventions")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", str(d / "hello.wav"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(d / "hello.m4a"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=330:duration=1.5", str(d / "other.wav"))
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=duration=2:rate=25:size=64x64",
        "-f", "lavfi", "-i", "sine=frequency=500:duration=2",
        "-shortest", "-c:a", "aac", str(d / "talk.mp4"),
    )  # fmt: skip
    return d


COMMANDS = {  # the smallest arguments each command parses; -q -v must be refused before anything runs
    "transcribe": ["x.wav"],
    "export-subtitles": ["x.wav"],
    "evaluate": ["data"],
    "evaluate-merge": ["report"],
    "evaluate-report": ["report"],
    "train": [],
    "download-checkpoint": ["--list"],
    "import-checkpoint": ["x.pth", "out", "--config", "spec.json"],
    "crop-mouth": ["x.mp4", "-o", "crops"],
}


def test_every_command_has_quiet_and_verbose_and_they_exclude_each_other(tmp_path):
    names = {info.name or info.callback.__name__ for info in app.registered_commands}
    assert names == set(COMMANDS)
    for command, args in COMMANDS.items():
        help_text = run(command, "--help").stdout
        assert "--quiet" in help_text and "--verbose" in help_text, command
        r = run(command, *args, "-q", "-v")
        assert r.exit_code == 2 and "--quiet and --verbose exclude each other" in r.stderr, command


def test_one_output_format_option_on_both_commands():
    for command in ("transcribe", "export-subtitles"):
        text = run(command, "--help").stdout
        assert "--output-format" in text and "-f" in text and "tsv" in text and "all" in text
        assert "--format " not in text and "--json" not in text


def test_name_collisions_stop_the_run_before_any_work(tiny_ckpt, media, tmp_path):
    out = tmp_path / "out"
    r = cli("transcribe", media / "hello.wav", media / "hello.m4a", "-c", tiny_ckpt, "-o", out, "-v")
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "hello.wav" in err and "hello.m4a" in err and "would both write" in err and "hello.txt" in err
    assert "loading checkpoint" not in err and list(out.iterdir()) == []  # nothing loaded, nothing written
    r = cli("transcribe", media / "hello.wav", media / "hello.m4a", "-c", tiny_ckpt, "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr  # on stdout nothing collides


def test_existing_outputs_need_overwrite_or_skip_existing(tiny_ckpt, media, tmp_path):
    out = tmp_path / "out"
    base = [
        "transcribe",
        media / "hello.wav",
        "-c",
        tiny_ckpt,
        "--max-new-tokens",
        "3",
        "-o",
        out,
        "-f",
        "json",
    ]
    assert run(*base).exit_code == 0
    first = (out / "hello.json").stat().st_mtime_ns
    r = run(*base)
    assert r.exit_code == 2 and "hello.json already exists" in r.stderr and "--overwrite" in r.stderr
    r = run(*base, "--overwrite", "--skip-existing")
    assert r.exit_code == 2 and "exclude each other" in r.stderr
    r = run(*base[:2], media / "other.wav", *base[2:], "--skip-existing", "-v")
    assert r.exit_code == 0, r.stderr
    assert "skipped (outputs exist)" in r.stderr and r.stdout.splitlines() == [str(out / "other.json")]
    assert (out / "hello.json").stat().st_mtime_ns == first
    r = run(*base, "--overwrite")
    assert r.exit_code == 0 and (out / "hello.json").stat().st_mtime_ns > first
    r = run(*base, "-f", "tsv", "--skip-existing")  # hello.tsv is missing: the input runs again
    assert r.exit_code == 0 and (out / "hello.tsv").is_file()


def test_skip_existing_redoes_outputs_that_are_empty_or_do_not_parse(tiny_ckpt, media, tmp_path):
    """--skip-existing keeps only whole outputs: one that is empty or does not parse (a half-written copy
    from elsewhere) counts as missing and its input is transcribed again; stderr says which inputs were
    skipped and which redone, and why (nothing with -q)."""
    out = tmp_path / "out"
    inputs = [media / "hello.wav", media / "other.wav"]
    base = ["transcribe", *inputs, "-c", tiny_ckpt, "--max-new-tokens", "3", "-o", out]
    formats = ["-f", "json", "-f", "vtt", "-f", "tsv", "-f", "txt"]
    r = run(*base, *formats)
    assert r.exit_code == 0, r.stderr
    whole = {f.name: f.read_text() for f in out.iterdir()}
    r = run(*base, *formats, "--skip-existing")
    assert r.exit_code == 0 and r.stdout == "", r.stderr
    assert (
        f"skipped (outputs exist): {inputs[0]}" in r.stderr
        and f"skipped (outputs exist): {inputs[1]}" in r.stderr
    )
    cut = {  # each format's output cut short, as a full disk or a killed copy leaves it
        "hello.json": whole["hello.json"][: len(whole["hello.json"]) // 2],
        "hello.vtt": "WEBVTT\n\n00:00:00.000 --> 00:0",
        "hello.tsv": "start\tend\ttext\tavg_logprob\tlow_confidence\n0\t20",
        "other.txt": "",
    }
    for name, text in cut.items():
        for f in out.iterdir():
            f.write_text(whole[f.name])
        (out / name).write_text(text)
        r = run(*base, *formats, "--skip-existing")
        assert r.exit_code == 0, r.stderr
        redone, kept = (inputs[0], inputs[1]) if name.startswith("hello") else (inputs[1], inputs[0])
        assert r.stdout.splitlines() == [
            str(out / f"{redone.stem}.{fmt}") for fmt in ("json", "vtt", "tsv", "txt")
        ]
        why = "is empty" if name == "other.txt" else "does not parse"
        assert f"redoing {redone}: {out / name} {why}" in r.stderr, r.stderr
        assert f"skipped (outputs exist): {kept}" in r.stderr
        assert {f.name: f.read_text() != "" for f in out.iterdir()} == dict.fromkeys(whole, True)
        json.loads((out / "hello.json").read_text())
    srt = out / "hello.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:0")
    r = run(base[0], inputs[0], *base[3:], "-f", "srt", "--skip-existing")
    assert r.exit_code == 0 and f"redoing {inputs[0]}: {srt} does not parse as SubRip" in r.stderr, r.stderr
    assert srt.read_text() != "1\n00:00:00,000 --> 00:00:0"
    (out / "hello.json").write_text("{")
    r = cli(*base, *formats, "--skip-existing", "-q")  # a process of its own: no other test's output
    assert (
        r.returncode == 0 and r.stderr == b"" and r.stdout.decode().splitlines()[0] == str(out / "hello.json")
    )


def test_several_files_on_stdout_are_named_like_grep(tiny_ckpt, media):
    r = run("transcribe", media / "hello.wav", media / "other.wav", "-c", tiny_ckpt, "--max-new-tokens", "3")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert (
        lines
        and lines[0].startswith(f"{media / 'hello.wav'}: ")
        and lines[-1].startswith(f"{media / 'other.wav'}: ")
    )
    r = run("transcribe", media / "hello.wav", media / "other.wav", "-c", tiny_ckpt, "-f", "srt")
    assert r.exit_code == 2 and "--output-dir" in r.stderr  # two SRT files cannot share stdout
    r = run("transcribe", media / "hello.wav", "-c", tiny_ckpt, "-f", "txt", "-f", "json")
    assert r.exit_code == 2 and "several formats" in r.stderr


def test_stdin(tiny_ckpt, media, tmp_path):
    data = (media / "hello.m4a").read_bytes()  # a container, not raw samples: ffprobe has to seek
    r = cli("transcribe", "-", "-c", tiny_ckpt, "--max-new-tokens", "3", "-f", "json", stdin=data)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["path"] == "-" and abs(result["duration"] - 2.0) < 0.05
    out = tmp_path / "out"
    r = cli("transcribe", "-", "-c", tiny_ckpt, "--max-new-tokens", "3", "-o", out, stdin=data)
    assert r.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["stdin.txt"]
    r = cli("transcribe", "-", "-c", tiny_ckpt, stdin=b"")
    assert r.returncode == 2 and b"no data" in r.stderr


def wait_for_copy(proc: subprocess.Popen, temp, size: int, timeout: float = 120) -> None:
    """Until `avsr transcribe -` (proc, its TMPDIR `temp`) has copied `size` bytes of standard input."""
    import time

    deadline = time.monotonic() + timeout
    while sum(f.stat().st_size for f in temp.glob("avsr-stdin-*/*")) < size:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, f"standard input not copied in {timeout} s"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_while_reading_stdin_removes_its_spooled_copy(tiny_ckpt, media, tmp_path, sig):
    """`avsr transcribe -` copies standard input to a temporary file; killed by SIGTERM or SIGHUP (a closed
    terminal) as by Ctrl-C, it removes the copy (and then dies of the signal, as it would have)."""
    import signal

    temp = tmp_path / "temp"
    temp.mkdir()
    data = (media / "hello.m4a").read_bytes() * (3 * 2**20 // (media / "hello.m4a").stat().st_size)
    env = {**os.environ, "AVSR_CHECKPOINT": "", "TMPDIR": str(temp)}
    command = [sys.executable, "-m", "avsr_cli", "transcribe", "-", "-c", str(tiny_ckpt)]

    def as_at_a_terminal() -> None:  # a job started in the background, or under nohup, inherits them ignored
        for name in ("SIGINT", "SIGHUP", "SIGTERM"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)

    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=as_at_a_terminal,
    )
    try:
        proc.stdin.write(data)
        proc.stdin.flush()  # and the pipe stays open: the command is still reading when the signal comes
        wait_for_copy(proc, temp, 2**20)
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stdin.close()
    assert list(temp.glob("avsr-stdin-*")) == []
    if sig != "SIGINT":
        assert proc.returncode == -getattr(signal, sig)


def test_under_nohup_a_hangup_while_reading_stdin_is_still_ignored(tiny_ckpt, media, tmp_path):
    """SIGHUP ignored by the caller (nohup) stays ignored: the command goes on to the end."""
    import signal
    import time

    temp = tmp_path / "temp"
    temp.mkdir()
    data = (media / "hello.m4a").read_bytes()
    env = {**os.environ, "AVSR_CHECKPOINT": "", "TMPDIR": str(temp)}
    command = [sys.executable, "-m", "avsr_cli", "transcribe", "-", "-c", str(tiny_ckpt), "-f", "json"]
    command += ["--max-new-tokens", "3"]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
        wait_for_copy(proc, temp, len(data))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert proc.poll() is None
        out, err = proc.communicate(timeout=120)  # closes standard input: the copy is complete
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["path"] == "-" and list(temp.glob("avsr-stdin-*")) == []


def test_a_bad_stream_on_stdin_is_named_as_standard_input(tiny_ckpt, tmp_path):
    """What is wrong with standard input is said of `-`, never of the temporary copy it was read into."""
    garbage = bytes(range(256)) * 64
    for extra in ([], ["-o", tmp_path / "out"]):
        r = cli("transcribe", "-", "-c", tiny_ckpt, *extra, stdin=garbage)
        err = r.stderr.decode()
        assert r.returncode == 1 and "error: - (standard input): cannot read media file" in err, err
        assert "avsr-stdin" not in err and "/stdin" not in err


def test_confidence_in_json_and_tsv(tiny_ckpt, media, tmp_path):
    out = tmp_path / "out"
    args = ["transcribe", media / "hello.wav", "-c", tiny_ckpt, "--max-new-tokens", "4", "-o", out]
    r = run(*args, "-f", "json", "-f", "tsv", "--logprob-threshold", "0", "-v")
    assert r.exit_code == 0, r.stderr
    result = json.loads((out / "hello.json").read_text())
    (segment,) = result["segments"]
    # a random model is unsure of everything: log-probabilities are negative, so all fall below 0
    assert segment["avg_logprob"] < 0 and segment["low_confidence"] is True
    assert result["avg_logprob"] == segment["avg_logprob"] and result["low_confidence"] is True
    assert "low confidence" in r.stderr and "hello.wav" in r.stderr
    header, row = (out / "hello.tsv").read_text().splitlines()
    assert header.split("\t") == ["start", "end", "text", "avg_logprob", "low_confidence"]
    assert row.split("\t")[3:] == [f"{segment['avg_logprob']:.4f}", "1"]
    r = run(*args, "-f", "json", "--logprob-threshold", "-1e9", "--overwrite")
    assert r.exit_code == 0 and json.loads((out / "hello.json").read_text())["low_confidence"] is False
    assert "low confidence" not in r.stderr


def test_the_card_sets_the_confidence_threshold_and_repeat_guard(tiny_ckpt, media, tmp_path):
    """A checkpoint's decoding.logprob_threshold is the default of --logprob-threshold (the flag still wins),
    and its decoding.no_repeat_ngram_size the default of --no-repeat-ngram-size."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["decoding"].update(logprob_threshold=0.0, no_repeat_ngram_size=1)
    (ckpt / "config.json").write_text(json.dumps(config))
    args = ["transcribe", media / "hello.wav", "-c", ckpt, "--max-new-tokens", "8", "-f", "json"]
    r = run(*args)
    assert r.exit_code == 0, r.stderr
    card = json.loads(r.stdout)
    assert card["low_confidence"] is True  # every log-probability is below the card's 0
    flagless = json.loads(run(*args, "--logprob-threshold", "-1e9").stdout)
    assert flagless["low_confidence"] is False
    off = json.loads(run(*args, "--no-repeat-ngram-size", "0").stdout)
    words = lambda result: result["text"].split()  # noqa: E731
    # a random model loops; with no repeated token allowed the card's decoding says no word twice running
    assert off["text"] != card["text"]
    assert all(a != b for a, b in zip(words(card), words(card)[1:], strict=False))


def test_json_numbers_are_rounded(tiny_ckpt, media):
    r = run("transcribe", media / "hello.wav", "-c", tiny_ckpt, "--max-new-tokens", "3", "-f", "json")
    result = json.loads(r.stdout)

    def decimals(x: float) -> int:
        text = repr(x)
        return len(text.split(".")[1]) if "." in text and "e" not in text else 0

    assert all(decimals(v) <= 3 for v in result["timings"].values())
    assert decimals(result["duration"]) <= 3 and decimals(result["avg_logprob"]) <= 4


def test_vad_settings_reach_the_options_and_are_checked(tiny_ckpt, media):
    args = ["transcribe", media / "hello.wav", "-c", tiny_ckpt, "--max-new-tokens", "3", "-f", "json"]
    r = run(*args, "--vad-threshold", "0.7", "--vad-min-silence", "0.5", "--vad-speech-pad", "0.2")
    assert r.exit_code == 0, r.stderr
    vad = json.loads(r.stdout)["options"]["vad"]
    assert (vad["threshold"], vad["min_silence"], vad["speech_pad"], vad["min_speech"]) == (
        0.7,
        0.5,
        0.2,
        0.25,
    )
    r = run(*args, "--vad-threshold", "1.5")
    assert r.exit_code == 2
    assert "--vad-min-speech" in run("export-subtitles", "--help").stdout


def test_a_mode_the_checkpoint_lacks_fails_before_loading_and_names_models_that_have_it(tiny_ckpt, media):
    r = cli("transcribe", media / "talk.mp4", "-c", tiny_ckpt, "--mode", "avsr", "-v")
    err = r.stderr.decode()
    assert r.returncode == 2 and "reads only asr, not avsr" in err
    assert "omni-avsr-s (5.01 GB, GPU 8 GB+" in err and "llama-avsr-avsr (18.3 GB" in err
    assert "loading checkpoint" not in err  # -v announces a load; there was none


def test_lips_unused_is_said_once(tiny_ckpt, media, tmp_path):
    copy = tmp_path / "talk2.mp4"
    copy.write_bytes((media / "talk.mp4").read_bytes())
    r = run("transcribe", media / "talk.mp4", copy, "-c", tiny_ckpt, "--max-new-tokens", "3")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("lips are not used: checkpoint 'tiny-test' reads audio only") == 1
    assert len(r.stdout.splitlines()) >= 2


def test_quiet_prints_nothing_on_success_and_normal_runs_no_warnings(tiny_ckpt, media):
    r = cli("transcribe", media / "talk.mp4", "-c", tiny_ckpt, "--max-new-tokens", "3", "-q")
    assert r.returncode == 0 and r.stderr == b"" and r.stdout
    r = cli("transcribe", media / "hello.wav", "-c", tiny_ckpt, "--max-new-tokens", "3")
    assert r.returncode == 0 and b"Warning" not in r.stderr and b"it/s" not in r.stderr


def test_zoo_listing_shows_size_needs_licence_and_gating():
    r = run("download-checkpoint", "--list")  # not a terminal: one tab-separated line per model
    assert r.exit_code == 0
    header, *lines = (line.split("\t") for line in r.stdout.splitlines())
    rows = {cells[0]: dict(zip(header, cells, strict=True)) for cells in lines}
    asr = rows["llama-avsr-asr"]
    assert (asr["download"], asr["needs"], asr["gated on the Hub"]) == ("17 GB", "GPU 24 GB+ (bf16)", "llm")
    assert "Llama 3.1" in asr["licence"] and "non-commercial" in rows["omni-avsr-s"]["licence"]
    assert rows["avsr-tiny-en"]["status"] == "ready" and rows["avsr-tiny-en"]["needs"].startswith("CPU")


def test_shell_completion_is_offered():
    r = cli("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert r.returncode == 0 and b"complete" in r.stdout and b"avsr" in r.stdout
    assert "--install-completion" in run("--help").stdout


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_placeholders_are_words_not_python_types(command):
    text = run(*command, "--help", env={"COLUMNS": "200"}).stdout
    for python_type in ("<bool>", "<str>", "<int", "<float", "<path>", "list[", "{"):
        assert python_type not in text, (command, python_type)


def test_evaluate_table_goes_to_stdout(tiny_ckpt, media, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("hello.wav", "other.wav"):
        (data / name).write_bytes((media / name).read_bytes())
        (data / name).with_suffix(".txt").write_text("a tone\n")
    report = tmp_path / "report"
    r = cli("evaluate", data, "-c", tiny_ckpt, "--max-new-tokens", "3", "--snr", "5", "--report-dir", report)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "WER %" in out and "clean" in out and "normaliser lrs" in out  # `> wer.txt` keeps the table
    summary = json.loads((report / "summary.json").read_text())
    assert [c["snr"] for c in summary["conditions"]] == ["clean", "5"] and summary["options"]["snrs"] == [
        "clean",
        "5",
    ]
    rows = [json.loads(line) for line in (report / "results.jsonl").read_text().splitlines()]
    assert {row["snr"] for row in rows} == {"clean", "5"}
    r = cli("evaluate", data, "-c", tiny_ckpt, "--max-new-tokens", "3", "-q")
    assert r.returncode == 0 and r.stderr == b"" and b"WER %" in r.stdout


def test_threads_option_sizes_torch_ffmpeg_and_the_vad(tiny_ckpt, media):
    """--threads 1 leaves torch one thread (set before torch loads, through OMP_NUM_THREADS), gives ffmpeg
    `-threads 1`, and the VAD's onnxruntime session runs on one thread."""
    code = (
        "import sys\n"
        "from avsr_cli.cli import app\n"
        "from avsr_cli.frontends import media, vad\n"
        "calls = []\n"
        "real = media._decode_args\n"  # every ffmpeg decode, whole or streamed, builds its arguments here
        "media._decode_args = lambda *a: calls.append(real(*a)) or calls[-1]\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "session, _ = vad._session()\n"
        "opts = session.get_session_options()\n"
        "ffmpeg_threads = {a[a.index('-threads') + 1] for a in calls if '-threads' in a}\n"
        "import torch\n"  # loaded by the run, after --threads was read
        "ort = (opts.intra_op_num_threads, opts.inter_op_num_threads)\n"
        "print(torch.get_num_threads(), *ort, ffmpeg_threads)\n"
    )
    args = ["transcribe", media / "hello.wav", "-c", tiny_ckpt, "--max-new-tokens", "2", "-q"]
    args += ["--segmentation", "vad"]
    for flag, env, expected in (
        (["--threads", "1"], {}, "1 1 1 {'1'}"),
        ([], {"AVSR_THREADS": "2"}, "2 1 1 {'2'}"),
    ):
        env = {**os.environ, "AVSR_CHECKPOINT": "", **env}
        env.pop("OMP_NUM_THREADS", None)
        p = subprocess.run(
            [sys.executable, "-c", code, *map(str, args), *flag], capture_output=True, text=True, env=env
        )
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines()[-1] == expected


EXIT_PROBE = """
import atexit, gc, os, sys, threading, time
atexit.register(lambda: print("frozen", gc.get_freeze_count()))  # runs after the command ends



def outlive(marker):  # a thread the CLI did not start, still running as the command ends
    while not os.path.exists(marker):  # the command's output, written as it ends
        time.sleep(0.02)
    time.sleep(2)
    print("thread done", flush=True)


if os.environ.get("PROBE_THREAD"):
    threading.Thread(target=outlive, args=(os.environ["PROBE_THREAD"],)).start()
from avsr_cli.cli import entrypoint
sys.argv = ["avsr", *sys.argv[1:]]
entrypoint()
"""


def test_the_cli_ends_without_tearing_the_interpreter_down(tiny_ckpt, media, tmp_path):
    """As a command ends, the CLI ends the process without the interpreter's teardown (runtime.end_process):
    atexit handlers run (torch's and the model's objects frozen by then, out of any collection), the output
    is flushed, and the exit code and the one-line error are the command's, whether it succeeded or failed.
    A thread it did not start is waited for, and the exit is then the usual one."""
    env = {**os.environ, "AVSR_CHECKPOINT": ""}
    transcribe = ["transcribe", str(media / "hello.wav"), "-c", str(tiny_ckpt), "--max-new-tokens", "2"]

    def run(*args: str, verbose: bool = False, **extra: str) -> subprocess.CompletedProcess:
        # python -v also says each module it cleans up as the interpreter is torn down ("# cleanup[...")
        command = [sys.executable, *(["-v"] if verbose else []), "-c", EXIT_PROBE, *args]
        return subprocess.run(command, capture_output=True, text=True, env={**env, **extra})

    ok = run(*transcribe, "-o", str(tmp_path), "-f", "json", "-q", verbose=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "hello.json").read_text())["segments"]
    frozen = [int(line.split()[1]) for line in ok.stdout.splitlines() if line.startswith("frozen")]
    assert frozen and frozen[0] > 10_000  # torch's modules and the model
    assert "# cleanup[" not in ok.stderr
    printed = run(*transcribe, "-f", "txt")  # the transcript on a pipe, flushed
    assert printed.returncode == 0 and printed.stdout.splitlines()[0].strip()
    assert printed.stdout.splitlines()[-1].startswith("frozen")
    bad = run("transcribe", str(tmp_path / "missing.wav"), "-q")
    assert bad.returncode == 1 and "missing.wav" in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert "frozen" in bad.stdout
    usage = run("transcribe", str(media / "hello.wav"), "--threads", "0", verbose=True)
    assert usage.returncode == 2 and "--threads" in usage.stderr and "# cleanup[" not in usage.stderr
    (tmp_path / "hello.json").unlink()
    waited = run(
        *transcribe,
        "-o",
        str(tmp_path),
        "-f",
        "json",
        "-q",
        verbose=True,
        PROBE_THREAD=str(tmp_path / "hello.json"),
    )
    assert waited.returncode == 0
    assert "thread done" in waited.stdout and "frozen" in waited.stdout and "# cleanup[" in waited.stderr


PAUSE_PROBE = """
import gc
from avsr_cli.runtime import collection_paused
def made():
    return [[] for _ in range(50_000)]
with collection_paused():
    inside = gc.isenabled()
    objects = made()
print(inside, gc.isenabled(), gc.get_freeze_count() >= 50_000)
gc.disable()
with collection_paused():
    pass
print(gc.isenabled())
"""


def test_start_up_runs_without_the_garbage_collector():
    """collection_paused (around importing torch and loading the model): no collection inside, what was made
    there frozen after, and the collector as it was before (on, or off)."""
    p = subprocess.run([sys.executable, "-c", PAUSE_PROBE], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "True", "True", "False"]


def test_mediapipe_native_logs_stay_off_the_terminal(lrs3_clip, tmp_path):
    from avsr_cli.storage import find_package

    if find_package("mediapipe") is None:
        pytest.skip("mediapipe not installed (make install puts it beside the environment)")
    r = cli("crop-mouth", lrs3_clip, "-o", tmp_path, "--face-backend", "mediapipe", "--detect-every", "25")
    assert r.returncode == 0 and r.stdout.decode().splitlines()[0].endswith("_mouth.mp4")  # files written
    assert r.stderr == b"", r.stderr.decode()  # absl/TFLite lines ("W0000 ... feedback manager") included


def test_export_subtitles_prints_srt_to_stdout_without_output_dir(tiny_ckpt, tmp_path):
    import srt

    from tests.support.speech import synthesize

    clip = synthesize("the quick brown fox jumps over the lazy dog", tmp_path / "fox.wav")
    r = run("export-subtitles", clip, "-c", tiny_ckpt, "--max-new-tokens", "4")
    assert r.exit_code == 0, r.stderr
    cues = list(srt.parse(r.stdout))
    assert cues and all(0 <= c.start.total_seconds() < c.end.total_seconds() for c in cues)
    assert list(tmp_path.iterdir()) == [clip]  # nothing written beside the input or anywhere else
