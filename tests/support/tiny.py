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


def trained_tiny_model(whisper_dir: Path, llm_dir: Path, seed: int):
    """A model of tiny_config whose LoRA (B too, which training starts at 0) and projector are non-trivial."""
    from avsr_cli.checkpoints.loading import build_model

    torch.manual_seed(seed)
    model = build_model(tiny_config(whisper_dir, llm_dir))
    lora = [p for name, p in model.llm.named_parameters() if "lora_" in name]
    for p in [*lora, *model.projectors.parameters()]:
        torch.nn.init.normal_(p, std=0.3)
    return model


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg binary quietly (test media are generated with its lavfi sources)."""
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *map(str, args)], check=True)


def make_llama3_style_tokenizer(path: Path) -> Path:
    """The tiny tokenizer laid out as Meta's Llama 3 folders are: `<|begin_of_text|>`/`<|end_of_text|>` and
    reserved special tokens added after the vocabulary, a post-processor that prepends BOS, no unk or pad,
    clean_up_tokenization_spaces on, tokenizer_class PreTrainedTokenizerFast, a llama config.json."""
    import json

    from tokenizers import AddedToken, Tokenizer, processors

    make_tokenizer(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    specials = ["<|begin_of_text|>", "<|end_of_text|>"] + [
        f"<|reserved_special_token_{i}|>" for i in range(4)
    ]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    tok.save(str(path / "tokenizer.json"))
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    decoder = {str(tok.token_to_id(t)): {"content": t, **flags} for t in specials}
    config = {
        "added_tokens_decoder": decoder,
        "bos_token": "<|begin_of_text|>",
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|end_of_text|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "transformers_version": "4.45.0"}))
    return path
