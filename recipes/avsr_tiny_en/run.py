"""One self-contained training run of avsr-tiny-en: data, training, evaluation, and shipping if better.

    python -m recipes.avsr_tiny_en.run --slice K [--clips 2000] [--replay 1000] [--epochs 2] [--ship]
    python -m recipes.avsr_tiny_en.run --line --slice K [--clips 3000] [--epochs 2] [--max-steps N]
    python -m recipes.avsr_tiny_en.run --ship-run NAME   # ship a finished run that the rule found better

Needs the repository and the recipe's packages (`make recipe-deps`: APT_PACKAGES as root, PIP_PACKAGES; a
run names the missing ones and stops before any work); it builds everything else (what it finds from an
earlier run it reuses, as each step resumes):
1. text.py (the sentence pool) when missing; build.py's evaluation splits and babble pools
   (`--only babble --only test --only test-babble5 --only val`);
2. slice.py: slice K, a fresh training slice (new sentences, voices, seeds) with `--replay` one-sentence
   clips made as the v2 corpus made them, and the two-sentence test set;
3. `avsr train --checkpoint models/avsr-tiny-en` on the slice (bf16, compiled steps), validating on 40 `val`
   clips each epoch and keeping the best epoch; with `--line`, the redesigned model instead (LINE below);
4. ship_eval.py on the candidate and on the shipped model, each beside Whisper base, and names_ab.py on
   both (no prompt, and the glossary before the media); the shipped model's evaluation is read from
   shipped-evaluation.json when that holds the shipped adapter's on the same sets (commit it after a run);
   calibrate.py sets the candidate's low_confidence threshold from its own held-out clips;
5. with --ship, the candidate replaces models/avsr-tiny-en (adapter, config, training.json) when it is
   better: lower WER on the clean held-out set or the two-sentence set, no set worse by more than 1 point
   (sets under 20 clips, LRS3's one and audioeval's three, are reported, not ruled on), and no fewer names
   kept. Without --ship, `--ship-run NAME` applies that decision later, if the model the run was compared
   with is still the shipped one (and, for a line run, the line still holds its parameters).
Every step's wall time goes to RUN_DIR/run.json; the comparison to RUN_DIR/report.md.
A run of 2,000 clips (about 5.8 h of speech) and 2 epochs takes about an hour on 2 cores.

`--line`: the redesigned model (docs/model-diagnostics.md), trained across runs in the repository: the
projector stacks 2 encoder frames (25 tokens/s) instead of 4. With no committed line, the run starts it from
the `whisper-base-smollm2` base: a CTC pre-alignment epoch, then the LLM stage. With one,
it goes on from the committed parameters on the run's fresh slice (AdamW starts afresh and re-warms). Either
way the trained parameters (adapter, config, the runs so far) are written to recipes/avsr_tiny_en/line/,
to be committed: the next run, on any machine, starts from them. The shipped model's evaluation is measured
only with --ship; otherwise the committed one is used when it covers the sets, else the candidate is
reported alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .build import CACHE
from .calibrate import calibration, set_threshold
from .card import update_card

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "avsr-tiny-en"
CARD = ROOT / "models" / "avsr-tiny-en.toml"
# The shipped adapter's evaluation, committed with it: a run re-measures it only for another adapter or sets
SHIPPED_EVALUATION = Path(__file__).with_name("shipped-evaluation.json")
# The redesigned model's parameters between runs (the adapter, config.json and training.json of its last run)
LINE = Path(__file__).with_name("line")
LINE_BASE = "whisper-base-smollm2"
# stack 2: the CTC probe's CER 17.4 % against 20.7 % at stack 4 (docs/model-diagnostics.md)
LINE_AUDIO_RATE = 2
# the shipped model's 1 epoch: 6 would take about 20 minutes on 2 cores (650 steps an epoch of 3,000 clips,
# ~200 steps a minute), and the token CTC loss moved only from 8.2 to 7.5 over the first 400 steps
LINE_CTC_EPOCHS = 1


def missing_packages(apt: list[str], pip: list[str]) -> list[str]:
    """The recipe's packages not installed here (Debian ones only where dpkg can tell)."""
    from importlib.metadata import PackageNotFoundError, distribution

    missing = []
    if shutil.which("dpkg-query"):
        for name in apt:
            state = subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True
            ).stdout
            if not state.endswith(" installed"):
                missing.append(name)
    for requirement in pip:
        name = re.split(r"[=<>!~\[ ]", requirement, maxsplit=1)[0]
        try:
            distribution(name)
        except PackageNotFoundError:
            missing.append(name)
    return missing


def package_list(name: str) -> list[str]:
    """A package list of the recipe, split as the Makefile's recipe-deps splits it."""
    return Path(__file__).with_name(name).read_text().split()


def step(log: dict, name: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.time()
    done = subprocess.run(cmd, check=True, cwd=ROOT, **kw)
    log["steps"][name] = round(time.time() - t0, 1)
    return done


def names_kept(output: str) -> dict:
    """names_ab's table rows -> {run: (kept, total, wer)}."""
    rows = {}
    for m in re.finditer(r"^\| ([^|]+) \| (\d+)/(\d+) \| ([\d.]+) % \|$", output, re.M):
        rows[m[1].strip()] = (int(m[2]), int(m[3]), float(m[4]))
    return rows


# A set of fewer clips is reported, not ruled on: one word of the 3 audioeval clips moves it by 5 points
RULED_MIN_CLIPS = 20


def better(new: dict, old: dict) -> tuple[bool, str]:
    rows_new = {r["set"]: r for r in new["table"]}
    rows_old = {r["set"]: r for r in old["table"]}
    ruled = [s for s in rows_new if s in rows_old and rows_new[s]["clips"] >= RULED_MIN_CLIPS]
    worse = [s for s in ruled if rows_new[s]["avsr"] > rows_old[s]["avsr"] + 1.0]
    gain = [
        s
        for s in ("heldout-clean", "heldout-2sent")
        if s in ruled and rows_new[s]["avsr"] < rows_old[s]["avsr"]
    ]
    names_new = new["names"].get("no prompt", (0, 0, 0))[0]
    names_old = old["names"].get("no prompt", (0, 0, 0))[0]
    if worse:
        return False, f"worse by more than 1 point on {', '.join(worse)}"
    if names_new < names_old:
        return False, f"keeps fewer names ({names_new} against {names_old})"
    if not gain:
        return False, "no lower WER on the clean held-out or the two-sentence set"
    return True, f"lower WER on {', '.join(gain)}, no set worse by more than 1 point"


def evaluate(ckpt: str, out: Path, threads: int, log: dict, tag: str) -> dict:
    py = sys.executable
    step(
        log,
        f"ship_eval {tag}",
        [py, "-m", "recipes.avsr_tiny_en.ship_eval", ckpt, str(out), "--threads", str(threads)],
    )
    names = step(
        log,
        f"names_ab {tag}",
        [
            py,
            "-m",
            "recipes.avsr_tiny_en.names_ab",
            "--checkpoint",
            ckpt,
            "--threads",
            str(threads),
            "--placements",
            "before-media",
        ],
        capture_output=True,
        text=True,
    )
    return {"table": json.loads((out / "table.json").read_text()), "names": names_kept(names.stdout)}


def adapter_digest(ckpt: Path) -> str:
    """What the shipped model's evaluation depends on: its adapter and config.json."""
    h = hashlib.sha256()
    for name in ("adapter.safetensors", "config.json"):
        h.update((Path(ckpt) / name).read_bytes())
    return h.hexdigest()


def committed_evaluation(candidate: dict, digest: str) -> dict | None:
    """The committed evaluation of the adapter `digest`, if it covers every set of `candidate`'s table with
    the same clips."""
    if not SHIPPED_EVALUATION.exists():
        return None
    saved = json.loads(SHIPPED_EVALUATION.read_text())
    if saved.get("adapter") != digest:
        return None
    clips = {r["set"]: r["clips"] for r in saved["evaluation"]["table"]}
    if any(clips.get(r["set"]) != r["clips"] for r in candidate["table"]):
        return None
    return saved["evaluation"]


def commit_evaluation(evaluation: dict, digest: str) -> None:
    SHIPPED_EVALUATION.write_text(json.dumps({"adapter": digest, "evaluation": evaluation}, indent=1) + "\n")


def ship(
    run_dir: Path,
    slice_k: int,
    command: str,
    table: list[dict],
    measured_by: str,
    card: Path = CARD,
    line_runs: list[dict] | None = None,
) -> None:
    """The candidate in `run_dir` (trained by `command`) -> models/avsr-tiny-en, and its card's rate,
    decoding and WER rows (`table`, measured by the command `measured_by`); a line candidate records the
    line's runs (`line_runs`), from the restack of the model it replaces to this one."""
    parent = json.loads((SHIPPED / "training.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    summary = (
        json.loads((run_dir / "training.json").read_text()) if (run_dir / "training.json").exists() else {}
    )
    config["name"] = "avsr-tiny-en"
    config["decoding"]["num_beams"] = 1  # greedy (README: the default model)
    config["notes"] = f"trained by avsr train (see models/avsr-tiny-en.toml); adapter: slice {slice_k} run"
    shutil.copyfile(run_dir / "adapter.safetensors", SHIPPED / "adapter.safetensors")
    (SHIPPED / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    training = {
        "slice": slice_k,
        "steps": summary.get("steps"),
        "validations": summary.get("validations"),
        "command": portable(command),
        **({"line": line_runs} if line_runs else {}),
        "parent": parent,
    }
    (SHIPPED / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    update_card(card, config, table, portable(measured_by))


def ship_run(run_dir: Path) -> str:
    """Ship the candidate of a finished run (its run.json) that run.py's rule found better than the model
    it was compared with, if that is still the shipped one."""
    if not (run_dir / "run.json").is_file():
        raise SystemExit(f"run.py: {run_dir}: no finished run there (run.json)")
    log = json.loads((run_dir / "run.json").read_text())
    if not log.get("better"):
        raise SystemExit(f"run.py: {run_dir}: not shipped: {log.get('why', 'the run did not finish')}")
    if log.get("shipped_adapter") != adapter_digest(SHIPPED):
        raise SystemExit(f"run.py: {run_dir}: the shipped model changed since this run compared with it")
    line_runs = None
    if log.get("line"):
        line_runs = json.loads((LINE / "training.json").read_text())["runs"]
        if line_runs[-1].get("command") != portable(log["train_command"]):
            raise SystemExit(f"run.py: {run_dir}: {LINE} holds another run's parameters (commit this run's)")
    candidate = log["candidate"]
    table = candidate["table"]
    ship(run_dir / "model", log["slice"], log["train_command"], table, log["measured_by"], CARD, line_runs)
    commit_evaluation(candidate, adapter_digest(SHIPPED))
    log["shipped_to"] = str(SHIPPED)
    (run_dir / "run.json").write_text(json.dumps(log, indent=1) + "\n")
    return log["why"]


def line_start(resume_from: Path | None, lr: float | None) -> list[str]:
    """`avsr train` options that start the redesigned model, or go on from its committed parameters."""
    if resume_from is not None:
        # a model that listens already: the slices' fine-tunes moved it at 2e-4 to 5e-4 (docs/training.md)
        return ["--checkpoint", str(resume_from), "--lr", str(lr or 5e-4)]
    return [
        "--base",
        LINE_BASE,
        "--encoder-window",
        "trimmed",
        "--audio-rates",
        str(LINE_AUDIO_RATE),
        "--ctc-epochs",
        str(LINE_CTC_EPOCHS),
        "--lr",
        str(lr or 2e-3),  # the shipped model's first run, from the same base
    ]


# 3-sentence clips hold up to 55 words, about 75 tokens: the base's 64 would cut them
LINE_MAX_NEW_TOKENS = 128
# the line loops in noise where the shipped model does not: after slice 5, 4-gram guard on/off: 5 dB babble
# 71.7 against 83.9 %, clean 22.9 both, two-sentence clips 22.2 against 21.6 (docs/training.md)
LINE_NO_REPEAT_NGRAM = 4


def line_decoding(model_dir: Path) -> None:
    """Decode the line's candidate as the shipped model decodes (greedy, its CPU matrices), with room for
    its longer clips and a guard against its loops."""
    shipped = json.loads((SHIPPED / "config.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    config["decoding"].update(
        num_beams=1, max_new_tokens=LINE_MAX_NEW_TOKENS, no_repeat_ngram_size=LINE_NO_REPEAT_NGRAM
    )
    config["llm"]["cpu_matrices"] = shipped["llm"].get("cpu_matrices")
    (model_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def run_name(slice_k: int, line: bool, line_dir: Path = LINE) -> str:
    """The run's folder name. A run resumes what its folder holds, so a line run's name also says where it
    starts (the base, or the committed parameters by digest): another start is another run."""
    if not line:
        return f"v3-slice{slice_k}"
    start = adapter_digest(line_dir)[:10] if (line_dir / "adapter.safetensors").exists() else "base"
    return f"line-slice{slice_k}-{start}"


def portable(command: str) -> str:
    """A command as the repository records it: paths in the checkout relative, the home folder as ~."""
    return command.replace(f"{ROOT}/", "").replace(str(Path.home()), "~")


def commit_line(model_dir: Path, slice_k: int, command: list[str], line: Path = LINE) -> None:
    """The run's parameters -> `line` (adapter, config, and training.json with the runs so far)."""
    previous = json.loads((line / "training.json").read_text()) if (line / "training.json").exists() else {}
    summary = json.loads((model_dir / "training.json").read_text())
    line.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / "adapter.safetensors", line / "adapter.safetensors")
    shutil.copyfile(model_dir / "config.json", line / "config.json")
    run = {
        "slice": slice_k,
        "steps": summary.get("steps"),
        "validations": summary.get("validations"),
        "command": portable(" ".join(command)),
    }
    runs = [*previous.get("runs", []), run]
    (line / "training.json").write_text(json.dumps({"runs": runs}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slice", type=int)
    ap.add_argument("--clips", type=int, default=2000)
    # fine-tuning on a slice alone cost 1.6-2.2 points on one-sentence clips (docs/training.md)
    ap.add_argument(
        "--replay", type=int, default=1000, help="clips made as the v2 corpus made them (slice.py)"
    )
    ap.add_argument("--epochs", type=int, default=2)
    # lr 5e-4 cost 1.6 points on one-sentence clips (docs/training.md, the slice-1 row)
    ap.add_argument("--lr", type=float, default=None, help="2e-4; --line: 2e-3 from the base, 5e-4 after")
    ap.add_argument("--max-steps", type=int, default=0, help="stop training after this many steps")
    ap.add_argument("--line", action="store_true", help="train the redesigned model (above)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--corpus", type=Path, default=CACHE)
    ap.add_argument("--runs", type=Path, default=Path.home() / ".cache/avsr/runs")
    ap.add_argument(
        "--ship", action="store_true", help="replace models/avsr-tiny-en when the candidate is better"
    )
    ap.add_argument("--ship-run", metavar="NAME", help="ship the finished run NAME (a folder of --runs)")
    args = ap.parse_args()
    if args.ship_run:
        if args.ship_run in ("", ".", "..") or Path(args.ship_run).name != args.ship_run:
            ap.error(f"--ship-run {args.ship_run!r}: a run's folder name in {args.runs}")
        print(f"shipped: {ship_run(args.runs / args.ship_run)}")
        return
    if args.slice is None:
        ap.error("--slice is required")
    missing = missing_packages(package_list("APT_PACKAGES"), package_list("PIP_PACKAGES"))
    if missing:
        sys.exit(f"run.py: the recipe's packages are missing: {', '.join(missing)} (make recipe-deps)")
    py, corpus, jobs = sys.executable, args.corpus, str(args.threads)
    run_dir = args.runs / run_name(args.slice, args.line)
    run_dir.mkdir(parents=True, exist_ok=True)
    log: dict = {
        "slice": args.slice,
        "clips": args.clips,
        "replay": args.replay,
        "epochs": args.epochs,
        "threads": args.threads,
        "line": args.line,
        "steps": {},
    }
    t0 = time.time()
    text = corpus / "text" / "sentences.tsv"
    if not text.exists():
        step(log, "text", [py, "-m", "recipes.avsr_tiny_en.text", "--out", str(corpus / "text")])
    recipe = lambda name, *args: [py, "-m", f"recipes.avsr_tiny_en.{name}", *map(str, args)]  # noqa: E731
    only = [a for split in ("babble", "test", "test-babble5", "val") for a in ("--only", split)]
    step(log, "eval splits", recipe("build", "--out", corpus, "--text", text, "--jobs", jobs, *only))
    step(
        log,
        "slice",
        recipe(
            "slice",
            "--slice",
            args.slice,
            "--clips",
            args.clips,
            "--replay",
            args.replay,
            "--out",
            corpus,
            "--text",
            text,
            "--jobs",
            jobs,
        ),
    )
    train_cmd = [
        py,
        "-m",
        "avsr_cli",
        "train",
        "--data",
        # the manifest, not the folder: it carries the clips' context prompts
        str(corpus / f"slice-{args.slice}" / "train" / "manifest.jsonl"),
        "--val-data",
        str(corpus / "val"),
        "--val-limit",
        "40",
        "--val-every",
        "0",
        "-o",
        str(run_dir / "model"),
        *(
            line_start(LINE if (LINE / "adapter.safetensors").exists() else None, args.lr)
            if args.line
            else ["--checkpoint", str(SHIPPED), "--lr", str(args.lr or 2e-4)]
        ),
        "--epochs",
        str(args.epochs),
        *(["--max-steps", str(args.max_steps)] if args.max_steps else []),
        "--warmup-steps",
        "100" if args.line else "50",
        "--batch-seconds",
        "30",
        "--save-every",
        "100",
        "--select",
        "best",
        "--precision",
        "bf16",
        "--compile",
        "--threads",
        str(args.threads),
    ]
    step(log, "train", train_cmd)
    if args.line:
        line_decoding(run_dir / "model")
        commit_line(run_dir / "model", args.slice, ["avsr", *train_cmd[3:]])
        log["line"] = str(LINE)
    candidate = evaluate(str(run_dir / "model"), run_dir / "eval", args.threads, log, "candidate")
    # the candidate's low_confidence threshold, from its own held-out clips (before the shipped model's
    # evaluation replaces them in the same folder)
    log["calibration"] = calibration(run_dir / "eval")
    set_threshold(run_dir / "model", log["calibration"]["threshold"])
    if args.line:
        set_threshold(LINE, log["calibration"]["threshold"])
    shipped = committed_evaluation(candidate, adapter_digest(SHIPPED))
    log["shipped_evaluation"] = "committed" if shipped is not None else "measured"
    if shipped is None and (args.ship or not args.line):
        shipped = evaluate(str(SHIPPED), run_dir / "eval", args.threads, log, "shipped")
        commit_evaluation(shipped, adapter_digest(SHIPPED))
    if shipped is None:
        log["shipped_evaluation"] = "none"
        shipped = {"table": [], "names": {}}
    ok, why = better(candidate, shipped) if shipped["table"] else (False, "no shipped evaluation to compare")
    log.update(candidate=candidate, shipped=shipped, better=ok, why=why)
    log["measured_by"] = " ".join(["python -m recipes.avsr_tiny_en.run", *sys.argv[1:]])
    log["train_command"] = " ".join(["avsr", *train_cmd[3:]])
    log["shipped_adapter"] = adapter_digest(SHIPPED)  # what the candidate was compared with
    log["hours"] = round((time.time() - t0) / 3600, 2)
    (run_dir / "run.json").write_text(json.dumps(log, indent=1) + "\n")
    if ok and args.ship:
        ship_run(run_dir)
    lines = [
        "| set | clips | candidate | shipped | Whisper base | deleted: candidate | shipped | Whisper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    old = {r["set"]: r for r in shipped["table"]}
    for r in candidate["table"]:
        o = old.get(r["set"], {})
        lines.append(
            f"| {r['set']} | {r['clips']} | {r['avsr']} | {o.get('avsr')} | {r['whisper']} "
            f"| {r['avsr_deleted']} "
            f"| {o.get('avsr_deleted')} | {r['whisper_deleted']} |"
        )
    for label, res in (("candidate", candidate), ("shipped", shipped)):
        for run, (kept, total, wer) in res["names"].items():
            lines.append(f"\nnames ({label}, {run}): {kept}/{total} kept, WER {wer} %")
    lines.append(f"\ndecision: {'ship' if ok else 'keep the shipped model'} ({why}); {log['hours']} h")
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # TTS and sox children; torch steps set their own
    main()
