"""The report page of an evaluation run: `write_page` (report.html in a report folder) and
`write_comparison` (one page for several runs on shared axes)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..storage import atomic_write_text
from .report_data import (
    PAGE,
    PageOptions,
    audio_sources,
    check_comparable,
    load_run,
    prepare,
    worst_clips,
)
from .report_html import comparison_page, run_page

__all__ = ["PageOptions", "write_comparison", "write_page"]


def write_page(folder: str | Path, options: PageOptions | None = None) -> Path:
    """(Re)write `folder`/report.html from the folder's summary.json and results.jsonl; its path."""
    options = options or PageOptions()
    run = load_run(folder)
    prepare([run], run.folder)
    worst = worst_clips(run.clips, options.worst)
    html = run_page(run, worst, audio_sources(run, worst, options))
    out = run.folder / PAGE
    atomic_write_text(out, html)
    return out


def write_comparison(folders: list[str | Path], out: str | Path, options: PageOptions | None = None) -> Path:
    """One page at `out` (an .html file) for several report folders on shared axes; one folder: its own
    page written there. UsageError when the runs cannot be compared (see check_comparable)."""
    options = options or PageOptions()
    runs = [load_run(f) for f in folders]
    if len(runs) > 1:
        check_comparable(runs)
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: a folder; give the page's file name (e.g. {out / 'compare.html'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    prepare(runs, out.parent)
    if len(runs) == 1:
        worst = worst_clips(runs[0].clips, options.worst)
        html = run_page(runs[0], worst, audio_sources(runs[0], worst, options))
    else:
        html = comparison_page(runs)
    atomic_write_text(out, html)
    return out
