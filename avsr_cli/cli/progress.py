from __future__ import annotations

import time

from .app import stderr


class MediaProgress:
    """A Rich progress bar on stderr, shown only on a terminal and without --quiet; returns `advance(n=1)`."""

    def __init__(self, total: float | None, quiet: bool, label: str = "transcribing", unit: str = "") -> None:
        self.enabled = not quiet and stderr.is_terminal
        self.total, self.label, self.unit = total, label, unit

    def __enter__(self):
        if not self.enabled:
            return lambda n=1: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn(f"{{task.completed:.0f}}/{{task.total:.0f}} {self.unit}")
            if self.total
            else TextColumn("{task.completed:.0f}"),
            TimeRemainingColumn(),
        ]
        self.progress = Progress(*columns, console=stderr, transient=True)
        self.progress.start()
        task = self.progress.add_task(self.label, total=self.total)
        return lambda n=1: self.progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()


class TrainProgress:
    """Progress of `avsr train` on stderr: a Rich bar on a terminal, else a line every ~5% of the steps."""

    def __init__(self, quiet: bool, verbose: bool = False) -> None:
        self.quiet, self.verbose, self.live = quiet, verbose, not quiet and stderr.is_terminal
        self.progress = self.task = None
        self.next_encode = 0
        self.started: tuple[float, int] | None = None  # (time, step) of the first step seen this run

    def encoded(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if done >= self.next_encode or done == total:
            stderr.print(f"encoder features: {done}/{total} clips")
            self.next_encode = done + max(1, total // 10)

    def step(self, info: dict) -> None:
        if self.quiet:
            return
        if "ctc_step" in info:  # CTC pre-alignment of the projectors
            if self.verbose or info["ctc_step"] % 50 == 0:
                stderr.print(
                    f"ctc pre-alignment ({info.get('modality', 'audio')}) step {info['ctc_step']} "
                    f"epoch {info['epoch']} loss {info['loss']:.3f}"
                )
            return
        if self.started is None:
            self.started = (time.monotonic(), info["step"] - 1)
        text = f"step {info['step']}/{info['total']} epoch {info['epoch']} loss {info['loss']:.3f}"
        if "val" in info and "wer" in info["val"]:
            per_mode = info["val"].get("modes", {})
            wers = (
                ", ".join(f"{m} {v['wer']:.1%}" for m, v in per_mode.items()) or f"{info['val']['wer']:.1%}"
            )
            stderr.print(f"validation at step {info['step']}: WER {wers}")
        if self.live:
            if self.progress is None:
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(
                    TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=stderr
                )
                self.progress.start()
                self.task = self.progress.add_task(text, total=info["total"])
            self.progress.update(self.task, completed=info["step"], description=text)
        elif self.verbose or info["step"] % max(1, info["total"] // 20) == 0 or info["step"] == info["total"]:
            stderr.print(text + self._eta(info))

    def _eta(self, info: dict) -> str:
        """', ETA 12:34' from the pace of the steps run so far in this process."""
        t0, s0 = self.started
        done = info["step"] - s0
        if done <= 0 or info["step"] >= info["total"]:
            return ""
        left = (time.monotonic() - t0) / done * (info["total"] - info["step"])
        return f", ETA {int(left // 60)}:{int(left % 60):02d}"

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class ByteProgress:
    """Rich progress bars with sizes and rates on stderr (terminal only, not with --quiet); yields the
    Progress or None."""

    def __init__(self, quiet: bool) -> None:
        self.progress = None
        if not quiet and stderr.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=stderr,
                transient=True,
            )

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self.progress

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
