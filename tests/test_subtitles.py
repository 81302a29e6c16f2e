"""avsr_cli.tasks.subtitles: cue layout and timing, hallucination guards, SRT/WebVTT that parsers read."""

from __future__ import annotations

import html
from itertools import pairwise

import pytest
import srt
import webvtt

from avsr_cli.modeling.decoding import drop_repeated_phrases
from avsr_cli.tasks.subtitles import CueOptions, clean_segments, make_cues, split_segment
from avsr_cli.tasks.transcript import Segment
from avsr_cli.tasks.writers import srt_text, vtt_text

LONG = (
    "our biggest customer renewed the contract for another three years, which gives us a stable base "
    "for the next phase of growth and we want to open a second office in the city centre before the end "
    "of august. rent there is expensive but the location is close to the train station"
)


def lines(cue: Segment) -> list[str]:
    return cue.text.split("\n")


def words(cues: list[Segment]) -> list[str]:
    return " ".join(c.text.replace("\n", " ") for c in cues).split()


def check_layout(cues: list[Segment], o: CueOptions = CueOptions()) -> None:
    for c in cues:
        assert 1 <= len(lines(c)) <= o.max_lines
        assert all(0 < len(line) <= o.max_line_chars and line == line.strip() for line in lines(c))
        assert c.end > c.start
    for a, b in pairwise(cues):
        assert a.end + o.min_gap <= b.start + 1e-9


def test_long_segment_is_split_into_readable_cues() -> None:
    cues = make_cues([Segment(10.0, 25.0, LONG)])
    check_layout(cues)
    assert words(cues) == LONG.split()
    assert len(cues) == 4  # 276 characters: the fewest cues of two 42-character lines
    assert cues[0].start == 10.0 and cues[-1].end == pytest.approx(25.0)
    assert all(a.end == pytest.approx(b.start) for a, b in pairwise(cues))  # time shared, no holes


def test_time_is_shared_by_characters() -> None:
    first, second = "one two three four five six.", "seven eight."
    cues = split_segment(Segment(1.0, 9.4, f"{first} {second}"), CueOptions(max_line_chars=30, max_lines=1))
    assert [c.text for c in cues] == [first, second]
    # each cue weighs its characters plus the space after it: 29 and 13 of 42
    assert cues[0].start == 1.0 and cues[0].end == pytest.approx(1.0 + 8.4 * 29 / 42)
    assert cues[1].start == cues[0].end and cues[1].end == pytest.approx(9.4)
    even = split_segment(Segment(0.0, 12.0, " ".join(["word"] * 40)))
    durations = [c.end - c.start for c in even]
    assert max(durations) - min(durations) < 0.5


def test_line_breaks_prefer_punctuation_then_conjunctions() -> None:
    cue = make_cues([Segment(0, 4, "we stopped at the station, then walked along the river to the hotel")])[0]
    assert lines(cue)[0].endswith("station,")
    cue = make_cues([Segment(0, 4, "i went to the shop in the morning but it was closed all day long")])[0]
    assert lines(cue)[1].startswith("but ")
    cue = make_cues([Segment(0, 4, "the plan looks good on paper because the costs are low")])[0]
    assert lines(cue) == ["the plan looks good on paper", "because the costs are low"]
    cue = make_cues([Segment(0, 4, "Sales went up. The product did better than expected.")])[0]
    assert lines(cue) == ["Sales went up.", "The product did better than expected."]  # over balance
    # no conjunction, no punctuation: the last space that fits, balanced lines
    cue = make_cues([Segment(0, 4, "x" * 30 + " " + "y" * 30)])[0]
    assert lines(cue) == ["x" * 30, "y" * 30]


def test_sentence_end_is_a_cue_boundary() -> None:
    text = "thank you all for coming today. now let us look at the numbers from the third quarter of the year"
    assert [c.text for c in make_cues([Segment(0.0, 8.0, text)])] == [
        "thank you all for coming today.",
        "now let us look at the numbers\nfrom the third quarter of the year",
    ]
    assert [c.text for c in make_cues([Segment(0.0, 8.0, text)], CueOptions(max_lines=1))] == [
        "thank you all for coming today.",
        "now let us look at the numbers",
        "from the third quarter of the year",
    ]


def test_long_word_is_hard_broken_only_as_last_resort() -> None:
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2  # 90 characters
    cues = make_cues([Segment(0.0, 6.0, f"a {word} b")])
    check_layout(cues)
    assert "".join(words(cues)) == f"a{word}b"
    assert [line for c in cues for line in lines(c)] == ["a", word[:42], word[42:84], word[84:] + " b"]
    short = make_cues([Segment(0.0, 3.0, "a fairly ordinary sentence with no giant words in it at all")])
    assert words(short) == "a fairly ordinary sentence with no giant words in it at all".split()


@pytest.mark.parametrize("max_line_chars,max_lines", [(42, 2), (32, 2), (20, 1), (30, 3)])
def test_limits_hold_for_any_layout(max_line_chars: int, max_lines: int) -> None:
    o = CueOptions(max_line_chars=max_line_chars, max_lines=max_lines)
    cues = make_cues([Segment(0.0, 30.0, LONG), Segment(31.0, 33.0, "ok"), Segment(33.5, 60.0, LONG)], o)
    check_layout(cues, o)
    assert words(cues) == [*LONG.split(), "ok", *LONG.split()]
    assert all(c.end - c.start <= o.max_duration + 1e-9 for c in cues)


def test_durations_within_bounds_where_possible() -> None:
    o = CueOptions()
    cues = make_cues(
        [
            Segment(0.0, 0.3, "hi."),  # short, silence after it: extended to min_duration
            Segment(5.0, 5.4, "yes"),  # short, the next cue 0.2 s later: extended up to it only
            Segment(5.6, 6.0, "no"),
            Segment(10.0, 30.0, "this one is twenty seconds long"),  # split, each part <= max_duration
            Segment(40.0, 52.0, "wait"),  # one word cannot be split: trimmed to max_duration
        ],
        o,
    )
    check_layout(cues)
    assert (cues[0].start, cues[0].end) == (0.0, 1.0)
    assert (cues[1].start, cues[1].end) == (5.0, 5.6) and cues[2].end == pytest.approx(6.6)
    long = [c for c in cues if 10.0 <= c.start < 30.0]
    assert len(long) >= 3 and all(c.end - c.start <= o.max_duration + 1e-9 for c in long)
    assert words(long) == "this one is twenty seconds long".split()
    assert (cues[-1].start, cues[-1].end) == (40.0, 47.0)


def test_cues_never_overlap() -> None:
    segments = [
        Segment(0.0, 16.0, "the first window of a video without sound says this"),
        Segment(12.0, 28.0, "the second window overlaps the first by four seconds"),
        Segment(12.0, 12.0, "same start, no length"),
        Segment(27.0, 27.5, "tiny"),
    ]
    cues = make_cues(segments, CueOptions(min_gap=0.05))
    check_layout(cues, CueOptions(min_gap=0.05))
    assert sorted(words(cues)) == sorted(" ".join(s.text for s in segments).split())


def test_empty_and_degenerate_input() -> None:
    assert make_cues([]) == []
    assert make_cues([Segment(0.0, 1.0, ""), Segment(1.0, 2.0, "   \n "), Segment(2.0, 3.0, "...")]) == []
    zero = make_cues([Segment(4.0, 4.0, "zero length")])
    assert len(zero) == 1 and (zero[0].start, zero[0].end) == (4.0, 5.0)
    backwards = make_cues([Segment(8.0, 7.0, "end before start")])
    assert backwards[0].start == 8.0 and backwards[0].end == 9.0
    assert make_cues([Segment(-1.0, 2.0, "negative")])[0].start == 0.0
    assert srt_text([]) == "" and vtt_text([]).startswith("WEBVTT")
    assert clean_segments([Segment(0, 1, "  a   b "), Segment(1, 2, " "), Segment(2, 3, "?!")]) == [
        Segment(0, 1, "a b")
    ]


def test_drop_repeated_phrases() -> None:
    assert drop_repeated_phrases("thank you thank you thank you for watching") == "thank you for watching"
    assert drop_repeated_phrases("no no no no no no no") == "no"
    assert drop_repeated_phrases("so so so it begins") == "so it begins"
    assert drop_repeated_phrases("and then we went home and then we went home and then we went home") == (
        "and then we went home"
    )
    loop = "i will go to the park " * 8 + "i will go"  # cut off by the token budget
    assert drop_repeated_phrases(loop) == "i will go to the park"
    assert drop_repeated_phrases("Yes. yes, YES! ok") == "Yes. ok"  # case and punctuation ignored
    assert drop_repeated_phrases("a b a b a b a b c c c d") == "a b c d"
    # not loops: two repeats, a 7-word phrase, ordinary text
    assert drop_repeated_phrases("very very good") == "very very good"
    assert drop_repeated_phrases("i think i think so") == "i think i think so"
    seven = "one two three four five six seven "
    assert drop_repeated_phrases(seven * 3) == (seven * 3).strip()
    assert drop_repeated_phrases("the cat sat on the mat") == "the cat sat on the mat"
    assert drop_repeated_phrases("") == ""
    assert clean_segments([Segment(0, 5, "go go go go now")]) == [Segment(0, 5, "go now")]
    assert clean_segments([Segment(0, 5, "go go go")], collapse_repeats=False)[0].text == "go go go"


def _vtt_seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_srt_and_vtt_round_trip() -> None:
    segments = [
        Segment(0.0, 9.0, LONG[:150]),
        Segment(3600 * 2 + 61.25, 3600 * 2 + 64.5, "two hours in & <still> going -> strong"),
        Segment(3600 * 101 + 0.5, 3600 * 101 + 2.0, "a hundred and one hours"),
        Segment(200.0, 201.9996, "rounding"),
    ]
    cues = make_cues(segments)
    text = srt_text(cues)
    parsed = list(srt.parse(text))
    assert len(parsed) == len(cues)
    for i, (sub, cue) in enumerate(zip(parsed, cues, strict=True), start=1):
        assert sub.index == i and sub.content == cue.text
        assert sub.start.total_seconds() == pytest.approx(cue.start, abs=5e-4)
        assert sub.end.total_seconds() == pytest.approx(cue.end, abs=5e-4)
    assert srt.compose(parsed) == text + "\n"  # the same bytes, but for the final blank line

    vtt = webvtt.from_string(vtt_text(cues))
    assert len(vtt.captions) == len(cues)
    for caption, cue in zip(vtt.captions, cues, strict=True):
        assert html.unescape(caption.text) == cue.text
        assert _vtt_seconds(caption.start) == pytest.approx(cue.start, abs=5e-4)
        assert _vtt_seconds(caption.end) == pytest.approx(cue.end, abs=5e-4)
    assert "&amp; &lt;still&gt; going -&gt; strong" in vtt_text(cues)
    assert "101:00:00,500 --> 101:00:02,000" in text
    assert "00:03:20,000 --> 00:03:22,000" in text


def test_options_are_checked() -> None:
    for kwargs in [{"max_line_chars": 0}, {"max_lines": 0}, {"min_duration": 8.0}, {"min_gap": -1.0}]:
        with pytest.raises(ValueError):
            CueOptions(**kwargs)
