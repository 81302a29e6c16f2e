"""GPU check (`make gpu-check`): needs a CUDA device; run it on a machine with one. Tests never need a GPU.

1. A tiny random model (tests/support/tiny.py) transcribes the same clip on CPU float32, CUDA float32 and CUDA
   bfloat16: CUDA float32 must give CPU's token ids; bfloat16 is reported (it may differ: other numerics).
2. The built-in model (avsr-tiny-en) on examples/heldout.wav on CUDA: its text and the speed.
3. `--device auto` picks CUDA, and `--dtype auto` bfloat16 where the GPU supports it (float16 otherwise).
Exit 0 when every check holds; each failing check is one line.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (run it on a machine with a GPU)")
        return 2
    from avsr_cli.checkpoints.loading import build_model, resolve_device, resolve_dtype, save_checkpoint
    from avsr_cli.frontends.media import load_audio
    from avsr_cli.tasks.transcribe import TranscribeOptions, Transcriber
    from tests.support.tiny import make_llm, make_whisper, tiny_config

    failures = []
    print(f"device: {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    clip = ROOT / "examples" / "heldout.wav"
    audio = load_audio(clip)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        torch.manual_seed(0)
        ckpt = save_checkpoint(
            build_model(tiny_config(make_whisper(base / "w"), make_llm(base / "l"))), base / "tiny"
        )
        texts = {}
        for device, dtype in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")):
            t = Transcriber.from_checkpoint(ckpt, device=device, dtype=dtype)
            texts[(device, dtype)] = t.transcribe_audio(audio, "clip", TranscribeOptions()).text
            print(f"tiny model {device} {dtype}: {texts[(device, dtype)]!r}")
        if texts[("cuda", "float32")] != texts[("cpu", "float32")]:
            failures.append("tiny model: CUDA float32 text differs from CPU float32")
    t = Transcriber.from_checkpoint("avsr-tiny-en", device="cuda", dtype="auto")
    t.transcribe(clip)  # warm-up
    start = time.perf_counter()
    result = t.transcribe(clip)
    seconds = time.perf_counter() - start
    expected = (ROOT / "examples" / "heldout.txt").read_text().strip()
    print(f"avsr-tiny-en on CUDA: {result.text!r} (expected {expected!r}); {seconds:.2f} s, "
          f"{result.duration / seconds:.1f}x real time")  # fmt: skip
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    print(f"--device auto -> {device}, --dtype auto -> {dtype}")
    if device.type != "cuda":
        failures.append("--device auto did not pick CUDA")
    if torch.cuda.is_bf16_supported() and dtype != torch.bfloat16:
        failures.append("--dtype auto did not pick bfloat16 on a bf16 GPU")
    for line in failures:
        print(f"gpu-check FAILED: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
