"""The decoder LLM: tokenizer with the reference's special tokens, resized embeddings, and LoRA (peft, or
merged into the weights for inference)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .config import LLMConfig, LoraConfig
from .encoders import read_safetensors, read_tensor_unmapped, safetensors_files
from .llama import LlamaDecoder, unsupported
from .tokenizer import load_fast_tokenizer


@dataclass
class TokenIds:
    """Ids the input builder needs, read from the tokenizer at run time (never hard-coded)."""

    bos: int | None
    eos: int
    pad: int
    audio_start: int
    audio_end: int
    video_start: int
    video_end: int
    added: list[int]  # ids of the tokens avsr added (their embedding rows live in the adapter)


def cpu_computes_bf16() -> bool:
    """oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def load_tokenizer(model_dir: Path, special_tokens: dict[str, str]):
    """(tokenizer, its size before avsr's tokens) with `<pad> <audio> </audio> <video> </video>` added.


    Reference: Llama-AVSR models/lightning.py `add_special_tokens({"pad_token": "<pad>",
    "additional_special_tokens": ["<audio>", "</audio>", "<video>", "</video>"]})`.
    """
    tokenizer = load_fast_tokenizer(model_dir)
    if tokenizer is None:  # only transformers builds it (slow sentencepiece, own class, remote code)
        from transformers import AutoTokenizer  # lazy: transformers takes seconds to import

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base_size = len(tokenizer)
    tokenizer.add_special_tokens(
        {
            "pad_token": special_tokens["pad"],
            "additional_special_tokens": [
                special_tokens[k] for k in ("audio_start", "audio_end", "video_start", "video_end")
            ],
        }
    )
    return tokenizer, base_size


def token_ids(tokenizer, config: LLMConfig, special_tokens: dict[str, str], base_vocab: int) -> TokenIds:
    def one(token: str) -> int:
        ids = tokenizer.convert_tokens_to_ids([token])
        if ids[0] is None or ids[0] == tokenizer.unk_token_id:
            raise CheckpointError(f"token {token!r} is not in the tokenizer")
        return ids[0]

    bos = None
    if config.use_bos:
        bos = one(config.bos_token) if config.bos_token else tokenizer.bos_token_id
    eos = one(config.eos_token) if config.eos_token else tokenizer.eos_token_id
    ids = {k: one(v) for k, v in special_tokens.items()}
    added = sorted({i for i in ids.values() if i >= base_vocab})
    return TokenIds(
        bos=bos,
        eos=eos,
        pad=ids["pad"],
        audio_start=ids["audio_start"],
        audio_end=ids["audio_end"],
        video_start=ids["video_start"],
        video_end=ids["video_end"],
        added=added,
    )


def load_llm(
    model_dir: Path,
    weights: Path | None,
    dtype: torch.dtype,
    n_tokens: int | None = None,
    native: bool = False,
    matrices: torch.dtype | None = None,
) -> nn.Module:
    """A causal LM from a Hugging Face directory, optionally with its weights replaced from `weights`, its
    embeddings resized to `n_tokens` (len(tokenizer) after avsr's tokens) when given.

    `native` (inference only): a plain Llama (see llama.unsupported) is built as avsr's own LlamaDecoder,
    without transformers (its matrices in `matrices` when given: LlamaDecoder.from_dir); any other model as
    transformers' model."""
    if native and native_llama(model_dir, n_tokens):
        return LlamaDecoder.from_dir(model_dir, dtype, weights, n_tokens, matrices)
    from transformers import AutoConfig, AutoModelForCausalLM  # lazy: seconds to import; only loads need it

    if weights is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    else:
        config = AutoConfig.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        state = read_safetensors([weights])
        missing, _ = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing:
            raise CheckpointError(f"{weights}: LLM weights missing: {', '.join(missing[:5])}")
        if config.tie_word_embeddings:
            model.tie_weights()
    model.requires_grad_(False)
    if dtype in (torch.bfloat16, torch.float16):
        round_rotary_buffers(model, dtype)
    if n_tokens is not None:
        files = [weights] if weights is not None else safetensors_files(model_dir)
        resize_for_tokenizer(model, n_tokens, files)
    return model.eval()


def native_llama(model_dir: Path, n_tokens: int | None = None) -> bool:
    """Whether avsr's LlamaDecoder runs the LLM of `model_dir` (a plain Llama config whose vocabulary the
    tokenizer only grows)."""
    try:
        raw = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False  # transformers' loader names the problem
    if unsupported(raw) is not None:
        return False
    return n_tokens is None or n_tokens >= raw["vocab_size"]


def round_rotary_buffers(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep the rotary frequencies as a half-precision run of the reference has them.

    The reference evaluates and trains with Lightning `precision="bf16-true"` (Llama-AVSR eval.py/train.py,
    Omni-AVSR the same), which casts the whole module, buffers included, to bf16; transformers 4.43 keeps
    Llama's RoPE `inv_freq` as a buffer, so the released models were trained and scored with frequencies
    rounded to bf16 (up to 3e-3 relative) and upcast to float32 in the rotary forward. Loading with
    `from_pretrained(dtype=)` keeps them float32, so round them here, as `module.to(dtype)` would.
    """
    for module in model.modules():
        for name in ("inv_freq", "original_inv_freq"):
            buffer = getattr(module, name, None)
            if isinstance(buffer, torch.Tensor) and buffer.is_floating_point():
                setattr(module, name, buffer.to(dtype))


def resize_for_tokenizer(model: nn.Module, n_tokens: int, files: list[Path] = ()) -> None:
    """Resize embeddings to len(tokenizer), as the reference does after adding its tokens
    (`resize_token_embeddings(mean_resizing=False)`: old rows kept, new rows from N(0, initializer_range)).

    Grown here rather than by transformers, which fills each new matrix randomly twice and, for tied weights,
    builds a throw-away output matrix as well (SmolLM2-135M: two extra 113 MB matrices at the load's peak);
    here each matrix is allocated once and the old rows are read into it straight from `files` (the weights
    from_pretrained memory-mapped: read through the map, those pages would stay resident beside the copy)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    old = emb.weight.shape[0]
    tied = head is not None and head.weight is emb.weight
    simple = isinstance(emb, nn.Embedding) and (
        head is None or tied or (isinstance(head, nn.Linear) and head.bias is None)
    )
    if old == n_tokens:
        pass
    elif not simple or n_tokens < old:
        model.resize_token_embeddings(n_tokens, mean_resizing=False)
    else:
        text_config = model.config.get_text_config()
        std = getattr(text_config, "initializer_range", 0.02)
        names: dict[int, list[str]] = {}  # a tied matrix has several names; the file stores one of them
        for name, param in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
        modules = [emb] if head is None or tied else [emb, head]
        for module in modules:
            grown = _grown(module.weight, n_tokens, files, names.get(id(module.weight), []), std)
            module.weight = nn.Parameter(grown, requires_grad=False)
        emb.num_embeddings = n_tokens
        if head is not None:
            head.out_features = n_tokens
        text_config.vocab_size = model.vocab_size = n_tokens
        model.tie_weights()
    model.requires_grad_(False)


def _grown(
    weight: torch.Tensor, n_rows: int, files: list[Path], names: list[str], std: float
) -> torch.Tensor:
    """`weight` with rows added up to `n_rows`, drawn from N(0, std); the old rows read from `files` where
    they hold them (not through their memory map), else copied."""
    new = torch.empty((n_rows, weight.shape[1]), dtype=weight.dtype, device=weight.device)
    kept = new[: weight.shape[0]]
    on_cpu = weight.device.type == "cpu"
    if not (on_cpu and any(read_tensor_unmapped(files, n, kept) is not None for n in names)):
        kept.copy_(weight.detach())
    with torch.no_grad():
        new[weight.shape[0] :].normal_(mean=0.0, std=std)
    return new


def added_rows(model: nn.Module, ids: list[int]) -> dict[str, torch.Tensor]:
    """Embedding (and untied lm_head) rows of the added tokens: trained or random, never recoverable."""
    rows = {"llm.added_embed_rows": model.get_input_embeddings().weight[ids].detach().clone()}
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        rows["llm.added_lm_head_rows"] = head.weight[ids].detach().clone()
    return rows


def set_added_rows(model: nn.Module, ids: list[int], state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        if "llm.added_embed_rows" in state:
            emb[ids] = state["llm.added_embed_rows"].to(emb.dtype)
        head = model.get_output_embeddings()
        if "llm.added_lm_head_rows" in state and head is not None:
            head.weight[ids] = state["llm.added_lm_head_rows"].to(head.weight.dtype)


def apply_lora(model: nn.Module, lora: LoraConfig) -> nn.Module:
    """Wrap the LLM with peft LoRA adapters on q_proj/v_proj, one per name in `lora.adapter_names()`.

    Reference (Llama-AVSR models/Llama_LoRA.py): q = q_proj(x) + up_Q(down_Q(x)) * ALPHA/RANK, the same for
    v, bias-free, no dropout, added before RoPE. peft computes lora_B(lora_A(x)) * lora_alpha/r on the
    projection output, which is the same function with lora_A = down, lora_B = up.
    """
    # lazy: peft (~230 modules) is imported only by models that keep their LoRA unmerged
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = lora.adapter_names()
    cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        target_modules=list(lora.target_modules),
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
    )
    with warnings.catch_warnings():  # peft calls transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, cfg, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, cfg)
    return peft_model


def lora_modules(model: nn.Module):
    """(short name, peft LoRA layer) pairs, short name like `layers.3.self_attn.q_proj`."""
    from peft.tuners.lora import LoraLayer  # lazy: only unmerged LoRA models import peft

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name[name.index("layers.") :], module


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA weights in the avsr layout: `llm.lora.<adapter>.<layers.N.self_attn.q_proj>.lora_A`."""
    out = {}
    for short, module in lora_modules(model):
        for adapter in module.lora_A:
            out[f"llm.lora.{adapter}.{short}.lora_A"] = module.lora_A[adapter].weight.detach().clone()
            out[f"llm.lora.{adapter}.{short}.lora_B"] = module.lora_B[adapter].weight.detach().clone()
    return out


def load_lora_state(
    model: nn.Module, state: dict[str, torch.Tensor], new_modules: Collection[str] = ()
) -> None:
    """Inverse of `lora_state`; every adapter weight of the model must be present, except on `new_modules`
    (module names such as `gate_proj`), whose absent weights keep their initialisation."""
    expected = set()
    with torch.no_grad():
        for short, module in lora_modules(model):
            for adapter in module.lora_A:
                for part in ("lora_A", "lora_B"):
                    key = f"llm.lora.{adapter}.{short}.{part}"
                    expected.add(key)
                    if key not in state and short.rsplit(".", 1)[-1] in new_modules:
                        continue
                    target = getattr(module, part)[adapter].weight
                    target.copy_(_adapter_tensor(state, key, target.shape))
    _refuse_undeclared(state, expected)


def _adapter_tensor(state: dict[str, torch.Tensor], key: str, shape) -> torch.Tensor:
    """state[key], which must be there and have `shape`."""
    if key not in state:
        raise CheckpointError(f"adapter weights lack {key}")
    if tuple(state[key].shape) != tuple(shape):
        raise CheckpointError(f"{key}: shape {tuple(state[key].shape)} != {tuple(shape)}")
    return state[key]


def _refuse_undeclared(state: dict[str, torch.Tensor], expected: set[str]) -> None:
    extra = [k for k in state if k.startswith("llm.lora.") and k not in expected]
    if extra:
        raise CheckpointError(f"adapter has LoRA weights the config does not declare: {extra[0]}")


def merge_lora_weights(model: nn.Module, state: dict[str, torch.Tensor], lora: LoraConfig) -> None:
    """Fold the one LoRA adapter in `state` into the plain LLM's target projections: W += (B @ A) * alpha / r,
    what peft's merge_and_unload computes (adapter in float32, added in place), without peft: wrapping
    the model and importing peft cost more than decoding a short clip. Every adapter weight must be there."""
    names = lora.adapter_names()
    if len(names) != 1:
        raise ValueError(f"{len(names)} LoRA adapters (one per task) cannot be merged into one LLM")
    prefix, scale, expected = f"llm.lora.{names[0]}.", lora.alpha / lora.r, set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if not (isinstance(module, nn.Linear) and "layers." in name):
                continue
            if name.rsplit(".", 1)[-1] not in lora.target_modules:
                continue
            weight, key = module.weight, prefix + name[name.index("layers.") :]
            expected |= {key + ".lora_A", key + ".lora_B"}
            down = _adapter_tensor(state, key + ".lora_A", (lora.r, weight.shape[1])).float()
            up = _adapter_tensor(state, key + ".lora_B", (weight.shape[0], lora.r)).float()
            weight += ((up @ down) * scale).to(weight.device)
    _refuse_undeclared(state, expected)


def set_active_adapters(model: nn.Module, names: list[str]) -> None:
    """Activate exactly `names` (their outputs are summed: Omni-AVSR-ST adds shared + task LoRA)."""
    model.base_model.set_adapter(names)


class TrainingKernels:
    """How the frozen LLM computes in training steps (`steps()`), and how it decodes in between
    (`decoding()`, for validation): attention, the frozen weights' dtype, compiled or not.

    Steps attend eagerly; hold the frozen nn.Linear weights cast to `dtype` when given (under autocast a
    matmul casts a float32 weight anew on every call, as autocast caches only the casts of tensors that
    require grad; cast once, the products are the same); and, with `compile`, run the decoder body through
    `torch.compile` (dynamic shapes: the batches' shapes vary). Decoding keeps the model's own attention,
    float32 weights and plain eager modules. Cast are the base model's weights only, never the embeddings,
    the output layer or LoRA's, which the adapter saves (inside the steps too, and some may be frozen).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None, compile: bool = False) -> None:
        self.model, self.dtype = model, dtype
        self.attention = model.config._attn_implementation
        output = model.get_output_embeddings()
        saved = {id(model.get_input_embeddings().weight), id(output.weight if output is not None else None)}
        self.weights = [
            m.weight
            for name, m in model.named_modules()
            if dtype is not None
            and isinstance(m, nn.Linear)
            and "lora_" not in name  # peft's lora_A / lora_B
            and not m.weight.requires_grad
            and id(m.weight) not in saved
            and m.weight.dtype != dtype
        ]
        self.originals = [w.data for w in self.weights]
        self.decoder = model.get_decoder()
        self.compiled = torch.compile(self.decoder.forward, dynamic=True) if compile else None

    @contextmanager
    def steps(self) -> Iterator[None]:
        with self._held(True):
            yield

    @contextmanager
    def decoding(self) -> Iterator[None]:
        with self._held(False):
            yield

    @contextmanager
    def _held(self, steps: bool) -> Iterator[None]:
        attention_before = self.model.config._attn_implementation
        weights_before = [w.data for w in self.weights]
        forward_before = self.decoder.__dict__.get("forward")  # an instance attribute: the compiled forward
        self.model.set_attn_implementation("eager" if steps else self.attention)
        for w, data in zip(self.weights, self.originals, strict=True):
            w.data = data.to(self.dtype) if steps else data
        self._set_forward(self.compiled if steps else None)
        try:
            yield
        finally:
            self.model.set_attn_implementation(attention_before)
            for w, data in zip(self.weights, weights_before, strict=True):
                w.data = data
            self._set_forward(forward_before)

    def _set_forward(self, forward) -> None:
        if forward is None:
            self.decoder.__dict__.pop("forward", None)  # the class's own forward again
        else:
            self.decoder.forward = forward
