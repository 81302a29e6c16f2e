"""The decoder LLM's tokenizer, straight on the `tokenizers` library: what avsr uses of transformers'
`AutoTokenizer`, with the same ids and text, without importing transformers (seconds on every load).

`load_fast_tokenizer` rebuilds what transformers' generic `TokenizersBackend` (the class AutoTokenizer picks
for a `tokenizer.json` folder declaring `TokenizersBackend` or `PreTrainedTokenizerFast`, as Llama 3 and
SmolLM2 do) makes of the folder: the same calls on the same backend, in the same order. Folders it cannot
stand for (another tokenizer class, a model type transformers maps to its own tokenizer class, remote code,
no tokenizer.json) get None, and the caller loads them with AutoTokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
# model types for which AutoTokenizer honours a generic tokenizer_class (no model-specific tokenizer class
# registered for them); "" is a folder without config.json
GENERIC_MODEL_TYPES = ("llama", "")


@dataclass
class Encoded:
    """What `tokenizer(text)` returns, as far as avsr reads it."""

    input_ids: list[int]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def load_fast_tokenizer(model_dir: Path) -> FastTokenizer | None:
    """The tokenizer of `model_dir` as AutoTokenizer loads it, or None where only AutoTokenizer can."""
    model_dir = Path(model_dir)
    tokenizer_file, config_file = model_dir / "tokenizer.json", model_dir / "tokenizer_config.json"
    if not (tokenizer_file.is_file() and config_file.is_file()):
        return None
    config = _read_json(config_file)
    model_config = _read_json(model_dir / "config.json") if (model_dir / "config.json").is_file() else {}
    if (
        config.get("tokenizer_class") not in GENERIC_CLASSES
        or model_config.get("model_type", "") not in GENERIC_MODEL_TYPES
        or "auto_map" in config
        or "auto_map" in model_config
        or isinstance(config.get("extra_special_tokens"), dict)
        # without added_tokens_decoder transformers merges these legacy files in
        or (
            "added_tokens_decoder" not in config
            and any((model_dir / f).exists() for f in ("special_tokens_map.json", "added_tokens.json"))
        )
        # other `*_token` keys become model-specific special tokens in transformers
        or any(
            k.endswith("_token") and k not in NAMED and isinstance(v, str | dict) for k, v in config.items()
        )
    ):
        return None
    return FastTokenizer(tokenizer_file, config)


def _added_token(value):
    """A token of tokenizer_config.json: a string, or a dict of AddedToken fields."""
    from tokenizers import AddedToken

    if isinstance(value, dict):
        return AddedToken(**{k: v for k, v in value.items() if k != "__type"})
    return value


class FastTokenizer:
    """A `tokenizers.Tokenizer` with transformers' special-token bookkeeping: named tokens (bos, eos, unk,
    pad, ...), extra special tokens, and the calls avsr makes (`__call__`, `decode`, `batch_decode`,
    `convert_tokens_to_ids`, `add_special_tokens`, `len`)."""

    def __init__(self, tokenizer_file: Path, config: dict) -> None:
        from tokenizers import AddedToken, Tokenizer, processors

        self.path = tokenizer_file
        try:
            backend = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises its own Exception type for a malformed file
            raise CheckpointError(f"{tokenizer_file}: unreadable ({exc})") from None
        backend.no_truncation()  # transformers turns both off for a call that asks for neither
        backend.no_padding()
        self.backend = backend
        added = {int(i): _added_token(t) for i, t in (config.get("added_tokens_decoder") or {}).items()}
        by_text = {str(t): t for t in added.values()}
        self.named: dict[str, object] = {}
        for key in NAMED:
            value = _added_token(config.get(key))
            if value is not None:
                self.named[key] = by_text.get(str(value), value) if added else value
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        self.extra = [_added_token(t) for t in extra] if isinstance(extra, list) else []
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.clean_up_bpe = bool(
            config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")
        )
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))

        # As TokenizersBackend.__init__: every token of the config's added_tokens_decoder is added again, then
        # the named and extra special tokens the vocabulary lacks, in one add_tokens call.
        to_add = [token for _, token in sorted(added.items())]
        known = [t.content for _, t in sorted(backend.get_added_tokens_decoder().items())]
        known += [str(t) for t in to_add]
        for token in [*self.named.values(), *self.extra]:
            if str(token) not in known and token not in to_add:
                to_add.append(token)
        if to_add:
            names = [str(t) for t in self.named.values()]
            tokens = []
            for token in to_add:
                if isinstance(token, str):
                    token = AddedToken(token, special=True)
                elif not token.special and str(token) in names:
                    token.special = True
                tokens.append(token)
            backend.add_tokens(tokens)
        if backend.post_processor is None:  # add_bos_token/add_eos_token are ignored with a tokenizer.json
            backend.post_processor = processors.TemplateProcessing(
                single="$A:0", pair="$A:0 $B:1", special_tokens=[]
            )

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, add_special_tokens: bool = True) -> Encoded:
        return Encoded(self.encode(text, add_special_tokens))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(
        self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> str | list[str]:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        ids = [ids] if isinstance(ids, int) else list(ids)
        if ids and isinstance(ids[0], list):
            return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in ids]
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        # transformers skips the clean-up for BPE models: it was made for WordPiece and eats spaces there
        if clean and (type(self.backend.model).__name__ != "BPE" or self.clean_up_bpe):
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'")):
                text = text.replace(before, after)
            for suffix in ("n't", "'m", "'s", "'ve", "'re"):
                text = text.replace(" " + suffix, suffix)
        return text

    def batch_decode(
        self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> list[str]:
        rows = sequences.tolist() if hasattr(sequences, "tolist") else list(sequences)
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in rows]

    def convert_tokens_to_ids(self, tokens: str | list[str]):
        if isinstance(tokens, str):
            index = self.backend.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int]):
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(int(i)) for i in ids]

    def add_special_tokens(self, tokens: dict) -> int:
        """Set named special tokens (`pad_token`, ...) and replace the extra ones
        (`additional_special_tokens`/`extra_special_tokens`); add those the vocabulary lacks. Returns how many
        were added."""
        from tokenizers import AddedToken

        def special(token):
            if isinstance(token, str):
                return AddedToken(token, rstrip=False, lstrip=False, normalized=False, special=True)
            return token

        tokens = dict(tokens)
        if "additional_special_tokens" in tokens and not tokens.get("extra_special_tokens"):
            tokens["extra_special_tokens"] = tokens.pop("additional_special_tokens")
        new = []
        for key, value in tokens.items():
            if key == "extra_special_tokens":
                values = [special(t) for t in value]
                if values:
                    self.extra = list(values)
                new.extend(values)
            elif key in NAMED:
                self.named[key] = special(value)
                new.append(self.named[key])
            else:
                raise ValueError(f"{key} is not a special token key")
        return self.backend.add_special_tokens(new) if new else 0

    def _named(self, key: str) -> str | None:
        value = self.named.get(key)
        return None if value is None else str(value)

    def _named_id(self, key: str) -> int | None:
        token = self._named(key)
        return None if token is None else self.convert_tokens_to_ids(token)

    @property
    def unk_token_id(self) -> int | None:
        token = self._named("unk_token")
        return None if token is None else self.backend.token_to_id(token)

    bos_token = property(lambda self: self._named("bos_token"))
    eos_token = property(lambda self: self._named("eos_token"))
    unk_token = property(lambda self: self._named("unk_token"))
    pad_token = property(lambda self: self._named("pad_token"))
    bos_token_id = property(lambda self: self._named_id("bos_token"))
    eos_token_id = property(lambda self: self._named_id("eos_token"))
    pad_token_id = property(lambda self: self._named_id("pad_token"))

    @property
    def extra_special_tokens(self) -> list[str]:
        return [str(t) for t in self.extra]
