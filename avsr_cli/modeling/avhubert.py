"""AV-HuBERT (Large / Base) as a frozen video encoder in plain torch, and conversion of fairseq checkpoints.

What is reproduced (reference: facebookresearch/av_hubert avhubert/hubert.py `AVHubertModel.extract_finetune`
with `source={"video": x, "audio": None}`, as Llama-AVSR models/modeling_AVSRLLM.py `encode_video` and
Omni-AVSR Omni_AVSR/modeling_OmniAVSR.py call it):
  mouth clip (B, 1, T, 88, 88) -> ResNet-18 front end -> Linear(512, D) -> concat [zeros(D) | video(D)]
  -> LayerNorm(2D) -> post_extract_proj Linear(2D, D) -> transformer encoder -> (B, T, D) at 25 Hz.
The state-dict keys are fairseq's own (`feature_extractor_video.resnet.frontend3D.0.weight`,
`encoder.layers.N.self_attn.q_proj.weight`, ...), except the weight-normed positional convolution, which is
folded into one plain `encoder.pos_conv.weight` at conversion.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .encoders import read_safetensors

FORMAT_NAME = "avsr-avhubert"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# Input: 25 fps grey mouth crops, 88x88, (x/255 - 0.421) / 0.165 (mouth.video_model_input). Llama-AVSR
# datamodule/transforms.py VideoTransform("test"): x/255 -> CenterCrop(88) -> Grayscale() -> Normalize(0.421,
# 0.165); the values are av_hubert avhubert/hubert_pretraining.py image_crop_size/image_mean/image_std. One
# output frame per input frame (no temporal stride anywhere), so 25 Hz in -> 25 Hz out.
# av_hubert avhubert/resnet.py ResEncoder: 64 stem channels, ResNet-18 trunk (BasicBlock x [2, 2, 2, 2]) with
# widths 64/128/256/512 (fixed in the reference, not configurable).
RESNET_WIDTHS = (64, 128, 256, 512)
# Pretraining-only parts of AVHubertModel, unused by extract_finetune without audio: mask embedding, the
# HuBERT target projection/codebook, and the audio front end (audio is replaced by zeros).
PRELU_KEY = "feature_extractor_video.resnet.frontend3D.2.weight"  # PReLU has weights, ReLU none
PRETRAIN_ONLY = ("mask_emb", "final_proj.", "label_embs_concat", "target_glu.", "feature_extractor_audio.")


@dataclass
class AVHubertConfig:
    """Sizes of an AV-HuBERT encoder (names after av_hubert avhubert/hubert.py AVHubertConfig)."""

    layers: int = 24  # encoder_layers
    dim: int = 1024  # encoder_embed_dim
    heads: int = 16  # encoder_attention_heads
    ffn_dim: int = 4096  # encoder_ffn_embed_dim
    layer_norm_first: bool = True  # pre-LN layers + final LayerNorm (both pretrain yamls set it true)
    conv_pos: int = 128  # positional conv kernel (wav2vec2 TransformerEncoder)
    conv_pos_groups: int = 16
    resnet_relu: str = "prelu"  # resnet_relu_type: "prelu" (default) or "relu"
    fuse: str = "concat"  # modality_fuse: "concat" (both pretrain yamls) or "add"
    lora_rank: int = 0  # r of the LoRA on q/v inside attention; 0 = none. Reference: round(dim/16)
    lora_scale: float = 2.0  # Llama-AVSR / Omni-AVSR `scaling_lora = 2`

    @classmethod
    def large(cls, **kw: Any) -> AVHubertConfig:
        """av_hubert avhubert/conf/pretrain/large_vox_iter5.yaml: 24 layers, 1024, FFN 4096, 16 heads."""
        return cls(**kw)

    @classmethod
    def base(cls, **kw: Any) -> AVHubertConfig:
        """base_vox_iter5.yaml: AVHubertConfig defaults, 12 layers, 768, FFN 3072, 12 heads; pre-LN."""
        return cls(**{"layers": 12, "dim": 768, "heads": 12, "ffn_dim": 3072, **kw})

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AVHubertConfig:
        data = dict(data)
        if data.pop("format", None) != FORMAT_NAME:
            raise CheckpointError(f"not an AV-HuBERT config (format must be '{FORMAT_NAME}')")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _act(kind: str, channels: int) -> nn.Module:
    return nn.PReLU(channels) if kind == "prelu" else nn.ReLU()


class BasicBlock(nn.Module):
    """ResNet BasicBlock (av_hubert avhubert/resnet.py): 3x3 convs, BN, PReLU, 1x1-conv+BN shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1, self.relu1 = nn.BatchNorm2d(cout), _act(act, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), _act(act, cout)
        self.downsample = None
        if stride != 1 or cin != cout:  # downsample_basic_block (avg_pool_downsample is off)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + (x if self.downsample is None else self.downsample(x)))


class ResNetFrontEnd(nn.Module):
    """3-D stem + 2-D ResNet-18 per frame: (B, 1, T, H, W) -> (B, T, 512)."""

    def __init__(self, act: str) -> None:
        super().__init__()
        # resnet.py ResEncoder.frontend3D: Conv3d(1, 64, (5, 7, 7), stride (1, 2, 2), padding (2, 3, 3),
        # no bias), BatchNorm3d, PReLU(64), MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)).
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, RESNET_WIDTHS[0], (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False),
            nn.BatchNorm3d(RESNET_WIDTHS[0]),
            _act(act, RESNET_WIDTHS[0]),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        )
        layers, cin = OrderedDict(), RESNET_WIDTHS[0]
        for i, width in enumerate(RESNET_WIDTHS):
            stride = 1 if i == 0 else 2
            layers[f"layer{i + 1}"] = nn.Sequential(
                BasicBlock(cin, width, stride, act), BasicBlock(width, width, 1, act)
            )
            cin = width
        self.trunk = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[2]
        x = self.frontend3D(x).transpose(1, 2).flatten(0, 1)  # (B*T, 64, H', W'): frames to the 2-D trunk
        return self.trunk(x).mean((2, 3)).view(b, t, -1)  # AdaptiveAvgPool2d(1)


class VideoFeatures(nn.Module):
    """hubert.py SubModel for video: ResEncoder then Linear(512, D) (no sub-encoder)."""

    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        self.resnet = ResNetFrontEnd(config.resnet_relu)
        self.proj = nn.Linear(RESNET_WIDTHS[-1], config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.resnet(x))


class SelfAttention(nn.Module):
    """fairseq MultiheadAttention (self-attention, biases, q scaled by head_dim**-0.5) with optional LoRA.

    LoRA as Llama-AVSR's vendored fairseq/modules/multihead_attention.py `forward_lora`:
    q = q_proj(x) + s * lora_up_Q(lora_down_Q(x)), v = v_proj(x) + s * lora_up_V(lora_down_V(x)), s = 2,
    before the usual query scaling; the four Linear layers have no bias.
    """

    def __init__(self, dim: int, heads: int, lora_rank: int = 0, lora_scale: float = 2.0) -> None:
        super().__init__()
        self.heads, self.lora_scale = heads, lora_scale
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.lora = lora_rank > 0
        if self.lora:
            self.lora_down_Q = nn.Linear(dim, lora_rank, bias=False)
            self.lora_up_Q = nn.Linear(lora_rank, dim, bias=False)
            self.lora_down_V = nn.Linear(dim, lora_rank, bias=False)
            self.lora_up_V = nn.Linear(lora_rank, dim, bias=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.lora:
            q = q + self.lora_scale * self.lora_up_Q(self.lora_down_Q(x))
            v = v + self.lora_scale * self.lora_up_V(self.lora_down_V(x))
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        mask = None if keep is None else keep[:, None, None, :]  # key_padding_mask: padded keys get no weight
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """fairseq wav2vec2.py TransformerSentenceEncoderLayer (GELU FFN, LayerNorm eps 1e-5)."""

    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        c = config
        self.layer_norm_first = c.layer_norm_first
        self.self_attn = SelfAttention(c.dim, c.heads, c.lora_rank, c.lora_scale)
        self.self_attn_layer_norm = nn.LayerNorm(c.dim)
        self.fc1, self.fc2 = nn.Linear(c.dim, c.ffn_dim), nn.Linear(c.ffn_dim, c.dim)
        self.final_layer_norm = nn.LayerNorm(c.dim)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x).float()).type_as(x))  # fairseq/modules/gelu.py: GELU in float32

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:  # x + attn(LN(x)); x + ffn(LN(x))
            x = x + self.self_attn(self.self_attn_layer_norm(x), keep)
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.self_attn(x, keep))
        return self.final_layer_norm(x + self._ffn(x))


class TransformerEncoder(nn.Module):
    """fairseq wav2vec2.py TransformerEncoder: conv positional embedding, layers, LayerNorm."""

    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        c = config
        # Conv1d(D, D, k=128, padding=64, groups=16) under weight_norm(dim=2), SamePad (drops the last frame
        # for an even kernel), GELU. Weight norm is folded into this plain weight at conversion.
        self.pos_conv = nn.Conv1d(c.dim, c.dim, c.conv_pos, padding=c.conv_pos // 2, groups=c.conv_pos_groups)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.layers))
        self.layer_norm = nn.LayerNorm(c.dim)
        self.layer_norm_first = c.layer_norm_first

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if keep is not None:  # extract_features: index_put(x, padding_mask, 0)
            x = x.masked_fill(~keep[..., None], 0.0)
        pos = self.pos_conv(x.transpose(1, 2))
        if self.pos_conv.kernel_size[0] % 2 == 0:
            pos = pos[..., :-1]
        x = x + F.gelu(pos).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x, keep)
        # With output_layer=None (extract_finetune's default) a pre-LN encoder ends with its LayerNorm.
        return self.layer_norm(x) if self.layer_norm_first else x


class AVHubertVideoEncoder(nn.Module):
    """AV-HuBERT video-only encoder: normalised mouth clips -> per-clip frames (T_i, dim) at 25 Hz.

    Clips in a batch are padded to the longest: padded input frames are zeroed (so the temporal 3-D conv sees
    what it sees at a clip's end alone), and padded frames are zeroed before the positional conv and masked
    from attention, so a batch gives each clip what it gets alone. The reference passes no padding mask
    (Llama-AVSR `encode_video`); it matches this encoder for unpadded clips (e.g. batch size 1).
    """

    def __init__(self, config: AVHubertConfig) -> None:
        super().__init__()
        self.config, self.dim = config, config.dim
        self.feature_extractor_video = VideoFeatures(config)
        embed = 2 * config.dim if config.fuse == "concat" else config.dim
        self.layer_norm = nn.LayerNorm(embed)
        self.post_extract_proj = nn.Linear(embed, config.dim) if embed != config.dim else None
        self.encoder = TransformerEncoder(config)

    @classmethod
    def from_dir(cls, model_dir: Path, weights: Path | None = None) -> AVHubertVideoEncoder:
        """Load a directory written by `save_avhubert` (config.json + model.safetensors, or `weights`)."""
        model_dir = Path(model_dir)
        try:
            config = AVHubertConfig.from_dict(json.loads((model_dir / CONFIG_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{model_dir}: cannot read the AV-HuBERT config ({exc})") from None
        path = Path(weights) if weights is not None else model_dir / WEIGHTS_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: AV-HuBERT weights not found")
        state = read_safetensors([path])
        check_state(config, state, str(path))
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state, strict=True, assign=True)
        model.requires_grad_(False)
        return model.eval()

    def lora_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if ".lora_" in n)

    def features(self, video: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised frames (B, T, H, W), (B, 1, T, H, W) or (B, T, 1, H, W) -> (B, T, dim).

        Frames past `lengths` are padding. One channel, so (B, T, 1, H, W) is reshaped as Llama-AVSR
        `encode_video` does with torch.reshape.
        """
        if video.dim() == 4 or (video.dim() == 5 and 1 in video.shape[1:3]):
            video = video.reshape(video.shape[0], 1, -1, *video.shape[-2:])
        else:
            raise ValueError(f"expected grey mouth clips (B, T, H, W), got {tuple(video.shape)}")
        param = self.encoder.layer_norm.weight
        video = video.to(param.device, param.dtype)
        t = video.shape[2]
        keep = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=video.device)
            if lengths.shape != (video.shape[0],) or not bool(((lengths >= 1) & (lengths <= t)).all()):
                raise ValueError(f"lengths {lengths.tolist()} do not fit a batch of {tuple(video.shape)}")
            keep = torch.arange(t, device=video.device)[None, :] < lengths[:, None]
            video = video.masked_fill(~keep[:, None, :, None, None], 0.0)
            keep = None if bool(keep.all()) else keep
        v = self.feature_extractor_video(video)  # (B, T, D)
        # extract_finetune, audio None: audio features are zeros, fused as cat([audio, video]) (or added).
        x = torch.cat([torch.zeros_like(v), v], -1) if self.config.fuse == "concat" else v
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(x, keep)

    def forward(
        self, video: torch.Tensor, lengths: list[int] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Per-clip encoder frames [(T_i, dim)], one per input frame (25 Hz)."""
        out = self.features(video, lengths)
        n = [out.shape[1]] * out.shape[0] if lengths is None else [int(x) for x in lengths]
        return [out[i, :k] for i, k in enumerate(n)]


# ---- conversion from fairseq -------------------------------------------------------------------------------


def check_state(config: AVHubertConfig, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise CheckpointError unless `state` has exactly the keys and shapes of the encoder `config` builds."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in AVHubertVideoEncoder(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{where}: AV-HuBERT weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]})"
        )


def encode_mouth_clips(encoder: AVHubertVideoEncoder, clips: list[Any]) -> list[torch.Tensor]:
    """Frozen AV-HuBERT frames (25 Hz) of mouth-crop clips ((T, 96, 96) uint8), encoded as one padded batch
    under no_grad (not inference_mode: training feeds the frames into a graph)."""

    param = next(encoder.parameters())
    inputs = [video_model_input(c) for c in clips]
    lengths = [x.shape[0] for x in inputs]
    batch = torch.zeros(len(inputs), max(lengths), *inputs[0].shape[1:])
    for k, x in enumerate(inputs):
        batch[k, : x.shape[0]] = x
    with torch.no_grad():
        return [f.detach() for f in encoder(batch.to(param.device, param.dtype), lengths)]


# auto_avsr datamodule/transforms.py VideoTransform("test"): x / 255, CenterCrop(88), Grayscale,
# Normalize(0.421, 0.165) (the same values as AV-HuBERT's image_mean / image_std).
MODEL_CROP = 88
MODEL_MEAN, MODEL_STD = 0.421, 0.165


# torchvision's rgb_to_grayscale weights (transforms.Grayscale on a float tensor), which auto_avsr's
# VideoTransform applies; ITU-R 601 rounded differently from OpenCV's 0.299.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def video_model_input(crops: np.ndarray):
    """The video encoder's input from mouth crops: float32 tensor (T, 1, 88, 88), in the order of auto_avsr's
    datamodule/transforms.py VideoTransform("test"): x / 255, the centre 88x88, grey in float (GRAY_WEIGHTS),
    normalised with mean 0.421 and std 0.165. Takes (T, 96, 96, 3) RGB crops (as the released data were
    saved) or (T, 96, 96) grey ones (already grey: used as they are), uint8."""
    x = torch.as_tensor(np.asarray(crops)).float() / 255.0
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] != 3):
        raise ValueError(f"mouth crops must be (T, H, W, 3) or (T, H, W), got {tuple(x.shape)}")
    h, w = x.shape[1:3]
    # torchvision CenterCrop: top = int(round((h - 88) / 2)), left likewise
    top, left = int(round((h - MODEL_CROP) / 2.0)), int(round((w - MODEL_CROP) / 2.0))
    x = x[:, top : top + MODEL_CROP, left : left + MODEL_CROP]
    if x.ndim == 4:
        r, g, b = x.unbind(-1)
        x = GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b  # rgb_to_grayscale's expression
    return ((x - MODEL_MEAN) / MODEL_STD).unsqueeze(1).contiguous()
