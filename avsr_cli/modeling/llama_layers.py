"""The layers of avsr's Llama decoder (modeling/llama.py): RMSNorm, the fused attention and MLP projections
(plain or packed for oneDNN), a layer and the body holding them, under LlamaForCausalLM's parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .llama_config import LlamaSettings


class RMSNorm(nn.Module):
    """LlamaRMSNorm: normalised in float32, scaled in the input's dtype."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def product(x: torch.Tensor, weight: torch.Tensor, narrow: bool = False) -> torch.Tensor:
    """x @ weight.T in the weight's dtype, returned in x's: with bfloat16 matrices under a float32 residual
    stream (`LlamaDecoder.from_dir(matrices=...)`), only the products round; with one dtype it is F.linear.
    `narrow`: left in the weight's dtype, for a caller whose next float32 operation widens it exactly as
    `.to` would (type promotion converts each operand before the arithmetic)."""
    out = F.linear(x.to(weight.dtype), weight)
    return out if narrow else out.to(x.dtype)


def can_pack(dtype: torch.dtype) -> bool:
    """Whether matrices of `dtype` can be packed for oneDNN's products (PackedMatrix) in this torch build."""
    return dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()


class PackedMatrix(nn.Module):
    """A bfloat16 matrix in oneDNN's blocked layout, packed once: F.linear on a plain bfloat16 matrix on a
    CPU reorders it into that layout on every call, most of a product's time at one row. The products are
    bit-identical (tests/test_llama.py); SmolLM2-135M's matrices took 22 instead of 35 ms a token."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.dtype = weight.dtype
        # batch-size hint 1: the layout for one row at a time, which is also fastest at 16 and 128 rows
        self.matrix = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)

    def forward(self, x: torch.Tensor, narrow: bool = False) -> torch.Tensor:
        out = torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.matrix, None, "none", [], "")
        return out if narrow else out.to(x.dtype)

    def dense(self) -> torch.Tensor:
        return self.matrix.to_dense()


def apply(layer: nn.Module, x: torch.Tensor, narrow: bool = False) -> torch.Tensor:
    """x times a projection: a bias-free nn.Linear or a PackedMatrix (`narrow`: as in `product`)."""
    if isinstance(layer, PackedMatrix):
        return layer.forward(x, narrow)
    return product(x, layer.weight, narrow)


class GivenLinear(nn.Linear):
    """An nn.Linear whose weight is given after it is built (on the meta device): no random initialisation,
    which even on the meta device runs kaiming_uniform_ through torch's Python decompositions (~0.1 ms each,
    210 of them in SmolLM2-135M)."""

    def reset_parameters(self) -> None:
        pass


def linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free Linear holding `weight`."""
    layer = GivenLinear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    return layer


class Fused(nn.Module):
    """Linear layers on the same input computed as one matrix product: the named layers' weights are views of
    one matrix (so writing into one, as the LoRA merge does, writes into the product's weight). A move or cast
    of the module separates them; `weight()` then joins them again. Packed (`pack`), the joined matrix is one
    PackedMatrix and the named layers are gone."""

    def __init__(self, names: tuple[str, ...], sizes: list[int], weights: dict[str, torch.Tensor]) -> None:
        """`names` with their row counts `sizes`; `weights`: the named layers' weights and under "joined"
        optionally the matrix they are views of (in `names` order), or only that matrix."""
        super().__init__()
        self.names = names
        self.packed: PackedMatrix | None = None
        joined = weights.get("joined")
        if joined is not None and names[0] not in weights:
            weights = dict(zip(names, joined.split(sizes), strict=True))
        self.sizes = [weights[n].shape[0] for n in names]
        for name in names:
            setattr(self, name, linear(weights[name]))
        self._joined: torch.Tensor | None = None
        self.join(joined)

    def product(self, x: torch.Tensor, narrow: bool = False) -> torch.Tensor:
        if self.packed is not None:
            return self.packed.forward(x, narrow)
        return product(x, self.weight(), narrow)

    def pack(self) -> None:
        self.packed = PackedMatrix(self.weight())
        for name in self.names:
            delattr(self, name)
        self._joined = None

    def dense_weights(self) -> dict[str, torch.Tensor]:
        """{"q_proj.weight": ...}: the named layers' weights (unpacked copies when packed)."""
        if self.packed is None:
            return {f"{n}.weight": getattr(self, n).weight for n in self.names}
        parts = self.packed.dense().split(self.sizes)
        return {f"{n}.weight": w for n, w in zip(self.names, parts, strict=True)}

    def join(self, joined: torch.Tensor | None = None) -> torch.Tensor:
        if joined is None or not self._views_of(joined):
            joined = torch.cat([getattr(self, n).weight.detach() for n in self.names])
        start = 0
        for name, size in zip(self.names, self.sizes, strict=True):
            getattr(self, name).weight.data = joined[start : start + size]
            start += size
        self._joined = joined
        return joined

    def weight(self) -> torch.Tensor:
        """The joined matrix, joined again if a move or cast separated the layers' weights from it (packed:
        an unpacked copy)."""
        if self.packed is not None:
            return self.packed.dense()
        joined = self._joined
        if joined is None or not self._views_of(joined):
            joined = self.join()
        return joined

    def _views_of(self, joined: torch.Tensor) -> bool:
        start = 0
        for name, size in zip(self.names, self.sizes, strict=True):
            w = getattr(self, name).weight
            if w.data_ptr() != joined[start : start + size].data_ptr() or w.dtype != joined.dtype:
                return False
            start += size
        return True


QKV, GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")


class Attention(Fused):
    def __init__(self, weights: dict[str, torch.Tensor], s: LlamaSettings) -> None:
        kv = s.num_key_value_heads * s.head_dim
        super().__init__(QKV, [s.num_attention_heads * s.head_dim, kv, kv], weights)
        self.o_proj: nn.Module = linear(weights["o_proj"])

    def pack(self) -> None:
        super().pack()
        self.o_proj = PackedMatrix(self.o_proj.weight)


class MLP(Fused):
    def __init__(self, weights: dict[str, torch.Tensor], s: LlamaSettings) -> None:
        super().__init__(GATE_UP, [s.intermediate_size] * 2, weights)
        self.down_proj: nn.Module = linear(weights["down_proj"])

    def pack(self) -> None:
        super().pack()
        self.down_proj = PackedMatrix(self.down_proj.weight)


def part(w: dict[str, torch.Tensor], module: str) -> dict[str, torch.Tensor]:
    """{"q_proj": ..., "joined": ...} from {"self_attn.q_proj.weight": ..., "self_attn.joined": ...}."""
    return {k.split(".")[1]: v for k, v in w.items() if k.startswith(module + ".")}


class Layer(nn.Module):
    def __init__(self, w: dict[str, torch.Tensor], s: LlamaSettings) -> None:
        super().__init__()
        self.self_attn = Attention(part(w, "self_attn"), s)
        self.mlp = MLP(part(w, "mlp"), s)
        self.input_layernorm = RMSNorm(w["input_layernorm.weight"], s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(w["post_attention_layernorm.weight"], s.rms_norm_eps)


class Body(nn.Module):
    """LlamaModel's parameters (`model.` in LlamaForCausalLM)."""

    def __init__(self, embed: torch.Tensor, layers: list[Layer], norm: RMSNorm) -> None:
        super().__init__()
        # given its weight: nn.Embedding's own random init on the meta device imports torch._dynamo (1.4 s)
        self.embed_tokens = nn.Embedding(embed.shape[0], embed.shape[1], _weight=embed, _freeze=True)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
