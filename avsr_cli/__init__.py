"""avsr: speech recognition from audio, lips, or both, with a multimodal LLM (Llama-AVSR family).

The public API, imported on first use (PEP 562): `import avsr_cli` and `avsr --help` stay free of torch.

    from avsr_cli import Transcriber, TranscribeOptions
    result = Transcriber.from_checkpoint("avsr-tiny-en").transcribe("talk.mp4")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# name -> module that defines it
_API = {
    "Transcriber": "avsr_cli.tasks.transcribe",
    "TranscribeOptions": "avsr_cli.tasks.transcript",
    "Result": "avsr_cli.tasks.transcript",
    "Segment": "avsr_cli.tasks.transcript",
    "DecodingOptions": "avsr_cli.modeling.decoding",
    "evaluate": "avsr_cli.tasks.evaluate",
    "EvaluateOptions": "avsr_cli.tasks.evaluate_options",
    "train": "avsr_cli.tasks.training.run",
    "TrainOptions": "avsr_cli.tasks.training.options",
    "TrainSetup": "avsr_cli.tasks.training.options",
    "download_model": "avsr_cli.checkpoints.download",
    "DownloadOptions": "avsr_cli.checkpoints.download",
    "load_checkpoint": "avsr_cli.checkpoints.loading",
}
__all__ = [
    "DecodingOptions",
    "DownloadOptions",
    "EvaluateOptions",
    "Result",
    "Segment",
    "TrainOptions",
    "TrainSetup",
    "TranscribeOptions",
    "Transcriber",
    "__version__",
    "download_model",
    "evaluate",
    "load_checkpoint",
    "train",
]

if TYPE_CHECKING:
    from .checkpoints.download import DownloadOptions, download_model
    from .checkpoints.loading import load_checkpoint
    from .modeling.decoding import DecodingOptions
    from .tasks.evaluate import evaluate
    from .tasks.evaluate_options import EvaluateOptions
    from .tasks.training.options import TrainOptions, TrainSetup
    from .tasks.training.run import train
    from .tasks.transcribe import Transcriber
    from .tasks.transcript import Result, Segment, TranscribeOptions


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'avsr_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
