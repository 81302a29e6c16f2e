"""Importing a state dict in the reference key layout, checked against a straightforward reference forward."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.models.whisper.modeling_whisper import WhisperForConditionalGeneration

from avsr_cli.checkpoints.importer import ImportSpec, import_reference, load_state_dict
from avsr_cli.checkpoints.loading import load_checkpoint
from avsr_cli.errors import CheckpointError
from avsr_cli.frontends.features import encoder_frames

HIDDEN, RANK, ALPHA = 64, 16, 2.0  # reference reduction 16 -> r = 64/16 = 4, scale = 2/16
TOKENS = ["<pad>", "<audio>", "</audio>", "<video>", "</video>"]
TASKS = ("audio", "video", "audiovisual")


def reference_state(whisper_dir, llm_dir, variant: str, rates: list[int], per_rate: bool, seed: int = 0):
    """A full reference-style state dict (what utils/avg_checkpoints*.py writes), random where trained."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    state = {}
    enc = WhisperForConditionalGeneration.from_pretrained(whisper_dir).model.encoder
    state.update({f"audio_encoder.{k}": v for k, v in enc.state_dict().items()})
    llm = LlamaForCausalLM.from_pretrained(llm_dir)
    for k, v in llm.state_dict().items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):  # resized: 5 added random rows
            v = torch.cat([v, rnd(5, HIDDEN)])
        state[f"llm.{k}"] = v
    r, kv = HIDDEN // RANK, llm.config.num_key_value_heads * (HIDDEN // llm.config.num_attention_heads)
    for layer in range(llm.config.num_hidden_layers):
        base = f"llm.model.layers.{layer}.self_attn."
        suffixes = {
            "shared": [""],
            "task": [f".{t}" for t in TASKS],
            "shared+task": ["_shared"] + [f".{t}" for t in TASKS],
        }[variant]
        for sfx in suffixes:
            for qv, out in (("Q", HIDDEN), ("V", kv)):
                state[f"{base}lora_down_{qv}{sfx}.weight"] = rnd(r, HIDDEN)
                state[f"{base}lora_up_{qv}{sfx}.weight"] = rnd(out, r)
    d = enc.config.d_model
    for i, rate in enumerate(rates):
        prefix = f"audio_proj.{i}" if per_rate else "audio_proj"
        din = d * rate if not per_rate else d
        state.update(
            {
                f"{prefix}.0.weight": rnd(48, din),
                f"{prefix}.0.bias": rnd(48),
                f"{prefix}.2.weight": rnd(HIDDEN, 48),
                f"{prefix}.2.bias": rnd(HIDDEN),
            }
        )
    return state


def reference_logits(state, llm_dir, frames, rate, mode_task, variant, compression):
    """Logits computed the reference's way, written out plainly: hand LoRA on q/v, hand projector."""
    llm = LlamaForCausalLM.from_pretrained(llm_dir)
    tok = AutoTokenizer.from_pretrained(llm_dir)
    tok.add_special_tokens({"pad_token": TOKENS[0], "additional_special_tokens": TOKENS[1:]})
    llm.resize_token_embeddings(len(tok))
    llm.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("llm.") and "lora_" not in k})
    sfxs = {"shared": [""], "task": [f".{mode_task}"], "shared+task": ["_shared", f".{mode_task}"]}[variant]

    def hook(layer, qv):
        def add(_mod, inputs, output):
            x = inputs[0]
            for s in sfxs:
                down = state[f"llm.model.layers.{layer}.self_attn.lora_down_{qv}{s}.weight"]
                up = state[f"llm.model.layers.{layer}.self_attn.lora_up_{qv}{s}.weight"]
                output = output + (x @ down.T @ up.T) * (ALPHA / RANK)
            return output

        return add

    for i, layer in enumerate(llm.model.layers):
        layer.self_attn.q_proj.register_forward_hook(hook(i, "Q"))
        layer.self_attn.v_proj.register_forward_hook(hook(i, "V"))
    if compression == "stack":
        n = frames.shape[0] // rate
        x = torch.stack([frames[j * rate : (j + 1) * rate].reshape(-1) for j in range(n)])
        prefix = "audio_proj"
    else:
        x = torch.nn.AvgPool1d(rate)(frames.T[None])[0].T
        prefix = "audio_proj.1" if rate == 16 else "audio_proj.0"
    h = torch.relu(x @ state[f"{prefix}.0.weight"].T + state[f"{prefix}.0.bias"])
    proj = h @ state[f"{prefix}.2.weight"].T + state[f"{prefix}.2.bias"]
    emb = llm.get_input_embeddings().weight
    prompt = tok("Transcribe speech to text.", return_tensors="pt").input_ids[0]
    seq = torch.cat(
        [
            emb[[tok.bos_token_id, tok.convert_tokens_to_ids("<audio>")]],
            proj,
            emb[[tok.convert_tokens_to_ids("</audio>")]],
            emb[prompt[1:] if prompt[0] == tok.bos_token_id else prompt],
        ]
    )
    with torch.no_grad():
        return llm(inputs_embeds=seq[None]).logits[0]


@pytest.mark.parametrize(
    "variant,compression,rates,rate,per_rate",
    [
        ("shared", "stack", [4], 4, False),  # Llama-AVSR
        ("task", "avg-pooling", [4, 16], 16, True),  # Omni-AVSR-T
        ("shared+task", "avg-pooling", [4, 16], 4, True),  # Omni-AVSR-ST
    ],
)
def test_import_matches_reference_forward(tiny_dirs, tmp_path, variant, compression, rates, rate, per_rate):
    whisper_dir, llm_dir = (shutil.copytree(d, tmp_path / "src" / d.name) for d in tiny_dirs)
    state = reference_state(whisper_dir, llm_dir, variant, rates, per_rate)
    torch.save(state, tmp_path / "ref.pth")
    spec = ImportSpec(
        name="imported",
        llm_source=str(llm_dir),
        lora_rank=RANK,
        lora_alpha=ALPHA,
        audio_encoder_source=str(whisper_dir),
        compression_mode=compression,
        audio_rates=rates,
    )
    out = import_reference(tmp_path / "ref.pth", tmp_path / "ckpt", spec)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lora"]["r"] == 4 and cfg["lora"]["variant"] == variant
    assert cfg["lora"]["alpha"] / cfg["lora"]["r"] == pytest.approx(ALPHA / RANK)
    shutil.rmtree(tmp_path / "src")  # the checkpoint is self-contained: configs, tokenizer, weights copied in
    assert cfg["llm"]["source"] == "llm" and cfg["audio_encoder"]["weights"] == "audio_encoder.safetensors"
    model = load_checkpoint(out, device="cpu", dtype="float32")
    shutil.copytree(tiny_dirs[1], llm_dir)  # the hand-written reference forward reads the base LLM

    audio = (0.1 * np.random.RandomState(0).randn(int(1.7 * 16000))).astype(np.float32)
    feats = model.audio_frontend([audio])
    frames = model.audio_encoder(feats.input_features, feats.n_frames)
    assert frames[0].shape[0] == encoder_frames(len(audio))
    from avsr_cli.modeling.model import ModalityInputs

    model._activate("asr")
    seqs, _ = model.sequences("asr", ModalityInputs(frames, rate), None)
    with torch.no_grad():
        ours = model.llm(inputs_embeds=seqs[0][None]).logits[0]
    ref = reference_logits(state, llm_dir, frames[0], rate, "audio", variant, compression)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # the encoder weights came from the .pth (they equal the source's here, so check identity of a tensor)
    assert torch.equal(model.audio_encoder.encoder.conv1.weight, state["audio_encoder.conv1.weight"])


def test_importer_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(
        CheckpointError, match=r"evil.pth: refused: not a plain tensor file \(Unsupported operand"
    ):
        load_state_dict(tmp_path / "evil.pth")
    torch.save({"a": torch.zeros(1), "b": [1, 2]}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_state_dict(tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_state_dict(tmp_path / "absent.pth")


def test_importer_reads_lightning_ckpt(tmp_path):
    torch.save(
        {"state_dict": {"model.audio_proj.0.weight": torch.ones(2, 2)}, "epoch": 3}, tmp_path / "e.ckpt"
    )
    assert list(load_state_dict(tmp_path / "e.ckpt")) == ["audio_proj.0.weight"]


def test_import_with_wrong_rank_is_explained(tiny_dirs, tmp_path):
    whisper_dir, llm_dir = tiny_dirs
    torch.save(reference_state(whisper_dir, llm_dir, "shared", [4], False), tmp_path / "ref.pth")
    spec = ImportSpec(
        name="x",
        llm_source=str(llm_dir),
        lora_rank=8,
        lora_alpha=ALPHA,
        audio_encoder_source=str(whisper_dir),
        audio_rates=[4],
    )
    with pytest.raises(CheckpointError, match="check lora_rank"):
        import_reference(tmp_path / "ref.pth", tmp_path / "ckpt", spec)
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.glob(".ckpt*"))


def test_import_video_checkpoint(tiny_dirs, tmp_path):
    """A Llama-AVSR/Omni-style .pth with AV-HuBERT under video_encoder.* and a video projector: the encoder
    comes from the .pth (its BatchNorm statistics), the projector maps its frames as the reference does."""
    from tests.test_avhubert import fairseq_state

    whisper_dir, llm_dir = tiny_dirs
    state = reference_state(whisper_dir, llm_dir, "task", [4], per_rate=False)
    video = fairseq_state(seed=3)
    state.update({f"video_encoder.{k}": v for k, v in video.items()})
    g = torch.Generator().manual_seed(5)
    proj = {"video_proj.0.weight": torch.randn(48, 32 * 2, generator=g), "video_proj.0.bias": torch.zeros(48)}
    proj |= {
        "video_proj.2.weight": torch.randn(HIDDEN, 48, generator=g),
        "video_proj.2.bias": torch.zeros(HIDDEN),
    }
    state.update(proj)
    torch.save(state, tmp_path / "av.pth")
    spec = ImportSpec(
        name="av",
        llm_source=str(llm_dir),
        lora_rank=RANK,
        lora_alpha=ALPHA,
        audio_encoder_source=str(whisper_dir),
        audio_rates=[4],
        video_rates=[2],
    )
    out = import_reference(tmp_path / "av.pth", tmp_path / "ckpt", spec)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["modes"] == ["asr", "vsr", "avsr"]  # the task-specific LoRA adapters name the tasks
    assert cfg["video_encoder"]["kind"] == "avhubert" and cfg["video_encoder"]["source"] == "video_encoder"
    model = load_checkpoint(out, device="cpu", dtype="float32")
    running = "feature_extractor_video.resnet.frontend3D.1.running_mean"
    assert torch.equal(model.video_encoder.state_dict()[running], video[running])

    clip = torch.randn(1, 6, 1, 16, 16)
    frames = model.video_encoder(clip, [6])
    stacked = frames[0].reshape(3, 64)  # stack 2 frames of 32
    want = torch.relu(stacked @ proj["video_proj.0.weight"].T) @ proj["video_proj.2.weight"].T
    torch.testing.assert_close(model.projectors["video"](frames, 2)[0], want, atol=1e-5, rtol=1e-5)

    video_only = {k: v for k, v in state.items() if not k.startswith(("audio_", "llm.model.layers"))}
    video_only.update(
        {k: v for k, v in state.items() if k.startswith("llm.model.layers") and "lora" not in k}
    )
    torch.save(video_only, tmp_path / "v.pth")
    spec.audio_rates = []
    out = import_reference(tmp_path / "v.pth", tmp_path / "vckpt", spec)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["modes"] == ["vsr"] and cfg["audio_encoder"] is None


def _import_cli(pth, tmp_path):
    import subprocess
    import sys

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "x", "llm_source": "nowhere/llm", "lora_rank": 32, "lora_alpha": 4}))
    cmd = [sys.executable, "-m", "avsr_cli", "import-checkpoint", str(pth), str(tmp_path / "out")]
    return subprocess.run([*cmd, "--config", str(spec)], capture_output=True, text=True, timeout=120)


def test_import_cli_refuses_code_and_never_suggests_unsafe_loading(tmp_path):
    import os

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.zeros(2), "x": Payload()}, tmp_path / "evil.pth")
    r = _import_cli(tmp_path / "evil.pth", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "refused: the file contains Python code objects" in r.stderr and "weights_only" not in r.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_import_cli_refuses_a_tensor_declaring_more_than_it_stores(tmp_path):
    huge = torch.zeros(1).expand(1 << 20, 1 << 20)  # 4 bytes stored, 4 TiB declared
    torch.save({"audio_proj.0.weight": huge}, tmp_path / "huge.pth")
    assert (tmp_path / "huge.pth").stat().st_size < 4096
    r = _import_cli(tmp_path / "huge.pth", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert (
        "tensor 'audio_proj.0.weight' declares (1048576, 1048576) (4,398,046,511,104 bytes) but stores 4"
        in (r.stderr.replace("\n", ""))
    )
