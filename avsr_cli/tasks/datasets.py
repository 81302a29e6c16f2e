"""Dataset stage: find clips and their reference transcripts for `avsr evaluate`.

`load_dataset(path)` accepts
- a folder, searched recursively: each media file with a same-stem ``.txt`` transcript. A transcript whose
  first line is ``Text:  SOME WORDS`` is read the LRS2/LRS3 way (that line only, any whitespace after the
  colon); any other ``.txt`` is plain text (the whole file). Ids are relative paths without extension
  (``spk/00001``). A video and an audio file with the same stem make one item: the video is the media and
  the audio is its separate track (auto_avsr writes ``utt.mp4`` + ``utt.wav``);
- a CSV manifest (header with ``path`` and ``transcript`` or ``text``, optional ``id``), or a JSON Lines one
  (``{"path": ..., "transcript"|"text": ..., "id": ...}`` per line; a ``.json`` list of such objects too).
  Relative paths are resolved against the manifest's folder; the default id is the path without extension;
- a Llama-AVSR / Omni-AVSR label CSV: no header, 5 comma-separated fields
  ``dataset_name,rel_path,input_length,token_ids,transcript``, media at ``root/dataset_name/rel_path`` and
  audio at ``rel_path[:-4] + ".wav"`` (Llama-AVSR datamodule/av_dataset.py load_list / load_audio).
  It is recognised by its first line: 5 fields, the third an integer, the fourth
  space-separated integers. root defaults to the folder above ``labels/`` when the CSV sits in one
  (the reference layout ``<root>/labels/<csv>``), else the CSV's folder.

Nothing is decoded here. What cannot be used is reported in `Dataset.skipped` with the reason (no transcript,
transcript without media, empty transcript, unreadable transcript or line, duplicate id); items are sorted
by id.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AvsrError

AUDIO_EXTENSIONS = frozenset({"wav", "flac", "mp3", "m4a", "ogg", "opus"})
VIDEO_EXTENSIONS = frozenset({"mp4", "mkv", "webm", "avi", "mov"})
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS

_LRS_TEXT = re.compile(r"\s*Text:\s*(.*)")
_TOKEN_IDS = re.compile(r"\d+( \d+)*")


class DatasetError(AvsrError):
    """A dataset path cannot be used at all (missing, unknown format, manifest without the needed columns)."""

    exit_code = 2


@dataclass(frozen=True)
class Item:
    """One clip to score. audio: a separate audio track beside a video (else the media's own audio);
    context: an initial prompt for this clip (a manifest's `context` column), used in training."""

    id: str
    media: Path
    reference: str
    audio: Path | None = None
    context: str | None = None

    @property
    def audio_path(self) -> Path:
        """The file to take the audio from."""
        return self.audio or self.media


@dataclass(frozen=True)
class Skipped:
    """Something found but not usable: a file, a folder entry, or ``manifest:line``, and why."""

    path: str
    reason: str


@dataclass
class Dataset:
    """Items sorted by id; skipped in discovery order. kind: folder, csv, jsonl, json or llama-avsr-labels."""

    items: list[Item]
    skipped: list[Skipped]
    kind: str
    source: Path

    def __len__(self) -> int:
        return len(self.items)


def load_dataset(
    path: str | os.PathLike, limit: int | None = None, root: str | os.PathLike | None = None
) -> Dataset:
    """Find the clips and references at `path` (folder, manifest or label CSV; see the module docstring).

    limit: keep the first `limit` items by id. root: the dataset root of a Llama-AVSR label CSV.
    """
    path = Path(path)
    if path.is_dir():
        items, skipped, kind = *_scan_folder(path), "folder"
    elif not path.is_file():
        raise DatasetError(f"{path}: no such file or directory")
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: cannot read manifest ({e})") from None
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson", ".json"):
            kind = "json" if suffix == ".json" else "jsonl"
            items, skipped = _json_manifest(path, text, kind)
        elif suffix in (".csv", ".tsv"):
            first = next((line for line in text.splitlines() if line.strip()), "")
            if _is_label_row(first):
                kind = "llama-avsr-labels"
                items, skipped = _label_csv(path, text, Path(root).absolute() if root else _label_root(path))
            else:
                kind = "csv"
                items, skipped = _csv_manifest(path, text, "\t" if suffix == ".tsv" else ",")
        else:
            raise DatasetError(
                f"{path}: not a dataset (expected a folder, a .csv/.tsv/.jsonl/.json manifest, "
                "or a Llama-AVSR label .csv)"
            )
    items.sort(key=lambda item: item.id)
    if limit is not None:
        items = items[: max(limit, 0)]
    return Dataset(items, skipped, kind, path)


def read_transcript(path: Path) -> str:
    """The reference in a ``.txt``: the ``Text:`` line of an LRS2/LRS3 file, else the whole file.

    Raises ValueError with the reason when it is unreadable or empty.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("unreadable transcript (not UTF-8)") from None
    except OSError as e:
        raise ValueError(f"unreadable transcript ({e.strerror})") from None
    lines = text.splitlines()
    match = _LRS_TEXT.fullmatch(lines[0]) if lines else None
    reference = " ".join((match[1] if match else text).split())
    if not has_words(reference):
        raise ValueError("empty transcript" + (f" ({reference!r}: no words)" if reference else ""))
    return reference


def has_words(text: str) -> bool:
    """A transcript to train or score on says something: at least one letter or digit."""
    return any(ch.isalnum() for ch in text)


def _scan_folder(folder: Path) -> tuple[list[Item], list[Skipped]]:
    groups: dict[str, dict[str, list[Path]]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            ext = name.rpartition(".")[2].lower() if "." in name else ""
            kind = "txt" if ext == "txt" else "video" if ext in VIDEO_EXTENSIONS else "audio"
            if name.startswith(".") or (kind == "audio" and ext not in AUDIO_EXTENSIONS):
                continue
            file = Path(dirpath) / name
            key = file.relative_to(folder).with_suffix("").as_posix()
            groups.setdefault(key, {}).setdefault(kind, []).append(file)
    items, skipped = [], []
    for key in sorted(groups):
        g = groups[key]
        txt, videos, audios = g.get("txt", []), g.get("video", []), g.get("audio", [])
        media = videos + audios
        if not media:
            skipped.append(Skipped(str(txt[0]), "transcript without media"))
        elif len(videos) > 1 or len(audios) > 1:
            names = ", ".join(p.name for p in media)
            skipped.append(Skipped(str(folder / key), f"duplicate id {key!r}: {names}"))
        elif not txt:
            skipped.append(Skipped(str(media[0]), f"no transcript (expected {Path(key).name}.txt beside it)"))
        else:
            try:
                reference = read_transcript(txt[0])
            except ValueError as e:
                skipped.append(Skipped(str(txt[0]), str(e)))
                continue
            audio = audios[0] if videos and audios else None
            items.append(Item(key, media[0], reference, audio))
    return items, skipped


class _Collector:
    """Items from manifest rows, with the skip reasons and duplicate-id check they share."""

    def __init__(self, manifest: Path) -> None:
        self.manifest, self.base = manifest, manifest.parent
        self.items: list[Item] = []
        self.skipped: list[Skipped] = []
        self.seen: dict[str, int] = {}

    def skip(self, line: int, reason: str) -> None:
        self.skipped.append(Skipped(f"{self.manifest}:{line}", reason))

    def add(
        self,
        line: int,
        media: object,
        reference: object,
        item_id: object = None,
        audio: Path | None = None,
        context: object = None,
    ) -> None:
        if not isinstance(media, str) or not media.strip():
            return self.skip(line, "unreadable line (no media path)")
        if reference is not None and not isinstance(reference, str):
            return self.skip(line, "unreadable line (transcript is not text)")
        if context is not None and not isinstance(context, str):
            return self.skip(line, "unreadable line (context is not text)")
        path = Path(media.strip())
        if item_id is None or str(item_id).strip() == "":
            item_id = path.with_suffix("").as_posix()
        item_id = str(item_id).strip()
        path = path if path.is_absolute() else self.base / path
        reference = " ".join((reference or "").split())
        if item_id in self.seen:
            return self.skip(line, f"duplicate id {item_id!r} (first at line {self.seen[item_id]})")
        self.seen[item_id] = line
        if not has_words(reference):
            return self.skip(line, "empty transcript" + (f" ({reference!r}: no words)" if reference else ""))
        if not path.is_file():
            return self.skip(line, f"transcript without media (no file {path})")
        context = " ".join((context or "").split()) or None
        self.items.append(Item(item_id, path, reference, audio, context))


def _csv_rows(text: str, delimiter: str) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(line number, fields or the parse error) for each non-empty line. A manifest has one row per line:
    parsing line by line keeps an unterminated quote from swallowing the rows after it."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, next(csv.reader([line], delimiter=delimiter, strict=True))
            except csv.Error as e:
                yield n, e


def _csv_manifest(path: Path, text: str, delimiter: str) -> tuple[list[Item], list[Skipped]]:
    rows = _csv_rows(text, delimiter)
    header = next(rows, (0, []))[1]
    header = header if isinstance(header, list) else []
    columns = {name.strip().lower(): i for i, name in enumerate(header) if name.strip()}
    text_column = columns.get("transcript", columns.get("text"))
    if "path" not in columns or text_column is None:
        found = ", ".join(columns) or "none"
        raise DatasetError(
            f"{path}: a CSV manifest needs a header with 'path' and 'transcript' (or 'text') columns "
            f"(found: {found})"
        )
    out = _Collector(path)
    for n, row in rows:
        if isinstance(row, csv.Error):
            out.skip(n, f"unreadable line ({row}: an unterminated quote?)")
            continue
        if len(row) != len(header):
            out.skip(n, f"unreadable line (expected {len(header)} fields, found {len(row)})")
            continue
        item_id = row[columns["id"]] if "id" in columns else None
        context = row[columns["context"]] if "context" in columns else None
        out.add(n, row[columns["path"]], row[text_column], item_id, context=context)
    return out.items, out.skipped


def _json_manifest(path: Path, text: str, kind: str) -> tuple[list[Item], list[Skipped]]:
    out = _Collector(path)
    if kind == "json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(rows, list):
            raise DatasetError(f"{path}: a .json manifest must be a list of objects")
        numbered = list(enumerate(rows, 1))  # positions in the list stand for line numbers
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                out.skip(n, f"unreadable line (not JSON: {e.msg})")
    for n, row in numbered:
        if not isinstance(row, dict):
            out.skip(n, "unreadable line (not a JSON object)")
            continue
        reference = row.get("transcript", row.get("text"))
        # "media": the key of the recipe's corpus manifests (recipes/avsr_tiny_en/build.py)
        out.add(n, row.get("path", row.get("media")), reference, row.get("id"), context=row.get("context"))
    return out.items, out.skipped


def _is_label_row(line: str) -> bool:
    fields = line.split(",")
    return len(fields) == 5 and fields[2].strip().isdigit() and bool(_TOKEN_IDS.fullmatch(fields[3].strip()))


def _label_root(csv_path: Path) -> Path:
    parent = csv_path.resolve().parent
    return parent.parent if parent.name == "labels" else parent


def _label_csv(path: Path, text: str, root: Path) -> tuple[list[Item], list[Skipped]]:
    out = _Collector(path)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(",")  # the reference splits on every comma: transcripts hold none
        if len(fields) != 5:
            out.skip(n, f"unreadable line (expected 5 comma-separated fields, found {len(fields)})")
            continue
        dataset_name, rel_path, _, _, reference = (f.strip() for f in fields)
        video = root / dataset_name / rel_path
        wav = Path(str(video)[:-4] + ".wav")  # Llama-AVSR av_dataset.py load_audio: path[:-4] + ".wav"
        item_id = Path(dataset_name, rel_path).with_suffix("").as_posix()
        if video.is_file():
            out.add(n, str(video), reference, item_id, wav if wav.is_file() and wav != video else None)
        else:
            out.add(n, str(wav if wav.is_file() else video), reference, item_id)
    return out.items, out.skipped
