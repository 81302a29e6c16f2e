"""`avsr train` on tiny random models: batching, loss, resume after an interruption, feature cache, averaging,
multi-rate training, the CLI and its config file."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from avsr_cli.errors import UsageError
from avsr_cli.modeling.config import CompressionConfig
from avsr_cli.tasks.datasets import load_dataset
from avsr_cli.tasks.training.options import TrainOptions, TrainSetup
from avsr_cli.tasks.training.run import train
from avsr_cli.tasks.training.steps import length_batches
from tests.support.tiny import tiny_config

TEXTS = ["one two", "three four five", "six", "seven eight", "nine ten eleven twelve", "zero"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Six clips of distinct tones (0.4-1.4 s) with transcripts, in the media + same-stem .txt layout."""
    d = tmp_path_factory.mktemp("data")
    for i, text in enumerate(TEXTS):
        t = np.arange(int(16000 * (0.4 + 0.2 * i))) / 16000
        sf.write(d / f"c{i}.wav", 0.5 * np.sin(2 * np.pi * (200 + 150 * i) * t), 16000)
        (d / f"c{i}.txt").write_text(text + "\n")
    return d


@pytest.fixture(scope="module")
def base(tiny_dirs, tmp_path_factory):
    """A tiny base whose LLM can fit six transcripts in a few dozen steps (rates 2 and 4)."""
    from tests.support.tiny import make_llm

    d = tmp_path_factory.mktemp("base")
    path = d / "tiny.json"
    cfg = tiny_config(tiny_dirs[0], make_llm(d / "llm", init_range=0.5))
    cfg.compression = CompressionConfig(mode="stack", audio_rates=[2, 4])
    cfg.save(path)
    return str(path)


def test_length_batches_respect_the_frame_budget_and_cover_every_clip():
    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(200)]
    options = TrainOptions(batch_seconds=10.0, max_batch=8)
    batches = length_batches(lengths, 50.0, options, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) <= 8
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 500  # 10 s x 50 frames/s
    assert batches == length_batches(lengths, 50.0, options, random.Random(1))
    assert batches != length_batches(lengths, 50.0, options, random.Random(2))  # shuffled per epoch seed


def _adapter(path):
    return load_file(str(path / "adapter.safetensors"))


def test_loss_falls_and_the_checkpoint_loads(data, base, tmp_path):
    """A tiny random LLM learns slowly (the real-model test in test_e2e checks exact transcripts)."""
    from avsr_cli.tasks.transcribe import Transcriber

    options = TrainOptions(max_steps=60, lr=1e-2, max_batch=6, audio_rates=[4])
    result = train(TrainSetup(data, tmp_path / "ck", options, base=base, feature_cache=tmp_path / "cache"))
    assert result.steps == 60 and not result.failed
    assert np.mean(result.losses[-5:]) < 0.9 * np.mean(result.losses[:5]), result.losses[::10]
    t = Transcriber.from_checkpoint(tmp_path / "ck")
    assert isinstance(t.transcribe(data / "c0.wav").text, str)
    assert (tmp_path / "ck" / "training.json").exists() and (tmp_path / "ck" / "train_log.jsonl").exists()


def test_interrupted_run_resumes_to_the_same_weights(data, base, tmp_path):
    options = TrainOptions(epochs=4, lr=5e-3, max_batch=2, save_every=3, seed=3)
    cache = tmp_path / "cache"
    full = train(TrainSetup(data, tmp_path / "full", options, base=base, feature_cache=cache))

    class Killed(Exception):
        pass

    def kill_at_step_7(info):
        if info.step == 7:
            raise Killed

    with pytest.raises(Killed):
        train(
            TrainSetup(data, tmp_path / "cut", options, base=base, feature_cache=cache),
            on_step=kill_at_step_7,
        )
    resumed = train(TrainSetup(data, tmp_path / "cut", options, base=base, feature_cache=cache))
    assert resumed.resumed_from == 6  # the last state saved before the interruption (every 3 steps)
    assert resumed.steps == full.steps == 12
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_feature_cache_is_reused_and_invalidated(data, base, tmp_path):
    cache = tmp_path / "cache"
    options = TrainOptions(max_steps=1, audio_rates=[4])
    train(TrainSetup(data, tmp_path / "a", options, base=base, feature_cache=cache))
    files = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(files) == len(TEXTS)
    train(TrainSetup(data, tmp_path / "b", options, base=base, feature_cache=cache, resume=False))
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == files
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in data.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    audio, sr = sf.read(copy / "c0.wav")
    sf.write(copy / "c0.wav", audio[: len(audio) // 2], sr)  # a changed file is encoded again
    train(TrainSetup(copy, tmp_path / "c", options, base=base, feature_cache=cache))
    assert len(list(cache.iterdir())) == 2 * len(TEXTS)


def test_checkpoint_is_the_average_of_the_last_epochs(data, base, tmp_path):
    options = TrainOptions(epochs=3, lr=5e-3, max_batch=3, average_last=2)
    train(TrainSetup(data, tmp_path / "ck", options, base=base, feature_cache=tmp_path / "cache"))
    epochs = [load_file(str(p)) for p in sorted((tmp_path / "ck" / "epochs").glob("epoch*.safetensors"))]
    assert len(epochs) == 3
    final = _adapter(tmp_path / "ck")
    for k in final:
        torch.testing.assert_close(final[k], (epochs[1][k] + epochs[2][k]) / 2)
    key = next(k for k in final if k.startswith("projectors.audio.4."))
    assert not torch.equal(epochs[1][key], epochs[2][key])  # the epochs really differ


def test_multi_rate_training_trains_every_rate(data, base, tmp_path):
    import json

    from avsr_cli.tasks.transcribe import TranscribeOptions, Transcriber

    options = TrainOptions(max_steps=12, lr=1e-2, max_batch=6)  # rates: the base's 2 and 4
    train(TrainSetup(data, tmp_path / "ck", options, base=base, feature_cache=tmp_path / "cache"))
    log = [json.loads(line) for line in (tmp_path / "ck" / "train_log.jsonl").read_text().splitlines()]
    assert {r for row in log for r in row["rates"]} == {2, 4}  # one rate drawn per step (Omni-AVSR)
    t = Transcriber.from_checkpoint(tmp_path / "ck")
    assert t.model.config.compression.audio_rates == [2, 4]
    for rate in (2, 4):
        assert isinstance(t.transcribe(data / "c3.wav", TranscribeOptions(audio_rate=rate)).text, str)


def test_validation_reports_wer(data, base, tmp_path):
    options = TrainOptions(epochs=2, max_batch=3, val_limit=2)
    result = train(
        TrainSetup(data, tmp_path / "ck", options, base=base, val_data=data, feature_cache=tmp_path / "c")
    )
    assert [v["epoch"] for v in result.validations] == [0, 1]
    assert all(v["clips"] == 2 and v["wer"] >= 0 for v in result.validations)


def test_steps_attend_eagerly_in_bf16_and_validation_decodes_as_transcribe_does(
    data, base, tmp_path, monkeypatch
):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama import modeling_llama

    calls = []

    def spy(name, forward):
        def attend(module, *args, **kwargs):
            if isinstance(module, modeling_llama.LlamaAttention):  # the LLM's, not the Whisper encoder's
                calls.append((name, module.training, torch.is_grad_enabled(), module.o_proj.weight.dtype))
            return forward(module, *args, **kwargs)

        return attend

    monkeypatch.setattr(
        modeling_llama, "eager_attention_forward", spy("eager", modeling_llama.eager_attention_forward)
    )
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", spy("sdpa", ALL_ATTENTION_FUNCTIONS["sdpa"]))
    options = TrainOptions(epochs=1, max_batch=3, val_limit=2, precision="bf16")
    train(TrainSetup(data, tmp_path / "ck", options, base=base, val_data=data, feature_cache=tmp_path / "c"))
    eager = {call[1:] for call in calls if call[0] == "eager"}
    sdpa = {call[1:] for call in calls if call[0] == "sdpa"}
    # every training step's forward, and only those, with the frozen weights cast once for bf16
    assert eager == {(True, True, torch.bfloat16)}
    # the epoch's validation: greedy decoding with float32 weights, as `transcribe` attends
    assert sdpa == {(False, False, torch.float32)}


def test_select_best_takes_the_epoch_with_the_lowest_validation_wer(data, base, tmp_path):
    import json

    options = TrainOptions(epochs=3, max_batch=3, val_limit=2, lr=5e-3)
    ck = tmp_path / "ck"
    train(TrainSetup(data, ck, options, base=base, val_data=data, feature_cache=tmp_path / "c"))
    epochs = sorted((ck / "epochs").glob("epoch*.safetensors"))
    assert _adapter(ck).keys() == load_file(str(epochs[2])).keys()
    for k, v in _adapter(ck).items():
        torch.testing.assert_close(v, load_file(str(epochs[2]))[k])  # select "last": the last epoch
    # make epoch 0 the best in the saved state, then finish the (complete) run again with select "best"
    state = torch.load(ck / "train_state.pt", weights_only=True)
    validations = json.loads(state["validations"])
    assert [v["epoch"] for v in validations] == [0, 1, 2]
    for v in validations:
        v["wer"] = 0.1 if v["epoch"] == 0 else 0.5
    state["validations"] = json.dumps(validations)
    torch.save(state, ck / "train_state.pt")
    best = TrainOptions(epochs=3, max_batch=3, val_limit=2, lr=5e-3, select="best")
    result = train(TrainSetup(data, ck, best, base=base, val_data=data, feature_cache=tmp_path / "c"))
    assert result.resumed_from == result.steps and result.selected == [0]  # nothing left to train
    first = load_file(str(epochs[0]))
    for k, v in _adapter(ck).items():
        torch.testing.assert_close(v, first[k])
    assert not torch.equal(first[k], load_file(str(epochs[2]))[k])
    with pytest.raises(UsageError, match="needs validation data"):
        train(TrainSetup(data, tmp_path / "x", TrainOptions(select="best"), base=base))


def test_a_run_stopped_inside_its_epoch_validates_it(data, base, tmp_path):
    """--max-steps ending an epoch early: that partial epoch is the last one, validated like an epoch end
    (so select "best" has it to choose); only the val_limit clips validation decodes are encoded."""
    encoded = []
    options = TrainOptions(max_steps=2, max_batch=2, val_limit=2, select="best")
    result = train(
        TrainSetup(data, tmp_path / "ck", options, base=base, val_data=data, feature_cache=tmp_path / "c"),
        on_encode=lambda done, total: encoded.append(total),
    )
    assert result.steps == 2 and result.selected == [0]
    assert [(v["step"], v["epoch"], v["clips"]) for v in result.validations] == [(2, 0, 2)]
    assert encoded[-1] == len(load_dataset(data).items) + 2


def test_base_from_parts_reads_the_widths_from_their_configs(data, tiny_dirs, tmp_path):
    from avsr_cli.modeling.config import ModelConfig

    whisper_dir, llm_dir = tiny_dirs
    base = f"audio={whisper_dir},llm={llm_dir}"
    result = train(
        TrainSetup(data, tmp_path / "ck", TrainOptions(max_steps=2), base=base, feature_cache=tmp_path / "c")
    )
    assert result.steps == 2
    config = ModelConfig.load(tmp_path / "ck" / "config.json")
    assert (config.audio_encoder.dim, config.llm.hidden_size) == (32, 64)  # the tiny models' widths
    assert config.compression.audio_rates == [3] and config.lora.r == 2  # Llama-AVSR: K=3, r = 64/32
    assert config.video_encoder is None and config.modes == ["asr"]
    with pytest.raises(UsageError, match="unknown part vision"):
        train(TrainSetup(data, tmp_path / "x", TrainOptions(), base=f"vision={whisper_dir},llm={llm_dir}"))
    with pytest.raises(UsageError, match="no d_model: not a Whisper model"):
        train(TrainSetup(data, tmp_path / "x", TrainOptions(), base=f"audio={llm_dir},llm={llm_dir}"))


def test_bad_settings_are_clear_errors(data, base, tiny_ckpt, tmp_path):
    with pytest.raises(UsageError, match="unknown base 'nope'"):
        train(TrainSetup(data, tmp_path / "x", TrainOptions(), base="nope"))
    with pytest.raises(UsageError, match="rates \\[8\\] not among the model's audio rates \\[4\\]"):
        options = TrainOptions(audio_rates=[8], max_steps=1)  # fine-tuning keeps the checkpoint's projectors
        train(
            TrainSetup(data, tmp_path / "x", options, checkpoint=str(tiny_ckpt), feature_cache=tmp_path / "c")
        )
    with pytest.raises(UsageError, match="video encoder"):
        train(
            TrainSetup(
                data, tmp_path / "x", TrainOptions(mode="vsr", max_steps=1), base=base, feature_cache=tmp_path
            )
        )
    cfg = tmp_path / "t.toml"
    cfg.write_text('data = "x"\nlearning_rate = 1\n')
    with pytest.raises(UsageError, match="unknown train settings learning_rate"):
        TrainSetup.load(cfg)
    cfg.write_text('data = "x"\noutput_dir = "y"\naudio_rates = "4,x"\n')
    with pytest.raises(UsageError, match="audio_rates = '4,x': expected a list of integers >= 1"):
        TrainSetup.load(cfg)
    cfg.write_text('data = "x"\n')
    with pytest.raises(UsageError, match="--output-dir is required"):
        TrainSetup.load(cfg)
    setup = TrainSetup.load(cfg, {"output_dir": "o", "audio_rates": "4,16", "face_backend": "mediapipe"})
    assert setup.options.audio_rates == [4, 16] and setup.mouth.backend == "mediapipe" and setup.data == "x"
    assert not setup.options.compile
    cfg.write_text('data = "x"\noutput_dir = "y"\ncompile = true\n')
    assert (
        TrainSetup.load(cfg).options.compile and not TrainSetup.load(cfg, {"compile": False}).options.compile
    )
    assert load_dataset(data).kind == "folder"


def test_fine_tuning_may_add_lora_modules_which_start_at_zero(data, tiny_ckpt, tmp_path):
    from avsr_cli.tasks.transcribe import Transcriber

    widened = ["q_proj", "v_proj", "o_proj", "down_proj"]
    cache = tmp_path / "cache"
    # lr 0: one step leaves every weight as it was, so the checkpoint is the start of a widened run
    still = TrainOptions(max_steps=1, lr=0.0, audio_rates=[4], lora_targets=widened)
    train(TrainSetup(data, tmp_path / "still", still, checkpoint=str(tiny_ckpt), feature_cache=cache))
    old, new = _adapter(tiny_ckpt), _adapter(tmp_path / "still")
    assert all(torch.equal(old[k], new[k]) for k in old)
    added = sorted(k for k in new if k not in old)
    assert added and all(".o_proj." in k or ".down_proj." in k for k in added)
    assert all(not new[k].any() for k in added if k.endswith("lora_B"))
    assert any(new[k].any() for k in added if k.endswith("lora_A"))
    before = Transcriber.from_checkpoint(tiny_ckpt).transcribe(data / "c0.wav").text
    assert Transcriber.from_checkpoint(tmp_path / "still").transcribe(data / "c0.wav").text == before

    moving = TrainOptions(max_steps=3, lr=1e-2, audio_rates=[4], lora_targets=widened)
    train(TrainSetup(data, tmp_path / "moving", moving, checkpoint=str(tiny_ckpt), feature_cache=cache))
    trained = _adapter(tmp_path / "moving")
    assert all(trained[k].any() for k in added if k.endswith("lora_B"))
    assert json.loads((tmp_path / "moving" / "config.json").read_text())["lora"]["target_modules"] == widened

    with pytest.raises(UsageError, match="checkpoint's LoRA is on q_proj, v_proj"):
        dropped = TrainOptions(max_steps=1, audio_rates=[4], lora_targets=["o_proj"])
        train(TrainSetup(data, tmp_path / "x", dropped, checkpoint=str(tiny_ckpt), feature_cache=cache))


def test_auxiliary_ctc_trains_the_projector_alongside_the_llm_loss(data, base, tmp_path):
    cache = tmp_path / "cache"
    runs = {}
    for weight in (0.0, 1.0):
        options = TrainOptions(max_steps=30, lr=1e-2, max_batch=6, audio_rates=[4], ctc_weight=weight)
        runs[weight] = train(
            TrainSetup(data, tmp_path / f"w{weight}", options, base=base, feature_cache=cache)
        )
    log = [json.loads(line) for line in (tmp_path / "w1.0" / "train_log.jsonl").read_text().splitlines()]
    ctc = [entry["ctc_loss"] for entry in log]
    assert len(ctc) == 30 and np.mean(ctc[-5:]) < 0.8 * np.mean(ctc[:5]), ctc[::5]
    assert "ctc_loss" not in (tmp_path / "w0.0" / "train_log.jsonl").read_text()
    plain, aux = _adapter(tmp_path / "w0.0"), _adapter(tmp_path / "w1.0")
    projector = [k for k in plain if k.startswith("projectors.")]
    assert any(not torch.equal(plain[k], aux[k]) for k in projector)
    with pytest.raises(UsageError, match="ctc weight -1"):
        TrainOptions(ctc_weight=-1).check()


def test_cli_with_config_file_and_flag_override(data, base, tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text(
        f'data = "{data}"\nbase = "{base}"\nmax_steps = 50\nlr = 0.01\nmax_batch = 6\naudio_rates = [4]\n'
        f'feature_cache = "{tmp_path / "cache"}"\n'
    )
    cmd = [
        sys.executable,
        "-m",
        "avsr_cli",
        "train",
        str(cfg),
        "-o",
        str(tmp_path / "ck"),
        "--max-steps",
        "3",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(tmp_path / "ck")
    assert "trained 3 steps" in p.stderr
    import re

    assert re.search(r"step 1/3 epoch 0 loss [0-9.]+, ETA \d+:\d\d", p.stderr), p.stderr  # plain lines
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "avsr_cli",
            "train",
            "--data",
            str(tmp_path / "missing"),
            "-o",
            str(tmp_path / "z"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "missing" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_bf16_autocast_trains_and_saves_float32(data, base, tmp_path):
    """`--precision bf16` (the reference's GPU setting) runs under CPU autocast too; weights stay float32."""
    options = TrainOptions(max_steps=30, lr=1e-2, max_batch=6, audio_rates=[4], precision="bf16")
    result = train(TrainSetup(data, tmp_path / "ck", options, base=base, feature_cache=tmp_path / "cache"))
    assert np.mean(result.losses[-5:]) < 0.9 * np.mean(result.losses[:5]), result.losses[::5]
    assert all(v.dtype == torch.float32 for v in _adapter(tmp_path / "ck").values())
    assert result.precision == "bf16"
    # auto: bf16 where oneDNN has bf16 kernels (an AVX512-BF16 CPU: 1.43x a step), fp32 elsewhere
    auto = train(
        TrainSetup(
            data,
            tmp_path / "auto",
            TrainOptions(max_steps=1, audio_rates=[4]),
            base=base,
            feature_cache=tmp_path / "cache",
        )
    )
    assert auto.precision == ("bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32")
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        train(
            TrainSetup(
                data,
                tmp_path / "x",
                TrainOptions(max_steps=1, precision="fp8"),
                base=base,
                feature_cache=tmp_path,
            )
        )


# ------------------------------------------------------------------ data-parallel training (torchrun, gloo)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
DDP_FLAGS = ["--max-batch", "2", "--lr", "5e-3", "--audio-rates", "2,4", "--seed", "5", "-q"]


def _ddp_env():
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "AVSR_THREADS": "1"}


def _state(run_dir):
    return torch.load(run_dir / "train_state.pt", map_location="cpu", weights_only=True)


def _assert_same_adapter(a_dir, b_dir, tol=1e-5):
    a, b = _adapter(a_dir), _adapter(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol)


def test_two_processes_train_as_one_with_the_same_global_batch(data, base, tmp_path):
    """`avsr train --nproc 2` (torchrun, gloo) with grad-accum 1 follows one process with grad-accum 2:
    the same CTC pre-alignment, per-step losses, sharded validation WER and final adapter."""
    common = ["--data", data, "--base", base, "--feature-cache", tmp_path / "cache", "--val-data", data]
    common += ["--max-steps", "6", "--ctc-epochs", "1", "--val-every", "3", "--val-limit", "5", *DDP_FLAGS]
    one = [sys.executable, "-m", "avsr_cli", "train", *common, "--grad-accum", "2", "-o", tmp_path / "one"]
    two = [sys.executable, "-m", "avsr_cli", "train", *common, "--nproc", "2", "-o", tmp_path / "two"]
    for cmd in (one, two):
        p = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, env=_ddp_env())
        assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == str(tmp_path / "two")  # printed once, by rank 0
    s1, s2 = _state(tmp_path / "one"), _state(tmp_path / "two")
    assert s1["step"] == s2["step"] == 6
    assert s1["batches_per_step"] == s2["batches_per_step"] == 2
    torch.testing.assert_close(s1["losses"], s2["losses"], rtol=1e-5, atol=1e-7)
    assert s1["validations"] == s2["validations"]  # WER of clips decoded on two ranks, gathered
    _assert_same_adapter(tmp_path / "one", tmp_path / "two")
    log = (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4, 5, 6]  # one writer


def _children(pid: int) -> list[int]:
    from pathlib import Path

    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _rank_pid(launcher: int, rank: int) -> int | None:
    from pathlib import Path

    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def test_a_killed_rank_is_resumed_by_rerunning_the_same_command(data, base, tmp_path):
    """SIGKILL of rank 1 mid-run stops the run (non-zero exit); rerunning the same torchrun command resumes
    from rank 0's last state and ends on the adapter of an uninterrupted run. Resuming with another global
    batch (one process, grad-accum 1) is refused with a clear error."""
    import os
    import signal
    import time

    cache, steps = tmp_path / "cache", 400
    common = ["--data", data, "--base", base, "--feature-cache", cache, "--max-steps", str(steps), *DDP_FLAGS]
    ref = [sys.executable, "-m", "avsr_cli", "train", *common, "--grad-accum", "2", "-o", tmp_path / "ref"]
    p = subprocess.run(list(map(str, ref)), capture_output=True, text=True, timeout=600, env=_ddp_env())
    assert p.returncode == 0, p.stderr[-3000:]

    run = tmp_path / "run"
    cmd = list(map(str, [*TORCHRUN, "-m", "avsr_cli", "train", *common, "--save-every", "5", "-o", run]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ddp_env())
    log, killed_at = run / "train_log.jsonl", None
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        done = len(log.read_text().splitlines()) if log.exists() else 0
        victim = _rank_pid(proc.pid, 1)
        if done >= 12 and victim:
            os.kill(victim, signal.SIGKILL)
            killed_at = done
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    assert killed_at is not None and killed_at < steps, "the run ended before rank 1 could be killed"
    assert proc.returncode != 0
    assert 0 < _state(run)["step"] < steps

    single = [sys.executable, "-m", "avsr_cli", "train", *common, "--save-every", "5", "-o", run]
    p = subprocess.run(list(map(str, single)), capture_output=True, text=True, timeout=600, env=_ddp_env())
    assert p.returncode == 2 and "batches per step" in p.stderr and "Traceback" not in p.stderr, p.stderr

    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_ddp_env())
    assert p.returncode == 0, p.stderr[-3000:]
    assert _state(run)["step"] == steps
    _assert_same_adapter(tmp_path / "ref", run, tol=1e-4)


def _cli(*args):
    from typer.testing import CliRunner

    from avsr_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('max_steps = "two"', "max_steps = 'two': expected an integer >= 0"),
        ('lr = "fast"', "lr = 'fast': expected a number >= 0"),
        ("batch_seconds = [1, 2]", "batch_seconds = [1, 2]: expected a number > 0"),
        ("epochs = 1.5", "epochs = 1.5: expected an integer >= 1"),
        ("max_batch = 0", "max_batch = 0: expected an integer >= 1"),
        ("lr = -0.1", "lr = -0.1: expected a number >= 0"),
        ("compile = 1", "compile = 1: expected true or false"),
        ('audio_rates = [4, "x"]', "audio_rates = [4, 'x']: expected a list of integers >= 1"),
        ("mode = 3", "mode = 3: expected a string"),
        ("limit = 0", "limit = 0: expected an integer >= 1"),
        ("detect_every = 2.5", "detect_every = 2.5: expected an integer >= 1"),
        ("weight_decay = nan", "weight_decay = nan: expected a number >= 0"),
        ('device = "gpu9"', "device = 'gpu9': expected auto, cpu, cuda, cuda:N or another torch device"),
    ],
)
def test_train_config_values_are_checked_before_anything_loads(data, base, tmp_path, line, says):
    """A wrong type, a fraction where an integer goes, or a value out of range in the TOML: one line naming
    the file, the key and what it takes, exit 2, before any model loads or clip is encoded."""
    cfg = tmp_path / "train.toml"
    steps = "" if line.startswith("max_steps") else "max_steps = 1\n"  # should the value pass: a short run
    cfg.write_text(f'data = "{data}"\nbase = "{base}"\n{steps}{line}\n')
    out, cache = tmp_path / "ck", tmp_path / "cache"
    r = _cli("train", cfg, "-o", out, "--feature-cache", cache)
    assert r.exit_code == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {cfg}: {says}"]
    assert not out.exists() and not cache.exists()  # nothing loaded, nothing encoded


def test_an_unreadable_training_state_stops_the_resume_before_encoding(data, base, tmp_path):
    """A truncated train_state.pt (a full disk, a killed copy): one line that says so and names the ways out
    (--no-resume; the last epoch adapter as a checkpoint to fine-tune), exit 2, before any clip is encoded.
    Both ways out work."""
    import shutil

    out = tmp_path / "ck"
    common = ["--data", data, "--base", base, "--max-batch", "2", "--audio-rates", "4", "-q"]
    r = _cli("train", *common, "--max-steps", "2", "-o", out, "--feature-cache", tmp_path / "c1")
    assert r.exit_code == 0, r.stderr
    state = out / "train_state.pt"
    good = state.read_bytes()
    for broken in (good[: len(good) // 2], b"", b"not a zip archive at all"):
        state.write_bytes(broken)
        r = _cli("train", *common, "--max-steps", "4", "-o", out, "--feature-cache", tmp_path / "c2")
        assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
        (message,) = r.stderr.strip().splitlines()
        assert message.startswith(f"error: {state}: cannot resume: the training state is unreadable")
        assert "--no-resume" in message and str(out / "epochs" / "epoch000.safetensors") in message
        assert not (tmp_path / "c2").exists()  # stopped before encoding
    # the way out the message names: the epoch adapter with the run's config as a checkpoint
    kept = tmp_path / "kept"
    kept.mkdir()
    shutil.copy(out / "train_config.json", kept / "config.json")
    shutil.copy(out / "epochs" / "epoch000.safetensors", kept / "adapter.safetensors")
    fine_tune = [*common[:2], *common[4:], "-c", kept, "--feature-cache", tmp_path / "c1"]
    r = _cli("train", *fine_tune, "--max-steps", "1", "-o", tmp_path / "on")
    assert r.exit_code == 0, r.stderr
    again = ["--max-steps", "2", "-o", out, "--feature-cache", tmp_path / "c1", "--no-resume"]
    r = _cli("train", *common, *again)
    assert r.exit_code == 0, r.stderr
    assert _state(out)["step"] == 2


def test_a_save_that_fails_midway_keeps_the_previous_state(data, base, tmp_path):
    """A full disk during a save (here a file-size limit the state exceeds, EFBIG): the run fails, and the
    state saved before is still whole, so the same command resumes from it."""
    import os
    import resource
    import signal

    out, cache = tmp_path / "ck", tmp_path / "cache"
    cmd = [sys.executable, "-m", "avsr_cli", "train", "--data", data, "--base", base, "-o", out, "-q"]
    cmd += ["--feature-cache", cache, "--max-batch", "2", "--audio-rates", "4", "--save-every", "1"]
    p = subprocess.run([*map(str, cmd), "--max-steps", "2"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    before = (out / "train_state.pt").read_bytes()
    limit = len(before) - 1  # the adapter, log and feature files stay below it; the next state does not

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as disk full
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    resume = [*map(str, cmd), "--max-steps", "4"]
    p = subprocess.run(resume, capture_output=True, text=True, timeout=300, preexec_fn=small_disk)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    (message,) = p.stderr.strip().splitlines()
    assert message.startswith(f"error: {out / 'train_state.pt'}: cannot save the training state"), message
    assert (out / "train_state.pt").read_bytes() == before
    assert sorted(f.name for f in out.iterdir() if f.name.startswith(".")) == [], os.listdir(out)
    p = subprocess.run(resume, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert _state(out)["step"] == 4
