"""LoRA folded into the LLM's weights at load time, without peft: the same model as peft's merge."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from avsr_cli.checkpoints.loading import build_model, load_checkpoint, save_checkpoint
from avsr_cli.errors import CheckpointError
from avsr_cli.modeling.config import LoraConfig
from avsr_cli.tasks.transcribe import Transcriber
from tests.support.tiny import tiny_config


def _logits(model, embeds):
    with torch.no_grad():
        return model.llm(inputs_embeds=embeds).logits


def test_merged_at_load_equals_peft_then_merge(trained_ckpt):
    peft_model = load_checkpoint(trained_ckpt, device="cpu", dtype="float32")
    embeds = torch.randn(2, 7, peft_model.config.llm.hidden_size, generator=torch.Generator().manual_seed(0))
    unmerged = _logits(peft_model, embeds)
    peft_model.merge_lora()
    direct = load_checkpoint(trained_ckpt, device="cpu", dtype="float32", merge_lora=True)
    assert direct.lora_merged and not any("lora_" in n for n, _ in direct.llm.named_parameters())
    theirs, ours = peft_model.llm.state_dict(), direct.llm.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    merged = _logits(direct, embeds)
    torch.testing.assert_close(merged, _logits(peft_model, embeds), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)  # the adapter itself, to float error
    with pytest.raises(ValueError, match="merged"):
        save_checkpoint(direct, trained_ckpt.parent / "again")


def test_merge_names_a_missing_adapter_weight(trained_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(trained_ckpt / "adapter.safetensors"))
    dropped = next(k for k in state if k.endswith("layers.1.self_attn.v_proj.lora_B"))
    del state[dropped]
    broken = tmp_path / "broken"
    broken.mkdir()
    save_file(state, str(broken / "adapter.safetensors"))
    (broken / "config.json").write_text((trained_ckpt / "config.json").read_text())
    with pytest.raises(CheckpointError, match=f"lack {dropped}"):
        load_checkpoint(broken, device="cpu", dtype="float32", merge_lora=True)


def test_task_adapters_keep_peft(tiny_dirs):
    config = tiny_config(*tiny_dirs, lora=LoraConfig(r=4, alpha=8.0, variant="shared+task"))
    model = build_model(config, merge_lora=True)
    assert not model.lora_merged and any("lora_" in n for n, _ in model.llm.named_parameters())


def test_other_checkpoints_keep_the_unmerged_path(trained_ckpt):
    model = Transcriber.from_checkpoint(trained_ckpt, device="cpu", dtype="float32").model
    assert not model.lora_merged and any("lora_" in n for n, _ in model.llm.named_parameters())


SCRIPT = """
import json, sys
from avsr_cli.checkpoints.loading import load_checkpoint
from avsr_cli.tasks.transcribe import Transcriber
model = load_checkpoint(sys.argv[1], device="cpu", dtype="float32", merge_lora=sys.argv[3] == "merge")
result = Transcriber(model).transcribe(sys.argv[2])
print(json.dumps({"text": result.text, "peft": "peft" in sys.modules}))
"""


def test_loading_and_transcribing_merged_never_imports_peft(trained_ckpt, tmp_path):
    wav = tmp_path / "noise.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32), 16000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(how: str) -> dict:
        cmd = [sys.executable, "-c", SCRIPT, str(trained_ckpt), str(wav), how]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    merged, unmerged = run("merge"), run("peft")
    assert merged["peft"] is False and unmerged["peft"] is True
    assert merged["text"] == unmerged["text"]
