"""Dataset discovery on generated layouts (fake media files: nothing is decoded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avsr_cli.tasks.datasets import DatasetError, Item, load_dataset


def touch(path: Path, text: str | bytes = b"fake media") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_lrs_folder(tmp_path):
    lrs = "Text:  WHEN I WAS A KID\nConf:  3\n\nWORD START END ASDSCORE\nWHEN 0.07 0.22 4.8\n"
    touch(tmp_path / "spkB" / "00002.mp4")
    touch(tmp_path / "spkB" / "00002.txt", lrs)
    touch(tmp_path / "spkA" / "00001.mp4")
    touch(tmp_path / "spkA" / "00001.wav")  # auto_avsr writes the audio beside the video
    touch(tmp_path / "spkA" / "00001.txt", "Text:\tIT'S  FINE \nConf: 4\n")
    d = load_dataset(tmp_path)
    assert d.kind == "folder" and not d.skipped
    assert [i.id for i in d.items] == ["spkA/00001", "spkB/00002"]
    a, b = d.items
    assert a == Item("spkA/00001", tmp_path / "spkA/00001.mp4", "IT'S FINE", tmp_path / "spkA/00001.wav")
    assert a.audio_path == tmp_path / "spkA/00001.wav"
    assert (b.reference, b.audio, b.audio_path) == ("WHEN I WAS A KID", None, b.media)


def test_plain_folder_every_skip_reason(tmp_path):
    for ext in ("wav", "flac", "mp3", "m4a", "ogg", "opus", "mp4", "mkv", "webm", "avi", "MOV"):
        touch(tmp_path / "sub" / f"clip_{ext}.{ext}")
        touch(tmp_path / "sub" / f"clip_{ext}.txt", f"Words for\n{ext}.\n")
    touch(tmp_path / "lonely.wav")  # media without transcript
    touch(tmp_path / "orphan.txt", "no media")  # transcript without media
    touch(tmp_path / "blank.flac")
    touch(tmp_path / "blank.txt", "  \n")  # empty transcript
    touch(tmp_path / "latin1.wav")
    touch(tmp_path / "latin1.txt", "caf\xe9".encode("latin-1"))  # unreadable transcript
    touch(tmp_path / "twice.mp3")
    touch(tmp_path / "twice.wav")  # two audio files for one id
    touch(tmp_path / "twice.txt", "which one")
    touch(tmp_path / "notes.md", "ignored")
    touch(tmp_path / ".hidden" / "x.wav")
    d = load_dataset(tmp_path)
    assert len(d) == 11
    assert d.items[0].id == "sub/clip_MOV" and d.items[-1].id == "sub/clip_webm"
    assert all(i.reference.startswith("Words for") for i in d.items)
    assert {i.reference for i in d.items} >= {"Words for wav.", "Words for opus."}
    got = {Path(s.path).name: s.reason for s in d.skipped}
    assert got == {
        "blank.txt": "empty transcript",
        "latin1.txt": "unreadable transcript (not UTF-8)",
        "lonely.wav": "no transcript (expected lonely.txt beside it)",
        "orphan.txt": "transcript without media",
        "twice": "duplicate id 'twice': twice.mp3, twice.wav",
    }
    assert [i.id for i in load_dataset(tmp_path, limit=2).items] == ["sub/clip_MOV", "sub/clip_avi"]


def test_csv_manifest(tmp_path):
    touch(tmp_path / "audio" / "a.wav")
    touch(tmp_path / "audio" / "b.wav")
    absolute = touch(tmp_path / "elsewhere" / "c.flac")
    manifest = touch(
        tmp_path / "m.csv",
        "id,path,transcript\n"
        "b,audio/b.wav,second clip\n"
        f",{absolute},third clip\n"
        ",audio/a.wav,first clip\n"
        "dup,audio/a.wav,again\n"
        "dup,audio/b.wav,again\n"
        "e,audio/missing.wav,no file\n"
        "f,audio/a.wav,\n"
        "g,audio/a.wav,too,many\n",
    )
    d = load_dataset(manifest)
    assert d.kind == "csv"
    assert [(i.id, i.media, i.reference) for i in d.items] == [
        (absolute.with_suffix("").as_posix(), absolute, "third clip"),
        ("audio/a", tmp_path / "audio/a.wav", "first clip"),
        ("b", tmp_path / "audio/b.wav", "second clip"),
        ("dup", tmp_path / "audio/a.wav", "again"),
    ]
    got = {s.path: s.reason for s in d.skipped}
    assert got == {
        f"{manifest}:6": "duplicate id 'dup' (first at line 5)",
        f"{manifest}:7": f"transcript without media (no file {tmp_path / 'audio/missing.wav'})",
        f"{manifest}:8": "empty transcript",
        f"{manifest}:9": "unreadable line (expected 3 fields, found 4)",
    }


def test_csv_unterminated_quote_costs_only_its_line(tmp_path):
    for name in ("a", "b", "c"):
        touch(tmp_path / f"{name}.wav")
    manifest = touch(
        tmp_path / "q.csv",
        'path,transcript\na.wav,"hello there\nb.wav,"quoted, with a comma"\nc.wav,...\n',
    )
    d = load_dataset(manifest)
    assert [(i.id, i.reference) for i in d.items] == [("b", "quoted, with a comma")]
    got = {s.path: s.reason for s in d.skipped}
    assert (
        got[f"{manifest}:2"].startswith("unreadable line (") and "unterminated quote" in got[f"{manifest}:2"]
    )
    assert got[f"{manifest}:4"] == "empty transcript ('...': no words)"


def test_csv_manifest_text_column_and_bad_header(tmp_path):
    touch(tmp_path / "x.wav")
    d = load_dataset(touch(tmp_path / "t.csv", "text,path\nhello there,x.wav\n"))
    assert [(i.id, i.reference) for i in d.items] == [("x", "hello there")]
    with pytest.raises(DatasetError, match="'path' and 'transcript'"):
        load_dataset(touch(tmp_path / "bad.csv", "file,words\nx.wav,hi\n"))


def test_jsonl_manifest(tmp_path):
    touch(tmp_path / "clips" / "a.mp4")
    touch(tmp_path / "clips" / "b.wav")
    lines = [
        json.dumps({"path": "clips/a.mp4", "transcript": "alpha", "id": "A"}),
        "",
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"path": "clips/b.wav", "text": "bravo"}),
        json.dumps({"path": "clips/b.wav", "text": "bravo again", "id": "A"}),
        json.dumps({"transcript": "no path"}),
    ]
    manifest = touch(tmp_path / "m.jsonl", "\n".join(lines) + "\n")
    d = load_dataset(manifest)
    assert d.kind == "jsonl"
    assert [(i.id, i.media.name, i.reference) for i in d.items] == [
        ("A", "a.mp4", "alpha"),
        ("clips/b", "b.wav", "bravo"),
    ]
    got = {int(s.path.rsplit(":", 1)[1]): s.reason for s in d.skipped}
    assert got[3].startswith("unreadable line (not JSON")
    assert got == {**got, 4: "unreadable line (not a JSON object)", 6: "duplicate id 'A' (first at line 1)"}
    assert got[7] == "unreadable line (no media path)"
    as_list = touch(tmp_path / "m.json", json.dumps([{"path": "clips/a.mp4", "text": "alpha"}]))
    assert [i.id for i in load_dataset(as_list).items] == ["clips/a"]


def test_manifests_carry_a_context_prompt_per_clip(tmp_path):
    touch(tmp_path / "a.wav")
    touch(tmp_path / "b.wav")
    csv = touch(tmp_path / "t.csv", 'path,text,context\na.wav,maria came,"Maria,  Glasgow"\nb.wav,hello,\n')
    assert [(i.id, i.context) for i in load_dataset(csv).items] == [("a", "Maria, Glasgow"), ("b", None)]
    lines = [
        json.dumps({"media": "a.wav", "text": "maria came", "context": "Maria"}),  # the recipe's key
        json.dumps({"path": "b.wav", "text": "hello", "context": ["not", "text"]}),
    ]
    d = load_dataset(touch(tmp_path / "m.jsonl", "\n".join(lines)))
    assert [(i.id, i.context) for i in d.items] == [("a", "Maria")]
    assert [s.reason for s in d.skipped] == ["unreadable line (context is not text)"]


def test_llama_avsr_label_csv(tmp_path):
    video_dir = tmp_path / "lrs3" / "lrs3_video_seg16s" / "test" / "spk"
    touch(video_dir / "00001.mp4")
    touch(video_dir / "00001.wav")
    touch(video_dir / "00002.wav")  # audio only: the wav stands in for the video
    labels = touch(
        tmp_path / "labels" / "lrs3_test_transcript_lengths_seg16s.csv",
        "lrs3,lrs3_video_seg16s/test/spk/00001.mp4,52,12 873 4,when i was a kid\n"
        "lrs3,lrs3_video_seg16s/test/spk/00002.mp4,40,7 7,so it goes\n"
        "lrs3,lrs3_video_seg16s/test/spk/00003.mp4,40,7 7,no media here\n"
        "lrs3,lrs3_video_seg16s/test/spk/00004.mp4,40,7,\n"
        "lrs3,lrs3_video_seg16s/test/spk/00005.mp4,40,7,a, comma\n",
    )
    d = load_dataset(labels)
    assert d.kind == "llama-avsr-labels"
    one, two = d.items
    assert one.id == "lrs3/lrs3_video_seg16s/test/spk/00001" and one.reference == "when i was a kid"
    assert (one.media, one.audio) == (video_dir / "00001.mp4", video_dir / "00001.wav")
    assert (two.media, two.audio, two.reference) == (video_dir / "00002.wav", None, "so it goes")
    got = {int(s.path.rsplit(":", 1)[1]): s.reason for s in d.skipped}
    assert got[3].startswith("transcript without media")
    assert got[4] == "empty transcript"
    assert got[5] == "unreadable line (expected 5 comma-separated fields, found 6)"
    # Omni-AVSR's custom-video example: ["inference_test", path, 0, 0, transcript], with an explicit root
    touch(tmp_path / "other" / "inference_test" / "clip.mp4")
    custom = touch(tmp_path / "custom.csv", "inference_test,clip.mp4,0,0,hello\n")
    d = load_dataset(custom, root=tmp_path / "other")
    assert [(i.id, i.reference) for i in d.items] == [("inference_test/clip", "hello")]


def test_bad_paths(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a dataset"):
        load_dataset(touch(tmp_path / "x.wav"))
    empty = tmp_path / "empty"
    empty.mkdir()
    d = load_dataset(empty)
    assert (d.items, d.skipped) == ([], [])
