"""`avsr evaluate` on generated datasets in every accepted layout (a tiny random model: accounting only)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from avsr_cli.cli import app
from avsr_cli.tasks.evaluate import evaluate
from avsr_cli.tasks.evaluate_options import CLEAN, EvaluateOptions
from avsr_cli.tasks.evaluate_results import read_results
from avsr_cli.tasks.transcribe import Transcriber
from tests.support.speech import synthesize
from tests.support.tiny import ffmpeg

SENTENCES = ["the cat sat on the mat", "open the door please", "seven green apples", "it is raining again"]
runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tts")
    return [synthesize(t, d / f"s{i}.wav") for i, t in enumerate(SENTENCES)]


@pytest.fixture(scope="module")
def layouts(wavs, tmp_path_factory):
    """The same four clips as an LRS3-style folder (mp4 = video + TTS audio), a media folder, CSV, JSONL."""
    root = tmp_path_factory.mktemp("layouts")
    lrs = root / "lrs3" / "spk1"
    lrs.mkdir(parents=True)
    media = root / "media"
    media.mkdir()
    for i, (wav, text) in enumerate(zip(wavs, SENTENCES, strict=True)):
        ffmpeg(
            "-f",
            "lavfi",
            "-i",
            "testsrc=rate=25:size=96x96",
            "-i",
            str(wav),
            "-shortest",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            str(lrs / f"{i:05d}.mp4"),
        )
        (lrs / f"{i:05d}.txt").write_text(f"Text:  {text.upper()}\nConf:  4\n")
        ffmpeg("-i", str(wav), str(media / f"clip{i}.flac"))
        (media / f"clip{i}.txt").write_text(text + "\n")
    (media / "orphan.flac").write_bytes(b"")  # media without a transcript: skipped with a reason
    csv = root / "manifest.csv"
    csv.write_text(
        "id,path,transcript\n"
        + "".join(f"c{i},{w},{t}\n" for i, (w, t) in enumerate(zip(wavs, SENTENCES, strict=True)))
    )
    jsonl = root / "manifest.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"path": str(w), "text": t}) + "\n" for w, t in zip(wavs, SENTENCES, strict=True))
    )
    return {"lrs": root / "lrs3", "folder": media, "csv": csv, "jsonl": jsonl}


@pytest.mark.parametrize("layout", ["lrs", "folder", "csv", "jsonl"])
def test_every_layout_is_scored(ckpt, layouts, layout, tmp_path):
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(layouts[layout]),
            "-c",
            str(ckpt),
            "--snr",
            "5",
            "--max-new-tokens",
            "3",
            "--report-dir",
            str(tmp_path),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert [(c["mode"], c["snr"], c["clips"], c["failed"]) for c in summary["conditions"]] == [
        ("asr", "clean", 4, 0),
        ("asr", "5", 4, 0),
    ]
    assert all(c["scores"]["ref_words"] == 17 for c in summary["conditions"])  # LRS text case-folded
    rows = read_results(tmp_path / "results.jsonl")
    assert len(rows) == 8 and {r["snr"] for r in rows} == {"clean", "5"}
    # each clip's confidence, as transcribe reports it (recipes/avsr_tiny_en/calibrate.py reads it)
    assert all(r["avg_logprob"] < 0 and r["low_confidence"] == (r["avg_logprob"] < -1.0) for r in rows)
    assert (tmp_path / "alignment.txt").read_text().count("# mode asr") == 2
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    if layout == "folder":
        assert [s["reason"] for s in summary["skipped"]] and "orphan" in summary["skipped"][0]["path"]
    assert "WER %" not in r.stdout + r.stderr  # --json: summary.json on stdout instead of the table


def test_failures_are_counted_and_the_run_goes_on(ckpt, layouts, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    for i, f in enumerate(sorted(layouts["folder"].glob("clip*.flac"))[:2]):
        (bad / f.name).write_bytes(f.read_bytes())
        (bad / f.with_suffix(".txt").name).write_text(SENTENCES[i])
    (bad / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    (bad / "broken.txt").write_text("words")
    t = Transcriber.from_checkpoint(ckpt, device="cpu")
    report = evaluate(t, bad, EvaluateOptions(), tmp_path / "rep")
    (cond,) = report.conditions
    assert (cond.clips, cond.failed) == (3, 1)
    assert report.failures[0]["id"] == "broken" and "broken.wav" in report.failures[0]["error"]


def test_resume_skips_what_is_scored_and_refuses_to_overwrite(ckpt, layouts, tmp_path):
    t = Transcriber.from_checkpoint(ckpt, device="cpu")
    opts = EvaluateOptions(snrs=(CLEAN, 0.0), limit=3)
    evaluate(t, layouts["csv"], opts, tmp_path)
    rows = read_results(tmp_path / "results.jsonl")
    assert len(rows) == 6
    with pytest.raises(Exception, match="pass --resume"):
        evaluate(t, layouts["csv"], opts, tmp_path)
    # lose the last two rows and tear the line before them, as a kill mid-write would
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    seen = []
    report = evaluate(
        t,
        layouts["csv"],
        EvaluateOptions(snrs=(CLEAN, 0.0), limit=3, resume=True),
        tmp_path,
        on_clip=lambda m, s, row: seen.append((s, row["id"])),
    )
    assert seen == [("0", "c0"), ("0", "c1"), ("0", "c2")]
    assert [c.clips for c in report.conditions] == [3, 3]
    assert len(read_results(tmp_path / "results.jsonl")) == 6  # the torn line cut off, no row glued to it


def test_report_dir_is_locked_against_a_second_run(ckpt, layouts, tmp_path):
    import subprocess
    import sys

    holder = (
        "import sys; from pathlib import Path; from avsr_cli.storage import exclusive_lock\n"
        "with exclusive_lock(Path(sys.argv[1]), 'avsr evaluate'):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        args = ["evaluate", str(layouts["csv"]), "-c", str(ckpt), "--report-dir", str(tmp_path), "--resume"]
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.stderr
        assert f"{tmp_path} is in use by avsr evaluate (pid {proc.pid} on " in r.stderr.replace("\n", "")
        assert not (tmp_path / "results.jsonl").exists()
    finally:
        proc.communicate("", timeout=30)
    r = runner.invoke(app, [*args[:-1], "--limit", "1"])  # released: the next run may go
    assert r.exit_code == 0, r.stderr
    assert not (tmp_path / ".avsr.lock.owner").exists()


def test_workers_give_the_same_noisy_audio_and_results(ckpt, layouts, tmp_path):
    t = Transcriber.from_checkpoint(ckpt, device="cpu")
    one = evaluate(t, layouts["jsonl"], EvaluateOptions(snrs=(0.0,), noise="white", seed=3), tmp_path / "a")
    two = evaluate(
        t, layouts["jsonl"], EvaluateOptions(snrs=(0.0,), noise="white", seed=3, workers=2), tmp_path / "b"
    )
    hyp = [[r["hyp"] for r in read_results(tmp_path / d / "results.jsonl")] for d in "ab"]
    assert hyp[0] == hyp[1] and one.conditions[0].scores == two.conditions[0].scores


def test_bad_arguments(ckpt, layouts, tmp_path):
    r = runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "-c", str(ckpt)])
    assert r.exit_code == 2 and "nope" in r.stderr
    r = runner.invoke(app, ["evaluate", str(layouts["csv"]), "-c", str(ckpt), "--snr", "loud"])
    assert r.exit_code == 2 and "'loud' is not a number" in r.stderr
    r = runner.invoke(app, ["evaluate", str(layouts["csv"]), "-c", str(ckpt), "--normalizer", "fancy"])
    assert r.exit_code == 2 and "fancy" in r.stderr


def test_shards_merged_equal_one_unsharded_run(ckpt, layouts, tmp_path):
    """Two shards (3 clips: 2 + 1, plus a failing clip) merged give the unsharded summary, field by field."""
    data = tmp_path / "data"
    data.mkdir()
    for f in sorted(layouts["folder"].glob("clip*.flac"))[:3]:
        (data / f.name).write_bytes(f.read_bytes())
        (data / f.with_suffix(".txt").name).write_text(f.stem + " words")
    (data / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    (data / "broken.txt").write_text("words")
    common = ["evaluate", data, "-c", ckpt, "--snr", "5", "--max-new-tokens", "3", "-q"]
    whole, shards = tmp_path / "whole", tmp_path / "shards"
    r = run(*common, "--report-dir", whole)
    assert r.exit_code == 0, r.stderr
    for i in (1, 2):
        r = run(*common, "--shard", f"{i}/2", "--report-dir", shards)
        assert r.exit_code == 0, r.stderr
    counts = [len(read_results(shards / f"results.shard-{i}-of-2.jsonl")) for i in (1, 2)]
    assert counts == [4, 4]  # clips 1 and 3 of 4 in shard 1, 2 and 4 in shard 2; two conditions each
    r = run("evaluate-merge", shards, "--json")
    assert r.exit_code == 0, r.stderr
    merged = json.loads((shards / "summary.json").read_text())
    assert json.loads(r.stdout) == merged
    expected = unmeasured(json.loads((whole / "summary.json").read_text()))
    for key in expected:
        assert unmeasured(merged)[key] == expected[key], key
    assert (shards / "alignment.txt").read_text() == (whole / "alignment.txt").read_text()

    def scored(path):  # the rows without their timings, which are measurements
        return sorted(
            json.dumps({k: v for k, v in row.items() if k != "timings"}) for row in read_results(path)
        )

    assert scored(shards / "results.jsonl") == scored(whole / "results.jsonl")


def test_merge_refuses_incomplete_or_mismatched_shards(ckpt, layouts, tmp_path):
    common = ["evaluate", layouts["csv"], "-c", ckpt, "--max-new-tokens", "3", "-q"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(*common, "--shard", "1/2", "--report-dir", a).exit_code == 0
    r = run("evaluate-merge", a)
    assert r.exit_code == 2 and "missing shard(s) 2/2" in r.stderr
    assert run(*common, "--shard", "2/2", "--report-dir", b, "--normalizer", "none").exit_code == 0
    r = run("evaluate-merge", a, b)
    assert r.exit_code == 2 and "shard 2/2 was run with other normalizer" in r.stderr
    r = run("evaluate-merge", tmp_path / "nothing-here")
    assert r.exit_code == 2 and "not a report folder" in r.stderr
    for bad in ("3/2", "0/2", "x"):
        r = run(*common, "--shard", bad)
        assert r.exit_code == 2 and "--shard" in r.stderr


def test_merge_checks_each_shards_results_against_its_summary(ckpt, layouts, tmp_path):
    """A shard's results file that lacks a row, is torn, is a link to a file elsewhere, is missing, or holds
    other clips: evaluate-merge exits 2 naming the shard and what is wrong, and writes no merged report."""
    common = ["evaluate", layouts["csv"], "-c", ckpt, "--max-new-tokens", "3", "-q"]
    shards = tmp_path / "shards"
    for i in (1, 2):
        r = run(*common, "--shard", f"{i}/2", "--report-dir", shards)
        assert r.exit_code == 0, r.stderr
    second = shards / "results.shard-2-of-2.jsonl"
    good = second.read_text()
    lines = good.splitlines(keepends=True)
    ids = [json.loads(line)["id"] for line in lines]
    assert ids == ["c1", "c3"]  # every second clip by id, from the second

    def refused(*says):
        r = run("evaluate-merge", shards)
        assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
        (message,) = r.stderr.strip().splitlines()
        assert message.startswith("error: shard 2/2: ") and all(s in message for s in says), message
        assert not (shards / "summary.json").exists() and not (shards / "results.jsonl").exists()

    second.write_text(lines[0])
    refused(str(second), "lacks 1 of the 2 rows of asr, SNR clean (clips c3)", "--shard 2/2 --resume")
    second.write_text(lines[0] + lines[1][:20])
    refused(str(second), "line 2 is not a result row")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(good)
    second.unlink()
    second.symlink_to(elsewhere)
    refused(str(second), f"is a symbolic link (to {elsewhere})")
    second.unlink()
    refused(str(second), "is missing")
    second.write_text(good.replace('"id": "c3"', '"id": "c9"'))
    refused("lacks 1 of the 2 rows of asr, SNR clean (clips c3)")
    second.write_text(good + lines[0])
    refused("holds rows of asr, SNR clean that its summary does not count")
    second.write_text(good)
    r = run("evaluate-merge", shards, "--json")
    assert r.exit_code == 0, r.stderr
    assert [c["clips"] for c in json.loads(r.stdout)["conditions"]] == [4]


def test_resume_checks_the_results_file_it_continues(ckpt, layouts, tmp_path):
    """--resume continues a results file only if it is the folder's own regular file, parses (but for a
    last line torn by a kill) and holds only clips of this run: otherwise exit 2, the file left as it was."""
    report = tmp_path / "report"
    args = ["evaluate", layouts["csv"], "-c", ckpt, "--max-new-tokens", "3", "-q", "--report-dir", report]
    r = run(*args, "--limit", "3")
    assert r.exit_code == 0, r.stderr
    results = report / "results.jsonl"
    good = results.read_text()
    lines = good.splitlines(keepends=True)
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(lines[0])
    results.unlink()
    results.symlink_to(elsewhere)
    r = run(*args, "--limit", "3", "--resume")
    assert r.exit_code == 2 and f"{results}: is a symbolic link (to {elsewhere})" in r.stderr, r.stderr
    assert elsewhere.read_text() == lines[0]  # nothing appended to the file it points to
    results.unlink()
    results.write_text(lines[0] + "{not json\n" + lines[2])
    r = run(*args, "--limit", "3", "--resume")
    assert r.exit_code == 2 and f"{results}: line 2 is not a result row" in r.stderr, r.stderr
    results.write_text(good)
    r = run(*args, "--limit", "2", "--resume")
    assert r.exit_code == 2 and "holds clip c2, which this run does not score" in r.stderr, r.stderr
    assert results.read_text() == good
    r = run(*args, "--limit", "3", "--resume", "--json")
    assert r.exit_code == 0 and [c["clips"] for c in json.loads(r.stdout)["conditions"]] == [3]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def unmeasured(summary: dict) -> dict:
    """A summary without what differs between two runs of the same work: its duration and end time."""
    run_info = {k: v for k, v in summary["run"].items() if k != "finished"}
    return {**{k: v for k, v in summary.items() if k != "seconds"}, "run": run_info}


def test_under_torchrun_ranks_score_shards_and_rank_0_merges(ckpt, layouts, tmp_path):
    """`torchrun --nproc-per-node 2 -m avsr_cli evaluate ...` (gloo on CPU): one summary, as one process."""
    import os
    import subprocess
    import sys

    common = [layouts["csv"], "-c", ckpt, "--snr", "5", "--max-new-tokens", "3", "-q"]
    whole, ranked = tmp_path / "whole", tmp_path / "ranked"
    assert run("evaluate", *common, "--report-dir", whole).exit_code == 0
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*launch, "-m", "avsr_cli", "evaluate", *map(str, common), "--report-dir", str(ranked), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AVSR_CHECKPOINT": ""}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    merged = json.loads((ranked / "summary.json").read_text())
    assert json.loads(p.stdout) == merged  # printed once, by rank 0
    expected = json.loads((whole / "summary.json").read_text())
    assert unmeasured(merged) == unmeasured(expected)
    assert (ranked / "report.html").is_file() and not (ranked / "rank-0" / "report.html").exists()
    assert sorted(p.name for p in ranked.iterdir() if p.name.startswith("rank-")) == ["rank-0", "rank-1"]
