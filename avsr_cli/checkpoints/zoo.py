"""The model zoo: declarative model cards (TOML) describing known models and where each part comes from.

Cards are data, not code. They are read from the `models/` directory shipped inside the package and from the
user's `$AVSR_HOME/models/*.toml` (default `~/.config/avsr/models/`); a user card with the name of a shipped
card replaces it. The schema is documented in `models/README.md`; `download.py` fetches what a card names.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import CheckpointError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Where a part comes from: exactly one of these keys per part.
SOURCE_KINDS = ("hub", "url", "page", "pypi", "path")
# checkpoint: a trained avsr checkpoint; base: encoders or an LLM to train on; aligner: a character CTC model
# that times words (`--aligner`), one Hub or path part holding its folder.
CARD_KINDS = ("checkpoint", "base", "aligner")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Part names become folder names under the model's download folder: one plain component, never `..` or `/`.
PART_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# The URL schemes a url part may use (download.py reads nothing else: no ftp:, data: or others).
URL_SCHEMES = ("https", "http", "file")

LANGUAGE_RE = re.compile(r"^[a-z]{2,3}$")  # ISO 639 codes, as Whisper names its languages

# Whisper's model sizes, by the names openai-whisper and faster-whisper take (`--model tiny`), and the avsr
# model each stands for. Sizes without a model here are refused with the ones there are.
WHISPER_SIZES = ("tiny", "base", "small", "medium", "large", "turbo")
MODEL_ALIASES = {"tiny": "avsr-tiny-en", "tiny.en": "avsr-tiny-en"}
DEFAULT_LANGUAGES = ["en"]  # what a card without `languages`, or a checkpoint without a card, transcribes


@dataclass
class Part:
    """One thing a model needs: a checkpoint file, an encoder, an LLM; where it comes from and its terms."""

    name: str
    kind: str  # one of SOURCE_KINDS
    source: str  # Hub repo id, URL, web page, `pypi:<name>`, or a directory/file path
    file: str | None = None  # url/page parts: the file name it is saved under
    revision: str | None = None  # hub parts
    patterns: list[str] | None = None  # hub parts: files to fetch (default: configs, tokenizer, safetensors)
    size: int | None = None  # exact size in bytes, verified when known
    sha256: str | None = None  # verified when known
    approx_size: str | None = None  # shown to the user only
    license: str = "unknown"
    gated: bool = False
    convert: str | None = None  # converter name (see download.CONVERTERS), None: used as is
    import_spec: dict[str, Any] = field(default_factory=dict)  # for convert = "reference-pth"
    notes: str = ""


@dataclass
class Card:
    """A model card: what the model is, its parts, its reported results and defaults."""

    name: str
    title: str
    kind: str  # one of CARD_KINDS
    parts: dict[str, Part]
    path: Path  # the card file
    modes: list[str] = field(default_factory=list)
    checkpoint: str | None = None  # the part that is, or converts into, the avsr checkpoint directory
    paper: str = ""
    homepage: str = ""
    notes: str = ""
    decoding: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] = field(default_factory=dict)
    wer: list[dict[str, Any]] = field(default_factory=list)
    memory: str = ""  # what running it needs (GPU memory, RAM), in words
    license: str = ""  # the terms in one line (each part's own are in its table)
    languages: list[str] = field(default_factory=lambda: list(DEFAULT_LANGUAGES))  # what it transcribes

    def download_size(self) -> str:
        """The parts' total, from exact sizes or the upper end of their approx_size ("16-17 GB" -> 17 GB);
        "?" when a part's size is unknown."""
        total = 0.0
        for part in self.parts.values():
            if part.kind == "path":  # shipped with avsr: nothing to download
                continue
            if part.size is not None:
                total += part.size
                continue
            match = re.match(r"\s*(?:[\d.]+\s*-\s*)?([\d.]+)\s*([KMGT]?B)\b", part.approx_size or "")
            if match is None:
                return "?"
            total += float(match[1]) * 1000 ** "BKMGT".index(match[2][0] if len(match[2]) > 1 else "B")
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if total >= scale:
                return f"{total / scale:.3g} {unit}"
        return f"{total:.0f} B"

    def license_summary(self) -> str:
        return self.license or "; ".join(dict.fromkeys(p.license for p in self.parts.values()))

    def wer_summary(self) -> str:
        """The reported WERs in a few characters, e.g. 'asr 0.728' or 'asr 1.2-2.0, vsr 26.8-27.1'."""
        by_mode: dict[str, list[float]] = {}
        for row in self.wer:
            by_mode.setdefault(row["mode"], []).append(float(row["value"]))
        out = []
        for mode, values in by_mode.items():
            lo, hi = min(values), max(values)
            out.append(f"{mode} {lo:g}" if lo == hi else f"{mode} {lo:g}-{hi:g}")
        return ", ".join(out)

    def wer_source(self) -> str:
        """Where the WERs come from, in a few words: 'measured' (by avsr's own commands, their `source`
        says which) or the publication, e.g. 'Omni-AVSR paper' (the source up to its first comma)."""
        labels = [wer_origin(str(row.get("source", ""))) for row in self.wer]
        return "; ".join(dict.fromkeys(labels))


def wer_origin(source: str) -> str:
    """A [[wer]] entry's `source` in a few words: 'measured', or the publication it cites."""
    if source.startswith("measured"):
        return "measured"
    return source.split(",")[0].strip() or "source not given"


def shipped_dir() -> Path:
    """The cards shipped with avsr: `avsr_cli/models` in an installed package, `models/` in a source tree."""
    package = Path(__file__).resolve().parents[1]  # avsr_cli/
    installed = package / "models"
    return installed if installed.is_dir() else package.parent / "models"


def avsr_home() -> Path:
    """User configuration (`AVSR_HOME`, default ~/.config/avsr); user cards live in its `models/`."""
    return Path(os.environ.get("AVSR_HOME") or Path.home() / ".config" / "avsr").expanduser()


def user_dir() -> Path:
    return avsr_home() / "models"


def _fail(path: Path, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: {message}")


def _take(
    table: dict[str, Any], key: str, types: type | tuple[type, ...], path: Path, where: str, default=None
):
    value = table.pop(key, default)
    if value is not None and not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise _fail(path, f"{where}{key} must be a {names}, not {type(value).__name__}")
    return value


def _parse_part(name: str, table: dict[str, Any], path: Path, cards: dict[str, dict]) -> Part:
    if not PART_NAME_RE.match(name):
        raise _fail(path, f"part name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    where = f"parts.{name}."
    table = dict(table)
    ref = table.pop("card", None)
    if ref is not None:  # inherit the single part of a base card, overridden by the keys given here
        base = cards.get(ref)
        if base is None or len(base.get("parts", {})) != 1:
            raise _fail(path, f"{where}card: '{ref}' is not a card with exactly one part")
        table = {**next(iter(base["parts"].values())), **table}
    kinds = [k for k in SOURCE_KINDS if k in table]
    if len(kinds) != 1:
        raise _fail(
            path, f"part '{name}' needs exactly one of {', '.join(SOURCE_KINDS)} (has {kinds or 'none'})"
        )
    kind = kinds[0]
    source = _take(table, kind, str, path, where)
    part = Part(
        name=name,
        kind=kind,
        source=source,
        file=_take(table, "file", str, path, where),
        revision=_take(table, "revision", str, path, where),
        patterns=_take(table, "patterns", list, path, where),
        size=_take(table, "size", int, path, where),
        sha256=_take(table, "sha256", str, path, where),
        approx_size=_take(table, "approx_size", str, path, where),
        license=_take(table, "license", str, path, where, "unknown"),
        gated=_take(table, "gated", bool, path, where, False),
        convert=_take(table, "convert", str, path, where),
        import_spec=_take(table, "import", dict, path, where, {}),
        notes=_take(table, "notes", str, path, where, ""),
    )
    if table:
        raise _fail(path, f"part '{name}' has unknown keys: {', '.join(sorted(table))}")
    if kind in ("url", "page") and not part.file:
        raise _fail(path, f"part '{name}': a {kind} part needs `file` (the name it is saved under)")
    if kind == "url" and urlsplit(part.source).scheme.lower() not in URL_SCHEMES:
        scheme = urlsplit(part.source).scheme or "none"
        raise _fail(
            path,
            f"part '{name}': url {part.source!r} has scheme '{scheme}': only https, http and file URLs "
            f"are fetched",
        )
    if part.file and (Path(part.file).name != part.file or part.file.startswith(".")):
        raise _fail(path, f"part '{name}': file must be a plain file name, not '{part.file}'")
    if kind == "hub" and not HUB_ID_RE.match(part.source):
        raise _fail(path, f"part '{name}': hub must be a repo id owner/name, not '{part.source}'")
    if kind == "pypi" and not part.source.startswith("pypi:"):
        raise _fail(path, f"part '{name}': pypi must look like 'pypi:<name>', not '{part.source}'")
    if part.sha256 is not None and not SHA256_RE.match(part.sha256):
        raise _fail(path, f"part '{name}': sha256 must be 64 lowercase hex digits")
    if part.size is not None and part.size <= 0:
        raise _fail(path, f"part '{name}': size must be a positive number of bytes")
    if part.import_spec and part.convert != "reference-pth":
        raise _fail(path, f"part '{name}': an import table goes with convert = \"reference-pth\"")
    return part


def parse_card(path: Path, data: dict[str, Any], cards: dict[str, dict]) -> Card:
    """Validate one card's TOML data (`cards`: raw data of all cards, for `card = ...` references)."""
    data = dict(data)
    name = _take(data, "name", str, path, "")
    if not name or not NAME_RE.match(name):
        raise _fail(path, "name must be lowercase letters, digits, '.', '_' or '-'")
    if name != path.stem:
        raise _fail(path, f"name '{name}' must match the file name ({path.stem}.toml)")
    kind = _take(data, "kind", str, path, "", "checkpoint")
    if kind not in CARD_KINDS:
        raise _fail(path, f"kind must be one of {', '.join(CARD_KINDS)}, not '{kind}'")
    raw_parts = _take(data, "parts", dict, path, "", {})
    if not raw_parts:
        raise _fail(path, "a card needs at least one [parts.<name>] table")
    parts = {pname: _parse_part(pname, table, path, cards) for pname, table in raw_parts.items()}
    card = Card(
        name=name,
        title=_take(data, "title", str, path, "", name),
        kind=kind,
        parts=parts,
        path=path,
        modes=_take(data, "modes", list, path, "", []),
        checkpoint=_take(data, "checkpoint", str, path, ""),
        paper=_take(data, "paper", str, path, "", ""),
        homepage=_take(data, "homepage", str, path, "", ""),
        notes=_take(data, "notes", str, path, "", ""),
        decoding=_take(data, "decoding", dict, path, "", {}),
        compression=_take(data, "compression", dict, path, "", {}),
        wer=_take(data, "wer", list, path, "", []),
        memory=_take(data, "memory", str, path, "", ""),
        license=_take(data, "license", str, path, "", ""),
        languages=_take(data, "languages", list, path, "", list(DEFAULT_LANGUAGES)),
    )
    if data:
        raise _fail(path, f"unknown keys: {', '.join(sorted(data))}")
    if kind == "checkpoint" and card.checkpoint not in parts:
        raise _fail(path, f"checkpoint must name one of the parts ({', '.join(parts)})")
    own = parts.get(card.checkpoint) if card.checkpoint else None
    if own is not None and own.kind not in ("hub", "path") and not own.convert:
        raise _fail(path, f"the checkpoint part '{own.name}' is a single file: it needs a `convert`")
    if kind == "base" and card.checkpoint is not None:
        raise _fail(path, "a base card has no checkpoint part")
    if kind == "aligner":
        only = next(iter(parts.values()))
        if len(parts) != 1 or only.kind not in ("hub", "path") or only.convert:
            raise _fail(path, "an aligner card has one part, a hub or path part with the model's folder")
        if card.checkpoint is not None or card.modes:
            raise _fail(path, "an aligner card has no checkpoint part and no modes (it times words only)")
    for row in card.wer:
        if not isinstance(row, dict) or not {"dataset", "mode", "value"} <= set(row):
            raise _fail(path, "each [[wer]] entry needs dataset, mode and value")
    if not card.languages or not all(isinstance(x, str) and LANGUAGE_RE.match(x) for x in card.languages):
        raise _fail(path, 'languages must be a list of language codes such as "en" (ISO 639, lowercase)')
    return card


@dataclass
class Zoo:
    """All cards by name, and the card files that failed to load (reported when named or listed)."""

    cards: dict[str, Card]
    broken: dict[str, CheckpointError]

    def get(self, name: str) -> Card:
        """The card called `name`, or the model a Whisper size names (MODEL_ALIASES; a card of that name
        comes first)."""
        if name in self.cards:
            return self.cards[name]
        if name in self.broken:
            raise self.broken[name]
        alias = MODEL_ALIASES.get(name.lower())
        if alias is not None and alias in self.cards:
            return self.cards[alias]
        raise CheckpointError(
            f"unknown checkpoint '{name}': no such directory and no model of that name{self._hint(name)}"
        )

    def _hint(self, name: str) -> str:
        """Close model names and sizes; for a Whisper size (or a near miss of one), the sizes there are."""
        aliases = {a: m for a, m in MODEL_ALIASES.items() if m in self.cards}
        close = difflib.get_close_matches(name, [*self.cards, *self.broken, *aliases], n=3, cutoff=0.5)
        named = dict.fromkeys(
            f"{c.removesuffix('.en')} (= {aliases[c]})" if c in aliases else c for c in close
        )
        hints = [f"did you mean: {', '.join(named)}?"] if close else []
        bare = name.lower().removesuffix(".en")
        size = difflib.get_close_matches(bare, WHISPER_SIZES, n=1, cutoff=0.6)
        if size and size[0] not in aliases:
            sizes = ", ".join(f"{a} = {m}" for a, m in aliases.items() if "." not in a) or "none"
            which = f"Whisper's '{size[0]}' size"
            said = (
                f"no avsr model has {which} yet" if size[0] == bare else f"{which}? no avsr model has it yet"
            )
            hints.append(f"{said}; the sizes here: {sizes}")
        if not close:
            hints.append("`avsr download-checkpoint --list` shows every model")
        return f" ({'; '.join(hints)})"


def card_files() -> dict[str, Path]:
    """name -> card file; user cards after shipped ones, so a user card replaces a shipped one."""
    found: dict[str, Path] = {}
    for folder in (shipped_dir(), user_dir()):
        if folder.is_dir():
            found.update({p.stem: p for p in sorted(folder.glob("*.toml"))})
    return found


def load_zoo() -> Zoo:
    raw: dict[str, dict] = {}
    broken: dict[str, CheckpointError] = {}
    files = card_files()
    for name, path in files.items():
        try:
            raw[name] = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            broken[name] = _fail(path, f"unreadable model card ({exc})")
    cards: dict[str, Card] = {}
    for name, data in raw.items():
        try:
            cards[name] = parse_card(files[name], data, raw)
        except CheckpointError as exc:
            broken[name] = exc
    return Zoo(cards, broken)


def get_card(name: str) -> Card:
    """The card called `name`; an unknown name raises CheckpointError suggesting close names."""
    return load_zoo().get(name)
