from __future__ import annotations

import json
import os

import pytest

from avsr_cli.errors import AvsrError
from avsr_cli.storage import atomic_write_text
from avsr_cli.tasks.transcript import Result, Segment
from avsr_cli.tasks.writers import (
    WRITERS,
    check_output_dir,
    format_timestamp,
    to_srt,
    to_tsv,
    to_txt,
    to_vtt,
    write_result,
)


def result(segments=((0.0, 2.5, "hello world"),), path="/x/clip.mp4"):
    segs = [Segment(*s) for s in segments]
    return Result(
        path=path,
        text=" ".join(s.text for s in segs),
        duration=segs[-1].end if segs else 0.0,
        mode="asr",
        model="m",
        segments=segs,
        timings={},
        options={},
    )


@pytest.mark.parametrize(
    "seconds,srt,vtt",
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (1.9994, "00:00:01,999", "00:00:01.999"),
        (1.9996, "00:00:02,000", "00:00:02.000"),  # rounding carries into the seconds
        (59.9999, "00:01:00,000", "00:01:00.000"),
        (3723.004, "01:02:03,004", "01:02:03.004"),
        (36000.5, "10:00:00,500", "10:00:00.500"),
        (-0.2, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(seconds, srt, vtt):
    assert format_timestamp(seconds) == srt
    assert format_timestamp(seconds, ".") == vtt


def test_srt_vtt_tsv_layouts():
    r = result([(0.0, 1.0, "one"), (1.5, 2.0, "two")])
    # cue conventions apply: the 0.5 s cue is stretched to the 1 s minimum; tsv keeps the raw segments
    assert to_srt(r) == "1\n00:00:00,000 --> 00:00:01,000\none\n\n2\n00:00:01,500 --> 00:00:02,500\ntwo\n"
    assert to_vtt(r).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\none\n")
    header = "start\tend\ttext\tavg_logprob\tlow_confidence"
    assert to_tsv(r).splitlines() == [header, "0\t1000\tone\t\t0", "1500\t2000\ttwo\t\t0"]
    empty = result([])
    assert to_srt(empty) == "" and to_vtt(empty) == "WEBVTT\n"


def test_write_result_all_formats(tmp_path):
    paths = write_result(result(), tmp_path, list(WRITERS))
    assert sorted(p.name for p in paths) == ["clip.json", "clip.srt", "clip.tsv", "clip.txt", "clip.vtt"]
    assert (tmp_path / "clip.txt").read_text() == "hello world\n"
    assert json.loads((tmp_path / "clip.json").read_text())["text"] == "hello world"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    class Boom(str):
        def __str__(self):
            raise RuntimeError

    with pytest.raises(TypeError):
        atomic_write_text(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_unwritable_output_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(AvsrError, match="not writable"):
        check_output_dir(tmp_path / "file" / "sub")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(AvsrError, match="not writable"):
            check_output_dir(ro)


def test_txt_has_one_line_per_segment():
    assert (
        to_txt(result([(0.0, 9.5, "first chunk"), (10.0, 18.0, "second chunk")]))
        == "first chunk\nsecond chunk\n"
    )
    assert to_txt(result([])) == "\n"  # silence: an empty line, never nothing
