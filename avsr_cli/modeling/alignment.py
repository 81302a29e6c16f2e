"""CTC forced alignment: where each word of a known transcript lies in frame-level character posteriors.

Our own Viterbi over the CTC topology (blank, c1, blank, c2, ..., blank; a character may follow the one two
states back unless it repeats it), as torchaudio's `forced_align` computes it: torchaudio publishes no
build for the torch this project pins, and the search is 30 lines of numpy.
"""

from __future__ import annotations

import unicodedata

import numpy as np

# the characters of avsr's aligner heads (ctc_head.py): class index = position + 1; 0 is the CTC blank
CHARS = " 'abcdefghijklmnopqrstuvwxyz"

NEG_INF = -1e30


def head_vocabulary(chars: str = CHARS) -> dict[str, int]:
    """A CharCTCHead's classes: character -> class id (0 is the blank)."""
    return {c: i + 1 for i, c in enumerate(chars)}


def word_targets(
    words: list[str], chars: str = CHARS, *, vocab: dict[str, int] | None = None, delimiter: str = " "
) -> tuple[list[int], list[tuple[int, int]]]:
    """Class indices of the words' characters joined by the word delimiter, and each word's (first, end)
    position in them; a word with no character the vocabulary knows (a number, a symbol) gets an empty span.

    `vocab` (character -> class id; default: `chars` as a CharCTCHead numbers them) is matched without
    regard to case, so an upper-case vocabulary (wav2vec2's) spells lower-case text."""
    known = {k.casefold(): v for k, v in (vocab or head_vocabulary(chars)).items() if len(k) == 1}
    sep = known[delimiter.casefold()]
    targets: list[int] = []
    spans = []
    for word in words:
        plain = unicodedata.normalize("NFKD", word.casefold())
        ids = [known[c] for c in plain if c in known and known[c] != sep]
        if ids and targets:
            targets.append(sep)
        spans.append((len(targets), len(targets) + len(ids)))
        targets += ids
    return targets, spans


def viterbi(log_probs: np.ndarray, targets: list[int], blank: int = 0) -> np.ndarray | None:
    """The most likely CTC path of `targets` through (T, C) log-probabilities: per frame, the index of the
    target it emits, or -1 for a blank. None when the frames are too few for the targets."""
    n_frames, n_targets = log_probs.shape[0], len(targets)
    repeats = sum(a == b for a, b in zip(targets, targets[1:], strict=False))
    if n_targets == 0 or n_frames < n_targets + repeats:
        return None
    ext = np.full(2 * n_targets + 1, blank)
    ext[1::2] = targets
    states = len(ext)
    skip = np.zeros(states, bool)  # s-2 -> s allowed: a character unlike the one two states back
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    emit = log_probs[:, ext]
    score = np.full(states, NEG_INF)
    score[:2] = emit[0, :2]
    back = np.zeros((n_frames, states), np.int8)  # 0: stayed, 1: from s-1, 2: from s-2
    for t in range(1, n_frames):
        prev1 = np.concatenate(([NEG_INF], score[:-1]))
        prev2 = np.where(skip, np.concatenate(([NEG_INF, NEG_INF], score[:-2])), NEG_INF)
        options = np.stack([score, prev1, prev2])
        back[t] = options.argmax(0)
        score = options.max(0) + emit[t]
    state = states - 1 if score[-1] >= score[-2] else states - 2
    path = np.empty(n_frames, np.int64)
    for t in range(n_frames - 1, -1, -1):
        path[t] = state
        state -= int(back[t, state])  # int: NumPy 2 keeps int - int8 in int8, which overflows past 127
    return np.where(path % 2 == 1, path // 2, -1)


def align_words(
    text: str,
    log_probs: np.ndarray,
    frame_seconds: float,
    chars: str = CHARS,
    *,
    vocab: dict[str, int] | None = None,
    blank: int = 0,
    delimiter: str = " ",
) -> list[tuple[str, float, float, float]]:
    """(word, start, end, probability) for each whitespace-separated word of `text`, in seconds from the
    first frame. A word's span runs from its first character's first frame to its last character's last
    frame; its probability is the mean, over its characters, of the best posterior on their frames. Words
    the head cannot spell (numbers, symbols) and transcripts the frames cannot hold are placed between their
    neighbours, with probability 0. `vocab`, `blank` and `delimiter` describe the classes of `log_probs`
    (see `word_targets`; default: a CharCTCHead's)."""
    words = text.split()
    if not words:
        return []
    targets, spans = word_targets(words, chars, vocab=vocab, delimiter=delimiter)
    path = viterbi(log_probs, targets, blank)
    duration = log_probs.shape[0] * frame_seconds
    if path is None:  # spread by length, unaligned
        weights = np.array([len(w) + 1 for w in words], float)
        edges = np.concatenate(([0.0], np.cumsum(weights))) / weights.sum() * duration
        return [(w, float(a), float(b), 0.0) for w, a, b in zip(words, edges[:-1], edges[1:], strict=True)]
    frames_of: dict[int, list[int]] = {}
    for t, k in enumerate(path.tolist()):
        if k >= 0:
            frames_of.setdefault(k, []).append(t)
    timed: list[tuple[float, float, float] | None] = []
    for first, end in spans:
        if first == end:
            timed.append(None)
            continue
        start_frame, end_frame = frames_of[first][0], frames_of[end - 1][-1] + 1
        best = [max(log_probs[t, targets[k]] for t in frames_of[k]) for k in range(first, end)]
        timed.append((start_frame * frame_seconds, end_frame * frame_seconds, float(np.mean(np.exp(best)))))
    out = []
    for i, word in enumerate(words):
        if timed[i] is None:  # between the previous word's end and the next timed word's start
            before = next((t[1] for t in reversed(timed[:i]) if t is not None), 0.0)
            after = next((t[0] for t in timed[i + 1 :] if t is not None), duration)
            timed[i] = (before, max(before, after), 0.0)
        start, end, prob = timed[i]
        out.append((word, float(start), float(end), prob))
    return out
