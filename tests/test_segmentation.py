"""avsr_cli.frontends.segmentation: Silero VAD regions and model-sized chunks on speech with known timings."""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pytest
import soundfile as sf

from avsr_cli.frontends import vad as silero
from avsr_cli.frontends.segmentation import Chunk, ChunkOptions, chunk_regions, fixed_windows, segment_audio
from avsr_cli.frontends.stream_segmenter import HOLD_SECONDS, StreamSegmenter
from avsr_cli.frontends.vad import VadOptions, speech_probabilities, speech_regions
from tests.support.speech import available_voices, make_clip

RATE = 16000

# (silence before, sentence): a ~75 s talk with pauses of 0.5-3 s between sentences of varied length
TALK = [
    (1.0, "Good morning everyone and welcome to the weekly meeting."),
    (0.6, "Today we will look at the results from the last quarter."),
    (2.5, "Sales went up."),
    (0.8, "The new product line did better than anyone had expected, especially in the northern region."),
    (1.5, "However, shipping costs were higher than planned."),
    (3.0, "Let me show you the numbers."),
    (0.5, "Revenue grew by twelve percent compared with the same period last year."),
    (1.2, "Thank you."),
    (2.0, "Our biggest customer renewed the contract for another three years, which gives us a stable base."),
    (0.7, "Marketing spent less than its budget."),
    (1.8, "The team hired four new engineers in March and two more in April."),
    (2.8, "Questions are welcome at any time."),
    (0.9, "Next, we move on to the plans for the summer."),
    (1.4, "We want to open a second office in the city centre before the end of August."),
    (0.6, "Rent there is expensive."),
    (2.2, "But the location is close to the train station and most of our clients."),
    (1.0, "Please send me your comments by Friday."),
    (3.0, "That is all for today, see you next week."),
]
# then ~40 s of continuous speech: sentences 0.15-0.3 s apart, too close for the VAD to separate them
STRETCH = [
    "The river runs slowly through the old town",
    "Children play by the water in the afternoon",
    "A small boat carries tourists to the island",
    "The bakery on the corner opens very early",
    "Fresh bread is ready before the sun comes up",
    "Most people walk to work in the morning",
    "The library is quiet and full of students",
    "Every evening the square fills with music",
    "Visitors often stay longer than they planned",
    "The museum shows paintings from many centuries",
    "In winter the streets are covered with snow",
    "The market sells fruit and flowers every Saturday",
    "A long bridge connects the two parts of town",
    "Old houses line the narrow streets near the church",
    "The bus to the airport leaves every half hour",
    "Nobody in the village is ever in a hurry",
]


@dataclass
class Recording:
    audio: np.ndarray
    starts: list[float]  # speech onset of each sentence
    ends: list[float]
    n_talk: int  # sentences [0, n_talk) are the talk, the rest the continuous stretch

    @property
    def pauses(self) -> list[tuple[float, float]]:
        return list(zip(self.ends[:-1], self.starts[1:], strict=True))


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Recording:
    if not available_voices():
        pytest.skip("no offline TTS voice (see tests/support/speech.py)")
    rng = random.Random(0)
    stretch = [(2.5 if i == 0 else rng.uniform(0.15, 0.3), s + ".") for i, s in enumerate(STRETCH)]
    items = TALK + stretch
    path = tmp_path_factory.mktemp("segmentation") / "talk.wav"
    starts = make_clip(items, path, tail=0.5)
    audio, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    ends = [start - gap for start, (gap, _) in zip(starts[1:], items[1:], strict=True)]
    ends.append(len(audio) / RATE - 0.5)
    return Recording(audio, starts, ends, len(TALK))


@pytest.fixture(scope="module")
def regions(recording) -> list[tuple[float, float]]:
    return speech_regions(recording.audio)


def spans(chunks: list[Chunk]) -> list[tuple[float, float]]:
    return [(round(c.start, 6), round(c.end, 6)) for c in chunks]


def covered(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Fraction of [start, end] inside the union of `spans`."""
    inside = sum(max(0.0, min(end, e) - max(start, s)) for s, e in spans)
    return inside / (end - start)


def test_recording_is_about_two_minutes(recording) -> None:
    assert 100 < len(recording.audio) / RATE < 140
    assert recording.ends[-1] - recording.starts[recording.n_talk] > 38  # the continuous stretch


def test_regions_start_at_every_sentence(recording, regions) -> None:
    assert regions == sorted(regions)
    assert all(s < e for s, e in regions)
    assert all(a[1] <= b[0] for a, b in pairwise(regions))
    assert regions[0][0] >= 0 and regions[-1][1] <= len(recording.audio) / RATE
    onsets = recording.starts[: recording.n_talk + 1]  # sentences of the stretch share one region
    errors = [min(abs(s - start) for s, _ in regions) for start in onsets]
    print(f"VAD onset error: mean {np.mean(errors):.3f} s, max {max(errors):.3f} s")
    assert max(errors) < 0.3
    for start, end in zip(recording.starts, recording.ends, strict=True):
        assert covered(regions, start, end) > 0.97  # every sentence is (almost) all inside regions


def test_no_region_in_long_silences(recording, regions) -> None:
    long_pauses = [(a, b) for a, b in recording.pauses if b - a >= 0.9]
    assert len(long_pauses) >= 10
    for a, b in long_pauses:
        inner = (a + 0.3, b - 0.3)  # padding (0.1 s) plus the VAD's own latency may reach into the pause
        assert not any(s < inner[1] and e > inner[0] for s, e in regions), (a, b)


def test_chunks_fit_the_model(recording, regions) -> None:
    chunks = chunk_regions(recording.audio, regions)
    assert chunks == segment_audio(recording.audio)
    assert all(0 < c.duration <= 16.0 + 1e-9 for c in chunks)
    assert all(a.end <= b.start for a, b in pairwise(chunks))
    spans = [(c.start, c.end) for c in chunks]
    for start, end in zip(recording.starts, recording.ends, strict=True):
        assert covered(spans, start, end) > 0.97
    talk = [c for c in chunks if c.end < recording.ends[recording.n_talk - 1] + 0.5]
    assert len(talk) < recording.n_talk  # close sentences were merged
    assert all(c.samples(recording.audio).size == round(c.duration * RATE) for c in chunks)


@pytest.mark.parametrize("max_chunk", [16.0, 10.0, 6.0])
def test_long_speech_is_cut_in_pauses(recording, regions, max_chunk: float) -> None:
    chunks = chunk_regions(recording.audio, regions, ChunkOptions(max_chunk=max_chunk))
    assert all(c.duration <= max_chunk + 1e-9 for c in chunks)
    stretch = (recording.starts[recording.n_talk], recording.ends[-1])
    cuts = [a.end for a, b in pairwise(chunks) if a.end == b.start]  # where one region was cut
    cuts_in_stretch = [t for t in cuts if stretch[0] < t < stretch[1]]
    assert len(cuts_in_stretch) >= int((stretch[1] - stretch[0]) // max_chunk)
    for t in cuts:
        assert any(a - 0.01 <= t <= b + 0.01 for a, b in recording.pauses), (
            f"cut at {t:.2f} s is mid-sentence"
        )
        around = recording.audio[round((t - 0.01) * RATE) : round((t + 0.01) * RATE)]
        assert np.sqrt(np.mean(around**2)) < 0.01  # near-silent


def test_silence_and_noise_have_no_speech() -> None:
    assert speech_regions(np.zeros(10 * RATE, np.float32)) == []
    assert segment_audio(np.zeros(10 * RATE, np.float32)) == []
    assert speech_regions(np.zeros(0, np.float32)) == []
    assert speech_probabilities(np.zeros(100, np.float32)).shape == (1,)
    rng = np.random.default_rng(0)
    for level in (0.003, 0.01):  # white noise at -50 and -40 dBFS
        noise = (rng.standard_normal(20 * RATE) * level).astype(np.float32)
        assert len(speech_regions(noise)) <= 1


def test_probabilities_match_the_streaming_model(recording, monkeypatch) -> None:
    """The batched sequence model gives the streaming model's probabilities (the fallback path)."""
    import onnxruntime as ort

    path = silero.vad_model_path(silero.STREAMING_MODEL)
    if not path.is_file():
        pytest.skip("this silero-vad has no streaming ONNX model")
    audio = recording.audio[: 20 * RATE + 123]
    batched = speech_probabilities(audio)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    monkeypatch.setattr(silero, "_session", lambda: (session, False))
    streaming = speech_probabilities(audio)
    assert batched.shape == streaming.shape == (-(-len(audio) // 512),)
    np.testing.assert_allclose(batched, streaming, atol=1e-5)


def stream(
    audio: np.ndarray,
    sizes: list[int],
    vad: VadOptions = VadOptions(),
    chunks: ChunkOptions = ChunkOptions(),
    hold: float = HOLD_SECONDS,
) -> tuple[list[Chunk], list[np.ndarray], int, int]:
    """StreamSegmenter over `audio` in blocks of `sizes` (cycled): its chunks, their samples as handed over
    (audio[int(start * rate) : int(end * rate)], as the transcriber takes them), the most samples it kept
    and the most it held in memory."""
    segmenter = StreamSegmenter(vad, chunks, hold)
    found, samples, kept, held = [], [], 0, 0

    def take(new: list[Chunk]) -> None:
        for c in new:
            found.append(c)
            samples.append(segmenter.audio[int(c.start * RATE) : int(c.end * RATE)])

    i, k = 0, 0
    while i < len(audio):
        take(segmenter.push(audio[i : i + sizes[k % len(sizes)]]))
        i += sizes[k % len(sizes)]
        k += 1
        kept = max(kept, len(segmenter.audio) - segmenter.audio.start)
        held = max(held, segmenter.audio.held)
    take(segmenter.finish())
    return found, samples, kept, held


def check_stream(audio: np.ndarray, sizes: list[int], vad=VadOptions(), chunks=ChunkOptions(), **kw) -> int:
    """The streamed chunks and samples are the whole array's; returns the most samples kept."""
    found, samples, kept, _ = stream(audio, sizes, vad, chunks, **kw)
    assert found == segment_audio(audio, vad, chunks)
    for c, wave in zip(found, samples, strict=True):
        assert np.array_equal(wave, audio[int(c.start * RATE) : int(c.end * RATE)]), c
    return kept


def test_streamed_probabilities_are_the_whole_arrays_bit_for_bit(recording) -> None:
    audio = recording.audio[: 40 * RATE + 77]
    whole = speech_probabilities(audio)
    for sizes in (
        [1000],
        [silero.VAD_BLOCK * silero.VAD_WINDOW],
        [1, 511, 513, 262_143, 70_000],
        [len(audio)],
    ):
        vad, got, i = silero._VadStream(), [], 0
        for n in itertools.cycle(sizes):
            if i >= len(audio):
                break
            got.append(vad.push(audio[i : i + n]))
            i += n
        got.append(vad.finish())
        assert np.array_equal(np.concatenate(got), whole), sizes


@pytest.mark.parametrize("max_chunk", [16.0, 6.0])
def test_streamed_chunks_are_the_whole_arrays(recording, max_chunk: float) -> None:
    """Fed in blocks of any size, the streaming segmenter finds exactly segment_audio's chunks, hands over
    their samples, and keeps well under a minute of audio however long the recording."""
    chunks = ChunkOptions(max_chunk=max_chunk)
    assert len(segment_audio(recording.audio, chunks=chunks)) > 10
    for sizes in ([65536], [1000, 3], [262_145, 9999], [len(recording.audio)]):
        kept = check_stream(recording.audio, sizes, chunks=chunks)
        if sizes[0] < 300_000:
            assert kept < (max_chunk + 40) * RATE, (sizes, kept / RATE)


def test_streamed_chunks_are_the_whole_arrays_for_any_options(recording) -> None:
    """Random recordings (speech cut anywhere, silences, noise at many levels) under random VAD and chunk
    options, streamed in random blocks, give segment_audio's chunks; a small `hold` moves what the segmenter
    keeps beyond it to a temporary file, with the same chunks."""
    rng = np.random.default_rng(1)
    speech = recording.audio
    for _ in range(40):
        parts = []
        for _ in range(int(rng.integers(3, 12))):
            kind = rng.integers(3)
            n = int(rng.uniform(0.05, 12 if kind == 0 else 4) * RATE)
            if kind == 0:
                start = int(rng.integers(0, len(speech) - n))
                parts.append(speech[start : start + n])
            elif kind == 1:
                parts.append(np.zeros(n, np.float32))
            else:
                parts.append((rng.standard_normal(n) * 10 ** rng.uniform(-4, -0.5)).astype(np.float32))
        audio = np.clip(np.concatenate(parts), -1, 1)
        threshold = float(rng.uniform(0.2, 0.9))
        vad = VadOptions(
            threshold=threshold,
            neg_threshold=None if rng.random() < 0.5 else float(rng.uniform(0, threshold)),
            min_speech=float(rng.choice([0.0, rng.uniform(0, 1.5)])),
            min_silence=float(rng.uniform(0.0, 2.0)),
            speech_pad=float(rng.choice([0.0, rng.uniform(0, 0.8)])),
        )
        max_chunk = float(rng.uniform(1.0, 20.0))
        min_chunk = float(rng.choice([0.0, rng.uniform(0.05, max_chunk)]))
        window = float(rng.uniform(0.2, 6))
        chunks = ChunkOptions(
            max_chunk=max_chunk,
            min_chunk=min_chunk,
            merge_gap=float(rng.uniform(0, 3)),
            split_window=window,
            energy_frame=float(rng.uniform(0.005, 0.06)),
            quiet_span=float(rng.uniform(0, 0.3)),
        )
        sizes = [int(x) for x in rng.integers(1, 200_000, size=5)]
        hold = float(rng.choice([HOLD_SECONDS, 3.0]))
        check_stream(audio, sizes, vad, chunks, hold=hold)


def test_audio_the_vad_cannot_decide_on_waits_in_a_file(recording) -> None:
    """With a min_silence of 20 s, every pause keeps its speech undecided for 20 s; held in memory up to
    `hold` (4 s here), the rest in a temporary file: the chunks do not change."""
    vad = VadOptions(min_silence=20.0)
    found, _, kept, held = stream(recording.audio, [16000], vad, hold=4.0)
    assert found == segment_audio(recording.audio, vad)
    assert kept > 20 * RATE and held <= 5 * RATE
    check_stream(recording.audio, [16000], vad, hold=4.0)


def test_vad_speed(recording) -> None:
    speech_probabilities(recording.audio[:RATE])  # the model is loaded once, not timed
    start = time.perf_counter()
    probs = speech_probabilities(recording.audio)
    elapsed = time.perf_counter() - start
    speed = len(recording.audio) / RATE / elapsed
    print(f"Silero VAD: {len(probs) / elapsed:.0f} windows/s ({speed:.0f}x real time)")
    assert len(probs) / elapsed > 1000


def test_split_cuts_at_the_quietest_point() -> None:
    t = np.arange(30 * RATE) / RATE
    audio = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    audio[round(13.0 * RATE) : round(13.2 * RATE)] *= 0.001  # a pause inside the search window [12, 16]
    audio[round(5.0 * RATE) : round(5.5 * RATE)] = 0  # a longer pause, too early to be used
    chunks = chunk_regions(audio, [(0.0, 30.0)])
    assert 13.0 <= chunks[0].end <= 13.2 and chunks[1].start == chunks[0].end
    assert all(c.duration <= 16.0 for c in chunks) and chunks[-1].end == 30.0
    flat = chunk_regions(np.full(40 * RATE, 0.1, np.float32), [(0.0, 40.0)])  # no pause: cut anyway
    assert len(flat) == 3 and all(c.duration <= 16.0 for c in flat) and flat[-1].end == 40.0


def test_a_cut_always_moves_on() -> None:
    """min_chunk 0 and a search window longer than max_chunk, quiet at the start of each piece: the cut never
    falls on the piece's start (which looped for ever); pieces keep at least half of max_chunk."""
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(10 * RATE)).astype(np.float32)
    audio[: RATE // 2] = 0
    options = ChunkOptions(min_chunk=0.0, max_chunk=2.0, split_window=4.0)
    chunks = chunk_regions(audio, [(0.0, 10.0)], options)
    assert chunks[0].start == 0.0 and chunks[-1].end == 10.0
    assert all(1.0 <= c.duration <= 2.0 for c in chunks[:-1]) and chunks[-1].duration <= 2.0
    assert all(a.end == b.start for a, b in pairwise(chunks))


def test_chunk_merging_and_widening() -> None:
    audio = np.zeros(60 * RATE, np.float32)
    chunks = chunk_regions(audio, [(1.0, 4.0), (4.5, 8.0), (10.0, 12.0), (12.5, 19.0), (30.0, 30.2)])
    assert spans(chunks) == [(1.0, 8.0), (10.0, 19.0), (29.6, 30.6)]  # 0.2 s widened to min_chunk
    messy = [(5.0, 9.0), (1.0, 6.0), (-1.0, 0.2), (59.9, 70.0)]
    chunks = chunk_regions(audio, messy, ChunkOptions(min_chunk=0, merge_gap=0.5))
    assert spans(chunks) == [(0.0, 0.2), (1.0, 9.0), (59.9, 60.0)]  # union, clamped to the audio
    near = chunk_regions(audio, [(0.1, 0.3), (0.5, 0.6)], ChunkOptions(merge_gap=0.1, min_chunk=1.0))
    assert near[0].start == 0.0 and near[0].end <= near[1].start and near[1].duration == pytest.approx(1.0)
    assert chunk_regions(audio, [(0.0, 10.0), (10.5, 20.0)]) == [Chunk(0.0, 10.0), Chunk(10.5, 20.0)]
    assert chunk_regions(audio, []) == []


def test_fixed_windows() -> None:
    assert fixed_windows(0.0, 40.0, 16.0, 4.0) == [Chunk(0.0, 16.0), Chunk(12.0, 28.0), Chunk(24.0, 40.0)]
    assert fixed_windows(0.0, 30.0, 16.0, 4.0) == [Chunk(0.0, 16.0), Chunk(12.0, 28.0), Chunk(14.0, 30.0)]
    assert fixed_windows(5.0, 10.0, 16.0, 2.0) == [Chunk(5.0, 10.0)]
    assert fixed_windows(0.0, 32.0, 16.0) == [Chunk(0.0, 16.0), Chunk(16.0, 32.0)]
    assert fixed_windows(3.0, 3.0, 16.0) == []
    windows = fixed_windows(1.5, 100.0, 10.0, 2.5)
    assert windows[0].start == 1.5 and windows[-1].end == 100.0
    assert all(w.duration == pytest.approx(10.0) for w in windows)
    assert all(b.start - a.start == pytest.approx(7.5) for a, b in pairwise(windows[:-1]))
    for bad in [(0.0, 10.0, 0.0, 0.0), (0.0, 10.0, 5.0, 5.0), (0.0, 10.0, 5.0, -1.0)]:
        with pytest.raises(ValueError):
            fixed_windows(*bad)


def test_options_and_input_are_checked() -> None:
    for kwargs in [{"threshold": 1.5}, {"neg_threshold": 0.9}, {"min_silence": -1}]:
        with pytest.raises(ValueError):
            VadOptions(**kwargs)
    for kwargs in [{"max_chunk": 0}, {"min_chunk": 20}, {"merge_gap": -1}, {"split_window": 0}]:
        with pytest.raises(ValueError):
            ChunkOptions(**kwargs)
    assert ChunkOptions(max_chunk=2.0).max_chunk == 2.0  # small limits work with the default window
    with pytest.raises(ValueError):
        speech_regions(np.zeros((2, RATE), np.float32))


def test_short_limit_still_cuts(recording, regions) -> None:
    chunks = chunk_regions(recording.audio, regions, ChunkOptions(max_chunk=2.0, min_chunk=0.5))
    assert all(c.duration <= 2.0 + 1e-9 for c in chunks)
    assert all(a.end <= b.start for a, b in pairwise(chunks))


def test_long_form_chunks_are_decoded_in_batches_of_at_most_batch_size_and_batch_seconds(
    recording, tiny_ckpt, tmp_path
) -> None:
    """A long file's speech chunks go through the model `batch_size` at a time (by default 16 greedy) and at
    most `batch_seconds` of speech at a time (not all at once); the transcript does not depend on either."""
    from avsr_cli.modeling.decoding import DecodingOptions
    from avsr_cli.tasks.transcribe import TranscribeOptions, Transcriber

    t = Transcriber.from_checkpoint(tiny_ckpt, device="cpu")
    batches: list[list[float]] = []
    decode = t.model.decode

    def counting(mode, audio, video, options, **kwargs):
        batches.append([len(f) / 50 for f in audio.frames])  # Whisper frames: 50 a second
        return decode(mode, audio, video, options, **kwargs)

    t.model.decode = counting
    path = tmp_path / "talk.wav"
    sf.write(path, recording.audio, RATE)
    texts, chunks = {}, {}
    for batch, seconds in ((1, 30.0), (3, 30.0), (None, 1000.0), (None, 10.0)):
        batches.clear()
        options = TranscribeOptions(
            segmentation="vad",
            batch_size=batch,
            batch_seconds=seconds,
            decoding=DecodingOptions(num_beams=1, max_new_tokens=4),
        )
        texts[batch, seconds] = [s.text for s in t.transcribe(path, options).segments]
        chunks[batch, seconds] = sum(len(b) for b in batches)
        durations = [d for b in batches for d in b]
        assert durations == sorted(durations)  # shortest first, so that chunks of like length share batches
        if batch is not None:
            assert max(len(b) for b in batches) == batch, batches
        elif seconds == 1000.0:  # greedy: up to 16 chunks a batch by default
            assert [len(b) for b in batches] == [min(chunks[batch, seconds], 16)], batches
        else:
            assert len(batches) > 1 and all(len(b) == 1 or sum(b) <= seconds + 0.1 for b in batches), batches
            assert any(len(b) > 1 for b in batches), batches  # the cap still lets short chunks share
    assert len(set(chunks.values())) == 1 and chunks[1, 30.0] > 3
    assert len({tuple(v) for v in texts.values()}) == 1


def test_default_batch_is_16_decoder_rows_and_4_clips_at_least() -> None:
    from avsr_cli.modeling.decoding import DecodingOptions
    from avsr_cli.tasks.transcribe import TranscribeOptions

    def clips(beams, default_beams=15, **kw):
        return TranscribeOptions(decoding=DecodingOptions(num_beams=beams), **kw).clips_per_batch(
            default_beams
        )

    assert (clips(1), clips(2), clips(4), clips(15), clips(None), clips(None, default_beams=1)) == (
        16,
        8,
        4,
        4,
        4,
        16,
    )
    assert clips(1, batch_size=3) == 3
    with pytest.raises(ValueError, match="batch_seconds"):
        TranscribeOptions(batch_seconds=0)


def test_a_long_recording_is_transcribed_from_its_file_as_the_whole_array_is(
    recording, tiny_ckpt, tmp_path, monkeypatch
) -> None:
    """Audio longer than a chunk is not held: `load_media` reads it once for its length and level, and the
    transcription reads it again block by block, decoding chunks as they are found. Segments, text, times and
    warnings are those of the whole array, also when the chunks reach the batches in several groups."""
    from avsr_cli.modeling.decoding import DecodingOptions
    from avsr_cli.tasks import batching
    from avsr_cli.tasks.transcribe import TranscribeOptions, Transcriber

    t = Transcriber.from_checkpoint(tiny_ckpt, device="cpu")
    path = tmp_path / "talk.flac"
    sf.write(path, recording.audio, RATE, subtype="PCM_16")  # the recording's samples, exactly
    greedy = DecodingOptions(num_beams=1, max_new_tokens=4)
    default = batching.STREAM_GROUP_SECONDS
    for options in (
        TranscribeOptions(segmentation="vad", merge_gap=0.5, decoding=greedy),
        TranscribeOptions(mode="asr", max_chunk=6.0, decoding=greedy),
    ):
        item = t.load_media(path, options)
        assert item.audio is None and item.stream.samples == len(recording.audio)
        whole = t.transcribe_audio(recording.audio, str(path), options)
        for group in (default, 10.0):
            monkeypatch.setattr(batching, "STREAM_GROUP_SECONDS", group)
            done: list[float] = []
            (streamed,) = t.transcribe_many([path], options, on_progress=done.append)
            assert len(streamed.segments) > 5 and streamed.text == whole.text
            if group == default:  # one group: the batches of the whole array
                assert streamed.segments == whole.segments
            else:  # other batches: the same text and times (scores may differ in the last float digits)
                assert [(s.start, s.end, s.text) for s in streamed.segments] == [
                    (s.start, s.end, s.text) for s in whole.segments
                ]
            assert (streamed.duration, streamed.warnings) == (whole.duration, whole.warnings)
            assert sum(done) == pytest.approx(streamed.duration)  # progress covers the recording once


def test_a_recording_that_changes_while_it_is_read_fails_whole(recording, tiny_ckpt, tmp_path) -> None:
    """Read twice (scanned, then transcribed), a file that changed in between is an error: no partial
    transcript."""
    from avsr_cli.errors import MediaError
    from avsr_cli.tasks.transcribe import TranscribeOptions, Transcriber

    t = Transcriber.from_checkpoint(tiny_ckpt, device="cpu")
    path = tmp_path / "talk.wav"
    sf.write(path, recording.audio, RATE, subtype="PCM_16")
    options = TranscribeOptions(mode="asr")
    item = t.load_media(path, options)
    sf.write(path, recording.audio[: 60 * RATE], RATE, subtype="PCM_16")  # rewritten, shorter
    (result,) = t.transcribe_loaded([item], options)
    assert isinstance(result, MediaError)
    assert (
        str(result)
        == f"{path}: the file changed while it was read ({len(recording.audio)} samples, then 960000)"
    )
