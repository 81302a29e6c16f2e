"""Import a reference Llama-AVSR / Omni-AVSR `.pth` into an avsr checkpoint, without unpickling objects.

Facts (read in the reference code): the released `.pth` is the averaged full state dict of `AVSR_LLMs`
(Llama-AVSR utils/avg_checkpoints_original.py strips Lightning's `model.` prefix; lightning.py loads it with a
strict `load_state_dict`): `audio_encoder.*` (HF WhisperEncoder), `audio_proj.{0,2}.*` (or per rate
`audio_proj.{i}.{0,2}.*` in Omni-AVSR), `llm.model.layers.N.self_attn.lora_{down,up}_{Q,V}.weight` (Omni-T:
`lora_down_Q.{audio,video,audiovisual}.weight`; Omni-ST adds `lora_down_Q_shared.weight`), the LLM itself with
the rows of the 5 added tokens (random, untrained, only recoverable from here), Omni's `prompt_*` buffers.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..modeling.config import (
    MODE_TO_TASK,
    REFERENCE_PROMPTS,
    REFERENCE_SPECIAL_TOKENS,
    CompressionConfig,
    DecodingDefaults,
    EncoderConfig,
    LLMConfig,
    LoraConfig,
    ModelConfig,
    ProjectorConfig,
)
from ..modeling.llm import load_tokenizer
from ..storage import atomic_dir
from .avhubert_fairseq import avhubert_state_from_fairseq, infer_config, save_avhubert
from .sources import DESCRIPTION_FILES, resolve_source

LORA_KEY = re.compile(
    r"^llm\.model\.layers\.(\d+)\.self_attn\.lora_(down|up)_([QV])(_shared)?(?:\.(\w+))?\.weight$"
)


@dataclass
class ImportSpec:
    """What a reference `.pth` cannot tell about itself (the rest is read from tensor shapes)."""

    name: str
    llm_source: str  # e.g. meta-llama/Llama-3.2-1B (tokenizer + config; weights come from the .pth)
    lora_rank: int  # the reference's --rank/--reduction_lora: a reduction factor, r = hidden/rank
    lora_alpha: float  # the reference's --alpha: scale = alpha/rank
    audio_encoder_source: str = "openai/whisper-medium.en"
    compression_mode: str = "stack"
    audio_rates: list[int] = field(default_factory=list)  # in the order given on the reference's CLI
    video_rates: list[int] = field(default_factory=list)
    eos_token: str | None = None  # Llama 3 base: <|end_of_text|> (the tokenizer's own EOS)
    use_bos: bool = True
    decoding: dict = field(default_factory=dict)
    modes: list[str] | None = None  # None: from the LoRA tasks, else from the projectors present
    # A converted AV-HuBERT dir, used only when the .pth has video_proj but no video_encoder.* weights.
    video_encoder_source: str | None = None

    @classmethod
    def load(cls, path: Path) -> ImportSpec:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: bad import spec ({exc})") from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain tensor dict from a `.pth`/`.ckpt`, loaded `weights_only=True` (memory-mapped when possible)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch's advice on pickle protocols is not for our users
            warnings.simplefilter("ignore")
            obj = _load_weights_only(path)
    except Exception as exc:  # pickle.UnpicklingError for anything but tensors and containers
        raise CheckpointError(_refusal(path, exc)) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # a Lightning .ckpt
        obj = {k.removeprefix("model."): v for k, v in obj["state_dict"].items()}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    check_declared_sizes(obj, path)
    return obj


def _load_weights_only(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # a legacy (non-zip) file cannot be memory-mapped
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _refusal(path: Path, exc: Exception) -> str:
    """One line for a file torch's weights-only loader refused (never its advice to load it unsafely)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        return (
            f"{path}: refused: the file contains Python code objects ({found.group(1)}), not only tensors; "
            f"avsr loads weights only and never runs code from a checkpoint"
        )
    if "Weights only load failed" in str(exc):
        stop = re.search(r"WeightsUnpickler error: \s*(.+)", str(exc))
        why = f" ({stop.group(1).strip()})" if stop else ""
        return (
            f"{path}: refused: not a plain tensor file{why}; avsr reads checkpoints with a weights-only "
            f"loader and never unpickles them"
        )
    return f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__})"


def check_declared_sizes(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse tensors whose shape claims more bytes than they store (a 4-byte storage `expand`ed to
    terabytes): copying such a tensor would allocate the declared size. Also: storages larger than the
    file. Nothing is materialised here (the tensors are memory-mapped views)."""
    size = Path(path).stat().st_size
    stored = 0
    seen: set[int] = set()
    for key, tensor in state.items():
        storage = tensor.untyped_storage()
        declared = tensor.numel() * tensor.element_size()
        if declared > storage.nbytes():
            raise CheckpointError(
                f"{path}: tensor '{key}' declares {tuple(tensor.shape)} ({declared:,} bytes) but stores "
                f"{storage.nbytes():,} bytes; refused (a crafted file?)"
            )
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            stored += storage.nbytes()
    if stored > size:
        raise CheckpointError(f"{path}: its tensors claim {stored:,} bytes, more than the file's {size:,}")


def _projector_state(state: dict[str, torch.Tensor], prefix: str, rates: list[int], modality: str):
    """`audio_proj.{0,2,3}.*` (one rate) or `audio_proj.{i}.{0,2,3}.*` (per rate) -> avsr names."""
    keys = [k for k in state if k.startswith(prefix + ".")]
    if not keys:
        return {}, None
    per_rate = all(re.match(rf"{prefix}\.\d+\.\d+\.", k) for k in keys)
    if not rates:
        raise CheckpointError(
            f"the checkpoint has {prefix} weights: give {modality}_rates in the import spec"
        )
    out, layernorm = {}, False
    for key in keys:
        rest = key[len(prefix) + 1 :]
        if per_rate:
            idx, rest = rest.split(".", 1)
            if int(idx) >= len(rates):
                raise CheckpointError(f"{key}: rate index {idx} but the spec lists rates {rates}")
            rate = rates[int(idx)]
        else:
            if len(rates) != 1:
                raise CheckpointError(f"{prefix} has one projector but the spec lists rates {rates}")
            rate = rates[0]
        layernorm |= rest.startswith("3.")
        out[f"projectors.{modality}.{rate}.{rest}"] = state[key].float()
    return out, layernorm


def _lora_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    out, tasks, shared, plain = {}, set(), False, False
    for key, value in state.items():
        m = LORA_KEY.match(key)
        if not m:
            continue
        layer, direction, qv, is_shared, task = m.groups()
        if is_shared:
            adapter, shared = "shared", True
        elif task:
            adapter = task
            tasks.add(task)
        else:
            adapter, plain = "shared", True
        part = "lora_A" if direction == "down" else "lora_B"
        proj = "q_proj" if qv == "Q" else "v_proj"
        out[f"llm.lora.{adapter}.layers.{layer}.self_attn.{proj}.{part}"] = value.float()
    variant = "shared+task" if shared and tasks else "task" if tasks else "shared"
    if plain and tasks:
        raise CheckpointError("checkpoint mixes plain and task-specific LoRA keys")
    return out, variant, sorted(tasks)


def _modes(audio: bool, video: bool, tasks: list[str]) -> list[str]:
    """Modes of a reference checkpoint: its task-specific LoRA adapters name them (Omni-AVSR), else the
    projectors tell (both: Llama-AVSR's AVSR model, trained on audio-visual input only)."""
    if tasks:
        return [mode for mode, task in MODE_TO_TASK.items() if task in tasks]
    return ["avsr"] if audio and video else ["asr"] if audio else ["vsr"]


def copy_description(model_dir: Path, dest: Path) -> str:
    """Copy a model's configs and tokenizer files into the checkpoint: it then loads with no download."""
    dest.mkdir()
    for pattern in DESCRIPTION_FILES:
        for path in model_dir.glob(pattern):
            if path.name != "model.safetensors.index.json":
                shutil.copy2(path, dest / path.name)
    return dest.name


def import_reference(pth: Path, output_dir: Path, spec: ImportSpec, keep_frozen: bool = True) -> Path:
    """Write an avsr checkpoint directory from a reference state dict (see module docstring)."""
    # lazy: transformers takes seconds to import; reading an ImportSpec needs none of it
    from transformers import AutoConfig

    state = load_state_dict(pth)
    audio_proj, layernorm = _projector_state(state, "audio_proj", spec.audio_rates, "audio")
    video_proj, video_layernorm = _projector_state(state, "video_proj", spec.video_rates, "video")
    if not audio_proj and not video_proj:
        raise CheckpointError(f"{pth}: no audio_proj or video_proj weights: not a reference AVSR checkpoint")
    lora, variant, tasks = _lora_state(state)
    adapter: dict[str, torch.Tensor] = {**audio_proj, **video_proj, **lora}
    modes = spec.modes or _modes(bool(audio_proj), bool(video_proj), tasks)

    llm_dir = resolve_source(spec.llm_source, weights=not keep_frozen)
    llm_cfg = AutoConfig.from_pretrained(llm_dir)
    lora_cfg = _lora_config(lora, variant, tasks, llm_cfg.hidden_size, spec)
    adapter.update(_added_token_rows(state, pth, llm_dir, llm_cfg))

    enc_dim, intermediate = None, 2048
    if audio_proj:
        enc_dim, intermediate = _projector_widths(
            state, "audio_proj", spec.audio_rates, spec.compression_mode
        )
    video_encoder, video_state, video_cfg = None, None, None
    if video_proj:
        video_dim, intermediate = _projector_widths(
            state, "video_proj", spec.video_rates, spec.compression_mode
        )
        video_encoder, video_state, video_cfg = _video_encoder(state, spec, pth, video_dim)
    config = ModelConfig(
        name=spec.name,
        modes=modes,
        audio_encoder=EncoderConfig(kind="whisper", source=spec.audio_encoder_source, dim=enc_dim)
        if audio_proj
        else None,
        video_encoder=video_encoder,
        llm=LLMConfig(
            source=spec.llm_source,
            hidden_size=llm_cfg.hidden_size,
            eos_token=spec.eos_token,
            use_bos=spec.use_bos,
        ),
        compression=CompressionConfig(
            mode=spec.compression_mode, audio_rates=list(spec.audio_rates), video_rates=list(spec.video_rates)
        ),
        projector=ProjectorConfig(
            intermediate_size=intermediate, layernorm=bool(layernorm or video_layernorm)
        ),
        lora=lora_cfg,
        prompts=dict(REFERENCE_PROMPTS),
        decoding=DecodingDefaults(**spec.decoding),
        notes=f"imported from {Path(pth).name} with spec {json.dumps(asdict(spec))}"
        + ("; encoder and LLM weights, configs and tokenizer copied in" if keep_frozen else ""),
    )

    output_dir = Path(output_dir)
    if output_dir.exists():
        raise CheckpointError(f"{output_dir} already exists; remove it or choose another directory")
    with atomic_dir(output_dir, on_exists="error") as tmp:
        if video_state is not None:
            save_avhubert(tmp / "video_encoder", video_cfg, video_state, source=Path(pth).name)
        if keep_frozen:
            _copy_frozen(state, config, spec, llm_dir, llm_cfg, tmp)
        save_file(
            {k: v.contiguous() for k, v in adapter.items()},
            str(tmp / "adapter.safetensors"),
            metadata={"format": "avsr"},
        )
        config.save(tmp / "config.json")
    return output_dir


def _lora_config(
    lora: dict[str, torch.Tensor], variant: str, tasks: list[str], hidden: int, spec: ImportSpec
) -> LoraConfig | None:
    """The LoRA config from the spec's reduction factor and alpha, checked against the stored rank."""
    down = next((v for k, v in lora.items() if k.endswith("q_proj.lora_A")), None)
    if down is None:
        return None
    lora_cfg = LoraConfig.from_reference(
        hidden,
        spec.lora_rank,
        spec.lora_alpha,
        variant=variant,
        tasks=tasks or ["audio", "video", "audiovisual"],
    )
    if lora_cfg.r != down.shape[0]:
        raise CheckpointError(
            f"LoRA down-projection has {down.shape[0]} rows but hidden {hidden} / rank "
            f"{spec.lora_rank} gives r={lora_cfg.r}: check lora_rank in the spec"
        )
    return lora_cfg


def _added_token_rows(state: dict[str, torch.Tensor], pth: Path, llm_dir: Path, llm_cfg) -> dict:
    """The embedding (and untied output) rows of the reference's added tokens, whose ids come from the
    tokenizer with those tokens added."""
    tokenizer, base_size = load_tokenizer(llm_dir, REFERENCE_SPECIAL_TOKENS)
    embed = state.get("llm.model.embed_tokens.weight")
    if embed is None:
        raise CheckpointError(f"{pth}: no llm.model.embed_tokens.weight: not a full reference state dict")
    added = sorted(
        i for i in tokenizer.convert_tokens_to_ids(list(REFERENCE_SPECIAL_TOKENS.values())) if i >= base_size
    )
    if embed.shape[0] != len(tokenizer):
        raise CheckpointError(
            f"{pth}: embedding has {embed.shape[0]} rows, tokenizer with added tokens has "
            f"{len(tokenizer)}: wrong llm_source?"
        )
    rows = {"llm.added_embed_rows": embed[added].float()}
    head = state.get("llm.lm_head.weight")
    if head is not None and not getattr(llm_cfg, "tie_word_embeddings", False):
        rows["llm.added_lm_head_rows"] = head[added].float()
    return rows


def _projector_widths(
    state: dict[str, torch.Tensor], prefix: str, rates: list[int], compression_mode: str
) -> tuple[int, int]:
    """(encoder width, intermediate width) read from the first layer of a projector."""
    first = state[next(k for k in state if k.startswith(prefix) and k.endswith("0.weight"))]
    return first.shape[1] // (rates[0] if compression_mode == "stack" else 1), first.shape[0]


def _video_encoder(state: dict[str, torch.Tensor], spec: ImportSpec, pth: Path, video_dim: int):
    """(EncoderConfig, AV-HuBERT state or None, its config or None) of the video encoder that feeds
    `video_dim`-wide frames to the projector: the one stored in the .pth, else the spec's."""
    video_state, video_cfg = None, None
    if any(k.startswith("video_encoder.") for k in state):
        # Llama-AVSR trains with the video encoder in train mode, so its BatchNorm statistics differ from
        # the original large_vox_iter5.pt: the encoder must come from this .pth.
        video_state = avhubert_state_from_fairseq(state, "video_encoder.")
        video_cfg = infer_config(video_state)
        video_encoder = EncoderConfig(kind="avhubert", source="video_encoder", dim=video_cfg.dim)
    elif spec.video_encoder_source:
        video_encoder = EncoderConfig(kind="avhubert", source=spec.video_encoder_source, dim=video_dim)
    else:
        raise CheckpointError(
            f"{pth}: has video_proj but no video_encoder.* weights: give video_encoder_source in the spec"
        )
    if video_encoder.dim != video_dim:
        raise CheckpointError(
            f"{pth}: video_proj expects {video_dim}-wide frames, the video encoder gives {video_encoder.dim}"
        )
    return video_encoder, video_state, video_cfg


def _copy_frozen(
    state: dict[str, torch.Tensor], config: ModelConfig, spec: ImportSpec, llm_dir: Path, llm_cfg, tmp: Path
) -> None:
    """Save the frozen audio encoder and LLM of the .pth (with their configs and tokenizer) into the
    checkpoint folder `tmp`, and point `config` at them."""
    enc = {
        k[len("audio_encoder.") :]: v.contiguous() for k, v in state.items() if k.startswith("audio_encoder.")
    }
    if enc and config.audio_encoder is not None:
        save_file(enc, str(tmp / "audio_encoder.safetensors"))
        config.audio_encoder.weights = "audio_encoder.safetensors"
        enc_dir = resolve_source(spec.audio_encoder_source, weights=False)
        config.audio_encoder.source = copy_description(enc_dir, tmp / "audio_encoder")
    vocab, tied = llm_cfg.vocab_size, getattr(llm_cfg, "tie_word_embeddings", False)
    llm = {}
    for key, value in state.items():
        if not key.startswith("llm.") or LORA_KEY.match(key):
            continue
        name = key[len("llm.") :]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            if tied and name == "lm_head.weight":
                continue
            value = value[:vocab]  # the added rows live in the adapter
        llm[name] = value.contiguous()
    save_file(llm, str(tmp / "llm.safetensors"))
    config.llm.weights = "llm.safetensors"
    config.llm.source = copy_description(llm_dir, tmp / "llm")
