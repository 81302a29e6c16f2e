"""Aligners of the zoo (cards of kind "aligner"): character CTC models that time the words of checkpoints
without an aligner of their own (`--aligner NAME_OR_DIR`). Found without touching the network."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..modeling.aligners import Wav2Vec2Aligner
from .hub import DEFAULT_HUB_PATTERNS, hub_cached
from .locate import MANIFEST, model_dir, part_path, read_json
from .zoo import Card, get_card, load_zoo

DEFAULT_ALIGNER = "wav2vec2-base-960h"  # the one named when a checkpoint has no aligner


def aligner_hint() -> str:
    """How to time words with a checkpoint that has no aligner: the zoo aligner and its download size."""
    try:
        size = get_card(DEFAULT_ALIGNER).download_size()
    except CheckpointError:
        return "name a wav2vec2 CTC model folder with --aligner DIR"
    return f"add --aligner {DEFAULT_ALIGNER} (a {size} download: avsr download-checkpoint {DEFAULT_ALIGNER})"


def aligner_folder(card: Card) -> Path:
    """The local folder of an aligner card's model, checked to be downloaded (no network access)."""
    part = next(iter(card.parts.values()))
    if part.kind == "path":
        folder = part_path(card, part)
        if not folder.is_dir():
            raise CheckpointError(f"aligner {card.name}: {folder} does not exist ({card.path} points there)")
        return folder
    commit = read_json(model_dir(card.name) / MANIFEST).get("parts", {}).get(part.name, {}).get("commit")
    folder = hub_cached(part.source, commit or part.revision, part.patterns or DEFAULT_HUB_PATTERNS)
    if folder is None:
        raise CheckpointError(
            f"aligner '{card.name}' ({part.source}) is not downloaded: "
            f"run `avsr download-checkpoint {card.name}`"
        )
    return folder


def locate_aligner(name_or_dir: str) -> Path:
    """The folder of `--aligner`: a directory as given, else the zoo aligner of that name."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: an aligner is a folder (a wav2vec2 CTC model), not a file")
    zoo = load_zoo()
    aligners = ", ".join(c.name for c in zoo.cards.values() if c.kind == "aligner") or "none"
    if name_or_dir not in zoo.cards and name_or_dir not in zoo.broken:
        raise CheckpointError(
            f"--aligner {name_or_dir}: no such folder and no aligner of that name (aligners: {aligners}; "
            "`avsr download-checkpoint --list` shows them)"
        )
    card = zoo.get(name_or_dir)
    if card.kind != "aligner":
        raise CheckpointError(
            f"--aligner {name_or_dir}: '{card.name}' is a {card.kind}, not an aligner (aligners: {aligners})"
        )
    return aligner_folder(card)


def load_zoo_aligner(name_or_dir: str, device: str | torch.device = "cpu") -> Wav2Vec2Aligner:
    """The aligner `--aligner` names, loaded on `device`."""
    return Wav2Vec2Aligner.from_dir(locate_aligner(name_or_dir), device)
