"""Scoring stage: WER/CER as the literature reports them (corpus totals), with explicit text normalisers.

Corpus WER is Σ(S + D + I) / Σ(reference words), not a mean of per-utterance WERs: that is what the
reference computes (Llama-AVSR lightning module, L202-211: Σ edit_distance(ref.lower().split(),
hyp.lower().split()) / Σ len(ref.split()), Llama-AVSR models/lightning.py) and what the papers print (×100).
Alignment and counts come from jiwer 4 (`process_words` / `process_characters`).

An utterance whose reference normalises to nothing has no words to score against: its hypothesis words are
counted as insertions (they add to the corpus numerator, nothing to the denominator), and its own WER is 0
when the hypothesis is empty too, else infinite. The same rule gives corpus rates when no reference has words.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import jiwer

from ..storage import cache_root


@dataclass(frozen=True)
class Normalizer:
    """A named text normaliser applied to references and hypotheses alike before scoring."""

    name: str
    description: str
    fn: Callable[[str], str] = field(repr=False, compare=False)

    def __call__(self, text: str) -> str:
        return self.fn(text)


# Typographic apostrophes (’ ‘ ʼ ′ ` ´) are written as ' before the LRS rules apply.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc\u2032`\u00b4", "'"))
_INNER_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")
_INNER_DOT_COMMA = re.compile(r"(?<=\w)[.,](?=\w)")


def lrs_normalize(text: str) -> str:
    """Make any text look like an LRS2/LRS3 label: see LRS_DESCRIPTION."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
    text = _INNER_APOSTROPHE.sub("\0", text)  # protect don't, it's, o'clock
    text = _INNER_DOT_COMMA.sub("", text)  # u.s. -> us, 1,000 -> 1000
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return " ".join(text.replace("\0", "'").split())


LRS_DESCRIPTION = (
    "LRS convention: NFKC, case-folded; apostrophes kept inside words (don't, o'clock) and dropped elsewhere "
    "('quoted' -> quoted); '.' and ',' inside a word or number deleted (u.s. -> us, 1,000 -> 1000); hyphens "
    "and all other punctuation/symbols become spaces (well-known -> well known); no contraction or number "
    "expansion; whitespace collapsed"
)


def plain_normalize(text: str) -> str:
    """The reference's own: ``text.lower().split()`` (Llama-AVSR lightning module), re-joined by spaces."""
    return " ".join(text.lower().split())


def whisper_spelling_files() -> list[Path]:
    """Where Whisper's British->American spelling map (`normalizer.json`) may already be on this machine.

    Whisper tokenizer folders on the Hub carry it (transformers' WhisperTokenizer loads it as
    ``normalizer_file``); we look in the avsr cache and the Hugging Face hub cache, and download nothing.
    """
    hub = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    )
    found = [
        *cache_root().glob("*/normalizer.json"),
        *cache_root().glob("*/*/normalizer.json"),
        *hub.glob("models--openai--whisper-*/snapshots/*/normalizer.json"),
    ]
    return sorted(found)


def whisper_normalizer(spelling_file: str | os.PathLike | None = None) -> Normalizer:
    """Whisper's English normaliser, from transformers (no openai-whisper needed).

    spelling_file: Whisper's `normalizer.json` (British->American spellings); None searches
    `whisper_spelling_files()` and, when none is found, runs with an empty map (said in the description).
    """
    # lazy: transformers takes a second or more to import and only this normaliser needs it (scoring with
    # the plain one, the report and the tests of the scorer stay light)
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    if spelling_file is None:
        spelling_file = next(iter(whisper_spelling_files()), None)
    mapping = json.loads(Path(spelling_file).read_text(encoding="utf-8")) if spelling_file else {}
    source = (
        f"{len(mapping)} spellings from {spelling_file}"
        if spelling_file
        else "no normalizer.json found, so British spellings are not mapped"
    )
    description = (
        "Whisper's English normaliser (transformers EnglishTextNormalizer): lower-case, bracketed text and "
        "fillers removed, contractions expanded, numbers standardised to digits, punctuation removed; "
        + source
    )
    return Normalizer("whisper", description, EnglishTextNormalizer(mapping))


NORMALIZER_NAMES = ("lrs", "whisper", "none")


@functools.cache
def get_normalizer(name: str) -> Normalizer:
    """The normaliser called `name` (one of NORMALIZER_NAMES)."""
    if name == "lrs":
        return Normalizer("lrs", LRS_DESCRIPTION, lrs_normalize)
    if name == "whisper":
        return whisper_normalizer()
    if name == "none":
        return Normalizer("none", "the reference's own: lower-case, split on whitespace", plain_normalize)
    raise ValueError(f"unknown normaliser {name!r} (expected one of {', '.join(NORMALIZER_NAMES)})")


def describe_normalizers() -> str:
    """One line per normaliser: `name: description`."""
    return "\n".join(f"{n}: {get_normalizer(n).description}" for n in NORMALIZER_NAMES)


def _rate(errors: int, total: int) -> float:
    """errors / total; with nothing to score against, 0 when there is no error, else infinity."""
    if total:
        return errors / total
    return 0.0 if errors == 0 else math.inf


class _ErrorRates:
    """WER/CER from S/D/I counts: total errors over total reference units (words, characters)."""

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return _rate(self.errors, self.ref_words)

    @property
    def cer(self) -> float:
        return _rate(self.char_errors, self.ref_chars)


@dataclass
class UtteranceScore(_ErrorRates):
    """One utterance: texts as given and as scored, word and character error counts, word alignment.

    alignment: (op, reference word, hypothesis word) with op C (correct), S, D (hyp word ""), I (ref word "").
    """

    id: str | None
    reference: str
    hypothesis: str
    ref_norm: str
    hyp_norm: str
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    ref_chars: int
    char_errors: int
    alignment: list[tuple[str, str, str]]

    @property
    def ref_words(self) -> int:
        return self.hits + self.substitutions + self.deletions


@dataclass
class Scores(_ErrorRates):
    """Corpus totals (rates are total errors / total reference units) and the per-utterance rows."""

    normalizer: str
    utterances: int
    ref_words: int
    hyp_words: int
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    ref_chars: int
    char_errors: int
    sentence_errors: int  # utterances with at least one word error
    rows: list[UtteranceScore]

    @property
    def ser(self) -> float:
        """Sentence error rate: the fraction of utterances with any word error."""
        return self.sentence_errors / self.utterances if self.utterances else 0.0

    def summary(self) -> str:
        """One line, e.g. `WER 12.50% (S 3, D 1, I 1 / 40 words)  CER 5.10%  SER 40.0%  10 utts  [lrs]`."""
        return (
            f"WER {100 * self.wer:.2f}% (S {self.substitutions}, D {self.deletions}, I {self.insertions} "
            f"/ {self.ref_words} words)  CER {100 * self.cer:.2f}%  SER {100 * self.ser:.1f}%  "
            f"{self.utterances} utts  [{self.normalizer}]"
        )

    def to_dict(self, rows: bool = True) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rows"}
        out.update(wer=self.wer, cer=self.cer, ser=self.ser)
        if rows:
            out["rows"] = [{**asdict(r), "wer": r.wer, "cer": r.cer} for r in self.rows]
        return out


def _counts(chunks: list) -> dict[str, int]:
    """Units per alignment op in jiwer AlignmentChunks: equal/substitute/delete count reference units."""
    n = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
    for c in chunks:
        n[c.type] += (
            (c.hyp_end_idx - c.hyp_start_idx) if c.type == "insert" else c.ref_end_idx - c.ref_start_idx
        )
    return n


_OPS = {"equal": "C", "substitute": "S", "delete": "D", "insert": "I"}


def _word_alignment(chunks: list, ref: list[str], hyp: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for c in chunks:
        r, h = ref[c.ref_start_idx : c.ref_end_idx], hyp[c.hyp_start_idx : c.hyp_end_idx]
        if c.type == "delete":
            out += [("D", w, "") for w in r]
        elif c.type == "insert":
            out += [("I", "", w) for w in h]
        else:
            out += [(_OPS[c.type], a, b) for a, b in zip(r, h, strict=True)]
    return out


def score(
    pairs: Sequence[tuple[str, str]],
    normalizer: str | Normalizer = "lrs",
    ids: Sequence[str] | None = None,
) -> Scores:
    """Score (reference, hypothesis) pairs after `normalizer` (a name in NORMALIZER_NAMES or a Normalizer)."""
    norm = get_normalizer(normalizer) if isinstance(normalizer, str) else normalizer
    if ids is not None and len(ids) != len(pairs):
        raise ValueError(f"{len(ids)} ids for {len(pairs)} pairs")
    refs = [norm(r) for r, _ in pairs]
    hyps = [norm(h) for _, h in pairs]
    rows: list[UtteranceScore] = []
    if pairs:
        words = jiwer.process_words(refs, hyps)
        chars = jiwer.process_characters(refs, hyps)
        for i, (ref, hyp) in enumerate(pairs):
            w, c = _counts(words.alignments[i]), _counts(chars.alignments[i])
            rows.append(
                UtteranceScore(
                    id=ids[i] if ids is not None else None,
                    reference=ref,
                    hypothesis=hyp,
                    ref_norm=refs[i],
                    hyp_norm=hyps[i],
                    hits=w["equal"],
                    substitutions=w["substitute"],
                    deletions=w["delete"],
                    insertions=w["insert"],
                    ref_chars=len(refs[i]),
                    char_errors=c["substitute"] + c["delete"] + c["insert"],
                    alignment=_word_alignment(words.alignments[i], words.references[i], words.hypotheses[i]),
                )
            )
    return Scores(
        normalizer=norm.name,
        utterances=len(rows),
        ref_words=sum(r.ref_words for r in rows),
        hyp_words=sum(len(h.split()) for h in hyps),
        hits=sum(r.hits for r in rows),
        substitutions=sum(r.substitutions for r in rows),
        deletions=sum(r.deletions for r in rows),
        insertions=sum(r.insertions for r in rows),
        ref_chars=sum(r.ref_chars for r in rows),
        char_errors=sum(r.char_errors for r in rows),
        sentence_errors=sum(r.errors > 0 for r in rows),
        rows=rows,
    )


def _align_lines(alignment: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    """REF / HYP / marks lines, one column per aligned word; a missing word is shown as asterisks."""
    ref, hyp, marks = [], [], []
    for op, r, h in alignment:
        width = max(len(r), len(h), 1)
        ref.append((r or "*" * width).ljust(width))
        hyp.append((h or "*" * width).ljust(width))
        marks.append(("" if op == "C" else op).ljust(width))
    return " ".join(ref).rstrip(), " ".join(hyp).rstrip(), " ".join(marks).rstrip()


def alignment_text(
    rows: Sequence[UtteranceScore],
    worst_first: bool = True,
    limit: int | None = None,
    errors_only: bool = False,
) -> str:
    """Readable alignments of the normalised texts (as jiwer's visualize_alignment), one block per utterance.

    worst_first: highest WER first (then most errors, then input order); limit: at most that many blocks;
    errors_only: leave out utterances without a word error.
    """
    order = list(enumerate(rows))
    if errors_only:
        order = [(i, r) for i, r in order if r.errors]
    if worst_first:
        order.sort(key=lambda ir: (-ir[1].wer, -ir[1].errors, ir[0]))
    blocks = []
    for i, r in order[:limit]:
        ref, hyp, marks = _align_lines(r.alignment)
        wer = "inf (empty reference)" if math.isinf(r.wer) else f"{100 * r.wer:.1f}%"
        name = r.id if r.id is not None else f"#{i + 1}"
        counts = f"S {r.substitutions}, D {r.deletions}, I {r.insertions} / {r.ref_words} words"
        head = f"{name}: WER {wer} ({counts})"
        blocks.append("\n".join([head, f"REF: {ref}", f"HYP: {hyp}", *([f"     {marks}"] if marks else [])]))
    return "\n\n".join(blocks) + ("\n" if blocks else "")
