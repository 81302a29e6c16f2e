"""Small data files the pipeline needs besides checkpoints: shipped in the package, else downloaded once.

The only one so far is the 20-words mean face of the mouth-crop alignment (Apache-2.0, auto_avsr): shipped
in `frontends/data/` with its NOTICE, so lips work offline; a copy elsewhere (`AVSR_MEAN_FACE`) or, for a
package stripped of it, the published URL also serve. Whatever the source, the sha256 is checked.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..storage import atomic_write_bytes, cache_root


@dataclass(frozen=True)
class Asset:
    name: str
    url: str
    sha256: str
    env: str  # environment variable that may point to a local copy

    @property
    def packaged(self) -> Path:
        """Where the package ships it."""
        return Path(__file__).resolve().parent / "data" / self.name


# The mean face of auto_avsr's alignment: mpc001/auto_avsr preparation/detectors/retinaface/video_process.py
# loads "20words_mean_face.npy" from its own folder (68x2 float64, iBUG-68 order, 256x256 frame). Published in
# that repository (Apache-2.0) at preparation/detectors/retinaface/20words_mean_face.npy; the URL pins commit
# 182b628 (main, 2025-01-08). The same bytes sit in its mediapipe folder.
MEAN_FACE = Asset(
    name="20words_mean_face.npy",
    url="https://raw.githubusercontent.com/mpc001/auto_avsr/182b62837773ab01052d4ac21ef1d2203ea7d267/"
    "preparation/detectors/retinaface/20words_mean_face.npy",
    sha256="dbf68b2044171e1160716df7c53e8bbfaa0ee8c61fb41171d04cb6092bb81422",
    env="AVSR_MEAN_FACE",
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def asset_path(asset: Asset, download: bool = True, url: str | None = None, packaged: bool = True) -> Path:
    """Local path of `asset`: ``$<env>`` if set, else the copy shipped in the package, else the avsr cache,
    else downloaded into the cache.

    The file is checked against its sha256 wherever it comes from. `url` overrides the published address
    (a mirror). Raises CheckpointError, naming the URL and the environment variable, when it cannot be had.
    """
    if os.environ.get(asset.env):
        path = Path(os.environ[asset.env]).expanduser()
        if not path.is_file():
            raise CheckpointError(f"${asset.env}={path}: no such file ({asset.name})")
        if _sha256(path) != asset.sha256:
            raise CheckpointError(f"${asset.env}={path}: not {asset.name} (sha256 mismatch)")
        return path
    if packaged and asset.packaged.is_file() and _sha256(asset.packaged) == asset.sha256:
        return asset.packaged
    path = cache_root() / "assets" / asset.name
    if path.is_file() and _sha256(path) == asset.sha256:
        return path
    url = url or asset.url
    hint = f"download it from {url} and set {asset.env}=/path/to/{asset.name}"
    if not download:
        raise CheckpointError(f"{asset.name} is not in {path.parent}: {hint}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(f"cannot download {asset.name} ({reason}; offline?): {hint}") from None
    if hashlib.sha256(data).hexdigest() != asset.sha256:
        raise CheckpointError(f"{url}: downloaded {asset.name} has the wrong sha256: {hint}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def load_mean_face(path: str | os.PathLike | None = None) -> np.ndarray:
    """The (68, 2) float64 mean face: from `path` if given (not hash-checked), else from `asset_path`."""
    path = Path(path) if path is not None else asset_path(MEAN_FACE)
    try:
        face = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the mean face ({exc})") from None
    if face.shape != (68, 2):
        raise CheckpointError(f"{path}: a mean face must be 68x2 landmarks, got shape {face.shape}")
    return face.astype(np.float64)
