"""Subtitle cues laid out word by word, as openai-whisper lays them out with word timestamps
(`--max_line_width`, `--max_line_count`, `--max_words_per_line`, `--highlight_words`).

Words fill a line while it has room (`max_line_width` characters); a word that does not fit starts a new
line, and a new cue once the cue has `max_line_count` lines or after a pause of more than 3 s. Unless both
width and count are given, every segment starts a new cue, and so does every `max_words_per_line`-th word
of a segment. A cue runs from its first word's start to its last word's end; with `highlight_words` it is
shown once per word, from that word's start to its end with the word underlined (`<u>word</u>`), and the
gaps between words show the cue without underline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

from .subtitles import CueOptions
from .transcript import Segment, Word

LONG_PAUSE = 3.0  # seconds between word starts that end a cue (when segments are not kept)


def _words(segment: Segment) -> list[Word]:
    """The segment's words; one without words is one word spanning it."""
    words = [w for w in segment.words or [] if w.word.strip()]
    return words or [Word(" " + segment.text.strip(), segment.start, segment.end, 1.0)]


def _groups(segments: list[Segment], o: CueOptions) -> Iterator[list[tuple[str, Word]]]:
    """The words of each cue, each with the text that shows it: the word with its leading space when it
    continues a line, stripped when it starts one, after a newline when it starts the cue's next line."""
    keep_segments = o.max_line_count is None or o.max_line_width is None
    width = o.max_line_width or math.inf
    per_chunk = o.max_words_per_line or math.inf
    cue: list[tuple[str, Word]] = []
    line_len, lines = 0, 1
    last = next((w.start for s in segments for w in _words(s)), 0.0)
    for segment in segments:
        for k, word in enumerate(_words(segment)):
            pause = not keep_segments and word.start - last > LONG_PAUSE
            new_chunk = keep_segments and bool(cue) and k % per_chunk == 0
            if line_len > 0 and line_len + len(word.word) <= width and not pause and not new_chunk:
                shown = word.word
                line_len += len(word.word)
            else:
                shown = word.word.strip()
                full = o.max_line_count is not None and (pause or lines >= o.max_line_count)
                if (cue and full) or new_chunk:
                    yield cue
                    cue, lines = [], 1
                elif line_len > 0:
                    lines += 1
                    shown = "\n" + shown
                line_len = len(shown.strip())
            cue.append((shown, word))
            last = word.start
    if cue:
        yield cue


def _underlined(shown: str) -> str:
    word = shown.lstrip()
    return f"{shown[: len(shown) - len(word)]}<u>{word}</u>"


def word_cues(
    segments: Iterable[Segment], options: CueOptions, escape: Callable[[str], str] = str
) -> list[Segment]:
    """Cues of `segments` (cleaned, see subtitles.clean_segments) in whisper's word layout. `escape` makes a
    word's text safe for the format (WebVTT: & < >) before the `<u>` markup is added."""
    out = []
    for group in _groups(list(segments), options):
        shown = [escape(text) for text, _ in group]
        text = "".join(shown)
        start, end = group[0][1].start, group[-1][1].end
        if not options.highlight_words:
            out.append(Segment(start, end, text))
            continue
        last = start
        for i, (_, word) in enumerate(group):
            if round(word.start * 1000) > round(last * 1000):  # a gap between words: the plain cue
                out.append(Segment(last, word.start, text))
            marked = "".join(_underlined(s) if j == i else s for j, s in enumerate(shown))
            out.append(Segment(word.start, word.end, marked))
            last = word.end
    return out
