"""Tiny randomly initialised Whisper + Llama model directories (seconds to build, no downloads)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from avsr_cli.modeling.config import (
    CompressionConfig,
    EncoderConfig,
    LLMConfig,
    LoraConfig,
    ModelConfig,
    ProjectorConfig,
)

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven bright stars shine on green hills "
    "transcribe speech video text to and hello world one two three four five six"
).split()


def make_tokenizer(path: Path):
    """A byte-level BPE tokenizer with Llama-style <s>/</s>, trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) + "." for i in range(len(WORDS))]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    return fast


def make_llm(
    path: Path,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    init_range: float = 0.02,
    tied: bool = False,
    heads: int = 4,
    kv_heads: int = 2,
    rope: dict | None = None,
) -> Path:
    """A random Llama (grouped-query attention: `kv_heads` key/value heads for `heads` query heads); a larger
    `init_range` lets training reach peaked (low-loss) outputs quickly; `rope`: its rope_parameters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=tied,
        initializer_range=init_range,
        **({"rope_parameters": rope} if rope is not None else {}),
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def make_whisper(path: Path, d_model: int = 32, seed: int = 0) -> Path:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    cfg = WhisperConfig(
        vocab_size=100,
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        decoder_start_token_id=1,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    WhisperForConditionalGeneration(cfg).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path


def tiny_config(whisper_dir: Path, llm_dir: Path, **overrides) -> ModelConfig:
    cfg = ModelConfig(
        name="tiny-test",
        audio_encoder=EncoderConfig(kind="whisper", source=str(whisper_dir), dim=32),
        llm=LLMConfig(source=str(llm_dir), hidden_size=64),
        compression=CompressionConfig(mode="stack", audio_rates=[4]),
        projector=ProjectorConfig(intermediate_size=48),
        lora=LoraConfig(r=4, alpha=8.0),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg binary quietly (test media are generated with its lavfi sources)."""
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *map(str, args)], check=True)
