"""The report page's HTML: the run, the table of conditions, plots, the worst clips, every clip.

Everything the page needs is inline (report.css, report.js, the SVG plots, the clips as JSON); texts from
outside (references, hypotheses, paths, error messages) are escaped.
"""

from __future__ import annotations

import json
import math
from html import escape
from importlib.resources import files
from pathlib import Path

from ..version import __version__
from .report_data import Clip, Run, condition_key, condition_label, finite
from .report_plots import Bar, Point, Series, error_makeup, wer_vs_level, wer_vs_snr


def _asset(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def _document(title: str, body: str, data: dict | None = None) -> str:
    script = ""
    if data is not None:  # "<" escaped: nothing in the data can close the <script> element
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
        script = f'<script type="application/json" id="clip-data">{text}</script>\n'
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="avsr {escape(__version__)}">\n'
        '<link rel="icon" href="data:,">\n'  # no favicon request (none exists)
        f"<title>{escape(title)}</title>\n<style>\n{_asset('report.css')}</style>\n</head>\n<body>\n"
        f"{body}\n{script}<script>\n{_asset('report.js')}</script>\n</body>\n</html>\n"
    )


def _pct(value, digits: int = 2) -> str:
    value = finite(value)
    return "∞" if math.isinf(value) else f"{100 * value:.{digits}f}"


def _table(head: list[str], rows: list[list[str]], cls: str = "", numeric_from: int = 1) -> str:
    """A table of escaped head cells and ready HTML cells; columns from `numeric_from` right-aligned."""

    def cells(tag: str, row: list[str]) -> str:
        return "".join(
            f"<{tag}{' class=num' if k >= numeric_from else ''}>{cell}</{tag}>" for k, cell in enumerate(row)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    head_row = cells("th", [escape(h) for h in head])
    return f'<table class="{cls}"><thead><tr>{head_row}</tr></thead><tbody>{body}</tbody></table>'


# -- the run ---------------------------------------------------------------------------------------------
def _decoding(options: dict) -> str:
    d = (options.get("transcribe") or {}).get("decoding") or {}
    beams = d.get("num_beams")
    parts = [
        d.get("strategy", "beam"),
        f"{beams} beams" if beams else "the model's beams",
        f"at most {d['max_new_tokens']} new tokens" if d.get("max_new_tokens") else "the model's token limit",
        f"length penalty {d.get('length_penalty', 1.0):g}",
    ]
    guard = d.get("no_repeat_ngram_size")
    if guard is not None:
        parts.append(f"no repeated {guard}-grams" if guard else "no repeat guard")
    return ", ".join(parts)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _run_facts(run: Run) -> list[tuple[str, str]]:
    """(name, HTML) rows describing a run."""
    s, o, info, paths = run.summary, run.summary["options"], run.info, run.paths
    ids = {r["id"] for r in run.rows}
    failed = sum(c.get("failed", 0) for c in run.conditions)
    rates = [f"{m} {info[k]}" for m, k in (("audio", "audio_rate"), ("video", "video_rate")) if info.get(k)]
    noise = o.get("noise", "babble")
    noise = noise if noise in ("white", "babble") else paths.rel(noise)
    snrs = ", ".join(str(v) for v in o.get("snrs", []))
    occlusion = o.get("occlusion")
    levels = ", ".join(map(str, o.get("levels", [])))
    seconds = float(s.get("seconds") or 0)
    limit = f" (the first {o['limit']})" if o.get("limit") else ""
    facts = [
        ("Model", escape(info.get("model", "not recorded"))),
        ("Compression rates", escape(", ".join(rates) or "not recorded")),
        ("Modes", escape(", ".join(o.get("modes", [])))),
        ("Dataset", f"<code>{escape(paths.rel(s['dataset']))}</code> ({escape(s.get('kind', ''))})"),
        (
            "Clips",
            escape(
                f"{_count(len(ids), 'clip')}{limit}; {_count(len(run.rows), 'result')} in "
                f"{_count(len(run.conditions), 'condition')}, {failed} failed; "
                f"{_count(len(s.get('skipped', [])), 'dataset entry', 'dataset entries')} skipped"
            ),
        ),
        ("Normaliser", f"<b>{escape(s['normalizer'])}</b>: {escape(s.get('normalizer_description', ''))}"),
        ("Noise", escape(f"{noise}, seed {o.get('seed', 0)}; SNR {snrs} dB")),
        ("Occlusion", escape(f"{occlusion}, levels {levels}" if occlusion else "none")),
        ("Decoding", escape(_decoding(o))),
        ("Finished", escape(f"{info.get('finished') or 'not recorded'} (took {seconds:.0f} s)")),
        ("avsr version", escape(info.get("avsr", "not recorded"))),
    ]
    return facts


def _run_section(run: Run) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in _run_facts(run))
    return f'<section id="run"><h2>Run</h2><table class="facts">{rows}</table>{_problems(run)}</section>'


def _problems(run: Run, limit: int = 200) -> str:
    """Dataset entries skipped and clips that failed, each with its reason."""
    paths, out = run.paths, []
    skipped = run.summary.get("skipped", [])
    if skipped:
        items = "".join(
            f"<li><code>{escape(_shown_path(run, s['path']))}</code>: {escape(paths.scrub(s['reason']))}</li>"
            for s in skipped[:limit]
        )
        more = f"<li>… {len(skipped) - limit} more (summary.json)</li>" if len(skipped) > limit else ""
        out.append(
            f'<details id="skipped"><summary>{len(skipped)} skipped</summary><ul>{items}{more}</ul></details>'
        )
    failed = [c for c in run.clips if c.wer is None]
    if failed:
        items = "".join(
            f"<li><b>{escape(c.id)}</b> ({escape(condition_label(run.conditions[c.condition]))}): "
            f"{escape(paths.scrub(c.error or '', c.media))}</li>"
            for c in failed[:limit]
        )
        more = f"<li>… {len(failed) - limit} more (summary.json)</li>" if len(failed) > limit else ""
        out.append(
            f'<details id="failures"><summary>{len(failed)} failed</summary><ul>{items}{more}</ul></details>'
        )
    return "".join(out)


def _shown_path(run: Run, path: str) -> str:
    """A skipped entry's path relative to the page (`manifest.csv:3` kept as a line reference)."""
    name, _, line = path.rpartition(":")
    if line.isdigit() and name:
        return f"{run.paths.rel(name)}:{line}"
    return run.paths.rel(path)


def _conditions_table(run: Run) -> str:
    """The table `avsr evaluate` prints."""
    video = any(c.get("occlusion", "none") != "none" for c in run.conditions)
    head = ["mode", "SNR dB", *(["occlusion"] if video else []), "clips", "failed", "WER %", "CER %"]
    head += ["S", "D", "I", "words", "SER %"]
    rows = []
    for c in run.conditions:
        sc = c["scores"]
        rows.append(
            [
                escape(c["mode"]),
                escape(c["snr"]),
                *([escape(c.get("occlusion", "none"))] if video else []),
                str(c["clips"]),
                str(c["failed"]),
                _pct(sc["wer"]),
                _pct(sc["cer"]),
                str(sc["substitutions"]),
                str(sc["deletions"]),
                str(sc["insertions"]),
                str(sc["ref_words"]),
                _pct(sc["ser"], 1),
            ]
        )
    table = _table(head, rows, "conditions", numeric_from=3 if video else 1)
    return f'<section id="conditions"><h2>Conditions</h2>{table}</section>'


# -- plots -----------------------------------------------------------------------------------------------
def _title(prefix: str, c: dict) -> str:
    sc = c["scores"]
    return (
        f"{prefix}{condition_label(c)}: WER {_pct(sc['wer'])} % "
        f"(S {sc['substitutions']}, D {sc['deletions']}, "
        f"I {sc['insertions']} / {sc['ref_words']} words; {c['clips']} clips)"
    )


def _plot_section(runs: list[Run]) -> str:
    """WER against SNR (clean apart), and against occlusion level per kind; one line per mode (and run)."""
    many = len(runs) > 1
    snr_series, kinds = [], {}
    for r, run in enumerate(runs):
        prefix = f"{run.label} · " if many else ""
        modes = list(dict.fromkeys(c["mode"] for c in run.conditions))
        for mode in modes:
            points = tuple(
                Point(c["snr"], 100 * finite(c["scores"]["wer"]), f"pt-{r}-{i}", _title(prefix, c))
                for i, c in enumerate(run.conditions)
                if c["mode"] == mode and c.get("occlusion", "none") == "none"
            )
            if points:
                snr_series.append(Series(prefix + mode, points))
        index = {condition_key(c): i for i, c in enumerate(run.conditions)}
        for i, c in enumerate(run.conditions):
            kind, _, level = c.get("occlusion", "none").rpartition(":")
            if not kind:
                continue
            key = (prefix + f"{c['mode']} · {'clean' if c['snr'] == 'clean' else c['snr'] + ' dB'}", r)
            points = kinds.setdefault(kind, {}).setdefault(key, [])
            base = index.get((c["mode"], c["snr"], "none"))
            if not points and base is not None:
                bc = run.conditions[base]
                wer = 100 * finite(bc["scores"]["wer"])
                points.append(Point(0, wer, f"anchor-{r}-{base}", _title(prefix, bc), anchor=True))
            points.append(
                Point(int(level), 100 * finite(c["scores"]["wer"]), f"pt-{r}-{i}", _title(prefix, c))
            )
    figures = []
    if snr_series:
        svg = wer_vs_snr(snr_series)
        figures.append(
            _figure(
                "plot-snr", svg, "WER against SNR; clean apart on the right. Hover a point for its counts."
            )
        )
    for k, (kind, series) in enumerate(sorted(kinds.items())):
        svg = wer_vs_level(kind, [Series(label, tuple(p)) for (label, _), p in series.items()], f"level-{k}")
        caption = f"WER against {kind} level; level none (hollow) is the same condition without occlusion."
        figures.append(_figure(f"plot-occlusion-{k}", svg, caption))
    return f'<section id="plots"><h2>WER by condition</h2>{"".join(figures)}</section>'


def _figure(fid: str, svg: str, caption: str) -> str:
    return f'<figure id="{fid}" class="plot">{svg}<figcaption>{escape(caption)}</figcaption></figure>'


def _errors_section(runs: list[Run]) -> str:
    """Substitutions, deletions and insertions per condition (per run, conditions side by side)."""
    many = len(runs) > 1
    order = list(dict.fromkeys(condition_key(c) for run in runs for c in run.conditions))
    bars = []
    for key in order:
        for r, run in enumerate(runs):
            for i, c in enumerate(run.conditions):
                if condition_key(c) == key:
                    sc = c["scores"]
                    counts = {"S": sc["substitutions"], "D": sc["deletions"], "I": sc["insertions"]}
                    label = (f"{run.label} · " if many else "") + condition_label(c)
                    bars.append(Bar(label, f"err-{r}-{i}", counts, sc["ref_words"]))
    svg = error_makeup(bars)
    caption = "Word errors by kind, as percentages of the reference words (the bar is the WER)."
    return f'<section id="errors"><h2>Error make-up</h2>{_figure("plot-errors", svg, caption)}</section>'


# -- clips -----------------------------------------------------------------------------------------------
def aligned(ref: str, hyp: str, ops: str) -> str:
    """REF over HYP, one column per aligned word, S/D/I marked (classes S, D, I; C for correct)."""
    refs, hyps, cols = iter(ref.split()), iter(hyp.split()), []
    for op in ops:
        r = next(refs) if op in "CSD" else ""
        h = next(hyps) if op in "CSI" else ""
        mark = "" if op == "C" else f"<i>{op}</i>"
        cols.append(
            f'<span class="w {op}"><span>{escape(r) or "&nbsp;"}</span>'
            f"<span>{escape(h) or '&nbsp;'}</span>{mark}</span>"
        )
    return (
        f'<div class="align"><span class="w lab"><span>REF</span><span>HYP</span></span>{"".join(cols)}</div>'
    )


def _wer_attr(clip: Clip) -> str:
    return "inf" if clip.wer is not None and math.isinf(clip.wer) else f"{100 * (clip.wer or 0):.4f}"


def _worst_section(run: Run, worst: list[Clip], sources: list[str]) -> str:
    items = []
    for clip, src in zip(worst, sources, strict=True):
        label = condition_label(run.conditions[clip.condition])
        wer = "∞" if math.isinf(clip.wer) else f"{100 * clip.wer:.1f} %"
        counts = f"S {clip.counts['S']} · D {clip.counts['D']} · I {clip.counts['I']} / {clip.words} words"
        note = " (excerpt as heard)" if src.startswith("data:") else ""
        items.append(
            f'<li class="clip" data-wer="{_wer_attr(clip)}" data-id="{escape(clip.id)}" '
            f'data-condition="{escape(label)}">'
            f'<div class="head"><span class="wer">{wer}</span> <b>{escape(clip.id)}</b> '
            f'<span class="cond">{escape(label)}</span> <span class="counts">{counts}</span></div>'
            f"{aligned(clip.ref, clip.hyp, clip.ops)}"
            f'<audio controls preload="none" src="{escape(src)}"></audio>{escape(note)}</li>'
        )
    intro = (
        f"The {len(worst)} clips with the highest WER, all conditions together "
        "(normalised texts, as scored). "
        "Players link the clean media (relative to this page) unless excerpts were embedded."
    )
    listed = "".join(items)
    intro = f"<h2>Worst clips</h2><p>{escape(intro)}</p>"
    return f'<section id="worst">{intro}<ol class="worst">{listed}</ol></section>'


def _clip_data(run: Run) -> dict:
    """Every clip as compact JSON for report.js: conditions, clips (id, reference, media link), rows."""
    ids = sorted({c.id for c in run.clips})
    number = {i: k for k, i in enumerate(ids)}
    first = {}
    for c in run.clips:
        first.setdefault(c.id, c)
    rows = []
    for c in run.clips:
        wer = None if c.wer is None else "inf" if math.isinf(c.wer) else round(100 * c.wer, 2)
        rows.append(
            [
                c.condition,
                number[c.id],
                wer,
                c.counts["S"],
                c.counts["D"],
                c.counts["I"],
                c.words,
                c.hyp,
                c.ops,
                c.error and run.paths.scrub(c.error, c.media),
            ]
        )
    clips = [[i, first[i].ref, run.paths.href(first[i].media)] for i in ids]
    return {"conditions": [condition_label(c) for c in run.conditions], "clips": clips, "rows": rows}


def _clips_section(run: Run) -> str:
    options = "".join(
        f'<option value="{k}">{escape(condition_label(c))}</option>' for k, c in enumerate(run.conditions)
    )
    head = "".join(
        f'<th data-key="{key}"{" class=num" if num else ""}>{escape(name)}</th>'
        for key, name, num in (
            ("condition", "condition", False),
            ("id", "clip", False),
            ("wer", "WER %", True),
            ("S", "S", True),
            ("D", "D", True),
            ("I", "I", True),
            ("words", "words", True),
            ("hyp", "hypothesis (normalised)", False),
        )
    )
    return (
        '<section id="clips"><h2>Every clip</h2>'
        '<div class="controls"><label>Condition <select id="clip-filter"><option value="">all</option>'
        f"{options}</select></label> "
        '<label>Clip <input id="clip-search" type="search" placeholder="id contains"></label> '
        '<span id="clip-count"></span></div>'
        "<p>Click a column to sort (again: the other way); click a row for its alignment and player.</p>"
        f'<table id="clip-table"><thead><tr>{head}</tr></thead><tbody></tbody></table></section>'
    )


# -- pages -----------------------------------------------------------------------------------------------
def _nav(sections: list[tuple[str, str]]) -> str:
    return "<nav>" + " ".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name in sections) + "</nav>"


def _footer() -> str:
    return (
        f"<footer>Made by avsr {escape(__version__)} from summary.json and results.jsonl; "
        "<code>avsr evaluate-report</code> makes it again.</footer>"
    )


def run_page(run: Run, worst: list[Clip], sources: list[str]) -> str:
    """The page of one run."""
    model = run.info.get("model", "a model")
    dataset = Path(run.summary["dataset"]).name
    title = f"avsr evaluation: {model} on {dataset}"
    nav = _nav(
        [
            ("run", "Run"),
            ("conditions", "Conditions"),
            ("plots", "WER plots"),
            ("errors", "Error make-up"),
            ("worst", "Worst clips"),
            ("clips", "Every clip"),
        ]
    )
    body = (
        f"<header><h1>{escape(title)}</h1>{nav}</header><main>"
        + _run_section(run)
        + _conditions_table(run)
        + _plot_section([run])
        + _errors_section([run])
        + _worst_section(run, worst, sources)
        + _clips_section(run)
        + "</main>"
        + _footer()
    )
    return _document(title, body, _clip_data(run))


def _runs_table(runs: list[Run]) -> str:
    """One column per run; rows whose values differ between runs are marked."""
    facts = [dict(_run_facts(run)) for run in runs]
    pages = [run.paths.href(str(run.folder.resolve() / "report.html")) for run in runs]
    links = [
        f'<a href="{escape(page)}">{escape(run.label)}</a>' for page, run in zip(pages, runs, strict=True)
    ]
    rows = [f"<tr><th>Run</th>{''.join(f'<td>{link}</td>' for link in links)}</tr>"]
    for name in facts[0]:
        values = [f.get(name, "") for f in facts]
        differs = name not in ("Finished",) and len(set(values)) > 1
        cells = "".join(f"<td>{v}</td>" for v in values)
        rows.append(f"<tr{' class=differs' if differs else ''}><th>{escape(name)}</th>{cells}</tr>")
    return f'<table class="facts runs">{"".join(rows)}</table>'


def _comparison_table(runs: list[Run]) -> str:
    """WER per condition, a column per run, and each run's difference from the first (points)."""
    order = list(dict.fromkeys(condition_key(c) for run in runs for c in run.conditions))
    by_run = [{condition_key(c): c for c in run.conditions} for run in runs]
    head = ["condition", *(f"{run.label} WER %" for run in runs), *(f"{run.label} Δ" for run in runs[1:])]
    rows = []
    for key in order:
        cells = [by.get(key) for by in by_run]
        label = condition_label(next(c for c in cells if c is not None))
        wers = [None if c is None else 100 * finite(c["scores"]["wer"]) for c in cells]
        shown = ["–" if w is None else ("∞" if math.isinf(w) else f"{w:.2f}") for w in wers]
        deltas = [
            "–"
            if w is None or wers[0] is None or math.isinf(w) or math.isinf(wers[0])
            else f"{w - wers[0]:+.2f}"
            for w in wers[1:]
        ]
        rows.append([escape(label), *shown, *deltas])
    return _table(head, rows, "conditions")


def comparison_page(runs: list[Run]) -> str:
    """One page for several runs of the same clips: facts side by side, WER per condition, shared plots."""
    dataset = Path(runs[0].summary["dataset"]).name
    title = f"avsr evaluation: {len(runs)} runs on {dataset}"
    nav = _nav(
        [("run", "Runs"), ("conditions", "Conditions"), ("plots", "WER plots"), ("errors", "Error make-up")]
    )
    problems = "".join(f"<h3>{escape(run.label)}</h3>{_problems(run)}" for run in runs if _problems(run))
    body = (
        f"<header><h1>{escape(title)}</h1>{nav}</header><main>"
        f'<section id="run"><h2>Runs</h2>{_runs_table(runs)}{problems}</section>'
        f'<section id="conditions"><h2>Conditions</h2>{_comparison_table(runs)}</section>'
        + _plot_section(runs)
        + _errors_section(runs)
        + "</main>"
        + _footer()
    )
    return _document(title, body)
