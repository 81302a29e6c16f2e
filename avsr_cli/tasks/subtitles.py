"""Timed transcript segments -> readable subtitle cues (SRT, WebVTT).

Long segments are split into cues of at most `max_lines` lines of `max_line_chars`, timed by their words'
times when the segment has them (word timestamps), else by sharing the segment's time by character count;
lines and cues break preferably after punctuation, else before a conjunction, else at a space, and inside
a word only when it is longer than a line. Cues never overlap. Run `clean_segments` first to drop empty
texts and collapse LLM repeat loops. (word_cues.py lays cues out as openai-whisper does instead.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .transcript import Segment, Word

CONJUNCTIONS = frozenset(
    "and but or nor so yet because that which who whom whose when while where if unless until although "
    "though since whereas then".split()
)
WEAK_ENDINGS = frozenset("a an the of to in on at by for with from my your his her its our their".split())
_SENTENCE_END = re.compile(r"[.?!…]['\"’”)\]]*$")
_CLAUSE_END = re.compile(r"[,;:—–-]['\"’”)\]]*$")


@dataclass(frozen=True)
class CueOptions:
    """Layout and timing limits of subtitle cues (seconds, characters)."""

    max_line_chars: int = 42
    max_lines: int = 2
    min_duration: float = 1.0  # short cues extend into the following silence, never over the next cue
    max_duration: float = 7.0  # longer segments are split (text permitting) and cues trimmed to this
    min_gap: float = 0.0  # between consecutive cues
    conjunctions: frozenset[str] = CONJUNCTIONS  # a line may break before these
    # openai-whisper's word layout (word_cues.py), used instead when any of these is set; it needs words
    max_line_width: int | None = None  # characters per line, lines filled word by word
    max_line_count: int | None = None  # lines per cue (with max_line_width; segments are then not kept)
    max_words_per_line: int | None = None  # words per cue (without max_line_width)
    highlight_words: bool = False  # one cue per word, that word underlined: <u>word</u>

    @property
    def word_layout(self) -> bool:
        """Whether cues follow whisper's word layout rather than this module's."""
        limits = (self.max_line_width, self.max_line_count, self.max_words_per_line)
        return self.highlight_words or any(v is not None for v in limits)

    def __post_init__(self) -> None:
        if self.max_line_chars < 1 or self.max_lines < 1:
            raise ValueError("max_line_chars and max_lines must be >= 1")
        for name in ("max_line_width", "max_line_count", "max_words_per_line"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.min_duration <= self.max_duration or self.max_duration <= 0:
            raise ValueError("need 0 <= min_duration <= max_duration and max_duration > 0")
        if self.min_gap < 0:
            raise ValueError("min_gap must be >= 0")


def has_text(text: str) -> bool:
    """True when `text` holds at least one letter or digit."""
    return any(ch.isalnum() for ch in text)


def clean_segments(segments: Iterable[Segment], collapse_repeats: bool = True) -> list[Segment]:
    """Segments with whitespace normalised, repeat loops collapsed (`Segment.without_loops`: the words left
    keep their times), and no empty or punctuation-only text. Their words stay when they spell the text."""
    out = []
    for s in segments:
        s = Segment(s.start, max(s.end, s.start), " ".join(s.text.split()), words=s.words)
        s = s.without_loops() if collapse_repeats else s
        if has_text(s.text):
            out.append(replace(s, words=_spelling(s.words, s.text)))
    return out


def _spelling(words: list[Word] | None, text: str) -> list[Word] | None:
    """`words` without blank ones, if their text is `text` (whitespace aside), else None."""
    kept = [w for w in words or [] if w.word.strip()]
    return kept if kept and " ".join(w.word.strip() for w in kept).split() == text.split() else None


def _tokens(text: str, width: int) -> list[tuple[str, bool]]:
    """(piece, glued to the previous piece) for each word; words longer than `width` are hard-broken."""
    out = []
    for word in text.split():
        out += [(word[i : i + width], i > 0) for i in range(0, len(word), width)]
    return out


def _penalty(tokens: list[tuple[str, bool]], k: int, o: CueOptions) -> float:
    """Cost of a break before token k: 0 after a sentence, less after a clause or before a conjunction."""
    if k == 0 or k >= len(tokens):
        return 0.0
    prev, (word, glued) = tokens[k - 1][0], tokens[k]
    if glued:
        return 5.0
    if _SENTENCE_END.search(prev):
        return 0.0
    if _CLAUSE_END.search(prev):
        return 0.15
    if re.sub(r"\W", "", word.lower()) in o.conjunctions:
        return 0.3
    return 0.9 if re.sub(r"\W", "", prev.lower()) in WEAK_ENDINGS else 0.6


def _join(tokens: list[tuple[str, bool]]) -> str:
    return "".join(("" if glued or not i else " ") + word for i, (word, glued) in enumerate(tokens))


def _lines(tokens: list[tuple[str, bool]], o: CueOptions) -> str:
    """`tokens` as the fewest lines that fit, balanced, breaking at the cheapest places."""
    width, n = o.max_line_chars, len(tokens)
    for count in range(1, o.max_lines + 1):
        # best[j, k]: (cost, line starts) of laying out tokens[:j] as k lines
        best: dict[tuple[int, int], tuple[float, list[int]]] = {(0, 0): (0.0, [])}
        target = len(_join(tokens)) / count
        for k in range(1, count + 1):
            for j in range(1, n + 1):
                for i in range(j - 1, -1, -1):
                    size = len(_join(tokens[i:j]))
                    if size > width:
                        break
                    if (i, k - 1) in best:
                        cost = best[i, k - 1][0] + ((size - target) / width) ** 2 + _penalty(tokens, i, o)
                        if (j, k) not in best or cost < best[j, k][0]:
                            best[j, k] = (cost, [*best[i, k - 1][1], i])
        if (n, count) in best:
            cuts = [*best[n, count][1][1:], n]
            return "\n".join(_join(tokens[a:b]) for a, b in zip([0, *cuts[:-1]], cuts, strict=True))
    return _join(tokens)  # unreachable: one token per line always fits when max_lines allows


def _token_times(words: list[Word] | None, tokens: list[tuple[str, bool]], width: int):
    """(start, end) of each token from the words' times (a word broken in pieces shares its time by their
    characters), or None without words or when they do not spell the tokens."""
    if not words:
        return None
    times = []
    for w in words:
        pieces = _tokens(w.word, width)
        chars, done = sum(len(p) for p, _ in pieces), 0
        for piece, _ in pieces:
            start = w.start + (w.end - w.start) * done / chars
            done += len(piece)
            times.append((start, w.start + (w.end - w.start) * done / chars))
    return times if len(times) == len(tokens) else None


def split_segment(segment: Segment, options: CueOptions = CueOptions()) -> list[Segment]:
    """One segment -> cues that fit the line limits and max_duration, timed by the segment's words when it
    has them, else by sharing its time by character count."""
    o = options
    tokens = _tokens(segment.text, o.max_line_chars)
    if not tokens:
        return []
    n, duration = len(tokens), max(segment.end - segment.start, 0.0)
    total = len(_join(tokens))
    cap = o.max_lines * o.max_line_chars
    times = _token_times(segment.words, tokens, o.max_line_chars)
    if times is None and duration > o.max_duration:  # a cue's time: its share of the characters and a space
        cap = min(cap, max(1, math.floor((total + 1) * o.max_duration / duration) - 1))
    best: list[tuple[float, int]] = [(0.0, 0)] + [(math.inf, 0)] * n  # (cost, start of last cue)
    for i in range(n):
        lines, used = 1, -1
        for j in range(i + 1, n + 1):
            word, glued = tokens[j - 1]
            grow = len(word) + (0 if glued or used < 0 else 1)
            if used >= 0 and used + grow > o.max_line_chars:
                lines, used, grow = lines + 1, 0, len(word)
            used = max(used, 0) + grow
            size = len(_join(tokens[i:j]))
            too_long = times is not None and times[j - 1][1] - times[i][0] > o.max_duration
            if j > i + 1 and (lines > o.max_lines or size > cap or too_long):
                break
            cost = best[i][0] + 10.0 + (1 - min(size / cap, 1.0)) ** 2 + _penalty(tokens, j, o)
            if cost < best[j][0]:
                best[j] = (cost, i)
    cuts, j = [], n
    while j > 0:
        cuts.append(j)
        j = best[j][1]
    bounds = [0, *reversed(cuts)]
    pieces = [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if times is not None:  # each cue from its first word's start to its last word's end
        return [
            Segment(times[a][0], times[b - 1][1], _lines(tokens[a:b], o))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    weights = [len(_join(p)) + (b == n or not tokens[b][1]) for p, b in zip(pieces, bounds[1:], strict=True)]
    cues, done = [], 0
    for piece, weight in zip(pieces, weights, strict=True):
        start = segment.start + duration * done / sum(weights)
        done += weight
        cues.append(Segment(start, segment.start + duration * done / sum(weights), _lines(piece, o)))
    return cues


def make_cues(segments: Iterable[Segment], options: CueOptions = CueOptions()) -> list[Segment]:
    """Timed segments -> ordered, non-overlapping cues that respect `options` where the timeline allows.

    Empty texts are dropped; a cue shorter than min_duration is extended into the silence that follows it
    (never over the next cue), one longer than max_duration is trimmed. Overlapping inputs are shifted
    later, so each cue keeps at least min(its own duration, min_duration) on screen.
    """
    o = options
    cues = sorted(
        (c for s in segments if has_text(s.text) for c in split_segment(s, o)), key=lambda c: (c.start, c.end)
    )
    out: list[Segment] = []
    for i, c in enumerate(cues):
        start = max(c.start, out[-1].end + o.min_gap) if out else max(c.start, 0.0)
        end = min(max(c.end, start), start + o.max_duration)
        limit = cues[i + 1].start - o.min_gap if i + 1 < len(cues) else math.inf
        if end - start < o.min_duration:
            end = max(end, min(start + o.min_duration, limit))
        end = max(min(end, limit), start + min(c.end - c.start, o.min_duration))
        if end - start < 0.001:  # no room at all (overlapping inputs): show it anyway, the next cue shifts
            end = start + max(o.min_duration, 0.001)
        out.append(Segment(start, end, c.text))
    return out
