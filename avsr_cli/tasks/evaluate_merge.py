"""`merge_reports`: the shards of a sharded evaluation joined into the report one unsharded run writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import UsageError
from ..storage import atomic_write_text, exclusive_lock
from .evaluate_options import snr_key
from .evaluate_results import Report, load_results, report_name, summarize, write_report

SHARD_SUMMARY = re.compile(r"^summary\.shard-(\d+)-of-(\d+)\.json$")
# Options that may differ between the shards of one run: how each was run, not what was scored.
PER_SHARD = ("shard", "workers", "resume")


def merge_reports(report_dirs: list[Path], out_dir: Path | None = None) -> Report:
    """Join the shards of a sharded evaluation (each summary.shard-i-of-n.json with its results file, in one
    or several folders) into the summary.json, results.jsonl and alignment.txt an unsharded run writes,
    in `out_dir` (default: the first folder). Every shard of 1..n must be there once, all run with the same
    options, and no clip scored twice: otherwise UsageError, naming what is wrong."""
    found: dict[tuple[int, int], tuple[Path, dict]] = {}
    for folder in map(Path, report_dirs):
        if not folder.is_dir():
            raise UsageError(f"{folder}: not a report folder")
        for path in sorted(folder.iterdir()):
            match = SHARD_SUMMARY.match(path.name)
            if match is None:
                continue
            shard = (int(match[1]), int(match[2]))
            if shard in found:
                raise UsageError(
                    f"shard {shard[0]}/{shard[1]} is both in {found[shard][0].parent} and {folder}"
                )
            found[shard] = (path, _shard_summary(path, shard))
    if not found:
        raise UsageError(
            f"no shard summaries (summary.shard-I-of-N.json) in {', '.join(map(str, report_dirs))}"
        )
    counts = {n for _, n in found}
    if len(counts) > 1:
        raise UsageError(f"shards of different splits: of {', '.join(map(str, sorted(counts)))}")
    (n,) = counts
    missing = [f"{i}/{n}" for i in range(1, n + 1) if (i, n) not in found]
    if missing:
        raise UsageError(
            f"missing shard(s) {', '.join(missing)}: run them (avsr evaluate --shard I/{n}) first"
        )
    first = found[(1, n)][1]

    def common(summary: dict) -> dict:
        return {k: v for k, v in summary["options"].items() if k not in PER_SHARD}

    for (i, _), (path, summary) in sorted(found.items()):
        differs = [k for k in common(first) if common(summary).get(k) != common(first)[k]]
        if differs or summary["dataset"] != first["dataset"]:
            what = ", ".join(differs) or "dataset"
            raise UsageError(f"{path}: shard {i}/{n} was run with other {what} than shard 1/{n}")
    rows, seen = [], set()
    for (i, _), (path, summary) in sorted(found.items()):
        for row in _shard_rows(path.parent, (i, n), summary):
            key = (row["mode"], row["snr"], row["occlusion"], row["id"])
            if key in seen:
                raise UsageError(
                    f"clip {row['id']} ({row['mode']}, SNR {row['snr']}) is scored in two shards"
                )
            seen.add(key)
            rows.append(row)
    options = {**first["options"], "shard": None}
    out = Path(out_dir) if out_dir is not None else Path(report_dirs[0])
    report, alignments = summarize(
        rows,
        options,
        dataset=first["dataset"],
        kind=first["kind"],
        skipped=first["skipped"],
        seconds=sum(summary["seconds"] for _, summary in found.values()),
        run=_merged_run(found, out),
    )
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out, "avsr evaluate-merge"):
        order = {key: k for k, key in enumerate(_condition_keys(report))}
        rows.sort(key=lambda r: (order.get((r["mode"], r["snr"], r["occlusion"]), len(order)), r["id"]))
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        atomic_write_text(out / "results.jsonl", text)
        write_report(out, report, alignments)
    return report


def _merged_run(found: dict[tuple[int, int], tuple[Path, dict]], out: Path) -> dict:
    """Shard 1's run_info, ended when the last shard did, its workdir seen from the merged folder."""
    path, first = found[min(found)]
    folder, run = path.parent, first.get("run") or {}
    if not run:
        return {}
    ends = [summary.get("run", {}).get("finished") or "" for _, summary in found.values()]
    run = {**run, "finished": max(ends) or None}
    if run.get("workdir") is not None:
        workdir = (folder / run["workdir"]).resolve()
        run["workdir"] = Path(os.path.relpath(workdir, Path(out).resolve())).as_posix()
    return run


def _shard_summary(path: Path, shard: tuple[int, int]) -> dict:
    """A shard's summary.json, read and checked for the fields a merge uses."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if not all(k in summary for k in ("conditions", "options", "dataset", "kind", "skipped", "seconds")):
            raise ValueError("fields missing")
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"shard {shard[0]}/{shard[1]}: {path} cannot be read as a summary ({exc})") from None
    return summary


def _shard_rows(folder: Path, shard: tuple[int, int], summary: dict) -> list[dict]:
    """A shard's rows, checked against its summary: a regular file of its own that parses whole
    (`load_results`), with one row per clip and condition the summary counts, for the clips it lists
    (older summaries list none: then the counts). UsageError naming the shard and what is wrong."""
    name = f"shard {shard[0]}/{shard[1]}"
    path = folder / report_name("results", "jsonl", shard)
    rerun = f"rerun it: avsr evaluate ... --shard {shard[0]}/{shard[1]} --resume --report-dir {folder}"
    if not os.path.lexists(path):
        raise UsageError(f"{name}: {path} is missing: {rerun}")
    try:
        rows, _ = load_results(path)
    except UsageError as exc:
        raise UsageError(f"{name}: {exc}") from None
    ids = summary.get("clip_ids")
    by_condition: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        by_condition.setdefault((row["mode"], row["snr"], row["occlusion"]), []).append(row["id"])
    for c in summary["conditions"]:
        key = (c["mode"], c["snr"], c.get("occlusion", "none"))
        have = by_condition.pop(key, [])
        what = f"{c['mode']}, SNR {c['snr']}" + (f", occlusion {key[2]}" if key[2] != "none" else "")
        scored = set(have)
        missing = [i for i in ids if i not in scored] if ids is not None else []
        if missing or len(have) < c["clips"]:
            listed = f" (clips {_some(missing)})" if missing else ""
            lacking = len(missing) or c["clips"] - len(have)
            raise UsageError(
                f"{name}: {path} lacks {lacking} of the {c['clips']} rows of {what}{listed} that its "
                f"summary counts: {rerun}"
            )
        listed_ids = set(ids or [])
        extra = [i for i in have if i not in listed_ids] if ids is not None else []
        if extra or len(have) != len(scored) or len(have) > c["clips"]:
            listed = f" (clips {_some(extra)})" if extra else ""
            raise UsageError(
                f"{name}: {path} holds rows of {what} that its summary does not count{listed}: it is not "
                f"this shard's results; {rerun}"
            )
    if by_condition:
        mode, snr, occlusion = next(iter(by_condition))
        raise UsageError(
            f"{name}: {path} holds rows of {mode}, SNR {snr}, occlusion {occlusion}, a condition its summary "
            f"does not have: it is not this shard's results; {rerun}"
        )
    return rows


def _some(ids: list[str], shown: int = 5) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _condition_keys(report: Report) -> list[tuple[str, str, str]]:
    return [(c.mode, snr_key(c.snr), c.occlusion) for c in report.conditions]
