"""WER/CER arithmetic against hand counts, the normalisers, and the alignment text."""

from __future__ import annotations

import math

import pytest

from avsr_cli.tasks.scoring import (
    NORMALIZER_NAMES,
    Normalizer,
    alignment_text,
    describe_normalizers,
    get_normalizer,
    lrs_normalize,
    score,
    whisper_normalizer,
)


def test_hand_counted_corpus():
    # 1: "sat"->"sit" (S), "the" deleted (D): 2 errors / 6 words.   2: one insertion: 1 / 3.   3: correct.
    pairs = [
        ("the cat sat on the mat", "the cat sit on mat"),
        ("a b c", "a b x c"),
        ("hello world", "Hello, world!"),
    ]
    s = score(pairs, "lrs")
    assert (s.substitutions, s.deletions, s.insertions, s.hits) == (1, 1, 1, 9)
    assert (s.ref_words, s.hyp_words, s.utterances, s.sentence_errors) == (11, 11, 3, 2)
    assert s.wer == pytest.approx(3 / 11)
    assert s.ser == pytest.approx(2 / 3)
    rows = s.rows
    assert [(r.substitutions, r.deletions, r.insertions, r.ref_words) for r in rows] == [
        (1, 1, 0, 6),
        (0, 0, 1, 3),
        (0, 0, 0, 2),
    ]
    assert rows[0].wer == pytest.approx(2 / 6) and rows[2].wer == 0
    assert rows[2].hyp_norm == "hello world" and rows[2].hypothesis == "Hello, world!"
    # CER, spaces counted: "sat"->"sit" (1 S) + " the" deleted (4 D) = 5 of 22; "x " inserted (2); none.
    assert [r.char_errors for r in rows] == [5, 2, 0]
    assert s.ref_chars == 22 + 5 + 11
    assert s.cer == pytest.approx(7 / 38)


def test_corpus_wer_is_not_the_mean_of_utterance_wers():
    pairs = [
        ("one two three four five six seven eight nine ten", "one two three four five six seven eight nine"),
        ("yes", "no"),
    ]
    s = score(pairs)
    assert [r.wer for r in s.rows] == [pytest.approx(0.1), 1.0]
    assert s.wer == pytest.approx(2 / 11)  # 18.2 %, as the papers report
    assert sum(r.wer for r in s.rows) / 2 == pytest.approx(0.55)  # the mean would say 55 %


def test_none_normaliser_is_the_reference_formula():
    # Llama-AVSR: sum edit_distance(ref.lower().split(), hyp.lower().split()) / sum len(ref.split())
    pairs = [("Hello, World", "hello world"), ("It's  FINE", "its fine")]
    s = score(pairs, "none")
    assert (s.substitutions, s.ref_words) == (2, 4)  # "hello,"/"hello" and "it's"/"its" differ
    assert s.wer == pytest.approx(0.5)
    assert score(pairs, "lrs").wer == pytest.approx(1 / 4)  # only it's/its remains


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Don't STOP", "don't stop"),
        ("'quoted' words", "quoted words"),
        ("It\u2019s o\u2019clock", "it's o'clock"),  # typographic apostrophes
        ("the dogs' bowls", "the dogs bowls"),
        ("well-known — really", "well known really"),
        ("The U.S. spent $1,000.", "the us spent 1000"),
        ("  many\n\tspaces  ", "many spaces"),
        ("rock'n'roll", "rock'n'roll"),
        ("I'll go, won't I?", "i'll go won't i"),  # no contraction expansion
    ],
)
def test_lrs_normaliser(text, expected):
    assert lrs_normalize(text) == expected


def test_apostrophes_survive_scoring():
    s = score([("don't", "dont")], "lrs")
    assert s.substitutions == 1  # jiwer's RemovePunctuation would have made these equal


def test_normaliser_registry():
    assert NORMALIZER_NAMES == ("lrs", "whisper", "none")
    for name in ("lrs", "none"):
        n = get_normalizer(name)
        assert n.name == name and n.description and "\n" not in n.description
    with pytest.raises(ValueError, match="unknown normaliser"):
        get_normalizer("nope")
    custom = Normalizer("upper", "upper-case", str.upper)
    assert score([("a", "A")], custom).wer == 0 and score([("a", "A")], custom).normalizer == "upper"


def test_whisper_normaliser(tmp_path):
    pytest.importorskip("transformers")
    n = whisper_normalizer(spelling_file=None)
    assert n.name == "whisper"
    assert n("Mr. Smith won't pay twenty five dollars.") == "mister smith will not pay $25"
    mapping = tmp_path / "normalizer.json"
    mapping.write_text('{"colour": "color"}')
    with_map = whisper_normalizer(mapping)
    assert with_map("The colour") == "the color" and "1 spellings" in with_map.description
    assert "whisper:" in describe_normalizers()


def test_empty_reference_counts_insertions():
    s = score([("", "uh hello there"), ("a b", "a b")], "none")
    empty = s.rows[0]
    assert (empty.insertions, empty.ref_words, empty.wer) == (3, 0, math.inf)
    assert s.wer == pytest.approx(3 / 2)  # insertions add to the numerator only
    assert score([("", "")]).wer == 0 and score([("...", "")], "lrs").rows[0].wer == 0
    assert score([]).wer == 0 and score([]).utterances == 0


def test_ids_and_dict():
    s = score([("a b", "a c")], ids=["spk/1"])
    d = s.to_dict()
    assert d["wer"] == 0.5 and d["rows"][0]["id"] == "spk/1" and d["rows"][0]["wer"] == 0.5
    assert "rows" not in s.to_dict(rows=False)
    assert s.summary().startswith("WER 50.00% (S 1, D 0, I 0 / 2 words)")
    with pytest.raises(ValueError):
        score([("a", "b")], ids=["x", "y"])


def test_alignment_text_worst_first():
    s = score(
        [("the cat sat", "the cat sat"), ("a b c d", "a x c"), ("one", "one two three")],
        ids=["good", "mid", "bad"],
    )
    text = alignment_text(s.rows)
    assert [line.split(":")[0] for line in text.split("\n\n")] == ["bad", "mid", "good"]
    mid = text.split("\n\n")[1].splitlines()
    assert mid == [
        "mid: WER 50.0% (S 1, D 1, I 0 / 4 words)",
        "REF: a b c d",
        "HYP: a x c *",
        "       S   D",
    ]
    bad = text.split("\n\n")[0].splitlines()
    assert bad[1:] == ["REF: one *** *****", "HYP: one two three", "         I   I"]
    assert alignment_text(s.rows, worst_first=False).startswith("good:")
    assert alignment_text(s.rows, errors_only=True, limit=1).count("WER") == 1
    assert alignment_text([]) == ""
    unnamed = score([("x", "")]).rows
    assert alignment_text(unnamed).startswith("#1: WER 100.0%")
