"""The encoder-feature cache: frozen-encoder frames of each clip, computed once and kept on disk, so epochs
after the first cost only the projector + LLM; and a dataset resolved to those frames (`prepare_data`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ...errors import AvsrError, UsageError
from ...frontends.media import aligned_audio, load_audio
from ...frontends.mouth import MouthOptions, cached_mouth_frames, shared_backend
from ...modeling.avhubert import encode_mouth_clips
from ...modeling.model import AVSRModel
from ...storage import atomic_path, cache_root
from ..datasets import Dataset, Item
from ..distributed import World, barrier


class FeatureCache:
    """Frozen-encoder frames of each clip, computed once and kept as safetensors files in `root`.

    The key covers the encoder (source, revision, weights, width), the file (absolute path, size, mtime), the
    modality and whatever else changes the frames (the mouth-crop options; the video length audio is cut to),
    so a changed file, encoder or option never reuses stale frames. Mouth crops are cached too
    (`mouth_cache`, default `<avsr cache>/mouth`, the folder `avsr evaluate` uses).
    """

    def __init__(
        self,
        root: Path,
        model: AVSRModel,
        mouth: MouthOptions | None = None,
        mouth_cache: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.model = model
        self.mouth = mouth or MouthOptions()
        self.mouth_cache = Path(mouth_cache) if mouth_cache else cache_root() / "mouth"

    def _key(self, path: Path, modality: str, extra: dict | None = None) -> Path:
        enc = getattr(self.model.config, f"{modality}_encoder")
        st = path.stat()
        ident = [asdict(enc), modality, str(path.resolve()), st.st_size, st.st_mtime_ns]
        if extra is not None:
            ident.append(extra)
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{modality}-{digest}.safetensors"

    def frames(
        self, items: Sequence[Item], modalities: Sequence[str], on_clip: Callable[[], None] | None = None
    ) -> list:
        """Per item: {modality: encoder frames}, or the AvsrError that made the clip unusable."""
        self.root.mkdir(parents=True, exist_ok=True)
        out: list = []
        for item in items:
            try:
                out.append(self._item(item, modalities))
            except AvsrError as exc:
                out.append(exc)
            except OSError as exc:
                out.append(AvsrError(f"{exc.filename or item.media}: {exc.strerror or exc}"))
            if on_clip:
                on_clip()
        return out

    def _item(self, item: Item, modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        frames: dict[str, torch.Tensor] = {}
        if "video" in modalities:
            mouth = asdict(self.mouth)
            frames["video"] = self._cached(
                self._key(item.media, "video", mouth), lambda: self._encode_video(item.media)
            )
        if "audio" in modalities:
            path = item.audio_path
            if "video" in frames:  # avsr: audio cut or padded to the video (Llama-AVSR av_dataset.py)
                n = frames["video"].shape[0]

                def load():
                    wave = aligned_audio(path, n)
                    if wave is None:
                        raise AvsrError(f"{path}: mode avsr needs an audio stream; the file has none")
                    return wave

                key = self._key(path, "audio", {"video_frames": n})
            else:
                key, load = self._key(path, "audio"), lambda: load_audio(path)
            frames["audio"] = self._cached(key, lambda: self._encode_audio(path, load()))
        return frames

    def _cached(self, key: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key.exists():
            return load_file(str(key))["frames"]
        frames = compute().detach().float().cpu().contiguous()
        with atomic_path(key) as tmp:
            save_file({"frames": frames}, str(tmp))
        return frames

    def _encode_audio(self, path: Path, wave: np.ndarray) -> torch.Tensor:
        if len(wave) / 16000 > 30:  # the Whisper window; longer clips would be cut (reference: 30 s)
            raise AvsrError(f"{path}: longer than 30 s, too long for one training clip")
        return encode_audio(self.model, [wave])[0]

    def _encode_video(self, path: Path) -> torch.Tensor:
        crops, _, _ = cached_mouth_frames(
            path, self.mouth, self.mouth_cache, shared_backend(self.mouth.backend)
        )
        return encode_mouth_clips(self.model.video_encoder, [crops])[0]


def encode_audio(model: AVSRModel, waveforms: list[np.ndarray]) -> list[torch.Tensor]:
    """Frozen Whisper frames of in-memory 16 kHz waveforms (no_grad, not inference_mode: the frames feed a
    graph later)."""
    with torch.no_grad():
        feats = model.audio_frontend(waveforms)
        return [f.detach() for f in model.audio_encoder(feats.input_features, feats.n_frames)]


@dataclass
class TrainData:
    """A dataset resolved to encoder frames ({modality: frames} per clip) and texts; failures are
    (item id, reason)."""

    frames: list[dict[str, torch.Tensor]]
    texts: list[str]
    failed: list[tuple[str, str]]
    contexts: list[str | None] = field(default_factory=list)


def prepare_data(
    model: AVSRModel,
    dataset: Dataset,
    modalities: Sequence[str],
    cache_dir: Path,
    on_clip: Callable[[], None] | None = None,
    mouth: MouthOptions | None = None,
    mouth_cache: Path | None = None,
    world: World | None = None,
) -> TrainData:
    """Encoder frames (from the cache, else computed and cached) and transcripts of `dataset`'s items.

    With a `world`, rank r first encodes items r, r + N, ... into the cache; after a barrier every rank
    reads all the frames from it (the cache must be one folder all ranks see: a shared filesystem across
    nodes)."""
    for modality in modalities:
        if getattr(model, f"{modality}_encoder") is None:
            raise UsageError(
                f"training on {modality} needs a model with a {modality} encoder; this one has none"
            )
    cache = FeatureCache(cache_dir, model, mouth, mouth_cache)
    if world:
        cache.frames(dataset.items[world.rank :: world.size], modalities, on_clip)
        barrier(world)
        on_clip = None
    results = cache.frames(dataset.items, modalities, on_clip)
    data = TrainData([], [], [])
    for item, r in zip(dataset.items, results, strict=True):
        if isinstance(r, Exception):
            data.failed.append((item.id, str(r)))
        else:
            data.frames.append(r)
            data.texts.append(item.reference)
            data.contexts.append(item.context)
    return data
