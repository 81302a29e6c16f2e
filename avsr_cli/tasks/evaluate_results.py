"""The files of a report folder: results.jsonl (a row per clip and condition, read, checked and resumed),
and summary.json and alignment.txt, made from the rows (`summarize`)."""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..storage import atomic_write_text
from .evaluate_options import CLEAN, EvaluateOptions, snr_key
from .scoring import alignment_text, get_normalizer, score
from .transcript import rounded


@dataclass
class Condition:
    """The scores of one (mode, SNR) condition."""

    mode: str
    snr: float
    clips: int
    failed: int
    scores: dict  # Scores.to_dict(rows=False)
    occlusion: str = "none"  # "none" or "kind:level"


@dataclass
class Report:
    dataset: str
    kind: str
    normalizer: str
    normalizer_description: str
    conditions: list[Condition]
    skipped: list[dict]
    failures: list[dict]
    options: dict
    seconds: float
    run: dict = field(default_factory=dict)  # run_info(): model, rates, avsr version, end time, workdir
    # a shard's clips (ids, in order): merge_reports checks its results file against them
    clip_ids: list[str] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["clip_ids"] is None:
            del d["clip_ids"]
        return rounded(json_safe(d))


def json_safe(obj, key: str = ""):
    """JSON has no inf/nan: write them as strings; SNRs are spelled as in results.jsonl ("clean", "5")."""
    if isinstance(obj, float) and key in ("snr", "snrs"):
        return snr_key(obj)  # "clean", "5", "-5": as results.jsonl spells them
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else "-inf" if obj < 0 else "nan"
    if isinstance(obj, dict):
        return {k: json_safe(v, k) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, key) for v in obj]
    return obj


def read_results(path: Path) -> list[dict]:
    """Rows of a results.jsonl, leniently (lines that do not parse are left out); `load_results` checks."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


ROW_KEYS = ("mode", "snr", "id")  # what makes a line of a results file a row


def load_results(path: Path, torn_tail: bool = False) -> tuple[list[dict], int]:
    """The rows of a report folder's results file, checked, and the length in bytes of its whole lines.

    The file must be a regular file of its own (a symbolic link, even one into the folder, would make a
    report of another run's rows, or append to another file), UTF-8, every line a result row (mode, snr,
    id). `torn_tail`: a last line without its newline (a kill mid-write) is left out rather than refused.
    Raises UsageError naming the file and the problem."""
    path = Path(path)
    try:
        st = path.lstat()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(
            f"{path}: is a symbolic link (to {os.readlink(path)}), not the report's own results file"
        )
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: is not a regular file")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text: not a results file") from None
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    rows = []
    for number, line in enumerate([*lines, tail] if tail else lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ROW_KEYS):
                raise ValueError(line)
        except ValueError:
            if torn_tail and number == len(lines) + 1:
                break  # the torn last line: scored again
            raise UsageError(f"{path}: line {number} is not a result row (the file is damaged)") from None
        rows.append({**row, "occlusion": row.get("occlusion", "none")})
    whole = len(data) - len(tail.encode("utf-8")) if len(rows) == len(lines) else len(data)
    return rows, whole


def resumed_rows(path: Path, ids: list[str]) -> list[dict]:
    """The rows a resumed run keeps (`load_results`, the torn last line cut off so appends start on a line
    of their own); rows of clips this run does not score, or scored twice, are a UsageError."""
    rows, whole = load_results(path, torn_tail=True)
    mine, seen = set(ids), set()
    for row in rows:
        key = (row["mode"], row["snr"], row["occlusion"], row["id"])
        if row["id"] not in mine:
            raise UsageError(
                f"{path}: holds clip {row['id']}, which this run does not score (another dataset, --limit "
                "or --shard?): resume with the options it was started with, or choose another --report-dir"
            )
        if key in seen:
            raise UsageError(f"{path}: clip {row['id']} ({row['mode']}, SNR {row['snr']}) is scored twice")
        seen.add(key)
    with open(path, "rb+") as f:
        f.truncate(whole)
        if whole:
            f.seek(whole - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")  # a last row without its newline: the next one starts a line of its own
    return rows


def report_name(stem: str, suffix: str, shard: tuple[int, int] | None) -> str:
    """results.jsonl, or results.shard-2-of-4.jsonl for a shard (summary, alignment alike)."""
    return f"{stem}.{suffix}" if shard is None else f"{stem}.shard-{shard[0]}-of-{shard[1]}.{suffix}"


def summarize(
    rows: list[dict],
    options: dict,
    *,
    dataset: str,
    kind: str,
    skipped: list[dict],
    seconds: float,
    run: dict | None = None,
) -> tuple[Report, list[str]]:
    """The Report (and alignment text per condition) of scored rows, under `options` (EvaluateOptions as a
    dict). Rows of a condition are taken in id order, so a merged run reports as an unsharded one."""
    normalizer = get_normalizer(options["normalizer"])
    shape = EvaluateOptions(
        modes=tuple(options["modes"]),
        snrs=tuple(_snr(v) for v in options["snrs"]),
        occlusion=options["occlusion"],
        levels=tuple(options["levels"]),
    )
    conditions, failures, alignments = [], [], []
    for mode in shape.modes:
        for snr in shape.snrs_for(mode):
            key = snr_key(snr)
            for occlusion in shape.occlusions(mode):
                mine = [r for r in rows if (r["mode"], r["snr"], r["occlusion"]) == (mode, key, occlusion)]
                mine.sort(key=lambda r: r["id"])
                ok = [r for r in mine if r.get("error") is None]
                failures += [
                    {"mode": mode, "snr": key, "occlusion": occlusion, "id": r["id"], "error": r["error"]}
                    for r in mine
                    if r.get("error")
                ]
                scores = score([(r["ref"], r["hyp"]) for r in ok], normalizer, ids=[r["id"] for r in ok])
                conditions.append(
                    Condition(
                        mode, snr, len(mine), len(mine) - len(ok), scores.to_dict(rows=False), occlusion
                    )
                )
                video = f", occlusion {occlusion}" if occlusion != "none" else ""
                alignments.append(
                    f"# mode {mode}, SNR {key}{video}: {scores.summary()}\n\n" + alignment_text(scores.rows)
                )
    report = Report(
        dataset=dataset,
        kind=kind,
        normalizer=normalizer.name,
        normalizer_description=normalizer.description,
        conditions=conditions,
        skipped=skipped,
        failures=failures,
        options=options,
        seconds=seconds,
        run=run or {},
    )
    return report, alignments


def _snr(value) -> float:
    """An SNR from options: a number, or "clean"/"inf" as JSON spells the clean condition."""
    return CLEAN if value in ("clean", "inf") else float(value)


def write_report(
    report_dir: Path, report: Report, alignments: list[str], shard: tuple[int, int] | None = None
) -> None:
    summary = json.dumps(report.to_dict(), indent=2) + "\n"
    atomic_write_text(report_dir / report_name("summary", "json", shard), summary)
    atomic_write_text(report_dir / report_name("alignment", "txt", shard), "\n\n".join(alignments))
