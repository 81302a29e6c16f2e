"""The package's shape (docs/architecture.md): five layers with imports only downward, no cycles, a lazy
public API, `avsr --help` without torch, each command's flags mapped one-to-one onto its options, modules and
functions of a readable size, and no edits of sys.path."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

from avsr_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path, env_path: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(env_path), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    cmd = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; c()"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_layers_contract_holds_and_catches_an_upward_import(tmp_path):
    assert _lint_imports(ROOT, ROOT).returncode == 0
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "avsr_cli", copy / "avsr_cli")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    llm = copy / "avsr_cli" / "modeling" / "llm.py"
    llm.write_text(llm.read_text() + "\nfrom ..tasks import scoring  # an upward import\n")
    r = _lint_imports(copy, copy)
    assert r.returncode != 0 and "avsr_cli.modeling is not allowed to import avsr_cli.tasks" in r.stdout


def test_no_import_cycles():
    graph = grimp.build_graph("avsr_cli")
    modules = sorted(m for m in graph.modules if m.startswith("avsr_cli."))
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and imported.startswith("avsr_cli."):
                back = graph.find_shortest_chain(importer=imported, imported=module)
                assert back is None, f"cycle: {module} -> {' -> '.join(back)}"


def _modules_loaded(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint('MODULES:', ' '.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    (line,) = [line for line in r.stdout.splitlines() if line.startswith("MODULES: ")]  # not the help text
    return set(line.split()[1:])


@pytest.mark.parametrize("args", [["--help"], ["transcribe", "--help"], ["train", "--help"], ["--version"]])
def test_help_does_not_import_torch(args):
    code = textwrap.dedent(f"""
        from avsr_cli.cli import app
        try:
            app({args!r}, prog_name="avsr")
        except SystemExit:
            pass
    """)
    loaded = _modules_loaded(code)
    assert "avsr_cli.cli.transcribe" in loaded and "torch" not in loaded and "transformers" not in loaded


def test_public_api_is_lazy():
    assert "torch" not in _modules_loaded("import avsr_cli")
    import avsr_cli

    for name in ("Transcriber", "TranscribeOptions", "evaluate", "train", "download_model"):
        assert callable(getattr(avsr_cli, name)), name
    assert (
        avsr_cli.TranscribeOptions
        is __import__("avsr_cli.tasks.transcribe", fromlist=["x"]).TranscribeOptions
    )
    with pytest.raises(AttributeError):
        avsr_cli.no_such_name  # noqa: B018


# ---------------------------------------------------------------------------------------------------------
# Each command's flags map one-to-one onto its options dataclass (faster-whisper checks that its entry points
# take the same arguments; here the CLI and the library's options).
# ---------------------------------------------------------------------------------------------------------


FLAG_PREFIXED = {"vad"}  # nested options whose flags carry the field's name as a prefix


def _fields(cls, prefix: str = "") -> dict[str, str]:
    """Every field of an options dataclass, nested ones flattened: {name: dotted path}."""
    out = {}
    for f in dataclasses.fields(cls):
        kind = f.type if isinstance(f.type, type) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            nested = _fields(type(default), prefix + f.name + ".")
            if f.name in FLAG_PREFIXED:  # --vad-threshold is TranscribeOptions.vad.threshold
                nested = {f"{f.name}_{k}": v for k, v in nested.items()}
            out.update(nested)
        elif kind is None or not dataclasses.is_dataclass(kind):
            out[f.name] = prefix + f.name
    return out


def _flags(command: str) -> set[str]:
    for info in app.registered_commands:
        name = info.name or info.callback.__name__
        if name == command:
            return {p for p in inspect.signature(info.callback).parameters if p != "ctx"}
    raise KeyError(command)


def _transcribe_fields() -> dict[str, str]:
    from avsr_cli.tasks.transcribe import TranscribeOptions

    fields = _fields(TranscribeOptions)
    fields["decoding"] = fields.pop("strategy")  # --decoding beam|reference is DecodingOptions.strategy
    return fields


# Options a command has that are not settings of the library call (where the model comes from, the output,
# the terminal), and library fields that are deliberately not flags, each with its reason.
RUN_FLAGS = {"checkpoint", "device", "dtype", "quiet", "verbose", "threads", "files", "output_dir"}
RUN_FLAGS |= {"language"}  # checked against the model's card before it loads (locate.check_language)
OUTPUT_FLAGS = {"output_format", "overwrite", "skip_existing"}  # how results are written, not what they are
# transcribe's -f srt/vtt lay cues out by whisper's word options: CueOptions, not transcription settings
WORD_LAYOUT_FLAGS = {"highlight_words", "max_line_count", "max_line_width", "max_words_per_line"}
LIBRARY_ONLY = {
    "vad_neg_threshold": "silero's hysteresis, threshold - 0.15 unless a caller sets it",
    "min_duration": "shortest input to decode (0.3 s): a safety floor, not a user choice",
    "silence_dbfs": "silence threshold (-60 dBFS) for the empty-transcript warning",
    "mouth_cache": "transcribe keeps no crop cache; evaluate and train expose --mouth-cache",
}


def _parity(command: str, fields: dict[str, str], cli_only: set[str], library_only: set[str]) -> None:
    flags = _flags(command)
    unmapped = flags - set(fields) - cli_only
    assert not unmapped, f"{command}: flags without an options field: {sorted(unmapped)}"
    missing = set(fields) - flags - library_only
    assert not missing, f"{command}: options fields without a flag: {sorted(missing)}"


def test_transcribe_flags_match_transcribe_options():
    _parity(
        "transcribe", _transcribe_fields(), RUN_FLAGS | OUTPUT_FLAGS | WORD_LAYOUT_FLAGS, set(LIBRARY_ONLY)
    )


def test_export_subtitles_flags_match_transcribe_and_cue_options():
    from avsr_cli.tasks.subtitles import CueOptions

    fields = {**_transcribe_fields(), **_fields(CueOptions)}
    # export-subtitles always segments by voice activity (segmentation = vad); --min-duration is the cue's
    cli_only = RUN_FLAGS | OUTPUT_FLAGS
    library_only = set(LIBRARY_ONLY) | {"segmentation", "conjunctions"}  # words a line may break before
    _parity("export-subtitles", fields, cli_only, library_only)


def test_evaluate_flags_match_evaluate_options():
    from avsr_cli.tasks.evaluate import EvaluateOptions

    fields = {**_fields(EvaluateOptions), "decoding": "transcribe.decoding.strategy"}
    fields.pop("strategy")
    fields["mode"], fields["snr"], fields["level"] = (
        "modes",
        "snrs",
        "levels",
    )  # repeatable flags, plural fields
    for plural in ("modes", "snrs", "levels"):
        fields.pop(plural)
    cli_only = RUN_FLAGS | {"dataset", "report_dir", "json_out", "clean"}  # --no-clean drops snr inf
    cli_only.add("report_embed_audio")  # an option of the report page (PageOptions), not of the scoring
    library_only = {"min_duration", "silence_dbfs", "segmentation", "max_chunk", "merge_gap"}
    library_only |= {k for k in fields if k.startswith("vad_")}  # clips are decoded whole: no VAD
    library_only.add("logprob_threshold")  # scores are WER against references, not confidence flags
    library_only.add("initial_prompt")  # a glossary would favour a test set's own words: scores stay blind
    library_only |= {"word_timestamps", "aligner"}  # word times change no word: WER does not use them
    _parity("evaluate", fields, cli_only, library_only)


def test_train_flags_match_train_setup():
    from avsr_cli.tasks.training.options import MOUTH_KEYS, TrainSetup

    fields = _fields(TrainSetup)
    for flag, field in MOUTH_KEYS.items():
        fields[flag] = fields.pop(field)
    library_only = {
        "grad_clip",
        "train_lora",
        "ctc_lr",
        "max_size",
        "detect_size",
        "auto_rotate",
        "mean_face",
    }
    # --nproc relaunches the same command under torchrun: how it runs, not a setting of the run
    _parity("train", fields, {"config", "quiet", "verbose", "threads", "nproc"}, library_only)
    assert TrainSetup.__dataclass_params__.frozen


def test_download_flags_match_download_options():
    from avsr_cli.checkpoints.download import DownloadOptions

    fields = _fields(DownloadOptions)
    fields["target_dir"] = fields.pop("dir")  # --dir
    _parity("download-checkpoint", fields, {"name", "list_models", "quiet", "verbose", "threads"}, set())


def test_crop_mouth_flags_match_mouth_options():
    from avsr_cli.frontends.mouth import MouthOptions

    fields = _fields(MouthOptions)
    fields["face_backend"] = fields.pop("backend")
    library_only = {"max_size", "detect_size", "auto_rotate", "mean_face"}  # AVSR_MEAN_FACE sets mean_face
    _parity(
        "crop-mouth",
        fields,
        {"files", "output_dir", "debug_overlay", "gray", "quiet", "verbose", "threads"},
        library_only,
    )


# ---------------------------------------------------------------------------------------------------------
# Sizes: a module holds one job (at most MODULE_LINES lines), a function fits a screen or two (at most
# FUNCTION_LINES). A Typer command's parameter list is its option declarations: only its body counts.
# ---------------------------------------------------------------------------------------------------------

MODULE_LINES = 500
FUNCTION_LINES = 80
TYPER_PARAMS = {"Option", "Argument"}  # typer.Option(...) / typer.Argument(...) in a parameter


def _python_files(*folders: str) -> list[Path]:
    return sorted(f for folder in folders for f in (ROOT / folder).rglob("*.py") if ".deps" not in f.parts)


def _typer_param(node: ast.AST) -> bool:
    """Whether an annotation or default declares a Typer option or argument."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in TYPER_PARAMS:
                return True
    return False


def _is_typer_command(fn: ast.FunctionDef, registered: set[tuple[str, int]], path: str) -> bool:
    """Registered on the app (found by where its code starts), decorated with `.command(...)` /
    `.callback(...)`, or with a parameter that declares a Typer option or argument."""
    first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    if (path, first) in registered or (path, fn.lineno) in registered:
        return True
    for deco in fn.decorator_list:
        call = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(call, ast.Attribute) and call.attr in ("command", "callback"):
            return True
    args = fn.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    annotations = [a.annotation for a in params if a is not None and a.annotation is not None]
    return any(_typer_param(n) for n in [*annotations, *args.defaults, *filter(None, args.kw_defaults)])


def _registered_commands() -> set[tuple[str, int]]:
    """(file, first line) of every callback the avsr app runs: its commands, its callback, its groups'."""
    found, apps = set(), [app]
    while apps:
        current = apps.pop()
        infos = [*current.registered_commands, current.registered_callback]
        apps += [g.typer_instance for g in current.registered_groups]
        for info in infos:
            if info is not None and info.callback is not None:
                code = inspect.unwrap(info.callback).__code__
                found.add((str(Path(code.co_filename).resolve()), code.co_firstlineno))
    return found


def function_sizes(path: Path, source: str, registered: set[tuple[str, int]] = frozenset()):
    """(name, first line, lines counted) of every function and method in `source`, nested ones included."""
    key = str(path.resolve())
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = node.body[0].lineno if _is_typer_command(node, registered, key) else node.lineno
            yield node.name, node.lineno, node.end_lineno - start + 1


def test_no_module_over_the_size_limit():
    long = []
    for path in _python_files("avsr_cli"):
        lines = len(path.read_text().splitlines())
        if lines > MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, f"modules over {MODULE_LINES} lines (split them by job):\n" + "\n".join(long)


def test_no_function_over_the_size_limit():
    registered, long = _registered_commands(), []
    for path in _python_files("avsr_cli"):
        for name, line, size in function_sizes(path, path.read_text(), registered):
            if size > FUNCTION_LINES:
                long.append(f"{path.relative_to(ROOT)}:{line} {name}: {size} lines")
    assert not long, f"functions over {FUNCTION_LINES} lines:\n" + "\n".join(sorted(long))


def test_function_sizes_count_a_typer_commands_body_only(tmp_path):
    options = "".join(f"    o{i}: Annotated[int, typer.Option(help='x')] = 0,\n" for i in range(90))
    plain = "".join(f"    o{i}: int = 0,\n" for i in range(90))
    body = "".join(f"    x = {i}\n" for i in range(10))
    source = f"def command(\n{options}):\n{body}\ndef plain(\n{plain}):\n{body}"
    source += f"@app.command()\ndef decorated(\n{plain}):\n{body}"
    sizes = {name: size for name, _, size in function_sizes(tmp_path / "m.py", source)}
    assert sizes == {"command": 10, "plain": 102, "decorated": 10}
    registered = "def cmd(\n" + "".join(f"    o{i}: Opt = 0,\n" for i in range(90)) + f"):\n{body}"
    (path := tmp_path / "r.py").write_text(registered)
    assert [s for *_, s in function_sizes(path, registered)] == [102]
    assert [s for *_, s in function_sizes(path, registered, {(str(path.resolve()), 1)})] == [10]


# ---------------------------------------------------------------------------------------------------------
# Imports resolve from packages (tests.support, bench, recipes.avsr_tiny_en, scripts run with `python -m`
# from the repository root), never by editing sys.path.
# ---------------------------------------------------------------------------------------------------------

SYS_PATH_ALLOWED = {
    # find_package: the packages `make install` puts beside the environment (pip --target: the PyPI model
    # wheels, mediapipe, face-alignment) import from there, after the environment's own.
    "avsr_cli/storage.py",
}
MUTATORS = {"insert", "append", "extend", "remove", "pop", "clear"}


def _is_sys_path(node: ast.AST) -> bool:
    if isinstance(node, ast.Subscript):
        node = node.value
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def sys_path_edits(source: str) -> list[int]:
    """Lines of `source` that change the import path: sys.path methods, assignments, site.addsitedir."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        if any(_is_sys_path(t) for t in targets):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            if (func.attr in MUTATORS and _is_sys_path(func.value)) or (
                func.attr == "addsitedir" and getattr(func.value, "id", None) == "site"
            ):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            if any(alias.name == "path" for alias in node.names):
                lines.append(node.lineno)
    return sorted(lines)


def test_no_sys_path_edits():
    found, seen = [], set()
    for path in _python_files("avsr_cli", "tests", "bench", "recipes", "scripts"):
        name = path.relative_to(ROOT).as_posix()
        lines = sys_path_edits(path.read_text())
        if lines and name in SYS_PATH_ALLOWED:
            seen.add(name)
        elif lines:
            found += [f"{name}:{line}" for line in lines]
    assert not found, "sys.path edited (import from the package instead):\n" + "\n".join(found)
    assert seen == SYS_PATH_ALLOWED, f"allowed but no longer needed: {sorted(SYS_PATH_ALLOWED - seen)}"


def test_sys_path_edits_are_found():
    source = textwrap.dedent("""
        import site, sys
        from sys import path
        sys.path.insert(0, "x")
        sys.path[:0] = ["x"]
        sys.path += ["x"]
        sys.path = ["x"]
        site.addsitedir("x")
        if "x" not in sys.path:
            print(sys.path.index("x"), list(sys.path))
    """)
    assert sys_path_edits(source) == [3, 4, 5, 6, 7, 8]


def test_the_wheel_lists_every_subpackage():
    """pyproject's explicit package list names every package under avsr_cli/ (a missing one installs a wheel
    that fails on import, which only the slow fresh-venv test would see)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "avsr_cli").rglob("__init__.py")} | {
        "avsr_cli.models"
    }
    assert listed == found
