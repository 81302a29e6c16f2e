"""Man pages (scripts/gen_man.py): one per command, up to date in man/, valid roff."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from avsr_cli import __version__
from avsr_cli.cli import app
from scripts import gen_man

ROOT = Path(__file__).resolve().parents[1]
MAN_DIR = ROOT / "man"
HAS_MAN = shutil.which("man") is not None and shutil.which("groff") is not None
needs_man = pytest.mark.skipif(
    not HAS_MAN, reason="man/groff not installed (apt-get install -y man-db groff-base)"
)


def command_pages(cmd, prefix: str = "avsr") -> set[str]:
    """Page names expected from the live command tree, walked independently of the generator."""
    pages = {prefix + ".1"}
    for name, sub in getattr(cmd, "commands", {}).items():
        if not sub.hidden:
            pages |= command_pages(sub, f"{prefix}-{name}")
    return pages


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.gen_man", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def man_render(page: Path) -> subprocess.CompletedProcess[str]:
    """`man` with the warnings on; stdout is plain text (formatting stripped, hyphenation undone)."""
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", str(page)],
        capture_output=True,
        text=True,
        env=env,
    )
    text = re.sub(r".\x08", "", proc.stdout)  # overstrike bold/underline
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # SGR bold/underline
    text = re.sub(r"\u2010\n\s*", "", text).replace("\u2212", "-")  # hyphenated words, minus signs
    return subprocess.CompletedProcess(proc.args, proc.returncode, text, proc.stderr)


def test_one_page_per_command():
    expected = command_pages(typer.main.get_command(app))
    assert {"avsr.1", "avsr-transcribe.1", "avsr-import-checkpoint.1"} <= expected
    assert set(gen_man.render_pages()) == expected
    assert {p.name for p in MAN_DIR.glob("avsr*.1")} == expected, "run: python -m scripts.gen_man"


@pytest.mark.parametrize("columns", ["20", "300"])
def test_check_passes_on_committed_pages_whatever_the_terminal(columns):
    proc = run_script("--check", COLUMNS=columns, TERM="xterm-256color", FORCE_COLOR="1")
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


@pytest.mark.parametrize("damage", ["stale", "missing", "extra"])
def test_check_fails_on_outdated_copy_and_regeneration_fixes_it(tmp_path, damage):
    out = tmp_path / "man"
    shutil.copytree(MAN_DIR, out)
    page = out / "avsr-transcribe.1"
    if damage == "stale":
        page.write_text(page.read_text().replace("Seed for", "Random seed for"))
    elif damage == "missing":
        page.unlink()
    else:
        page = out / "avsr-removed-command.1"
        page.write_text(".TH AVSR\\-REMOVED\\-COMMAND 1\n")
    proc = run_script("--check", "--out-dir", str(out))
    assert proc.returncode == 1
    assert f"{damage}: {page}" in proc.stderr
    assert run_script("--out-dir", str(out)).returncode == 0
    assert run_script("--check", "--out-dir", str(out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in MAN_DIR.glob("avsr*.1"))


def test_top_page_lists_commands_exit_status_and_environment():
    text = (MAN_DIR / "avsr.1").read_text()
    for name in typer.main.get_command(app).commands:
        assert f"\\fB{name}\\fR".replace("-", "\\-") in text
        assert f"\\fBavsr-{name}\\fR(1)".replace("-", "\\-") in text
    for section in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "SEE ALSO",
    ):
        assert f"\n.SH {section}\n" in text
    for var in ("AVSR_CHECKPOINT", "AVSR_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        assert f"\\fB{var}\\fR" in text
    assert f'"avsr {__version__}"' in text.splitlines()[1]  # .TH: the version, no date


@needs_man
@pytest.mark.parametrize("name", sorted(p.name for p in MAN_DIR.glob("avsr*.1")))
def test_page_renders_without_warnings(name):
    proc = man_render(MAN_DIR / name)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "NAME" in proc.stdout and "SYNOPSIS" in proc.stdout


@needs_man
def test_transcribe_page_mentions_every_long_option():
    cmd = typer.main.get_command(app).commands["transcribe"]
    long_opts = [o for p in cmd.params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")]
    assert "--output-format" in long_opts and "--checkpoint" in long_opts
    text = man_render(MAN_DIR / "avsr-transcribe.1").stdout
    for opt in [*long_opts, "--help"]:
        assert re.search(rf"{re.escape(opt)}(?![\w-])", text), opt
    assert "AVSR_CHECKPOINT" in text and "asr, vsr, avsr" in text


def test_roff_escaping(tmp_path):
    nasty = typer.Typer(name="avsr", add_completion=False)

    @nasty.callback()
    def main() -> None:
        """Top."""

    @nasty.command("do-it")
    def do_it(
        name: str = typer.Option("a\\b", "--the-name", help=".starts with a dot\n\n'starts with a quote"),
    ) -> None:
        """Summary with a back\\slash and -x.

        .TH not a macro; \\fB not a font; C:\\temp
        \f
        Hidden from help.
        """

    pages = gen_man.render_pages(nasty)
    page = pages["avsr-do-it.1"]
    macros = {".TH", ".SH", ".TP", ".PP", ".IP", ".br", ".B", ".nf", ".fi", '.\\"'}
    assert all(line.split(" ")[0] in macros for line in page.splitlines() if line.startswith((".", "'")))
    assert set(re.findall(r"\\(.)", page)) <= set('f-e&"')  # only \fB \fI \fR \- \e \& and .\" comments
    assert "Hidden" not in page and "\\fB\\-\\-the\\-name\\fR" in page
    if HAS_MAN:
        path = tmp_path / "avsr-do-it.1"
        path.write_text(page)
        proc = man_render(path)
        assert proc.stderr == "", proc.stderr
        for literal in (
            ".TH not a macro; \\fB not a font; C:\\temp",
            ".starts with a dot",
            "'starts with a quote",
            "back\\slash and -x",
            "--the-name",
            "a\\b",
        ):
            assert literal in " ".join(proc.stdout.split()), literal


def test_every_page_has_examples_and_environment_and_word_placeholders():
    render_pages = gen_man.render_pages
    for name, text in render_pages().items():
        assert "\n.SH EXAMPLES\n" in text and "\n.SH ENVIRONMENT\n" in text, name
        for var in (
            "AVSR_CHECKPOINT",
            "AVSR_CACHE",
            "AVSR_HOME",
            "AVSR_MEAN_FACE",
            "AVSR_THREADS",
            "HF_TOKEN",
        ):
            assert f"\\fB{var}\\fR" in text, (name, var)
        for python_type in ("<bool>", "list[", "{", "type: "):
            assert python_type not in text, (name, python_type)
    examples = render_pages()["avsr-transcribe.1"].split("\n.SH EXAMPLES\n")[1].split("\n.SH ")[0]
    assert "avsr transcribe talk.mp3" in examples.replace("\\-", "-")
