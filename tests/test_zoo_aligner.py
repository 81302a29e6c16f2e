"""A zoo aligner for checkpoints without one (`--aligner`): a wav2vec2 character CTC model timing the words
on the waveform. A tiny random Wav2Vec2ForCTC, in the form of facebook/wav2vec2-base-960h, is served by a
fake Hub on loopback, fetched with `avsr download-checkpoint` and used by `avsr transcribe`."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avsr_cli.modeling.alignment import align_words, head_vocabulary, word_targets
from tests.support.loopback import FakeHub, Server
from tests.support.speech import synthesize

ROOT = Path(__file__).resolve().parents[1]
# wav2vec2-base-960h's vocab.json: special tokens, "|" between words, upper-case letters by frequency
W2V_VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
W2V_VOCAB |= {c: i + 5 for i, c in enumerate("ETAONIHSRDLUMWCFGYPBVK'XJQZ")}
STRIDES = (5, 4, 4)  # 80 samples a frame, 5 ms: not wav2vec2 base's 20 ms, so a hard-coded rate shows


def w2v_posteriors(n_frames: int, fire: dict[int, str], floor: float = -9.0) -> np.ndarray:
    """(T, 32) log-probabilities where the character fire[t] dominates frame t and <pad> every other."""
    lp = np.full((n_frames, len(W2V_VOCAB)), floor)
    lp[:, W2V_VOCAB["<pad>"]] = -0.001
    for t, c in fire.items():
        lp[t, W2V_VOCAB[c]], lp[t, W2V_VOCAB["<pad>"]] = -0.001, floor
    return lp


def test_wav2vec2_vocabulary_puts_words_on_the_frames_their_letters_fire():
    targets, spans = word_targets(["Don't", "7", "go!"], vocab=W2V_VOCAB, delimiter="|")
    assert targets == [W2V_VOCAB[c] for c in "DON'T|GO"] and spans == [(0, 5), (5, 5), (6, 8)]
    # letters where wav2vec2 would emit them, "|" between the words
    fire = {10: "D", 11: "O", 13: "N", 14: "'", 16: "T", 30: "|", 40: "G", 44: "O"}
    timed = align_words("Don't 7 go!", w2v_posteriors(60, fire), 0.02, vocab=W2V_VOCAB, delimiter="|")
    assert [w for w, *_ in timed] == ["Don't", "7", "go!"]
    spans_s = [(round(a, 3), round(b, 3)) for _, a, b, _ in timed]
    assert spans_s[0] == (0.2, 0.34) and spans_s[2] == (0.8, 0.9)
    assert spans_s[1] == (0.34, 0.8) and timed[1][3] == 0.0  # a number sits between its neighbours
    assert timed[0][3] > 0.99 and timed[2][3] > 0.99
    # a blank other than 0: the same posteriors with every class one lower, <pad> moved to the last
    shifted = {k: (v - 1) % len(W2V_VOCAB) for k, v in W2V_VOCAB.items()}
    lp = np.roll(w2v_posteriors(60, fire), -1, axis=1)
    again = align_words("Don't 7 go!", lp, 0.02, vocab=shifted, blank=shifted["<pad>"], delimiter="|")
    assert [(round(a, 3), round(b, 3)) for _, a, b, _ in again] == spans_s


@pytest.mark.parametrize("vocab, delimiter", [(None, " "), (W2V_VOCAB, "|")])
def test_a_transcript_longer_than_127_ctc_states_aligns(vocab, delimiter):
    # a 16 s chunk easily holds 64 characters: 129 states, past what an int8 step can index
    text = "seven children painted the fence before their lunch break and then went home to sleep"
    targets, spans = word_targets(text.split(), vocab=vocab, delimiter=delimiter)
    assert 2 * len(targets) + 1 > 127
    frames = [3 * k + 2 for k in range(len(targets))]
    classes = 1 + max((vocab or head_vocabulary()).values())
    lp = np.full((3 * len(targets) + 5, classes), -9.0)
    lp[:, 0] = -0.001
    lp[frames, targets], lp[frames, 0] = -0.001, -9.0
    timed = align_words(text, lp, 0.02, vocab=vocab, delimiter=delimiter)
    expected = [edge * 0.02 for a, b in spans for edge in (frames[a], frames[b - 1] + 1)]
    assert [edge for _, a, b, _ in timed for edge in (a, b)] == pytest.approx(expected)
    assert all(p > 0.99 for *_, p in timed)


def make_tiny_wav2vec2(folder: Path) -> Path:
    """A random Wav2Vec2ForCTC a few kB large, saved as safetensors with the files of wav2vec2-base-960h."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=len(W2V_VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16, 16),
        conv_stride=STRIDES,
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    Wav2Vec2ForCTC(config).save_pretrained(folder, safe_serialization=True)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(W2V_VOCAB))
    tokenizer = {
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "word_delimiter_token": "|",
        "do_lower_case": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return folder


@pytest.fixture(scope="module")
def tiny_w2v(tmp_path_factory) -> Path:
    return make_tiny_wav2vec2(tmp_path_factory.mktemp("w2v") / "tiny-w2v")


def test_wav2vec2_aligner_reads_the_normalised_waveform_at_its_frame_rate(tiny_w2v):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from avsr_cli.modeling.aligners import Wav2Vec2Aligner

    aligner = Wav2Vec2Aligner.from_dir(tiny_w2v)
    assert aligner.frame_seconds == pytest.approx(80 / 16000) and aligner.delimiter == "|"
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32) + 0.05
    lp = aligner.log_probs(wave)
    # what transformers' own feature extractor and model give for the same second of audio
    inputs = Wav2Vec2FeatureExtractor.from_pretrained(tiny_w2v)(
        wave, sampling_rate=16000, return_tensors="pt"
    )
    with torch.no_grad():
        logits = Wav2Vec2ForCTC.from_pretrained(tiny_w2v)(inputs.input_values).logits[0]
    assert lp.shape == (logits.shape[0], len(W2V_VOCAB)) and abs(lp.shape[0] - 16000 / 80) <= 2
    np.testing.assert_allclose(lp, logits.log_softmax(-1).numpy(), atol=1e-4)
    np.testing.assert_allclose(
        aligner.log_probs(wave * 4), lp, atol=1e-3
    )  # normalised: loudness is no matter
    timed = aligner.align("hello there", wave, None)
    assert [w for w, *_ in timed] == ["hello", "there"]
    assert 0 <= timed[0][1] <= timed[0][2] <= timed[1][1] <= timed[1][2] <= lp.shape[0] * 80 / 16000


def test_the_transcriber_loads_a_named_aligner_once(tiny_ckpt, tiny_w2v, tmp_path):
    from avsr_cli.tasks.transcribe import Transcriber
    from avsr_cli.tasks.transcript import TranscribeOptions

    clip = synthesize("Turn left at the next corner.", tmp_path / "a.wav")
    options = TranscribeOptions(word_timestamps=True, mode="asr", aligner=str(tiny_w2v))
    transcriber = Transcriber.from_checkpoint(tiny_ckpt, options=options)
    loaded = transcriber.aligners[str(tiny_w2v)]
    first, second = transcriber.transcribe(clip), transcriber.transcribe(clip)
    assert list(transcriber.aligners.values()) == [loaded] and transcriber.aligner(options) is loaded
    assert first.segments and all(s.words for s in first.segments)
    assert [s.words for s in first.segments] == [s.words for s in second.segments]
    assert "alignment" in first.timings


# ---------------------------------------------------------------------------------------------------------
# Through the CLI: the aligner card on a fake Hub, downloaded, then used by `avsr transcribe`
# ---------------------------------------------------------------------------------------------------------


class Trap:
    """Unpickling this creates the file `marker`: proof that a .bin was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_w2v):
    base = tmp_path_factory.mktemp("aligner-world")
    home = base / "home" / "models"
    home.mkdir(parents=True)
    marker = base / "unpickled"
    trap = pickle.dumps(Trap(marker))
    hub = FakeHub()
    files = {p.name: p.read_bytes() for p in tiny_w2v.iterdir() if p.is_file()}
    hub.add("tiny/wav2vec2", {**files, "pytorch_model.bin": trap})  # the .bin must never be fetched
    pickled_only = {k: v for k, v in files.items() if not k.endswith(".safetensors")}
    hub.add("old/wav2vec2", {**pickled_only, "pytorch_model.bin": trap})
    server = Server(hub)
    (home / "tiny-w2v.toml").write_text(
        'name = "tiny-w2v"\nkind = "aligner"\n[parts.model]\nhub = "tiny/wav2vec2"\n'
        'patterns = ["*.json", "*.safetensors"]\nlicense = "test licence W"\n'
    )
    (home / "old-w2v.toml").write_text(
        'name = "old-w2v"\nkind = "aligner"\n[parts.model]\nhub = "old/wav2vec2"\n'
        'patterns = ["*.json", "*.bin"]\nlicense = "t"\n'
    )
    clip = synthesize("Have you seen my phone charger? I left it on the table.", base / "speech.wav")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AVSR_"))},
        "AVSR_HOME": str(home.parent),
        "AVSR_CACHE": str(base / "cache"),
        "HF_HOME": str(base / "hf"),
        "HF_ENDPOINT": server.url,
        "HF_HUB_ETAG_TIMEOUT": "5",
    }
    yield dict(base=base, env=env, clip=clip, marker=marker)
    server.stop()


def avsr(world, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "avsr_cli", *args]
    return subprocess.run(cmd, env=world["env"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def last_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()[-1]


def test_a_checkpoint_without_an_aligner_names_the_zoo_aligner(world, tiny_ckpt):
    r = avsr(world, "transcribe", str(world["clip"]), "-c", str(tiny_ckpt), "--word-timestamps", "-f", "json")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    line = last_line(r)
    assert "has no aligner (aligner.json), so it cannot time words" in line
    assert (
        "add --aligner wav2vec2-base-960h (a 378 MB download: avsr download-checkpoint wav2vec2-base-960h)"
        in line
    )
    r = avsr(world, "transcribe", str(world["clip"]), "-c", str(tiny_ckpt), "--aligner", "tiny-w2v")
    assert r.returncode == 2 and "--aligner tiny-w2v needs --word-timestamps" in last_line(r)


def test_zoo_aligner_downloaded_then_times_the_words(world, tiny_ckpt):
    out = world["base"] / "out"
    cmd = [
        "transcribe",
        str(world["clip"]),
        "-c",
        str(tiny_ckpt),
        "--word-timestamps",
        "--aligner",
        "tiny-w2v",
    ]
    r = avsr(world, *cmd, "-f", "json", "-o", str(out))
    assert r.returncode == 2 and not (out / "speech.json").exists(), r.stderr  # said before the model loads
    assert last_line(r).endswith(
        "aligner 'tiny-w2v' (tiny/wav2vec2) is not downloaded: run `avsr download-checkpoint tiny-w2v`"
    )

    r = avsr(world, "download-checkpoint", "tiny-w2v")
    assert r.returncode == 0, r.stderr
    folder = Path(r.stdout.strip())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            "tokenizer_config.json",
            "vocab.json",
        ]
    )  # the pickled .bin the repo also holds was not fetched
    assert "test licence W" in r.stderr and "--aligner tiny-w2v" in r.stderr
    rows = {
        line.split("\t")[0]: line.split("\t")
        for line in avsr(world, "download-checkpoint", "--list").stdout.splitlines()
    }
    assert rows["tiny-w2v"][1] == "aligner" and rows["tiny-w2v"][-1] == "ready"
    assert rows["wav2vec2-base-960h"][1] == "aligner" and rows["wav2vec2-base-960h"][-1] == "not downloaded"

    r = avsr(world, *cmd, "-f", "json", "-o", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "speech.json").read_text())
    assert result["segments"] and result["options"]["aligner"] == "tiny-w2v"
    assert not world["marker"].exists()
    for seg in result["segments"]:
        words = seg["words"]
        assert words and "".join(w["word"] for w in words).strip() == seg["text"].strip()
        starts = [w["start"] for w in words]
        assert starts == sorted(starts)
        assert all(seg["start"] <= w["start"] <= w["end"] <= seg["end"] + 0.01 for w in words), (seg, words)
        assert all(0.0 <= w["probability"] <= 1.0 for w in words)
    r = avsr(world, "export-subtitles", *cmd[1:], "-f", "srt")
    assert r.returncode == 0 and " --> " in r.stdout, r.stderr
    # a folder names an aligner as well as a zoo name does
    r = avsr(world, *cmd[:-1], str(folder), "-f", "json")
    assert r.returncode == 0, r.stderr
    assert [s["words"] for s in json.loads(r.stdout)["segments"]] == [s["words"] for s in result["segments"]]


def test_weights_only_in_a_pickle_are_refused_unread(world, tiny_ckpt):
    r = avsr(world, "download-checkpoint", "old-w2v")
    assert r.returncode == 1, r.stderr
    line = last_line(r)
    assert line.startswith("error: aligner old-w2v: ") and "holds no .safetensors weights" in line
    assert "pytorch_model.bin is not read: unpickling can run code" in line
    snapshot = Path(line.split("aligner old-w2v: ")[1].split(":")[0])
    assert (snapshot / "pytorch_model.bin").is_file()  # fetched, as the card asked, and never unpickled
    r = avsr(
        world,
        "transcribe",
        str(world["clip"]),
        "-c",
        str(tiny_ckpt),
        "--word-timestamps",
        "--aligner",
        str(snapshot),
    )
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert "holds no .safetensors weights; pytorch_model.bin is not read" in last_line(r)
    assert not world["marker"].exists()
    pickle.loads(pickle.dumps(Trap(world["base"] / "probe"))).close()  # the trap does spring
    assert (world["base"] / "probe").exists()


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "wav2vec2-large",
            "--aligner wav2vec2-large: no such folder and no aligner of that name (aligners: ",
        ),
        ("llama-avsr-asr", "--aligner llama-avsr-asr: 'llama-avsr-asr' is a checkpoint, not an aligner"),
        ("speech.wav", "an aligner is a folder (a wav2vec2 CTC model), not a file"),
    ],
)
def test_what_is_not_an_aligner_is_refused_before_the_model_loads(world, tiny_ckpt, name, message):
    aligner = str(world["base"] / name) if name.endswith(".wav") else name
    r = avsr(
        world,
        "transcribe",
        str(world["clip"]),
        "-c",
        str(tiny_ckpt),
        "--word-timestamps",
        "--aligner",
        aligner,
    )
    assert r.returncode == 2 and r.stdout == "", r.stderr
    line = last_line(r)
    assert message in line
    if name == "wav2vec2-large":  # the aligners there are, named
        assert "wav2vec2-base-960h" in line and "tiny-w2v" in line
