"""`evaluate` launched by torchrun: rank r scores shard r+1 of N into DIR/rank-r, and rank 0 merges the shards
into DIR once every rank is done. Outside torchrun, one plain run into DIR."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UsageError
from ..runtime import cuda_device_for
from .distributed import World, barrier, distributed_run, launched_world
from .evaluate import evaluate
from .evaluate_merge import merge_reports
from .evaluate_options import EvaluateOptions
from .evaluate_results import Report
from .transcribe import Transcriber
from .writers import check_output_dir


@dataclass(frozen=True)
class RankRun:
    """What this process scores: its options (the shard of its rank), where its report goes, on which device;
    `world` is None outside torchrun, and `report_dir` the folder the user named, where the report ends."""

    world: World | None
    options: EvaluateOptions
    rank_dir: Path | None  # this process's report folder: report_dir, or report_dir/rank-r under torchrun
    report_dir: Path | None
    device: str

    @property
    def writes_page(self) -> bool:
        """Whether the whole report ends in report_dir (a --shard run leaves that to the merge)."""
        return self.report_dir is not None and (self.options.shard is None or self.world is not None)


def plan_rank(options: EvaluateOptions, report_dir: Path | None, device: str) -> RankRun:
    """This process's part of the run, its report folder checked writable; UsageError for a request that
    torchrun cannot split (a --shard of one's own, or no report folder to gather the shards in)."""
    world, rank_dir = launched_world(), report_dir
    if world is not None:
        if options.shard is not None:
            raise UsageError("--shard is chosen by the rank under torchrun: give one or the other")
        if report_dir is None:
            raise UsageError("under torchrun, evaluate needs --report-dir (each rank writes its shard there)")
        options = replace(options, shard=(world.rank + 1, world.size))
        rank_dir = report_dir / f"rank-{world.rank}"
        if device == "auto":
            device = cuda_device_for(world.local_rank)
    if rank_dir is not None:
        check_output_dir(rank_dir)
    return RankRun(world, options, rank_dir, report_dir, device)


def evaluate_rank(
    run: RankRun,
    load: Callable[[str], Transcriber],
    dataset: str | Path,
    on_clip: Callable[[str, str, dict], None] | None = None,
    scoring: AbstractContextManager | None = None,
) -> Report | None:
    """Score this process's part: the model from `load(device)`, then `evaluate` inside `scoring` (a
    progress display, say). Under torchrun every rank waits for the others, and rank 0 merges the shards
    into report_dir and returns the merged report; the other ranks return None."""
    with distributed_run() as joined:
        transcriber = load(run.device)
        with scoring or contextlib.nullcontext():
            report = evaluate(transcriber, dataset, run.options, run.rank_dir, on_clip)
        if joined is None:
            return report
        barrier(joined)
        if not joined.main:
            return None
        return merge_reports([run.report_dir / f"rank-{r}" for r in range(joined.size)], run.report_dir)
