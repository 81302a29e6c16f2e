"""A Llama decoder for inference: what transformers' LlamaForCausalLM computes for a plain Llama config
(RMSNorm, rotary embedding with default frequencies, grouped-query attention, SiLU MLP), read from a Hugging
Face directory (config.json + safetensors) without importing transformers, and a greedy decoding loop over a
preallocated key/value cache.

transformers builds the model in seconds (its imports, then a random initialisation of every matrix) and
runs each token through layers of generic Python (cache objects, mask builders, output records); for the
built-in model's 135 M parameters that overhead is most of a token's time on a CPU. Parameter names are
LlamaForCausalLM's, so the LoRA merge, the added-token rows and state dicts address the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .llama_config import LlamaSettings, SafetensorsReader, expected_shapes, unsupported
from .llama_layers import GATE_UP, QKV, Body, GivenLinear, Layer, PackedMatrix, RMSNorm, apply, product

__all__ = ["LlamaDecoder", "LlamaSettings", "unsupported"]


@dataclass
class Output:
    logits: torch.Tensor


@dataclass
class KVCache:
    """Keys and values of every layer, (layers, batch, kv_heads, capacity, head_dim) each, allocated once."""

    keys: torch.Tensor
    values: torch.Tensor


class LlamaDecoder(nn.Module):
    """LlamaForCausalLM's inference forward for a plain Llama config; greedy decoding on a static cache."""

    def __init__(self, settings: LlamaSettings, weights: dict[str, torch.Tensor]) -> None:
        """`weights`: LlamaForCausalLM's state dict (`lm_head.weight` may be absent when tied)."""
        super().__init__()
        s = self.config = settings
        layers = []
        for i in range(s.num_hidden_layers):
            prefix = f"model.layers.{i}."
            layers.append(Layer({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, s))
        embed = weights["model.embed_tokens.weight"]
        self.model = Body(embed, layers, RMSNorm(weights["model.norm.weight"], s.rms_norm_eps))
        head = embed if s.tie_word_embeddings else weights["lm_head.weight"]
        self.lm_head = GivenLinear(s.hidden_size, head.shape[0], bias=False, device="meta")
        if s.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        else:
            self.lm_head.weight = nn.Parameter(head, requires_grad=False)
        d = s.head_dim
        inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float) / d))
        self.register_buffer("inv_freq", inv_freq.to(embed.device), persistent=False)
        self.head: PackedMatrix | None = None  # the output layer, packed (`pack`)
        self.steps_before_packing: int | None = None  # pack_after
        self.requires_grad_(False)

    @property
    def stream_dtype(self) -> torch.dtype:
        """The dtype of the residual stream, the norms and the key/value cache (the matrices may be stored in
        a narrower one: `from_dir(matrices=...)`)."""
        return self.model.norm.weight.dtype

    @property
    def layers_packed(self) -> bool:
        """Whether the layers' matrices are packed (`pack` packs them all at once)."""
        return any(layer.mlp.packed is not None for layer in self.model.layers)

    @property
    def packed(self) -> bool:
        """Whether any matrix is packed (`pack`): the plain ones are gone, and with them `stored_state`."""
        return self.layers_packed or self.head is not None

    def pack(self, head: bool = True) -> None:
        """The bfloat16 matrices packed for oneDNN's products (PackedMatrix): the layers' (each replaces its
        plain matrix), and with `head` the output layer as a packed copy (the embedding stays for lookups)."""
        if not self.layers_packed:
            for layer in self.model.layers:
                layer.self_attn.pack()
                layer.mlp.pack()
        if head and self.head is None:
            self.head = PackedMatrix(self.lm_head.weight)

    def pack_after(self, steps: int) -> None:
        """Pack (`pack`) everything once this model has run `steps` decoding steps, the output layer included:
        its packed copy of the embedding costs memory (57 MB for SmolLM2-135M), which only a long file's
        steps repay."""
        self.steps_before_packing = steps

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden) if self.head is not None else product(hidden, self.lm_head.weight)

    def dense_state(self) -> dict[str, torch.Tensor]:
        """LlamaForCausalLM's state dict, packed matrices unpacked into copies."""
        state = dict(self.state_dict())
        for i, layer in enumerate(self.model.layers):
            p = f"model.layers.{i}."
            for module, fused, out in (
                ("self_attn", layer.self_attn, "o_proj"),
                ("mlp", layer.mlp, "down_proj"),
            ):
                state |= {f"{p}{module}.{k}": v for k, v in fused.dense_weights().items()}
                if isinstance(projection := getattr(fused, out), PackedMatrix):
                    state[f"{p}{module}.{out}.weight"] = projection.dense()
        return state

    def stored_state(self) -> dict[str, torch.Tensor]:
        """The tensors that rebuild this model (`LlamaDecoder(settings, state)`), each stored once: the joined
        matrices instead of their views, a tied output layer not at all. Not for a packed model."""
        if self.packed:
            raise ValueError("a packed decoder's matrices are not stored")
        views = tuple(f".{n}.weight" for n in (*QKV, *GATE_UP))
        state = {
            name: tensor
            for name, tensor in self.state_dict().items()
            if not name.endswith(views) and not (name == "lm_head.weight" and self.config.tie_word_embeddings)
        }
        for i, layer in enumerate(self.model.layers):
            state[f"model.layers.{i}.self_attn.joined"] = layer.self_attn.weight()
            state[f"model.layers.{i}.mlp.joined"] = layer.mlp.weight()
        return state

    # -- what AVSRModel and the LoRA merge use ------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @classmethod
    def from_dir(
        cls,
        model_dir: Path,
        dtype: torch.dtype = torch.float32,
        weights: Path | None = None,
        n_tokens: int | None = None,
        matrices: torch.dtype | None = None,
    ) -> LlamaDecoder:
        """The model of a Hugging Face directory (config.json + safetensors, or `weights` in their place),
        its embedding grown to `n_tokens` rows when given (new rows from N(0, initializer_range), as
        llm.resize_for_tokenizer adds them). With a half-precision `dtype` the rotary frequencies are
        rounded to it, as llm.round_rotary_buffers does for transformers' model. `matrices`: the projections,
        embedding and output layer read in this dtype instead (e.g. bfloat16 under a float32 stream: half
        the memory and the bytes read per token; each product rounds its input to it)."""
        from .encoders import safetensors_files

        settings = LlamaSettings.read(model_dir)
        files = [Path(weights)] if weights is not None else safetensors_files(Path(model_dir))
        reader = SafetensorsReader(files)
        if n_tokens is not None and n_tokens < settings.vocab_size:
            raise CheckpointError(f"{model_dir}: the tokenizer has fewer tokens than the LLM's vocabulary")
        names = expected_shapes(settings)
        missing = [n for n in names if n not in reader]
        if missing:
            raise CheckpointError(f"{files[0]}: LLM weights missing: {', '.join(missing[:5])}")
        for name, shape in names.items():
            if reader.shape(name) != shape:
                raise CheckpointError(
                    f"{files[0]}: LLM weight {name} has shape {reader.shape(name)}; config.json needs {shape}"
                )
        matrix_dtype = matrices or dtype
        state, joined = {}, set()
        for i in range(settings.num_hidden_layers):  # read straight into the matrices Fused joins
            for module, parts in (("self_attn", QKV), ("mlp", GATE_UP)):
                keys = [f"model.layers.{i}.{module}.{p}.weight" for p in parts]
                state[f"model.layers.{i}.{module}.joined"] = reader.read_joined(keys, matrix_dtype)
                joined |= set(keys)
        grown = ("model.embed_tokens.weight", "lm_head.weight")  # read into their resized matrices below
        for n in names:
            if n not in joined and n not in grown:
                state[n] = reader.read(
                    n, matrix_dtype if n.endswith(("o_proj.weight", "down_proj.weight")) else dtype
                )
        rows = settings.vocab_size if n_tokens is None else max(n_tokens, settings.vocab_size)
        state["model.embed_tokens.weight"] = reader.read("model.embed_tokens.weight", matrix_dtype, rows)
        if not settings.tie_word_embeddings:
            state["lm_head.weight"] = reader.read("lm_head.weight", matrix_dtype, rows)
        if rows != settings.vocab_size:
            with torch.no_grad():
                for key in grown:
                    if key in state:
                        state[key][settings.vocab_size :].normal_(mean=0.0, std=settings.initializer_range)
            settings = replace(settings, vocab_size=rows)
        model = cls(settings, state)
        if dtype in (torch.bfloat16, torch.float16):
            model.inv_freq = model.inv_freq.to(dtype)
        return model.eval()

    # -- forward ------------------------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int) -> KVCache:
        s, w = self.config, self.model.norm.weight
        shape = (s.num_hidden_layers, batch, s.num_key_value_heads, capacity, s.head_dim)
        return KVCache(w.new_empty(shape), w.new_empty(shape))

    def forward(
        self,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
    ) -> Output:
        """Logits of a whole sequence, as LlamaForCausalLM(...).logits (no cache is returned, no loss
        computed): `attention_mask` (batch, length) marks real positions, `position_ids` default to
        0..length-1."""
        x = (
            self.model.embed_tokens(input_ids).to(self.stream_dtype)
            if inputs_embeds is None
            else inputs_embeds
        )
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        cache = self.new_cache(x.shape[0], x.shape[1])
        hidden = self._run(x, position_ids, attention_mask, cache, 0)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return Output(self._logits(self.model.norm(hidden)))

    def _rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (batch, length, head_dim) as LlamaRotaryEmbedding computes them."""
        freqs = positions[..., None].float() * self.inv_freq.to(device=positions.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _run(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        key_mask: torch.Tensor | None,
        cache: KVCache,
        start: int,
    ) -> torch.Tensor:
        """Hidden states (before the final norm) of `x` (batch, length, hidden) at cache slots start.., its
        keys and values written into `cache`; `key_mask` (batch, start + length): the real slots so far, or
        None when every slot is real."""
        if self.steps_before_packing is not None and self.head is None:
            self.steps_before_packing -= 1
            if self.steps_before_packing < 0:
                self.pack()
        s = self.config
        x = x.to(self.stream_dtype)  # embeddings stored narrower (bfloat16 matrices) widen exactly
        batch, length, _ = x.shape
        end = start + length
        cos, sin = self._rotary(positions, x.dtype)
        cos, sin = cos[:, None], sin[:, None]
        n_q, n_kv, d = s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim, s.head_dim
        heads, groups = s.num_attention_heads, s.num_attention_heads // s.num_key_value_heads
        if key_mask is None and start > 0 and length > 1:  # sdpa's is_causal aligns queries with keys' start
            key_mask = torch.ones(batch, end, dtype=torch.bool, device=x.device)
        mask = None
        if key_mask is not None:
            # Each query sees the real keys up to its own slot; a padding query sees itself too (it would see
            # nothing, and a softmax over nothing is NaN, which its value would carry into later layers).
            slots = torch.arange(end, device=x.device)
            mine = torch.arange(start, end, device=x.device)[:, None]
            mask = key_mask[:, None, None, :end].bool() & (slots[None, :] <= mine)[None, None]
            mask = mask | (slots[None, :] == mine)[None, None]
        # In a float32 stream the attention and residual products stay in the matrices' dtype: the rotary
        # arithmetic, the residual sums and the cache's copy widen them exactly as a cast would. Queries and
        # keys are rotated together (the same arithmetic, element by element).
        narrow = x.dtype == torch.float32
        for i, layer in enumerate(self.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            h = layer.input_layernorm(x)
            qkv = attn.product(h, narrow=narrow)
            qk = qkv[..., : n_q + n_kv].view(batch, length, -1, d).transpose(1, 2)
            qk = qk * cos + _rotate_half(qk) * sin
            q, k = qk[:, :heads], qk[:, heads:]
            keys, values = cache.keys[i], cache.values[i]
            keys[:, :, start:end] = k
            values[:, :, start:end] = qkv[..., n_q + n_kv :].view(batch, length, -1, d).transpose(1, 2)
            keys, values = keys[:, :, :end], values[:, :, :end]
            if length == 1:
                # One query: the heads sharing a key/value head become that head's query rows (one product
                # per key head instead of repeated keys), as transformers' pack_gqa.
                out = F.scaled_dot_product_attention(q.reshape(batch, -1, groups, d), keys, values, mask)
            elif mask is None and start == 0:
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=groups > 1)
            else:
                keys, values = _repeat(keys, groups), _repeat(values, groups)
                out = F.scaled_dot_product_attention(q, keys, values, mask)
            out = out.reshape(batch, -1, length, d).transpose(1, 2).reshape(batch, length, -1)
            x = x + apply(attn.o_proj, out, narrow=narrow)
            h = layer.post_attention_layernorm(x)
            gate, up = mlp.product(h).chunk(2, dim=-1)
            x = x + apply(mlp.down_proj, F.silu(gate) * up, narrow=narrow)
        return x

    # -- greedy decoding ----------------------------------------------------------------------------
    @torch.no_grad()
    def greedy_decode(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        eos: int,
        pad: int,
        max_new_tokens: int,
        on_step: Callable[[int], None] | None = None,
        no_repeat_ngram: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """greedy.greedy_decode's tokens and log-probabilities, with the cache allocated once for the prompt
        and `max_new_tokens`."""
        batch, length, _ = embeds.shape
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        padded = not bool((mask == 1).all())
        key_mask = None
        if padded:
            key_mask = torch.ones(batch, length + max_new_tokens, dtype=torch.bool, device=embeds.device)
            key_mask[:, :length] = mask.bool()
        cache = self.new_cache(batch, length + max_new_tokens)
        unfinished = torch.ones(batch, dtype=torch.long, device=embeds.device)
        tokens, scores = [], []
        hidden = self._run(embeds, positions, key_mask, cache, 0)[:, -1:]
        slot = length
        for step in range(1, max_new_tokens + 1):
            if on_step is not None:
                on_step(step)
            logits = self._logits(self.model.norm(hidden))[:, -1]
            chosen, score, unfinished = greedy_choice(logits, unfinished, eos, pad, tokens, no_repeat_ngram)
            tokens.append(chosen)
            scores.append(score)
            if step == max_new_tokens or int(unfinished.max()) == 0:
                break
            positions = positions[:, -1:] + 1
            x = self.model.embed_tokens(chosen[:, None]).to(embeds.dtype)
            hidden = self._run(x, positions, key_mask, cache, slot)
            slot += 1
        return torch.stack(tokens, dim=1), torch.stack(scores, dim=1)

    # -- beam search and sampling -------------------------------------------------------------------
    def to_transformers(self) -> nn.Module:
        """transformers' LlamaForCausalLM on this model's weights (shared, not copied; matrices stored packed
        or in a narrower dtype are copied in the stream's), for what only transformers' generate() does here:
        beam search and sampling."""
        from transformers import LlamaConfig, LlamaForCausalLM  # lazy: only beam search and sampling

        raw = {k: v for k, v in self.config.raw.items() if k not in ("architectures", "transformers_version")}
        config = LlamaConfig(**{**raw, "vocab_size": self.config.vocab_size})
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        state = {k: v.to(self.stream_dtype) for k, v in self.dense_state().items()}
        model.load_state_dict(state, strict=False, assign=True)
        if self.config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        rotary = model.model.rotary_emb
        rotary.inv_freq = self.inv_freq.clone()
        rotary.original_inv_freq = self.inv_freq.clone()
        return model.requires_grad_(False).eval()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    """Each key/value head repeated for the `n` query heads that share it (transformers' repeat_kv)."""
    if n == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n, t, d).reshape(b, h * n, t, d)


def greedy_choice(
    logits: torch.Tensor,
    unfinished: torch.Tensor,
    eos: int,
    pad: int,
    tokens: list[torch.Tensor] | None = None,
    no_repeat_ngram: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """generate()'s greedy step, for this decoder's loop and greedy.py's: the token each row takes, its
    log-probability from the float32 logits, and the rows still unfinished (rows that ended take `pad`).
    With `no_repeat_ngram` n > 0, tokens that would repeat an n-gram of `tokens` (those chosen so far) are
    excluded first, as transformers' NoRepeatNGramLogitsProcessor does."""
    logits = logits.to(copy=True, dtype=torch.float32)
    if no_repeat_ngram and tokens:
        for row, banned in enumerate(repeated_ngram_tokens(torch.stack(tokens, dim=1), no_repeat_ngram)):
            logits[row, banned] = -float("inf")
    chosen = logits.argmax(-1) * unfinished + pad * (1 - unfinished)
    return chosen, logits.log_softmax(-1).amax(-1), unfinished & (chosen != eos).long()


def repeated_ngram_tokens(tokens: torch.Tensor, n: int) -> list[list[int]]:
    """Per row of `tokens` (batch, steps): the tokens that would complete an n-gram the row already holds
    (after the row's last n-1 tokens, every token that followed them before)."""
    steps = tokens.shape[1]
    if steps + 1 < n:
        return [[] for _ in range(tokens.shape[0])]
    banned = []
    for row in tokens.tolist():
        prefix = row[steps - n + 1 :] if n > 1 else []
        banned.append([row[i + n - 1] for i in range(steps - n + 1) if row[i : i + n - 1] == prefix])
    return banned
