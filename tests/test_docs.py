"""The documentation: a README a newcomer reads in five minutes, links that resolve, commands that parse, and
text that speaks of the software and its users, never of how it was made."""

from __future__ import annotations

import ast
import io
import os
import re
import shlex
import subprocess
import sys
import tokenize
from functools import cache
from pathlib import Path

import pytest

from avsr_cli.cli.app import whisper_spelling

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, ROOT / "CHANGELOG.md", *DOCS, ROOT / "models" / "README.md"]
README_MAX_LINES = 250

# Pages that other parts of the project write; a link to one is checked once the page exists.

FENCE = re.compile(r"^(```|~~~)(\w*)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_blocks(markdown: str, langs: tuple[str, ...]) -> list[str]:
    return [m.group(3) for m in FENCE.finditer(markdown) if m.group(2) in langs]


def prose(markdown: str) -> str:
    """The text outside fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", markdown))


# ---------------------------------------------------------------------------------------------- the README


def test_readme_is_short():
    lines = text(README).count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"
    )


def test_readme_links_every_docs_page():
    linked = {(README.parent / target).resolve() for _, target, _ in links(README)}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


# ---------------------------------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in FENCE.sub("", text(path)).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings: x, x-1, x-2
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links(page: Path) -> list[tuple[str, str, str]]:
    """(link text, path, anchor) of every relative link in `page`'s prose."""
    out = []
    for label, target in re.findall(r"\[([^\]]*)\]\(([^)\s]+)\)", prose(text(page))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        out.append((label, path, anchor))
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for label, path, anchor in links(page):
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"[{label}]({path}): no such file")
            continue
        if root.resolve() not in target.parents:
            broken.append(f"[{label}]({path}): outside the repository")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"[{label}]({path}#{anchor}): no such heading in {target.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_link_check_catches_missing_files_and_headings(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A page\n\n## The built-in model: `avsr-tiny-en`\n\n## Usage\n## Usage\n"
    )
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#the-built-in-model-avsr-tiny-en) [ok](docs/a.md#usage-1) [ok](#top) [web](https://x.org)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#usage-2) `[in code](docs/c.md)`\n\n# Top\n"
        "```sh\n[not a link](docs/d.md)\n```\n"
    )
    assert broken_links(page, tmp_path) == [
        "[gone](docs/b.md): no such file",
        "[bad anchor](docs/a.md#usage-2): no such heading in a.md",
    ]


# ---------------------------------------------------------------------------------------------- commands


def shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a shell code block, as word lists (here-documents skipped)."""
    commands, heredoc = [], None
    for line in block.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        m = re.search(r"<<-?\s*'?(\w+)'?", line)
        if m:
            heredoc = m.group(1)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in lexer:
            if word in {"|", "||", "&", "&&", ";", "(", ")"}:
                commands.append(command)
                command = []
            else:
                command.append(word)
        commands.append(command)
    return [c for c in commands if c]


def avsr_arguments(words: list[str]) -> list[str] | None:
    """The arguments avsr gets from a command line: `avsr ...`, `VAR=x avsr ...`, or `... -m avsr_cli ...`."""
    i = 0
    while i < len(words) and re.match(r"^[A-Z_][A-Z0-9_]*=", words[i]):
        i += 1
    if i < len(words) and words[i] == "avsr":
        return words[i + 1 :]
    for j in range(len(words) - 1):
        if words[j] == "-m" and words[j + 1] == "avsr_cli":
            return words[j + 2 :]
    return None


@cache
def help_options(command: str) -> frozenset[str] | None:
    """The options `avsr [COMMAND] --help` shows, or None when the command does not exist."""
    args = [command, "--help"] if command else ["--help"]
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "avsr_cli", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return None
    return frozenset(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", r.stdout))


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in [README, *DOCS]:
        for block in code_blocks(text(page), ("sh", "bash", "shell", "console")):
            for words in shell_commands(block):
                args = avsr_arguments(words)
                if args is not None:
                    found.append((f"{page.relative_to(ROOT)}: {shlex.join(words)}", args))
    return found


def check_command(args: list[str]) -> list[str]:
    """What is wrong with `avsr ARGS` as far as --help can tell: an unknown command or option."""
    problems, i = [], 0
    globals_ = help_options("")
    while i < len(args) and args[i].startswith("-"):
        if args[i].split("=")[0] not in globals_:
            problems.append(f"unknown global option {args[i]}")
        i += 1
    if i == len(args):
        return problems
    command = args[i]
    options = help_options(command)
    if options is None:
        return [*problems, f"unknown command {command!r}"]
    for word in args[i + 1 :]:
        if word == "--":
            break
        name = word.split("=")[0]
        if name.startswith("--"):  # as the command line reads it: whisper's spellings too
            name = "--" + whisper_spelling(name[2:])
        if re.match(r"^--[a-zA-Z]|^-[a-zA-Z]$", word) and name not in options:
            problems.append(f"{command} has no option {word.split('=')[0]}")
    return problems


def test_documented_commands_parse():
    commands = documented_commands()
    assert len(commands) > 40 and any("README.md" in where for where, _ in commands)
    wrong = [f"{where}: {p}" for where, args in commands for p in check_command(args)]
    assert not wrong, "\n".join(wrong)


def test_command_check_catches_unknown_commands_and_options():
    assert check_command(["transcribe", "a.wav", "-f", "json", "--skip-existing", "--", "-odd.wav"]) == []
    assert check_command(["--debug", "transcribe", "a.wav"]) == []
    assert check_command(["transcribe", "a.wav", "--no-such-flag"]) == [
        "transcribe has no option --no-such-flag"
    ]
    assert check_command(["transcibe", "a.wav"]) == ["unknown command 'transcibe'"]
    assert check_command(["transcribe", "a.wav", "--output_dir", "o", "--beam_size=2"]) == []
    words = shell_commands(
        "AVSR_CHECKPOINT=x avsr transcribe a.wav | cat; torchrun -m avsr_cli evaluate d \\\n --snr 5"
    )
    assert [avsr_arguments(w) for w in words] == [
        ["transcribe", "a.wav"],
        None,
        ["evaluate", "d", "--snr", "5"],
    ]


# -------------------------------------------------------------------------------------------- Python examples


def module_names(module: str) -> set[str] | None:
    """Top-level names of an avsr_cli module, read from its source (no import: examples load models)."""
    base = ROOT.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not path.exists():
        return None
    tree = ast.parse(text(path))
    names = {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    names.add(t.id)
                if isinstance(t, ast.Name) and t.id == "__all__":
                    names |= set(ast.literal_eval(node.value))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
    return names


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_compile_and_import_real_names(page: Path):
    wrong = []
    for block in code_blocks(text(page), ("python",)):
        tree = ast.parse(block)  # a syntax error fails here
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("avsr_cli"):
                names = module_names(node.module)
                if names is None:
                    wrong.append(f"no module {node.module}")
                else:
                    wrong += [f"{node.module} has no {a.name}" for a in node.names if a.name not in names]
    assert not wrong, f"{page.relative_to(ROOT)}: {wrong}"


# ---------------------------------------------------------------------------------------------- lab notebook


# Words of a lab notebook: how the project was made, not what it does. Each with why it is refused.
EVERYWHERE = [
    (r"\bissue\s+#\d+", "a work ticket; name upstream ones as '<project> GitHub issue N'"),
    (r"\.\./shared\b", "a folder outside the repository"),
    (r"\b(?:previous|fresh|earlier)\s+machine\b", "the history of the machines it was measured on"),
    (r"\bGPU machine\b", "a machine the work ran on"),
    (r"\blent\b|\bborrowed\b", "resources lent to the work"),
    (r"\b(?:measured|reachable|downloaded|fetched offline)\s+here\b", "where the work ran"),
    (r"\bthis machine's\b|\bth(?:is|e same)\s+(?:2|two)-core\b", "the machine the work ran on"),
    (
        r"\b(?:this|that|the same|one|each|next|previous|earlier|later|across|a new|to fit the|to fit one|"
        r"the (?:first|second|third|fourth))\s+sessions?\b",
        "the work's sessions",
    ),
]
# In Markdown, TOML, JSON, man pages and the Makefile, "session" has no legitimate sense at all.
PROSE_ONLY = [(r"\bsessions?\b", "the work's sessions")]
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")


def python_prose(source: str) -> str:
    """The comments and string literals of a Python file: where prose lives in code."""
    parts = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING) or tok.type == getattr(
            tokenize, "FSTRING_MIDDLE", -1
        ):
            parts.append(tok.string)
    return "\n".join(parts)


def lab_words(content: str, prose_file: bool, dates_allowed: bool = False) -> list[str]:
    """Lab-notebook phrases in `content`. A date is allowed as 'measured with `COMMAND` on DATE', or as
    the date of a pinned upstream commit."""
    found = []
    for pattern, why in EVERYWHERE + (PROSE_ONLY if prose_file else []):
        for m in re.finditer(pattern, content, flags=re.I):
            found.append(f"{m.group(0)!r} ({why})")
    if not dates_allowed:
        for m in DATE.finditer(content):
            before = content[max(0, m.start() - 300) : m.start()]
            measured = before.endswith("on ") and "measured with" in before.lower()
            if not measured and "commit" not in before[-40:]:
                found.append(
                    f"{m.group(0)!r} (a date of work; measurements say 'measured with `COMMAND` on DATE')"
                )
    return found


def notebook_sources() -> list[Path]:
    files = [
        ROOT / "Makefile",
        *PAGES,
        *(ROOT / "models").glob("*.toml"),
        *(ROOT / "models").glob("*/*.json"),
    ]
    files += [*(ROOT / "recipes").rglob("*.md"), *(ROOT / "man").glob("*.1")]
    for folder in ("avsr_cli", "tests", "bench", "scripts", "recipes"):
        files += (ROOT / folder).rglob("*.py")
    return sorted({f for f in files if f.exists() and f != Path(__file__).resolve()})


def test_no_lab_notebook_in_docs_comments_and_cards():
    wrong = []
    for path in notebook_sources():
        content = text(path)
        is_python = path.suffix == ".py"
        found = lab_words(
            python_prose(content) if is_python else content,
            prose_file=not is_python,
            dates_allowed=path.name == "CHANGELOG.md",  # release dates
        )
        wrong += [f"{path.relative_to(ROOT)}: {f}" for f in found]
    assert not wrong, "\n".join(wrong)


def test_lab_notebook_patterns_flag_the_notebook_and_pass_the_manual():
    notebook = [
        "The previous machine's run (issue #18) had 9.8 s.",
        "The GPU machine this project is sometimes lent cannot take it over.",
        "Real-video tests use the clip of ../shared/assets when it is there.",
        "10 h on 1 CPU thread, across sessions; to fit the session its horizon was cut.",
        "The 2026-12-02 run, on this machine's CPU.",
        "No published checkpoint could be downloaded here.",
    ]
    for line in notebook:
        assert lab_words(line, prose_file=True), line
    assert lab_words("# half of it in this session\nx = 1\n", prose_file=False)
    manual = [
        "Data-parallel on 4 GPUs of this machine (torchrun --standalone).",
        "Measured with `make bench` on 2026-12-02: 7.2 s.",
        "Checkpoints were replaced once (upstream, Omni-AVSR GitHub issue 4).",
        "The URL pins commit 182b628 (main, 2025-01-08).",
        "The cache is shared by every rank; speech is not trained here.",
    ]
    for line in manual:
        assert not lab_words(line, prose_file=True), line
    code = '@pytest.fixture(scope="session")\ndef clips():\n    """Built once per session."""\n'
    assert not lab_words(python_prose(code), prose_file=False)


def test_version_is_the_latest_release_in_the_changelog():
    """`avsr --version` prints the newest released version the CHANGELOG describes."""
    import subprocess
    import sys

    releases = re.findall(
        r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", (ROOT / "CHANGELOG.md").read_text(), re.M
    )
    assert releases, "no released version in CHANGELOG.md"
    r = subprocess.run(
        [sys.executable, "-m", "avsr_cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.split()[-1] == releases[0], (r.stdout, releases[0])
