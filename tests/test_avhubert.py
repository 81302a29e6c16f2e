"""AV-HuBERT: fairseq-layout checkpoints converted through the restricted loader, checked against a
straightforward forward over the raw fairseq state dict written here with plain torch ops."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from argparse import Namespace
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from avsr_cli.checkpoints.avhubert_fairseq import (
    avhubert_state_from_fairseq,
    convert_fairseq_avhubert,
    infer_config,
    save_avhubert,
)
from avsr_cli.checkpoints.loading import load_video_encoder
from avsr_cli.errors import CheckpointError
from avsr_cli.modeling.avhubert import AVHubertConfig, AVHubertVideoEncoder
from avsr_cli.modeling.config import EncoderConfig

DIM, LAYERS, FFN, HEADS, KPOS, GROUPS = 32, 2, 64, 4, 8, 4  # tiny transformer; the ResNet-18 is full size
SIZE = 16  # 16x16 frames instead of 88x88 keep the ResNet cheap
R = "feature_extractor_video.resnet."


def fairseq_state(seed: int = 0, lora_rank: int = 0) -> OrderedDict:
    """A random AVHubertModel state dict in fairseq's key layout (pretraining extras included)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, fan_in):
        return torch.randn(*shape, generator=g) / fan_in**0.5

    def small(*shape):
        return 0.1 * torch.randn(*shape, generator=g)

    sd = OrderedDict()

    def bn(prefix, c):
        sd[prefix + ".weight"], sd[prefix + ".bias"] = 1 + small(c), small(c)
        sd[prefix + ".running_mean"] = small(c)
        sd[prefix + ".running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[prefix + ".num_batches_tracked"] = torch.tensor(1000)

    def prelu(key, c):
        sd[key] = 0.25 + small(c)

    sd[R + "frontend3D.0.weight"] = w(64, 1, 5, 7, 7, fan_in=245)
    bn(R + "frontend3D.1", 64)
    prelu(R + "frontend3D.2.weight", 64)
    cin = 64
    for i, width in enumerate((64, 128, 256, 512)):
        for j in range(2):
            p, a = f"{R}trunk.layer{i + 1}.{j}.", cin if j == 0 else width
            sd[p + "conv1.weight"] = w(width, a, 3, 3, fan_in=9 * a)
            bn(p + "bn1", width)
            prelu(p + "relu1.weight", width)
            sd[p + "conv2.weight"] = w(width, width, 3, 3, fan_in=9 * width)
            bn(p + "bn2", width)
            prelu(p + "relu2.weight", width)
            if j == 0 and i > 0:
                sd[p + "downsample.0.weight"] = w(width, a, 1, 1, fan_in=a)
                bn(p + "downsample.1", width)
        cin = width
    sd["feature_extractor_video.proj.weight"], sd["feature_extractor_video.proj.bias"] = (
        w(DIM, 512, fan_in=512),
        small(DIM),
    )
    sd["feature_extractor_audio.proj.weight"], sd["feature_extractor_audio.proj.bias"] = (
        w(DIM, 104, fan_in=104),
        small(DIM),
    )
    sd["mask_emb"], sd["label_embs_concat"] = torch.rand(104, generator=g), torch.rand(20, 16, generator=g)
    sd["final_proj.weight"], sd["final_proj.bias"] = w(16, DIM, fan_in=DIM), small(16)
    sd["layer_norm.weight"], sd["layer_norm.bias"] = 1 + small(2 * DIM), small(2 * DIM)
    sd["post_extract_proj.weight"], sd["post_extract_proj.bias"] = w(DIM, 2 * DIM, fan_in=2 * DIM), small(DIM)
    sd["encoder.pos_conv.0.bias"] = small(DIM)
    sd["encoder.pos_conv.0.weight_g"] = 0.5 + torch.rand(1, 1, KPOS, generator=g)
    sd["encoder.pos_conv.0.weight_v"] = torch.randn(DIM, DIM // GROUPS, KPOS, generator=g)
    for n in range(LAYERS):
        p = f"encoder.layers.{n}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{name}.weight"], sd[p + f"self_attn.{name}.bias"] = (
                w(DIM, DIM, fan_in=DIM),
                small(DIM),
            )
        for qv in ("Q", "V") if lora_rank else ():
            sd[p + f"self_attn.lora_down_{qv}.weight"] = w(lora_rank, DIM, fan_in=DIM)
            sd[p + f"self_attn.lora_up_{qv}.weight"] = w(DIM, lora_rank, fan_in=lora_rank)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + small(DIM), small(DIM)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = w(FFN, DIM, fan_in=DIM), small(FFN)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = w(DIM, FFN, fan_in=FFN), small(DIM)
    sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"] = 1 + small(DIM), small(DIM)
    return sd


def model_cfg(**kw) -> dict:
    cfg = {
        "_name": "av_hubert",
        "encoder_layers": LAYERS,
        "encoder_embed_dim": DIM,
        "encoder_ffn_embed_dim": FFN,
        "encoder_attention_heads": HEADS,
        "layer_norm_first": True,
        "conv_pos": KPOS,
        "conv_pos_groups": GROUPS,
        "activation_fn": "gelu",
        "resnet_relu_type": "prelu",
        "modality_fuse": "concat",
        "sub_encoder_layers": 0,
        "audio_feat_dim": 104,
        "encoder_layerdrop": 0.05,
    }
    return {**cfg, **kw}


def fairseq_checkpoint(state, cfg: dict | None = None, args: Namespace | None = None) -> dict:
    """What fairseq/trainer.py `state_dict` saves (hydra era: cfg dict; legacy: args Namespace)."""
    return {
        "args": args,
        "cfg": None
        if cfg is None
        else {"model": cfg, "task": {"_name": "av_hubert_pretraining", "sample_rate": 25}},
        "model": state,
        "criterion": None,
        "optimizer_history": [
            {"criterion_name": "AVHubertCriterion", "num_updates": 5, "lr": [np.float64(2e-3)]}
        ],
        "task_state": {},
        "extra_state": {"metrics": OrderedDict(train=[(0, "loss", "AverageMeter", {"val": 1.5})])},
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(3)}}},
    }


def reference_forward(sd, clip, heads=HEADS, layer_norm_first=True, lora_scale=2.0, prefix=""):
    """extract_finetune(source={'video': clip[None, None], 'audio': None}) over the raw fairseq keys."""
    p = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    def bn(x, key):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean, var = p[key + ".running_mean"].view(shape), p[key + ".running_var"].view(shape)
        return (x - mean) / torch.sqrt(var + 1e-5) * p[key + ".weight"].view(shape) + p[key + ".bias"].view(
            shape
        )

    def prelu(x, key):
        a = p[key].view((1, -1) + (1,) * (x.dim() - 2))
        return torch.where(x >= 0, x, a * x)

    def ln(x, key):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * p[key + ".weight"] + p[key + ".bias"]

    def lin(x, key):
        return x @ p[key + ".weight"].T + (p[key + ".bias"] if key + ".bias" in p else 0)

    x = F.conv3d(clip[None, None], p[R + "frontend3D.0.weight"], stride=(1, 2, 2), padding=(2, 3, 3))
    x = prelu(bn(x, R + "frontend3D.1"), R + "frontend3D.2.weight")
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    t = x.shape[2]
    x = x[0].permute(1, 0, 2, 3)  # (T, C, H, W)
    for i in range(4):
        for j in range(2):
            b = f"{R}trunk.layer{i + 1}.{j}."
            s = 2 if (i > 0 and j == 0) else 1
            y = prelu(
                bn(F.conv2d(x, p[b + "conv1.weight"], stride=s, padding=1), b + "bn1"), b + "relu1.weight"
            )
            y = bn(F.conv2d(y, p[b + "conv2.weight"], padding=1), b + "bn2")
            if b + "downsample.0.weight" in p:
                x = bn(F.conv2d(x, p[b + "downsample.0.weight"], stride=s), b + "downsample.1")
            x = prelu(y + x, b + "relu2.weight")
    video = lin(x.flatten(2).mean(-1), "feature_extractor_video.proj")  # (T, D)
    x = lin(ln(torch.cat([torch.zeros_like(video), video], -1), "layer_norm"), "post_extract_proj")

    g, v = p["encoder.pos_conv.0.weight_g"], p["encoder.pos_conv.0.weight_v"]
    norm = v.permute(2, 0, 1).reshape(v.shape[2], -1).norm(dim=1).view(1, 1, -1)
    pos = F.conv1d(x.T[None], g * v / norm, p["encoder.pos_conv.0.bias"], padding=KPOS // 2, groups=GROUPS)
    x = x + F.gelu(pos[0, :, :t].T)
    if not layer_norm_first:
        x = ln(x, "encoder.layer_norm")

    def attn(h, a):
        q, k, val = lin(h, a + "q_proj"), lin(h, a + "k_proj"), lin(h, a + "v_proj")
        if a + "lora_down_Q.weight" in p:
            q = q + lora_scale * (h @ p[a + "lora_down_Q.weight"].T @ p[a + "lora_up_Q.weight"].T)
            val = val + lora_scale * (h @ p[a + "lora_down_V.weight"].T @ p[a + "lora_up_V.weight"].T)
        hd = DIM // heads
        out = []
        for n in range(heads):
            sl = slice(n * hd, (n + 1) * hd)
            weights = torch.softmax((q[:, sl] * hd**-0.5) @ k[:, sl].T, -1)
            out.append(weights @ val[:, sl])
        return lin(torch.cat(out, -1), a + "out_proj")

    for n in range(LAYERS):
        b = f"encoder.layers.{n}."

        def ffn(h, b=b):
            return lin(F.gelu(lin(h, b + "fc1")), b + "fc2")

        if layer_norm_first:
            x = x + attn(ln(x, b + "self_attn_layer_norm"), b + "self_attn.")
            x = x + ffn(ln(x, b + "final_layer_norm"))
        else:
            x = ln(x + attn(x, b + "self_attn."), b + "self_attn_layer_norm")
            x = ln(x + ffn(x), b + "final_layer_norm")
    return ln(x, "encoder.layer_norm") if layer_norm_first else x


@pytest.fixture(scope="module")
def state():
    return fairseq_state()


@pytest.fixture(scope="module")
def converted(state, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("avh")
    torch.save(fairseq_checkpoint(state, cfg=model_cfg()), tmp / "tiny_vox_iter5.pt")
    return convert_fairseq_avhubert(tmp / "tiny_vox_iter5.pt", tmp / "avh")


def clips(n: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, t, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_converted_checkpoint_matches_reference_forward(state, converted):
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["format"] == "avsr-avhubert" and cfg["source"] == "tiny_vox_iter5.pt"
    assert (cfg["layers"], cfg["dim"], cfg["heads"], cfg["ffn_dim"], cfg["lora_rank"]) == (
        LAYERS,
        DIM,
        HEADS,
        FFN,
        0,
    )
    assert (cfg["conv_pos"], cfg["conv_pos_groups"], cfg["layer_norm_first"]) == (KPOS, GROUPS, True)
    weights = load_file(str(converted / "model.safetensors"))
    assert not [
        k
        for k in weights
        if k.startswith(("mask_emb", "final_proj", "label_embs", "feature_extractor_audio"))
    ]
    assert "encoder.pos_conv.weight" in weights and not [k for k in weights if "weight_g" in k]

    encoder = AVHubertVideoEncoder.from_dir(converted)
    assert encoder.dim == DIM and not any(p.requires_grad for p in encoder.parameters())
    video = clips(1, 9)
    (out,) = encoder(video)
    assert out.shape == (9, DIM)  # one output frame per input frame: 25 Hz in, 25 Hz out
    torch.testing.assert_close(out, reference_forward(state, video[0]), atol=1e-5, rtol=1e-5)


def test_legacy_args_namespace_and_post_ln(tmp_path):
    """A checkpoint whose config is an argparse.Namespace (pre-hydra fairseq), post-LN layers."""
    sd = fairseq_state(seed=3)
    args = Namespace(**model_cfg(layer_norm_first=False, encoder_attention_heads=2))
    torch.save(fairseq_checkpoint(sd, args=args), tmp_path / "legacy.pt")
    encoder = AVHubertVideoEncoder.from_dir(
        convert_fairseq_avhubert(tmp_path / "legacy.pt", tmp_path / "out")
    )
    assert (encoder.config.layer_norm_first, encoder.config.heads) == (False, 2)
    video = clips(1, 6, seed=4)
    expected = reference_forward(sd, video[0], heads=2, layer_norm_first=False)
    torch.testing.assert_close(encoder(video)[0], expected, atol=1e-5, rtol=1e-5)


def test_padded_batch_equals_one_by_one(converted):
    encoder = AVHubertVideoEncoder.from_dir(converted)
    a, b = clips(1, 7, seed=5), clips(1, 4, seed=6)
    batch = torch.cat([a, torch.cat([b, 50 * torch.randn(1, 3, SIZE, SIZE)], 1)])  # garbage in the padding
    out = encoder(batch, lengths=[7, 4])
    assert [o.shape[0] for o in out] == [7, 4]
    torch.testing.assert_close(out[0], encoder(a)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], encoder(b)[0], atol=1e-5, rtol=1e-5)
    lengths = torch.tensor([7, 4])
    for video in (batch.unsqueeze(1), batch.unsqueeze(2)):  # (B, 1, T, H, W) and (B, T, 1, H, W) alike
        torch.testing.assert_close(encoder(video, lengths=lengths)[1], out[1])
    with pytest.raises(ValueError, match="lengths"):
        encoder(batch, lengths=[8, 4])


def test_lora_in_attention_from_llama_avsr_layout(tmp_path):
    """Llama-AVSR VSR .pth layout: `video_encoder.` + fairseq keys + lora_{down,up}_{Q,V}, scale 2."""
    rank = 4
    sd = fairseq_state(seed=7, lora_rank=rank)
    pth = {f"video_encoder.{k}": v for k, v in sd.items()} | {"video_proj.0.weight": torch.zeros(2, 2)}
    ours = avhubert_state_from_fairseq(pth, prefix="video_encoder.")
    config = infer_config(ours, {"encoder_attention_heads": HEADS})
    assert (config.lora_rank, config.lora_scale) == (rank, 2.0)
    encoder = AVHubertVideoEncoder.from_dir(save_avhubert(tmp_path / "lora", config, ours))
    assert sum(p.numel() for p in encoder.lora_parameters()) == LAYERS * 4 * DIM * rank
    video = clips(1, 5, seed=8)
    with_lora = encoder(video)[0]
    torch.testing.assert_close(with_lora, reference_forward(sd, video[0]), atol=1e-5, rtol=1e-5)

    plain = {k: v for k, v in sd.items() if ".lora_" not in k}
    assert (with_lora - reference_forward(plain, video[0])).abs().max() > 1e-3  # the LoRA does something
    zero_up = {k: torch.zeros_like(v) if ".lora_up_" in k else v for k, v in ours.items()}
    encoder.load_state_dict(zero_up)  # B = 0: LoRA on equals LoRA off
    no_lora = AVHubertVideoEncoder(
        infer_config(avhubert_state_from_fairseq(plain), {"encoder_attention_heads": HEADS})
    )
    no_lora.load_state_dict(avhubert_state_from_fairseq(plain))
    torch.testing.assert_close(encoder(video)[0], no_lora.eval()(video)[0], atol=1e-6, rtol=1e-6)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"model": {"x": torch.zeros(1)}, "cfg": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refusing to load global '(posix|os|nt)\.system'"):
        convert_fairseq_avhubert(tmp_path / "evil.pt", tmp_path / "out")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": Exploit()}))  # a bare (non-zip) pickle
    with pytest.raises(CheckpointError, match="refusing to load global"):
        convert_fairseq_avhubert(tmp_path / "evil.pkl", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_fairseq_and_omegaconf_objects_stay_inert(tmp_path, state, monkeypatch):
    """A cfg pickled as an omegaconf object and a task state holding fairseq Dictionary objects load without
    omegaconf/fairseq: they become inert records, and the shapes decide the sizes."""
    calls = []

    def fake_class(module, name):
        cls = type(name, (), {"__setstate__": lambda self, s: calls.append(s), "__module__": module})
        mod = types.ModuleType(module)
        setattr(mod, name, cls)
        return cls, mod

    before = sys.modules.get("omegaconf")
    DictConfig, dictconfig = fake_class("omegaconf.dictconfig", "DictConfig")
    Dictionary, dictionary = fake_class("fairseq.data.dictionary", "Dictionary")
    with monkeypatch.context() as m:  # the packages exist only while saving
        for name, mod in [("omegaconf", types.ModuleType("omegaconf")), ("omegaconf.dictconfig", dictconfig)]:
            m.setitem(sys.modules, name, mod)
        for name in ("fairseq", "fairseq.data"):
            m.setitem(sys.modules, name, types.ModuleType(name))
        m.setitem(sys.modules, "fairseq.data.dictionary", dictionary)
        cfg, vocab = DictConfig(), Dictionary()
        cfg.__dict__["_content"] = {"encoder_layers": 99}
        vocab.__dict__["symbols"] = ["<s>", "<pad>"]
        ckpt = {"args": None, "cfg": cfg, "model": state, "task_state": {"dictionaries": [vocab]}}
        torch.save(ckpt, tmp_path / "inert.pt")
    encoder = AVHubertVideoEncoder.from_dir(convert_fairseq_avhubert(tmp_path / "inert.pt", tmp_path / "out"))
    assert not calls and sys.modules.get("omegaconf") is before  # nothing imported, no class code ran
    assert (encoder.config.layers, encoder.config.dim, encoder.config.layer_norm_first) == (LAYERS, DIM, True)


def test_mismatches_are_reported(tmp_path, state):
    torch.save(fairseq_checkpoint(state, cfg=model_cfg(encoder_layers=24)), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="encoder_layers=24"):
        convert_fairseq_avhubert(tmp_path / "bad.pt", tmp_path / "out")
    torch.save({"model": {"encoder.w2v_model.encoder.layer_norm.weight": torch.ones(2)}}, tmp_path / "ft.pt")
    with pytest.raises(CheckpointError, match="fine-tuned"):
        convert_fairseq_avhubert(tmp_path / "ft.pt", tmp_path / "out")
    broken = dict(avhubert_state_from_fairseq(state))
    del broken["encoder.layers.1.fc2.bias"]
    with pytest.raises(CheckpointError, match="missing"):
        save_avhubert(tmp_path / "out", infer_config(avhubert_state_from_fairseq(state)), broken)


def _resnet18_params() -> int:
    n = 64 * 245 + 3 * 64  # stem conv, BN (weight, bias), PReLU
    cin = 64
    for i, w in enumerate((64, 128, 256, 512)):
        for j in range(2):
            a = cin if j == 0 else w
            n += a * w * 9 + w * w * 9 + 6 * w + (a * w + 2 * w if (i > 0 and j == 0) else 0)
        cin = w
    return n


@pytest.mark.parametrize(
    "preset,dim,layers,ffn,heads,published",
    [(AVHubertConfig.large, 1024, 24, 4096, 16, 325e6), (AVHubertConfig.base, 768, 12, 3072, 12, 103e6)],
)
def test_presets_parameter_counts(preset, dim, layers, ffn, heads, published):
    config = preset()
    sizes = (config.dim, config.layers, config.ffn_dim, config.heads, config.layer_norm_first)
    assert sizes == (dim, layers, ffn, heads, True)
    with torch.device("meta"):
        encoder = AVHubertVideoEncoder(config)
        lora = AVHubertVideoEncoder(preset(lora_rank=round(dim / 16)))
    count = sum(p.numel() for p in encoder.parameters())
    layer = 4 * (dim * dim + dim) + 2 * dim * ffn + ffn + dim + 4 * dim
    front = _resnet18_params() + 512 * dim + dim + 4 * dim + 2 * dim * dim + dim
    assert count == front + dim * (dim // 16) * 128 + dim + layers * layer + 2 * dim
    assert abs(count - published) / published < 0.01  # AV-HuBERT paper: Base 103M, Large 325M
    # LoRA r = round(dim / 16): Large 6.29M, as Llama-AVSR's trainable-parameter count implies
    r = round(dim / 16)
    assert sum(p.numel() for p in lora.parameters()) - count == layers * 4 * dim * r
    block = lora.encoder.layers[0]
    assert block.self_attn.lora_down_Q.weight.shape == (r, dim)
    assert block.fc1.weight.shape == (ffn, dim) and block.self_attn.heads == heads


def test_load_video_encoder_and_registry(converted):
    from avsr_cli.checkpoints.download import CONVERTERS

    assert "avhubert-fairseq" in CONVERTERS
    enc = load_video_encoder(EncoderConfig(kind="avhubert", source=converted.name, dim=DIM), converted.parent)
    assert isinstance(enc, AVHubertVideoEncoder) and not enc.training
    with pytest.raises(CheckpointError, match="width 32"):
        load_video_encoder(EncoderConfig(kind="avhubert", source=str(converted), dim=1024))
