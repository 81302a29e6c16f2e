from __future__ import annotations

import sys
import time

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column

from ..tasks.training.reports import CTCStepInfo, StepInfo
from .app import stderr


class MediaProgress:
    """Progress on stderr, on a terminal and without --quiet: the run (media seconds or clips done) and, under
    it, what the run does now and how far that is (reading a file, encoding, decoding: tokens generated).

    `with MediaProgress(...) as progress:` gives a callable: `progress(n)` advances the run (transcribe's
    `on_progress`), `progress.stage(what, done, total)` names the step, `progress.write(text)` puts results
    on stdout, never inside the bars (a terminal's stdout is written with the bars cleared, then they are
    drawn again) and never re-wrapped."""

    def __init__(self, total: float | None, quiet: bool, label: str = "transcribing", unit: str = "") -> None:
        self.enabled = not quiet and stderr.is_terminal
        self.total, self.label, self.unit = total, label, unit
        self.progress = self.run = self.step = None
        self.shown = ""  # the step last drawn
        self.done = 0.0

    def __enter__(self) -> MediaProgress:
        if not self.enabled:
            return self

        self.progress = Progress(
            # file names are text, never Rich markup
            TextColumn(
                "{task.description}", markup=False, table_column=Column(no_wrap=True, overflow="ellipsis")
            ),
            BarColumn(),
            TextColumn("{task.fields[count]}", markup=False, table_column=Column(no_wrap=True)),
            TimeRemainingColumn(),
            console=stderr,
            transient=True,
            redirect_stdout=False,  # results on stdout are written by `write`, not re-wrapped onto stderr
        )
        self.progress.start()
        self.run = self.progress.add_task(
            self.label, total=self.total, count=self._count(0, self.total, self.unit)
        )
        return self

    @staticmethod
    def _count(done: float, total: float | None, unit: str) -> str:
        return f"{done:.0f}/{total:.0f} {unit}".rstrip() if total else f"{done:.0f} {unit}".rstrip()

    def __call__(self, n: float = 1) -> None:
        if self.progress is not None:
            self.done += n
            self.progress.update(
                self.run, completed=self.done, count=self._count(self.done, self.total, self.unit)
            )

    def stage(
        self, what: str, done: int | None = None, total: int | None = None, unit: str = "tokens"
    ) -> None:
        """What the run does now: `what` (e.g. 'talk.wav: decoding 1 chunk'), `done` of `total` `unit`
        when it can be counted (a bar that pulses when not)."""
        if self.progress is None:
            return
        count = self._count(done or 0, total, unit) if done is not None or total else ""
        if what == self.shown:
            self.progress.update(self.step, completed=done or 0, count=count)
            return
        if self.step is not None:  # a new step: a new row (a bar with no total pulses)
            self.progress.remove_task(self.step)
        self.step = self.progress.add_task(what, total=total, completed=done or 0, count=count)
        self.shown = what
        self.progress.refresh()  # drawn at once, even when it is over before the next refresh

    def write(self, text: str) -> None:
        """Results on stdout: on a terminal the bars are taken down while they are written."""
        live = self.progress is not None and sys.stdout.isatty()
        if live:
            self.progress.stop()
        sys.stdout.write(text)
        sys.stdout.flush()
        if live:
            self.progress.start()

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
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

    def step(self, info: StepInfo | CTCStepInfo) -> None:
        if self.quiet:
            return
        if isinstance(info, CTCStepInfo):  # CTC pre-alignment of the projectors
            if self.verbose or info.step % 50 == 0:
                where = f"ctc pre-alignment ({info.modality}) step {info.step} epoch {info.epoch}"
                stderr.print(f"{where} loss {info.loss:.3f}")
            return
        if self.started is None:
            self.started = (time.monotonic(), info.step - 1)
        text = f"step {info.step}/{info.total} epoch {info.epoch} loss {info.loss:.3f}"
        if info.val is not None and "wer" in info.val:
            per_mode = info.val.get("modes", {})
            wers = ", ".join(f"{m} {v['wer']:.1%}" for m, v in per_mode.items()) or f"{info.val['wer']:.1%}"
            stderr.print(f"validation at step {info.step}: WER {wers}")
        if self.live:
            if self.progress is None:
                self.progress = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TimeRemainingColumn(),
                    console=stderr,
                    redirect_stdout=False,  # stdout stays stdout (rich would print it on stderr, re-wrapped)
                )
                self.progress.start()
                self.task = self.progress.add_task(text, total=info.total)
            self.progress.update(self.task, completed=info.step, description=text)
        elif self.verbose or info.step % max(1, info.total // 20) == 0 or info.step == info.total:
            stderr.print(text + self._eta(info))

    def _eta(self, info: StepInfo) -> str:
        """', ETA 12:34' from the pace of the steps run so far in this process."""
        t0, s0 = self.started
        done = info.step - s0
        if done <= 0 or info.step >= info.total:
            return ""
        left = (time.monotonic() - t0) / done * (info.total - info.step)
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
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=stderr,
                transient=True,
                redirect_stdout=False,  # stdout stays stdout (rich would print it on stderr, re-wrapped)
            )

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self.progress

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
