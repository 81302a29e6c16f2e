"""avsr_cli.frontends.media: decoding through ffmpeg, on inputs generated at test time from lavfi sources."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from avsr_cli.errors import MediaError
from avsr_cli.frontends import media, prefetch, video
from avsr_cli.frontends.media import SAMPLE_RATE, iter_audio, load_audio, probe
from avsr_cli.frontends.video import load_video

FFMPEG = media.find_ffmpeg()
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="no ffmpeg binary (apt install ffmpeg)")
DUR = 2.0


def ffmpeg(*args: str, exe: str | None = None) -> None:
    subprocess.run([exe or FFMPEG, "-nostdin", "-v", "error", "-y", *args], check=True)


def sine(freq: float, rate: int = 48000, channels: int = 1) -> list[str]:
    expr = "|".join([f"0.5*sin(2*PI*{freq}*t)"] * channels)
    return ["-f", "lavfi", "-i", f"aevalsrc={expr}:s={rate}:d={DUR}"]


TESTSRC = ["-f", "lavfi", "-i", f"testsrc=s=96x64:r=30:d={DUR}"]
X264 = ["-c:v", "libx264", "-preset", "ultrafast"]
AUDIO_CASES = {  # name: (frequency, ffmpeg args producing it)
    "mono.wav": (440, sine(440, 16000)),
    "stereo44k.wav": (440, sine(440, 44100, 2)),
    "8k.wav": (1000, sine(1000, 8000)),
    "flac.flac": (523, sine(523, 22050)),
    "mp3.mp3": (440, [*sine(440, 44100, 2), "-b:a", "128k"]),
    "aac.m4a": (880, [*sine(880, 44100), "-c:a", "aac"]),
    "av.mp4": (440, [*TESTSRC, *sine(440), *X264, "-c:a", "aac", "-shortest"]),
    "av.mkv": (660, [*TESTSRC, *sine(660), *X264, "-c:a", "flac"]),
    "av.webm": (440, [*TESTSRC, *sine(440), "-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libopus"]),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    for name, (_, args) in AUDIO_CASES.items():
        ffmpeg(*args, str(d / name))
    ffmpeg(*TESTSRC, *X264, str(d / "silent.mp4"))
    ffmpeg("-f", "lavfi", "-i", f"color=c=red:s=32x32:r=30:d={DUR}", *X264, str(d / "red.mp4"))
    ffmpeg("-f", "lavfi", "-i", f"anoisesrc=a=1:c=white:r=16000:d={DUR}", str(d / "noise.wav"))
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"aevalsrc=0.5*sin(2*PI*440*t)|-0.5*sin(2*PI*440*t):s=16000:d={DUR}",
        str(d / "antiphase.wav"),
    )
    ffmpeg("-f", "lavfi", "-i", f"aevalsrc=0.5*sin(2*PI*440*t)|0:s=16000:d={DUR}", str(d / "left.wav"))
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000", "-t", "0", str(d / "zero.wav"))
    shutil.copy(d / "mono.wav", d / "-clip.wav")
    shutil.copy(d / "mono.wav", d / "a:b.wav")
    (d / "empty.wav").touch()
    (d / "garbage.mp4").write_bytes(b"this is not a media file\n" * 200)
    (d / "truncated.mp4").write_bytes((d / "av.mp4").read_bytes()[:2000])
    (d / "folder.wav").mkdir()
    return d


def peak_hz(audio: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))


@pytest.mark.parametrize("name", AUDIO_CASES)
def test_load_audio_containers(files: Path, name: str) -> None:
    audio = load_audio(files / name)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - DUR * SAMPLE_RATE) < 0.06 * SAMPLE_RATE  # codec priming/padding
    assert np.abs(audio).max() <= 1.0
    rms = np.sqrt(np.mean(audio[4000:-4000] ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.05)  # the 0.5 amplitude survives coding, resampling
    assert abs(peak_hz(audio) - AUDIO_CASES[name][0]) < 3


@pytest.mark.parametrize("name", [*AUDIO_CASES, "noise.wav", "left.wav", "zero.wav"])
def test_iter_audio_gives_load_audios_samples_block_by_block(files: Path, name: str) -> None:
    whole = load_audio(files / name)
    for size in (7, 1000, 1 << 16):
        blocks = list(iter_audio(files / name, block_size=size))
        assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
        assert all(len(b) == size for b in blocks[:-1]) and all(0 < len(b) <= size for b in blocks[-1:])
        joined = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
        assert np.array_equal(joined, whole), (name, size)


def test_iter_audio_stops_ffmpeg_when_closed_early(files: Path) -> None:
    import os

    def children() -> set[str]:
        tasks = Path(f"/proc/{os.getpid()}/task")
        return {pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()}

    before = children()
    blocks = iter_audio(files / "mp3.mp3", block_size=100)  # decoded by ffmpeg through a pipe
    assert len(next(blocks)) == 100
    assert children() - before  # ffmpeg runs
    blocks.close()
    assert children() == before


def test_iter_audio_refuses_invalid_samples_as_load_audio_does(tmp_path: Path) -> None:
    import soundfile as sf

    wave = np.full(40000, 0.25, np.float32)
    wave[30000:30010] = np.nan
    sf.write(tmp_path / "nan.wav", wave, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(MediaError) as whole:
        load_audio(tmp_path / "nan.wav")
    assert "(10 of 40000 are NaN or infinite)" in str(whole.value)
    blocks = iter_audio(tmp_path / "nan.wav", block_size=10000)
    assert [len(b) for b in itertools.islice(blocks, 3)] == [10000] * 3  # the blocks before the bad one
    with pytest.raises(MediaError) as streamed:
        next(blocks)
    assert str(streamed.value) == str(whole.value)


def test_stereo_downmix_is_channel_mean(files: Path) -> None:
    left = load_audio(files / "left.wav")  # 0.5 sine on the left, silence on the right
    assert np.abs(left).max() == pytest.approx(0.25, abs=0.01)  # ffmpeg's default would give 0.354
    assert np.abs(load_audio(files / "antiphase.wav")).max() < 1e-3


def test_load_audio_range_and_rate(files: Path) -> None:
    noise = load_audio(files / "noise.wav")
    assert noise.min() >= -1.0 and noise.max() <= 1.0 and noise.std() > 0.1
    audio8k = load_audio(files / "stereo44k.wav", sample_rate=8000)
    assert len(audio8k) == pytest.approx(DUR * 8000, abs=10)
    assert abs(peak_hz(audio8k, 8000) - 440) < 3


def test_zero_length_stream(files: Path) -> None:
    assert load_audio(files / "zero.wav").shape == (0,)


def test_odd_names(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files)
    assert len(load_audio("-clip.wav")) == DUR * SAMPLE_RATE
    assert probe("-clip.wav").duration == pytest.approx(DUR)
    assert len(load_audio("a:b.wav")) == DUR * SAMPLE_RATE
    with pytest.raises(MediaError, match="-missing.wav: no such file"):
        load_audio("-missing.wav")
    for name in ("-clip.mp4", "a:b.mp4"):
        shutil.copy("av.mp4", name)
        for decoder in ("pyav", "ffmpeg"):
            monkeypatch.setenv("AVSR_VIDEO_DECODER", decoder)
            assert load_video(name, max_frames=2).shape == (2, 64, 96, 3), (name, decoder)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("nope.wav", "no such file"),
        ("folder.wav", "is a directory"),
        ("empty.wav", "empty file"),
        ("garbage.mp4", "cannot read media file"),
        ("truncated.mp4", "cannot read media file"),
        ("silent.mp4", "has no audio stream"),
    ],
)
def test_bad_inputs(files: Path, name: str, problem: str) -> None:
    with pytest.raises(MediaError) as err:
        load_audio(files / name)
    message = str(err.value)
    assert name in message and problem in message
    assert "\n" not in message and "Traceback" not in message
    with pytest.raises(MediaError) as streamed:
        list(iter_audio(files / name))
    assert str(streamed.value) == message


def test_a_fifo_is_refused_by_every_decoder_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    for decode in (load_audio, load_video, probe):
        with pytest.raises(MediaError, match="pipe.wav: is a FIFO \\(named pipe\\), not a media file"):
            decode(fifo)


def test_bad_inputs_probe_and_video(files: Path) -> None:
    for name in ("nope.wav", "folder.wav", "empty.wav", "garbage.mp4"):
        with pytest.raises(MediaError, match=name):
            probe(files / name)
    with pytest.raises(MediaError, match="mono.wav: has no video stream"):
        load_video(files / "mono.wav")


def test_ffmpeg_missing(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    for fn in (load_audio, probe, load_video):
        with pytest.raises(MediaError, match="av.mp4: .*ffmpeg not found"):
            fn(files / "av.mp4")
    with pytest.raises(MediaError, match="stereo44k.wav: .*ffmpeg not found"):  # a WAV that needs resampling
        load_audio(files / "stereo44k.wav")
    assert len(load_audio(files / "mono.wav")) == DUR * SAMPLE_RATE  # read in-process


def test_wav_and_flac_that_need_no_conversion_are_read_in_process_with_ffmpegs_samples(
    files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ffmpeg(*sine(440, 16000), "-c:a", "pcm_f32le", str(tmp_path / "float.wav"))
    ffmpeg(*sine(440, 16000), "-sample_fmt", "s16", str(tmp_path / "s16.flac"))
    ffmpeg(*sine(440, 16000), "-c:a", "pcm_s24le", str(tmp_path / "s24.wav"))
    clips = [files / "mono.wav", files / "noise.wav", tmp_path / "float.wav", tmp_path / "s16.flac"]
    by_ffmpeg = {c: media._decode_audio(c, f"file:{c}", SAMPLE_RATE) for c in clips}
    probed = {c: probe(c) for c in [*clips, files / "stereo44k.wav"]}

    def no_subprocess(*args, **kwargs):
        raise AssertionError("ffmpeg or ffprobe was run")

    monkeypatch.setattr(media, "_exec", no_subprocess)
    for clip in clips:
        audio = load_audio(clip)
        assert audio.dtype == np.float32 and np.array_equal(audio, by_ffmpeg[clip]), clip.name
    for clip, info in probed.items():  # the header read gives what ffprobe gave
        assert probe(clip) == info, clip.name
    with pytest.raises(AssertionError, match="ffmpeg or ffprobe was run"):
        load_audio(tmp_path / "s24.wav")  # 24-bit: ffmpeg converts it, as before


def test_imageio_ffmpeg_without_ffprobe(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only imageio-ffmpeg's binary (a newer ffmpeg, no ffprobe): decoding, probing and errors still work."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    monkeypatch.setattr(media.shutil, "which", lambda name: None)
    assert media.find_ffmpeg() == imageio_ffmpeg.get_ffmpeg_exe() and media.find_ffprobe() is None
    assert abs(peak_hz(load_audio(files / "av.mkv")) - 660) < 3
    info = probe(files / "av.mp4")
    assert (info.width, info.height, info.video_fps, info.audio_channels) == (96, 64, 30, 1)
    with pytest.raises(MediaError, match="silent.mp4: has no audio stream"):
        load_audio(files / "silent.mp4")
    with pytest.raises(MediaError, match="garbage.mp4: cannot read media file"):
        probe(files / "garbage.mp4")


@pytest.mark.parametrize("ffprobe", [True, False], ids=["ffprobe", "ffmpeg-i"])
def test_probe(files: Path, monkeypatch: pytest.MonkeyPatch, ffprobe: bool) -> None:
    if not ffprobe:
        monkeypatch.setattr(media, "find_ffprobe", lambda: None)
    elif media.find_ffprobe() is None:
        pytest.skip("no ffprobe binary")
    info = probe(files / "av.mp4")
    assert info.path == files / "av.mp4" and info.duration == pytest.approx(DUR, abs=0.1)
    assert info.has_audio and info.has_video
    assert (info.audio_sample_rate, info.audio_channels) == (48000, 1)
    assert (info.video_fps, info.width, info.height) == (30, 96, 64)
    assert abs(info.n_frames - DUR * 30) <= 2
    info = probe(files / "stereo44k.wav")
    assert (info.has_audio, info.has_video) == (True, False)
    assert (info.audio_sample_rate, info.audio_channels) == (44100, 2)
    assert info.video_fps is info.width is info.n_frames is None
    assert probe(files / "silent.mp4").has_audio is False
    assert probe(files / "av.webm").duration == pytest.approx(DUR, abs=0.1)


def test_probe_rotation(tmp_path: Path) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")  # its ffmpeg >= 6 has -display_rotation
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    plain, rotated = str(tmp_path / "plain.mp4"), str(tmp_path / "rot.mp4")
    ffmpeg(*TESTSRC, "-t", "0.2", *X264, plain, exe=exe)
    ffmpeg("-display_rotation", "90", "-i", plain, "-c", "copy", rotated, exe=exe)
    info = probe(tmp_path / "rot.mp4")
    assert (info.width, info.height) == (64, 96)
    assert load_video(tmp_path / "rot.mp4").shape[1:] == (96, 64, 3)


def test_load_video(files: Path) -> None:
    frames = load_video(files / "av.mp4")  # 30 fps testsrc -> 25 fps
    assert frames.dtype == np.uint8 and frames.shape == (DUR * 25, 64, 96, 3)
    assert frames.std() > 10
    assert load_video(files / "av.webm", size=(32, 48), max_frames=10).shape == (10, 32, 48, 3)
    assert load_video(files / "av.mkv", fps=10).shape[0] == DUR * 10
    red = load_video(files / "red.mp4").reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 40 and red[2] < 40  # RGB order


def test_lrs3_example(lrs3_clip) -> None:
    info = probe(lrs3_clip)
    assert info.duration == pytest.approx(6.2, abs=0.1)
    assert (info.width, info.height, info.video_fps, info.audio_sample_rate) == (224, 224, 25, 16000)
    audio, video = load_audio(lrs3_clip), load_video(lrs3_clip)
    assert len(audio) == pytest.approx(6.2 * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)
    assert 0.05 < np.abs(audio).max() <= 1.0
    assert video.shape == (155, 224, 224, 3)
    assert abs(len(video) * media.SAMPLES_PER_FRAME - len(audio)) < 0.05 * SAMPLE_RATE


def _decoder_case(case: str, lrs3_clip: Path, carphone_clip: Path, out: Path) -> Path:
    """A clip whose timing tests one rule of ffmpeg's command (a second of the LRS3 clip, or carphone)."""
    if case == "29.97 fps":
        return carphone_clip
    if case == "variable rate":  # the first 20 frames, then every third
        pick = r"select='lt(n\,20)+not(mod(n\,3))'"
        ffmpeg("-i", str(lrs3_clip), "-t", "2", "-vf", pick, "-fps_mode", "vfr", "-an", str(out))
    elif case == "video starts 0.5 s late":  # the command opens with copies of its first frame
        ffmpeg("-t", "1", "-i", str(lrs3_clip), "-itsoffset", "0.5", "-t", "1", "-i", str(lrs3_clip),
               "-map", "1:v", "-map", "0:a", "-c", "copy", str(out))  # fmt: skip
    elif case == "MPEG-TS, audio first":  # the command counts from the video's start there
        ffmpeg("-i", str(lrs3_clip), "-t", "2", "-c:v", "libx264", "-c:a", "aac", str(out.with_suffix(".ts")))
        return out.with_suffix(".ts")
    elif case == "edit list":  # cut off a keyframe: the stream ends after its last frame
        ffmpeg("-ss", "1.3", "-t", "2", "-i", str(lrs3_clip), "-c", "copy", str(out))
    elif case == "turned 90 (metadata)":  # in-process decoding leaves it to the command
        ffmpeg("-i", str(lrs3_clip), "-t", "1", "-c", "copy", "-metadata:s:v:0", "rotate=90", str(out))
    else:
        return lrs3_clip
    return out


@pytest.mark.parametrize(
    "case",
    [
        "lrs3",
        "scaled",
        "29.97 fps",
        "variable rate",
        "video starts 0.5 s late",
        "edit list",
        "turned 90 (metadata)",
    ],
)
def test_in_process_video_decoding_gives_the_ffmpeg_commands_frames(
    case: str, lrs3_clip: Path, carphone_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("av", reason="PyAV not installed (the video extra)")
    clip = _decoder_case(case, lrs3_clip, carphone_clip, tmp_path / "clip.mp4")
    size = (100, 90) if case == "scaled" else None  # a bicubic scale into rgb24 in both
    command_runs = []
    through_command = video._iter_video_ffmpeg

    def spy(*args):
        command_runs.append(args)
        return through_command(*args)

    monkeypatch.setattr(video, "_iter_video_ffmpeg", spy)

    def frames(decoder: str) -> np.ndarray:
        monkeypatch.setenv("AVSR_VIDEO_DECODER", decoder)
        assert video.video_decoder() == decoder
        return np.stack(list(video.iter_video(clip, size=size)))

    in_process = frames("pyav")
    assert len(command_runs) == (1 if case == "turned 90 (metadata)" else 0)
    command = frames("ffmpeg")
    n = min(len(in_process), len(command))
    assert n > 0 and np.array_equal(in_process[:n], command[:n])
    if case == "edit list":
        # Where the command ends a stream an edit list cuts depends on its packet timing, which libavformat
        # 5.1 (the binary here) and PyAV's newer one give differently: at most one frame apart, a copy of the
        # last (1 of the 22 files compared while writing this: the stand-in clip's cut)
        longer = in_process if len(in_process) > len(command) else command
        assert abs(len(in_process) - len(command)) <= 1 and (longer[n - 1 :] == longer[n - 1]).all()
    else:
        assert len(in_process) == len(command)
    if case == "video starts 0.5 s late":
        # 13 copies of the first frame: 0.5 s at 25 fps, in sync with the audio
        assert len(command) > 13 and (command[:13] == command[0]).all()


def test_video_decoder_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVSR_VIDEO_DECODER", "ffmpeg")
    assert video.video_decoder() == "ffmpeg"
    monkeypatch.setenv("AVSR_VIDEO_DECODER", "gstreamer")
    with pytest.raises(MediaError, match="AVSR_VIDEO_DECODER='gstreamer': choose pyav or ffmpeg"):
        video.video_decoder()
    monkeypatch.delenv("AVSR_VIDEO_DECODER")
    import avsr_cli.storage

    monkeypatch.setattr(avsr_cli.storage, "find_package", lambda name: None)  # PyAV not installed
    assert video.video_decoder() == "ffmpeg"


@pytest.fixture
def main_thread_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The probes and audio decodes run by the main thread (a prefetch runs them in its own)."""
    import threading

    calls: list[str] = []
    monkeypatch.setattr(prefetch, "_current", None)
    monkeypatch.setattr(prefetch, "cpu_threads", lambda: 2)  # a prefetch needs a second core
    for name in ("_probe", "_iter_audio"):

        def counted(*args, _real=getattr(media, name), _name=name, **kwargs):
            if threading.current_thread() is threading.main_thread():
                calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(media, name, counted)
    return calls


@pytest.mark.parametrize("name", ["av.mp4", "mono.wav"])
def test_a_prefetched_file_is_probed_and_decoded_once(files: Path, name: str, main_thread_decodes) -> None:
    path = files / name
    info, whole = probe(path), list(iter_audio(path))
    main_thread_decodes.clear()
    media.prefetch(path)
    assert probe(str(path)) == replace(info, path=Path(str(path)))
    blocks = list(iter_audio(path))
    assert main_thread_decodes == []  # both taken from the prefetch
    assert len(blocks) == len(whole) and all(np.array_equal(a, b) for a, b in zip(blocks, whole, strict=True))
    again = list(iter_audio(path))  # the samples are taken once: a second reading decodes
    assert main_thread_decodes == ["_iter_audio"]
    assert all(np.array_equal(a, b) for a, b in zip(again, whole, strict=True))


def test_a_prefetch_of_a_file_changed_since_is_not_used(
    files: Path, tmp_path: Path, main_thread_decodes
) -> None:
    path = tmp_path / "clip.wav"
    shutil.copy(files / "mono.wav", path)
    media.prefetch(path)
    assert probe(path).audio_sample_rate == 16000
    shutil.copy(files / "8k.wav", path)
    assert probe(path).audio_sample_rate == 8000
    assert np.array_equal(np.concatenate(list(iter_audio(path))), load_audio(files / "8k.wav"))
    assert main_thread_decodes == ["_probe", "_iter_audio"]


def test_a_prefetch_keeps_no_audio_beyond_its_limit(
    files: Path, monkeypatch: pytest.MonkeyPatch, main_thread_decodes
) -> None:
    monkeypatch.setattr(media, "PREFETCH_SECONDS", DUR / 2)
    media.prefetch(files / "mp3.mp3")
    probe(files / "mp3.mp3")
    assert np.array_equal(np.concatenate(list(iter_audio(files / "mp3.mp3"))), load_audio(files / "mp3.mp3"))
    assert main_thread_decodes == ["_iter_audio"]  # the probe was prefetched, the audio decoded here


@pytest.mark.parametrize("name", ["garbage.mp4", "truncated.mp4", "silent.mp4"])
def test_a_failed_prefetch_leaves_the_error_to_the_caller(
    files: Path, name: str, main_thread_decodes
) -> None:
    errors = []
    for prefetched in (False, True):
        if prefetched:
            media.prefetch(files / name)
        try:
            info = probe(files / name)
            list(iter_audio(files / name))
            errors.append(f"probed {info.has_audio}")
        except MediaError as exc:
            errors.append(str(exc))
    assert errors[0] == errors[1] and "probed True" not in errors


def test_nothing_is_prefetched_on_one_core(
    files: Path, monkeypatch: pytest.MonkeyPatch, main_thread_decodes
) -> None:
    monkeypatch.setattr(prefetch, "cpu_threads", lambda: 1)
    media.prefetch(files / "av.mp4")
    probe(files / "av.mp4")
    list(iter_audio(files / "av.mp4"))
    assert main_thread_decodes == ["_probe", "_iter_audio"]
