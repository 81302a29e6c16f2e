"""Word timestamps in the outputs: JSON words, subtitle cues timed by words, and openai-whisper's word layout
(--max-line-width, --max-line-count, --max-words-per-line, --highlight-words), which needs
--word-timestamps."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import srt
import webvtt

from avsr_cli.tasks.subtitles import CueOptions
from avsr_cli.tasks.transcript import Result, Segment, Word
from avsr_cli.tasks.writers import to_json, to_srt, to_vtt

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "heldout.wav"

FIRST = "The quick brown fox jumps over the lazy dog, and then it runs into the dark forest."
SECOND = "Nobody saw it again."
THIRD = "Years later a hunter found its tracks near the river."


def timed(text: str, start: float, pace: float = 0.37, gap: float = 0.08) -> list[Word]:
    """Words of `text` spoken one after another: each `pace` s long, `gap` s of silence between them, the
    times deliberately not proportional to the characters."""
    words, t = [], start
    for i, token in enumerate(text.split()):
        length = pace * (1.5 if i % 4 == 0 else 1.0) + 0.0004 * i  # sub-millisecond parts to round
        words.append(Word(" " + token, t, t + length, round(0.5 + 0.01 * i, 6)))
        t += length + gap
    return words


def segment(text: str, start: float, end: float | None = None) -> Segment:
    words = timed(text, start)
    return Segment(start, end if end is not None else words[-1].end + 0.3, text, words=words)


def result(*segments: Segment) -> Result:
    return Result(
        path="/clips/talk.mp4",
        text=" ".join(s.text for s in segments),
        duration=max(s.end for s in segments),
        mode="asr",
        model="m",
        segments=list(segments),
        timings={},
        options={},
    )


def speech() -> Result:
    """Three sentences: the second follows the first closely, the third after a long pause."""
    one = segment(FIRST, 0.5)
    two = segment(SECOND, one.words[-1].end + 0.4)
    return result(one, two, segment(THIRD, two.words[-1].end + 5.0))


def all_words(r: Result) -> list[Word]:
    return [w for s in r.segments for w in s.words or []]


def seconds(t) -> float:
    return t.total_seconds()


def ms(t: float) -> int:
    return round(t * 1000)


def cue_words(text: str) -> list[str]:
    return text.replace("<u>", "").replace("</u>", "").split()


def test_json_lists_each_segments_words_rounded() -> None:
    r = speech()
    r.segments.append(Segment(40.0, 41.0, "no words here"))
    data = json.loads(to_json(r))
    segments = data["segments"]
    assert segments[-1]["words"] is None
    for seg, original in zip(segments[:-1], r.segments, strict=False):
        assert [w["word"] for w in seg["words"]] == [w.word for w in original.words]
        assert "".join(w["word"] for w in seg["words"]).strip() == seg["text"]
        assert set(seg["words"][0]) == {"word", "start", "end", "probability"}
        for w, o in zip(seg["words"], original.words, strict=True):
            assert w["start"] == round(o.start, 3) and w["end"] == round(o.end, 3)  # milliseconds
            assert w["probability"] == round(o.probability, 4)
    times = [t for seg in segments[:-1] for w in seg["words"] for t in (w["start"], w["end"])]
    assert times == sorted(times)


def test_max_words_per_line_cues_start_and_end_with_their_words() -> None:
    r = speech()
    words = all_words(r)
    cues = list(srt.parse(to_srt(r, CueOptions(max_words_per_line=3))))
    assert [w for c in cues for w in c.content.split()] == [w.word.strip() for w in words]
    done = 0
    for c in cues:
        n = len(c.content.split())
        assert 1 <= n <= 3
        assert ms(seconds(c.start)) == ms(words[done].start) and ms(seconds(c.end)) == ms(
            words[done + n - 1].end
        )
        done += n
    # a segment starts a new cue: whisper keeps segments unless both line width and count are given
    starts = {ms(s.words[0].start) for s in r.segments}
    assert starts <= {ms(seconds(c.start)) for c in cues}


def test_max_line_width_and_count_fill_lines_word_by_word() -> None:
    r = speech()
    words = all_words(r)
    cues = list(srt.parse(to_srt(r, CueOptions(max_line_width=20, max_line_count=2))))
    assert [w for c in cues for w in c.content.split()] == [w.word.strip() for w in words]
    for c in cues:
        lines = c.content.split("\n")
        assert 1 <= len(lines) <= 2 and all(len(line) <= 20 for line in lines), c.content
    # a line is full: the next word would not have fitted
    for c, nxt in pairwise(cues):
        lines = c.content.split("\n") + [nxt.content.split("\n")[0]]
        for a, b in pairwise(lines):
            assert len(a) + 1 + len(b.split()[0]) > 20 or seconds(nxt.start) - seconds(c.end) > 3.0
    # segments run on (the second sentence joins the first's cue) but a pause of more than 3 s ends a cue
    joined = [c for c in cues if "forest. Nobody" in c.content.replace("\n", " ")]
    assert joined, [c.content for c in cues]
    third = r.segments[2].words[0]
    assert any(ms(seconds(c.start)) == ms(third.start) for c in cues)


def test_max_line_width_alone_keeps_one_cue_per_segment() -> None:
    r = speech()
    cues = list(srt.parse(to_srt(r, CueOptions(max_line_width=30))))
    assert [" ".join(c.content.split()) for c in cues] == [FIRST, SECOND, THIRD]
    assert all(len(line) <= 30 for c in cues for line in c.content.split("\n"))
    assert any("\n" in c.content for c in cues)
    for c, s in zip(cues, r.segments, strict=True):
        assert ms(seconds(c.start)) == ms(s.words[0].start) and ms(seconds(c.end)) == ms(s.words[-1].end)


def expected_highlight(r: Result, per_cue: int, escape=str) -> list[tuple[int, int, str]]:
    """whisper's --highlight_words with --max_words_per_line `per_cue`, built from the words: per cue of
    words, each word underlined from its start to its end, the plain cue in the gaps between words."""
    out = []
    for s in r.segments:
        for k in range(0, len(s.words), per_cue):
            chunk = s.words[k : k + per_cue]
            shown = [escape(w.word.strip()) for w in chunk]
            plain = " ".join(shown)
            for i, w in enumerate(chunk):
                if i and ms(w.start) > ms(chunk[i - 1].end):
                    out.append((ms(chunk[i - 1].end), ms(w.start), plain))
                marked = [f"<u>{v}</u>" if j == i else v for j, v in enumerate(shown)]
                out.append((ms(w.start), ms(w.end), " ".join(marked)))
    return out


def test_highlight_words_srt_is_whispers_layout() -> None:
    r = speech()
    cues = list(srt.parse(to_srt(r, CueOptions(max_words_per_line=3, highlight_words=True))))
    got = [(ms(seconds(c.start)), ms(seconds(c.end)), c.content) for c in cues]
    assert got == expected_highlight(r, 3)
    assert sum(c.content.count("<u>") == 1 for c in cues) == len(all_words(r))


def test_highlight_words_vtt_escapes_words_not_markup() -> None:
    r = speech()
    r.segments.append(segment("Fish & chips <cheap>", 60.0))
    text = to_vtt(r, CueOptions(max_words_per_line=3, highlight_words=True))
    captions = webvtt.from_string(text).captions
    got = [(ms(_vtt(c.start)), ms(_vtt(c.end)), c.raw_text) for c in captions]
    assert got == expected_highlight(r, 3, html.escape)
    assert "<u>&amp;</u>" in text and "Fish &amp; <u>chips</u>" in text and "&lt;cheap&gt;" in text


def _vtt(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_cues_without_whisper_options_are_timed_by_the_words() -> None:
    # a 20 s segment whose speech ends after 16 s: character shares would spread the cues over all 20 s
    one = segment(FIRST + " " + SECOND + " " + THIRD, 1.0, end=21.0)
    r = result(one)
    o = CueOptions(min_duration=0.0)
    cues = list(srt.parse(to_srt(r, o)))
    assert len(cues) > 2
    assert [w for c in cues for w in c.content.split()] == [w.word.strip() for w in one.words]
    done = 0
    for c in cues:
        n = len(c.content.split())
        first, last = one.words[done], one.words[done + n - 1]
        assert ms(seconds(c.start)) == ms(first.start) and ms(seconds(c.end)) == ms(last.end), c.content
        assert seconds(c.end) - seconds(c.start) <= o.max_duration + 1e-3
        done += n
    assert ms(seconds(cues[-1].end)) == ms(one.words[-1].end) < 21_000
    # a repeat loop is collapsed for subtitles (as in transcripts): the words left keep their own times
    text = "we will go " * 6 + "home"
    looped = segment(text, 2.0)
    cues = list(srt.parse(to_srt(result(looped), o)))
    assert " ".join(c.content.replace("\n", " ") for c in cues) == "we will go home"
    home = looped.words[-1]
    assert ms(seconds(cues[0].start)) == ms(looped.words[0].start)
    assert ms(seconds(cues[-1].end)) == ms(home.end)
    assert ms(seconds(cues[-1].start)) == ms(home.start) or len(cues) == 1


@pytest.mark.parametrize("name", ["max_line_width", "max_line_count", "max_words_per_line"])
def test_word_layout_options_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        CueOptions(**{name: 0})


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avsr_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AVSR_CHECKPOINT": ""},
    )


@pytest.mark.parametrize(
    "command,flags",
    [
        ("transcribe", ["--highlight-words", "-f", "srt"]),
        ("transcribe", ["--max-words-per-line", "3", "-f", "vtt"]),
        ("export-subtitles", ["--max-line-width", "30", "--max-line-count", "2"]),
    ],
)
def test_word_layout_without_word_timestamps_is_a_usage_error(
    command: str, flags: list[str], tmp_path
) -> None:
    r = cli(command, CLIP, *flags, "-o", tmp_path)
    assert r.returncode == 2 and r.stdout == "" and not list(tmp_path.iterdir())
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--word-timestamps" in lines[0] and "Traceback" not in r.stderr
    assert all(f in lines[0] for f in flags if f.startswith("--")), lines


def test_flags_that_do_nothing_together_are_warned_about_as_whisper_does(tmp_path) -> None:
    notes = tmp_path / "notes.txt"  # not media: the run stops before any model loads, after the checks
    notes.write_text("not a recording\n")
    r = cli("transcribe", notes, "--word-timestamps", "--max-line-count", "2", "-f", "srt")
    assert r.returncode == 1 and "--max-line-count has no effect without --max-line-width" in r.stderr
    r = cli(
        "export-subtitles", notes, "--word-timestamps", "--max-line-width", "30", "--max-words-per-line", "2"
    )
    assert r.returncode == 1 and "--max-words-per-line has no effect with --max-line-width" in r.stderr
    r = cli("export-subtitles", notes, "--word-timestamps", "--max-line-width", "30", "--max-line-count", "2")
    assert r.returncode == 1 and "warning" not in r.stderr and "notes.txt" in r.stderr
