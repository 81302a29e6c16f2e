"""The report page's plots: matplotlib figures saved as SVG, inlined in the page.

Each plotted value is an SVG group with an id and a <title> (the browser shows it on hover), and a text
label beside it, so numbers can be read without hovering. The SVG is deterministic: a fixed hash salt per
figure (ids do not collide between the figures of one page), no date, text as <text> elements.
"""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

# matplotlib is slow to import, but only the report imports this module and every page has plots
import matplotlib
from matplotlib.figure import Figure

SVG_NS = "http://www.w3.org/2000/svg"
# Okabe-Ito colours (told apart with colour blindness); the page's CSS marks S/D/I with the same three.
ERROR_COLOURS = {"S": "#e69f00", "D": "#d55e00", "I": "#0072b2"}
ERROR_NAMES = {"S": "substitutions", "D": "deletions", "I": "insertions"}
_REFERENCE = re.compile(r"(?:href=\"#|url\(#)([^\")]+)")


@dataclass(frozen=True)
class Point:
    """One plotted value. x: an SNR key ("clean", "5") or an occlusion level (0: none); gid: its SVG id,
    title: its hover text; anchor: a reference point repeated from another plot (drawn hollow)."""

    x: str | int
    wer: float  # percent
    gid: str
    title: str
    anchor: bool = False


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Bar:
    """One condition's word errors as percentages of its reference words (they add up to its WER)."""

    label: str
    gid: str
    counts: dict  # S, D, I -> count
    words: int


def _figure(width: float, height: float):
    # Figure() draws with the Agg/SVG backends, never a GUI, and keeps no pyplot state.
    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig, salt: str, titles: dict[str, str]) -> str:
    """The figure as an inline <svg> element (no XML prolog), a <title> added to each id in `titles`."""
    buf = io.StringIO()
    rc = {"svg.hashsalt": f"avsr-{salt}", "svg.fonttype": "none", "svg.id": f"svg-{salt}"}
    with matplotlib.rc_context(rc):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    root = ET.fromstring(buf.getvalue())
    # matplotlib names every group (figure_1, line2d_3, ...): the same names in each figure of a page. Only
    # the ids something points to (salted marker and clip path ids) and the plotted values' ids are kept.
    used = set(_REFERENCE.findall(buf.getvalue())) | set(titles) | {root.get("id")}
    for element in root.iter():
        gid = element.get("id")
        if gid in titles:
            title = ET.Element(f"{{{SVG_NS}}}title")
            title.text = titles[gid]
            element.insert(0, title)
        elif gid is not None and gid not in used:
            del element.attrib["id"]
    root.set("role", "img")
    root.set("style", "max-width:100%;height:auto")
    return ET.tostring(root, encoding="unicode")


def _finish_axes(ax, top: float) -> None:
    ax.set_ylabel("WER (%)")
    ax.set_ylim(0, max(top * 1.18, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _plot_series(ax, series: list[Series], xs: dict) -> float:
    """Lines through each series' non-anchor points in x order, a labelled marker per point; the top."""
    top = 0.0
    for k, s in enumerate(series):
        colour = f"C{k % 10}"
        finite = [p for p in s.points if math.isfinite(p.wer)]
        line = sorted((xs[p.x], p.wer) for p in finite if p.x != "clean")
        if line:
            ax.plot([x for x, _ in line], [y for _, y in line], color=colour, lw=1.6, label=s.label)
        for p in finite:
            x = xs[p.x]
            face = "white" if p.anchor else colour
            marker = "D" if p.x == "clean" else "o"
            label = None if line or p is not finite[0] else s.label
            ax.plot([x], [p.wer], marker, color=colour, mfc=face, ms=6.5, gid=p.gid, label=label)
            ax.annotate(
                f"{p.wer:.1f}",
                (x, p.wer),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=7.5,
                color=colour,
            )
            top = max(top, p.wer)
    return top


def _legend(ax, series: list[Series]) -> None:
    if len(series) > 1 or series and series[0].label:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def wer_vs_snr(series: list[Series], salt: str = "snr") -> str:
    """WER against SNR, one line per series; clean is its own point right of the noisy ones."""
    snrs = sorted({float(p.x) for s in series for p in s.points if p.x != "clean"})
    span = snrs[-1] - snrs[0] if len(snrs) > 1 else 10.0
    clean_x = snrs[-1] + max(0.3 * span, 4.0) if snrs else 0.0
    xs: dict = {f"{v:g}": v for v in snrs} | {"clean": clean_x}
    fig = _figure(7.2, 3.6)
    ax = fig.add_subplot()
    top = _plot_series(ax, series, xs)
    has_clean = any(p.x == "clean" for s in series for p in s.points)
    ticks = snrs + ([clean_x] if has_clean else [])
    ax.set_xticks(ticks, [f"{v:g}" for v in snrs] + (["clean"] if has_clean else []))
    if snrs and has_clean:
        ax.axvline((snrs[-1] + clean_x) / 2, color="0.75", ls=":", lw=1)
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] - 1, ticks[0] + 1)
    ax.set_xlabel("SNR (dB)")
    _finish_axes(ax, top)
    _legend(ax, series)
    return _svg(fig, salt, {p.gid: p.title for s in series for p in s.points})


def wer_vs_level(kind: str, series: list[Series], salt: str) -> str:
    """WER against occlusion level (0: none) for one occlusion kind, one line per series."""
    levels = sorted({int(p.x) for s in series for p in s.points})
    fig = _figure(7.2, 3.4)
    ax = fig.add_subplot()
    top = _plot_series(ax, series, {level: level for level in levels})
    ax.set_xticks(levels, ["none" if v == 0 else str(v) for v in levels])
    ax.set_xlabel(f"{kind} level")
    _finish_axes(ax, top)
    _legend(ax, series)
    return _svg(fig, salt, {p.gid: p.title for s in series for p in s.points})


def error_makeup(bars: list[Bar], salt: str = "errors") -> str:
    """One stacked horizontal bar per condition: substitutions, deletions, insertions (% of its words)."""
    fig = _figure(7.2, 0.9 + 0.34 * len(bars))
    ax = fig.add_subplot()
    ys = list(range(len(bars)))[::-1]
    left = [0.0] * len(bars)
    titles = {}
    for op in "SDI":
        values = [100 * b.counts[op] / b.words if b.words else 0.0 for b in bars]
        patches = ax.barh(ys, values, left=left, color=ERROR_COLOURS[op], height=0.62, label=ERROR_NAMES[op])
        for b, patch, value in zip(bars, patches, values, strict=True):
            gid = f"{b.gid}-{op}"
            patch.set_gid(gid)
            titles[gid] = f"{b.label}: {ERROR_NAMES[op]} {b.counts[op]} ({value:.1f} % of {b.words} words)"
        left = [a + v for a, v in zip(left, values, strict=True)]
    for y, b, total in zip(ys, bars, left, strict=True):
        counts = "  ".join(f"{op} {b.counts[op]}" for op in "SDI")
        ax.annotate(
            f"{total:.1f} %  ({counts})",
            (total, y),
            textcoords="offset points",
            xytext=(4, 0),
            va="center",
            fontsize=7.5,
        )
    ax.set_yticks(ys, [b.label for b in bars], fontsize=8)
    ax.set_xlim(0, max(max(left, default=0) * 1.35, 1.0))
    ax.set_xlabel("word errors (% of reference words)")
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3)
    return _svg(fig, salt, titles)
