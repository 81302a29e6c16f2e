from __future__ import annotations

from pathlib import Path

import pytest

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

    from avsr_cli.checkpoint import build_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(build_model(tiny_config(*tiny_dirs)), tmp_path_factory.mktemp("ck") / "tiny")
