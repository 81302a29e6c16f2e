"""Model core on tiny random Whisper + Llama: compression, sequence layout, masking, batching, decoding."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from avsr_cli.checkpoints.loading import build_model, load_checkpoint, save_checkpoint
from avsr_cli.errors import CheckpointError
from avsr_cli.frontends.features import encoder_frames, normalize_waveform
from avsr_cli.modeling.config import ADAPTER_FILE, CompressionConfig, LoraConfig, ModelConfig
from avsr_cli.modeling.decoding import DecodingOptions
from avsr_cli.modeling.encoders import read_tensor_unmapped
from avsr_cli.modeling.llm import load_llm
from avsr_cli.modeling.model import IGNORE_INDEX, ModalityInputs
from avsr_cli.modeling.projector import compress
from tests.support.paths import ROOT
from tests.support.tiny import make_llm, tiny_config


def waves(seconds=(1.0, 2.3, 0.6), seed=0):
    rng = np.random.RandomState(seed)
    return [(0.1 * rng.randn(int(s * 16000))).astype(np.float32) for s in seconds]


@pytest.fixture(scope="module")
def model(tiny_dirs):
    torch.manual_seed(1)
    m = build_model(tiny_config(*tiny_dirs))
    for p in m.projectors.parameters():  # non-trivial projector weights
        torch.nn.init.normal_(p, std=0.5)
    return m


def frames_of(model, audio):
    feats = model.audio_frontend(audio)
    return model.audio_encoder(feats.input_features, feats.n_frames)


def test_encoder_frames_formula_matches_reference():
    assert encoder_frames(16000) == 50
    assert encoder_frames(8000) == 25 and encoder_frames(100) == 25  # floor of 25 frames
    assert encoder_frames(int(16000 * 6.2)) == int(int(16000 * 6.2) / 16000 * 50)
    assert encoder_frames(16000 * 30) == 1500


def test_waveform_layer_norm():
    x = np.random.RandomState(0).randn(16000).astype(np.float32) * 3 + 1
    y = normalize_waveform(x)
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-3
    ref = (x - x.mean()) / np.sqrt(x.var() + 1e-8)
    np.testing.assert_allclose(y, ref, atol=1e-4)


def test_stack_and_avg_pool_compression():
    x = torch.arange(7 * 2, dtype=torch.float32).reshape(7, 2)
    s = compress(x, 3, "stack")
    assert s.shape == (2, 6)  # the partial last group is dropped
    assert s[1].tolist() == x[3:6].reshape(-1).tolist()  # frame 3 first, as the reference's view(B,1,-1)
    a = compress(x, 3, "avg-pooling")
    ref = torch.nn.AvgPool1d(3)(x.T.unsqueeze(0))[0].T
    assert torch.allclose(a, ref)
    with pytest.raises(ValueError):
        compress(x, 3, "concat")


def test_encoder_output_is_cut_to_speech_length(model):
    frames = frames_of(model, waves())
    assert [f.shape[0] for f in frames] == [50, 114, 30]  # int(2.3*16000)=36799 samples -> 114.99 -> 114
    assert all(f.shape[1] == 32 for f in frames)


def test_sequence_layout_and_labels(model):
    frames = frames_of(model, waves((1.0,)))
    target = model.target_ids("hello world")
    seqs, labels = model.sequences("asr", ModalityInputs(frames, 4), None, [target])
    emb = model.llm.get_input_embeddings().weight
    ids, prompt = model.ids, model.prompt_ids("asr")
    n_audio = 50 // 4
    expect_ids = [ids.bos, ids.audio_start] + [None] * n_audio + [ids.audio_end] + prompt + target
    assert seqs[0].shape[0] == len(expect_ids)
    for pos, tok in enumerate(expect_ids):
        if tok is not None:
            assert torch.equal(seqs[0][pos], emb[tok]), pos
    proj = model.projectors["audio"](frames, 4)[0]
    assert torch.equal(seqs[0][2 : 2 + n_audio], proj)
    n_ctx = len(expect_ids) - len(target)
    assert labels[0][:n_ctx].eq(IGNORE_INDEX).all() and labels[0][n_ctx:].tolist() == target
    assert target[-1] == ids.eos
    assert model.tokenizer.decode(prompt) == "Transcribe speech to text."


def test_initial_prompt_goes_after_bos_before_the_media_of_every_clip(model):
    frames = frames_of(model, waves((1.0, 0.6)))
    audio = ModalityInputs(frames, 4)
    plain, _ = model.sequences("asr", audio, None)
    glossary = "Maria, Glasgow"
    seqs, labels = model.sequences("asr", audio, None, context=glossary)
    emb = model.llm.get_input_embeddings().weight
    framed = model.tokenizer(f"Context: {glossary}\n", add_special_tokens=False).input_ids
    for before, after, label in zip(plain, seqs, labels, strict=True):
        assert after.shape[0] == before.shape[0] + len(framed)
        assert torch.equal(after[0], emb[model.ids.bos])
        assert torch.equal(after[1 : 1 + len(framed)], torch.stack([emb[t] for t in framed]))
        assert torch.equal(after[1 + len(framed) :], before[1:])  # <audio> A.. </audio> PROMPT: unchanged
        assert label.eq(IGNORE_INDEX).all()
    # no prompt, or a blank one, leaves every clip's input as the reference builds it
    for nothing in (None, "", "  \n"):
        same, _ = model.sequences("asr", audio, None, context=nothing)
        assert all(torch.equal(a, b) for a, b in zip(same, plain, strict=True))


def test_training_gives_each_clip_its_own_context(model):
    """A manifest's `context` per clip: each row carries its own prompt, laid out as `--initial-prompt` lays
    it out, and a batch's loss is the clips' losses alone (no prompt: the reference layout)."""
    frames = frames_of(model, waves((1.0, 0.6, 0.8)))
    contexts = ["Maria, Glasgow", None, "Tallinn"]
    targets = [model.target_ids(t) for t in ("maria went to glasgow", "hello there", "tallinn")]
    seqs, _ = model.sequences("asr", ModalityInputs(frames, 4), None, targets, contexts)
    for frame, context, target, row in zip(frames, contexts, targets, seqs, strict=True):
        alone, _ = model.sequences("asr", ModalityInputs([frame], 4), None, [target], context=context)
        assert torch.equal(alone[0], row)
    with torch.no_grad():
        together = model.loss("asr", ModalityInputs(frames, 4), None, targets, contexts)
        per_token = [
            model.loss("asr", ModalityInputs([f], 4), None, [t], [c]) * len(t)
            for f, t, c in zip(frames, targets, contexts, strict=True)
        ]
        plain = model.loss("asr", ModalityInputs(frames, 4), None, targets)
    assert torch.allclose(together, sum(per_token) / sum(len(t) for t in targets), atol=1e-5)
    assert not torch.allclose(together, plain)  # the prompts reach the loss
    with pytest.raises(ValueError, match="2 contexts for 3 clips"):
        model.sequences("asr", ModalityInputs(frames, 4), None, targets, contexts[:2])


def test_batch_equals_one_by_one(model):
    audio = waves()
    frames = frames_of(model, audio)
    for opts in (
        DecodingOptions(num_beams=1, max_new_tokens=6),
        DecodingOptions(num_beams=3, max_new_tokens=6),
    ):
        batched = model.generate("asr", ModalityInputs(frames, 4), None, opts)
        single = [
            model.generate("asr", ModalityInputs([f], 4), None, opts)[0] for f in frames_of(model, audio)
        ]
        assert batched == single
    # the loss too: a padded batch gives each clip the same loss as alone
    targets = [model.target_ids(t) for t in ("one two", "the quick brown fox", "hello")]
    with torch.no_grad():
        together = model.loss("asr", ModalityInputs(frames, 4), None, targets)
        per_token = [
            model.loss("asr", ModalityInputs([f], 4), None, [t]) * len(t)
            for f, t in zip(frames, targets, strict=True)
        ]
    assert torch.allclose(together, sum(per_token) / sum(len(t) for t in targets), atol=1e-5)


def test_loss_on_the_label_positions_equals_the_full_sequence_cross_entropy(model):
    """The loss computes logits only where a label is predicted; scored over every position's logits
    instead, the loss and the projector's gradients are the same."""
    frames = frames_of(model, waves())
    targets = [model.target_ids(t) for t in ("one two", "the quick brown fox jumps", "hi")]
    inputs = ModalityInputs(frames, 4)
    weight = model.projectors["audio"].parameters().__next__()

    def full_sequence_loss():
        seqs, labels = model.sequences("asr", inputs, None, targets)
        embeds, mask, lab = model._pad_left(seqs, labels)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        assert logits.shape[1] == lab.shape[1]  # every position's logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), lab[:, 1:].flatten(), ignore_index=IGNORE_INDEX
        )

    grads = []
    for compute in (lambda: model.loss("asr", inputs, None, targets), full_sequence_loss):
        weight.grad = None
        loss = compute()
        loss.backward()
        grads.append((loss.detach(), weight.grad.clone()))
    weight.grad = None
    (loss_kept, grad_kept), (loss_full, grad_full) = grads
    assert torch.allclose(loss_kept, loss_full, rtol=1e-6), (loss_kept, loss_full)
    assert torch.allclose(grad_kept, grad_full, rtol=1e-5, atol=1e-7)


def test_training_kernels_cast_the_frozen_weights_once_with_the_products_autocast_gives(model):
    from avsr_cli.modeling.llm import TrainingKernels

    frames = frames_of(model, waves())
    targets = [model.target_ids(t) for t in ("one two", "the quick brown fox", "hi")]
    inputs = ModalityInputs(frames, 4)
    o_proj = model.llm.get_base_model().model.layers[0].self_attn.o_proj.weight
    embedding = model.llm.get_input_embeddings().weight
    original = (o_proj.data_ptr(), o_proj.dtype)
    kernels = TrainingKernels(model.llm, torch.bfloat16)
    attention = model.llm.config._attn_implementation
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.llm.set_attn_implementation("eager")
        autocast_alone = model.loss("asr", inputs, None, targets)
        model.llm.set_attn_implementation(attention)
        with kernels.steps():
            assert model.llm.config._attn_implementation == "eager"
            assert o_proj.dtype == torch.bfloat16 and embedding.dtype == torch.float32
            # the adapter saves the output layer's added rows (untied here) and LoRA: left as they are
            assert model.llm.get_output_embeddings().weight.dtype == torch.float32
            assert all(p.dtype == torch.float32 for p in model.llm.parameters() if p.requires_grad)
            cast_once = model.loss("asr", inputs, None, targets)
            with kernels.decoding():  # validation inside a bf16 run decodes as `transcribe` does
                assert (o_proj.data_ptr(), o_proj.dtype) == original
                assert model.llm.config._attn_implementation == attention
            assert o_proj.dtype == torch.bfloat16
    assert (
        o_proj.data_ptr(),
        o_proj.dtype,
    ) == original and model.llm.config._attn_implementation == attention
    assert torch.equal(cast_once, autocast_alone)
    assert TrainingKernels(model.llm, None).weights == []  # float32 runs cast nothing


def test_training_kernels_compile_the_decoder_for_the_steps_only(model):
    from avsr_cli.modeling.llm import TrainingKernels

    decoder = model.llm.get_decoder()
    targets = [model.target_ids(t) for t in ("one two", "the quick brown fox", "hi")]
    kernels = TrainingKernels(model.llm, compile=True)
    losses = []
    for frames in (frames_of(model, waves()), frames_of(model, waves((1.7, 0.5)))):  # dynamic shapes
        inputs, batch_targets = ModalityInputs(frames, 4), targets[: len(frames)]
        with kernels.steps():
            assert decoder.forward is kernels.compiled
            compiled = model.loss("asr", inputs, None, batch_targets)
            with kernels.decoding():
                assert "forward" not in decoder.__dict__  # the class's own forward
        assert "forward" not in decoder.__dict__
        model.llm.set_attn_implementation("eager")  # as the steps attend, without compiling
        eager = model.loss("asr", inputs, None, batch_targets)
        model.llm.set_attn_implementation(kernels.attention)
        losses.append((compiled.item(), eager.item()))
    for compiled, eager in losses:
        assert compiled == pytest.approx(eager, rel=1e-5)


@pytest.mark.parametrize("seconds", [1.5, 0.7, 2.1])
def test_greedy_matches_a_manual_argmax_loop(model, seconds):
    frames = frames_of(model, waves((seconds,)))
    (got,) = model.decode(
        "asr", ModalityInputs(frames, 4), None, DecodingOptions(num_beams=1, max_new_tokens=5)
    )
    seqs, _ = model.sequences("asr", ModalityInputs(frames, 4), None)
    x, out, logprobs = seqs[0][None], [], []
    with torch.no_grad():
        for _ in range(5):
            step = model.llm(inputs_embeds=x).logits[0, -1].log_softmax(-1)
            nxt = int(step.argmax())
            logprobs.append(float(step[nxt]))
            if nxt == model.ids.eos:
                break
            out.append(nxt)
            x = torch.cat([x, model.llm.get_input_embeddings().weight[nxt][None, None]], dim=1)
    assert got.text == model.tokenizer.decode(out, skip_special_tokens=True).strip()
    # avg_logprob: the chosen tokens' log-probabilities, EOS included, recorded without keeping the scores
    assert got.avg_logprob == pytest.approx(sum(logprobs) / len(logprobs), abs=1e-4)


def test_beam_search_is_deterministic_and_reference_sampling_is_seeded(model):
    frames = frames_of(model, waves((1.2,)))
    beam = DecodingOptions(num_beams=4, max_new_tokens=6)
    assert model.generate("asr", ModalityInputs(frames, 4), None, beam) == model.generate(
        "asr", ModalityInputs(frames, 4), None, beam
    )
    ref = DecodingOptions(strategy="reference", num_beams=4, max_new_tokens=6, seed=7)
    a = model.generate("asr", ModalityInputs(frames, 4), None, ref)
    torch.manual_seed(123)  # the global RNG must not matter, and must be restored
    state = torch.random.get_rng_state()
    b = model.generate("asr", ModalityInputs(frames, 4), None, ref)
    assert a == b and torch.equal(state, torch.random.get_rng_state())


def test_checkpoint_round_trip(model, tmp_path):
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["adapter.safetensors", "config.json"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / ADAPTER_FILE), "pt") as f:
        keys = set(f.keys())
    assert "projectors.audio.4.0.weight" in keys and "llm.added_embed_rows" in keys
    assert "llm.lora.shared.layers.0.self_attn.q_proj.lora_A" in keys
    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu", dtype="float32")
    frames = frames_of(model, waves())
    opts = DecodingOptions(num_beams=2, max_new_tokens=6)
    assert loaded.generate("asr", ModalityInputs(frames, 4), None, opts) == model.generate(
        "asr", ModalityInputs(frames, 4), None, opts
    )


def test_broken_checkpoints_are_clear_errors(model, tmp_path):
    save_checkpoint(model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / ADAPTER_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "ckpt", device="cpu")
    with pytest.raises(CheckpointError, match="unknown checkpoint 'nope'"):
        load_checkpoint("nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="cannot read checkpoint config"):
        load_checkpoint(tmp_path / "bad")


def test_task_specific_lora_selects_the_mode_adapter(tiny_dirs):
    cfg = tiny_config(
        *tiny_dirs,
        lora=LoraConfig(r=4, alpha=8.0, variant="shared+task"),
        compression=CompressionConfig(mode="avg-pooling", audio_rates=[4, 16]),
    )
    m = build_model(cfg)
    assert set(m.llm.peft_config) == {"shared", "audio", "video", "audiovisual"}
    m._activate("asr")
    assert sorted(m.llm.base_model.active_adapters) == ["audio", "shared"]
    m._activate("avsr")
    assert sorted(m.llm.base_model.active_adapters) == ["audiovisual", "shared"]
    assert cfg.pick_rate("audio", None) == 4 and cfg.pick_rate("audio", 16) == 16
    with pytest.raises(CheckpointError, match="rates"):
        cfg.pick_rate("audio", 8)


def test_config_json_round_trip(tiny_dirs, tmp_path):
    cfg = tiny_config(*tiny_dirs)
    cfg.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == cfg
    (tmp_path / "u.json").write_text('{"format": "avsr-checkpoint", "bogus": 1}')
    with pytest.raises(CheckpointError, match="unknown keys: bogus"):
        ModelConfig.load(tmp_path / "u.json")


# --- half precision as the reference ran it (Lightning precision="bf16-true") ---


def _rotary(model):
    return [m for m in model.llm.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]


def test_bf16_rounds_rotary_frequencies_and_fp32_stays_exact(tiny_dirs):
    from avsr_cli.checkpoints.loading import build_model
    from tests.support.tiny import tiny_config

    exact = [m.inv_freq.clone() for m in _rotary(build_model(tiny_config(*tiny_dirs)))]
    assert exact and all(f.dtype == torch.float32 for f in exact)
    dim = 64 // 4  # the tiny Llama's head dim (hidden 64, 4 heads): RoPE's own formula, independently
    assert torch.equal(exact[0], 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)))
    half = _rotary(build_model(tiny_config(*tiny_dirs), dtype=torch.bfloat16))
    for module, fp32 in zip(half, exact, strict=True):
        assert module.inv_freq.dtype == torch.bfloat16
        assert torch.equal(module.inv_freq.float(), fp32.to(torch.bfloat16).float())
    assert not torch.equal(half[0].inv_freq.float(), exact[0])  # the rounding is real, not a no-op


def test_bf16_front_end_rounds_the_waveform_as_lightning_does(tiny_dirs):
    import numpy as np
    from transformers import WhisperFeatureExtractor

    from avsr_cli.frontends.features import LogMel, WhisperFrontEnd, normalize_waveform

    extractor, log_mel = WhisperFeatureExtractor.from_pretrained(tiny_dirs[0]), LogMel.from_dir(tiny_dirs[0])
    wave = (0.2 * np.random.default_rng(3).standard_normal(24000)).astype(np.float32)
    fp32 = WhisperFrontEnd(log_mel)([wave]).input_features
    bf16 = WhisperFrontEnd(log_mel, input_dtype=torch.bfloat16)([wave]).input_features
    rounded = torch.from_numpy(normalize_waveform(wave)).to(torch.bfloat16).float().numpy()
    expected = extractor([rounded], sampling_rate=16000, return_tensors="pt").input_features
    assert torch.equal(bf16, expected) and not torch.equal(bf16, fp32)
    assert torch.equal(
        fp32, extractor([normalize_waveform(wave)], sampling_rate=16000, return_tensors="pt").input_features
    )


def test_merge_lora_keeps_the_outputs(tiny_dirs, tmp_path):
    """The LoRA folded into the weights gives the unmerged model's loss, to float error."""
    torch.manual_seed(3)
    m = build_model(tiny_config(*tiny_dirs))
    for name, p in m.llm.named_parameters():
        if "lora_" in name:  # LoRA B starts at zero: make the adapter matter
            torch.nn.init.normal_(p, std=0.2)
    for p in m.projectors.parameters():
        torch.nn.init.normal_(p, std=0.5)
    frames = frames_of(m, waves())
    targets = [m.target_ids(t) for t in ("the quick brown fox", "hello world", "one two three")]

    def loss(model):
        with torch.no_grad():
            return float(model.loss("asr", ModalityInputs(frames, 4), None, targets))

    unmerged = loss(m)
    m.merge_lora()
    assert not any("lora_" in n for n, _ in m.llm.named_parameters())
    assert loss(m) == pytest.approx(unmerged, rel=1e-5)


def test_merge_lora_refuses_task_specific_adapters(tiny_dirs):
    m = build_model(tiny_config(*tiny_dirs, lora=LoraConfig(r=4, alpha=8.0, variant="shared+task")))
    with pytest.raises(ValueError, match="cannot be merged"):
        m.merge_lora()


def test_int8_is_refused_in_one_line_before_loading(tiny_ckpt):
    """int8 made text depend on the batch and cost WER: asked for, it is refused before anything loads."""
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tiny_ckpt, device="cpu", dtype="int8")
    assert "--dtype int8 is not offered" in str(error.value) and "\n" not in str(error.value)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "avsr_cli",
            "transcribe",
            str(ROOT / "examples" / "heldout.wav"),
            "--dtype",
            "int8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert "int8" in r.stderr and "float32" in r.stderr  # the command line lists the precisions there are


def resident_bytes_of(path) -> int:
    """Resident bytes of this process's memory maps of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


@pytest.mark.parametrize("tied", [False, True])
def test_resize_reads_the_embeddings_without_touching_their_memory_map(tmp_path, tied):
    from safetensors.torch import load_file

    llm_dir = make_llm(tmp_path / "llm", hidden=1024, layers=1, tied=tied)
    weights = llm_dir / "model.safetensors"
    vocab = json.loads((llm_dir / "config.json").read_text())["vocab_size"]
    model = load_llm(llm_dir, None, torch.float32, n_tokens=vocab + 5)
    # the other weights stay memory-mapped, untouched so far; the old embedding was not read through the map
    assert resident_bytes_of(weights) < vocab * 1024 * 4
    assert float(model.model.layers[0].mlp.up_proj.weight.sum()) != 0
    assert resident_bytes_of(weights) >= 2 * 1024 * 1024 * 4  # the check sees pages read through the map
    saved = load_file(weights)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == vocab + 5
    assert torch.equal(emb[:vocab], saved["model.embed_tokens.weight"])
    assert (emb.data_ptr() == head.data_ptr()) == tied
    if not tied:
        assert torch.equal(head[:vocab], saved["lm_head.weight"])
    for added in (emb[vocab:], head[vocab:]):  # N(0, initializer_range), as transformers' resize draws them
        assert abs(float(added.mean())) < 0.003 and 0.018 < float(added.std()) < 0.022
    assert model.config.vocab_size == vocab + 5
    assert model(torch.tensor([[vocab + 4]])).logits.shape[-1] == vocab + 5


def test_read_tensor_unmapped_reads_what_safetensors_reads(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.randn(2, 2).half()}
    save_file(tensors, tmp_path / "w.safetensors")
    for name, value in load_file(tmp_path / "w.safetensors").items():
        got = read_tensor_unmapped([tmp_path / "w.safetensors"], name)
        assert got.dtype == value.dtype and torch.equal(got, value)
    assert read_tensor_unmapped([tmp_path / "w.safetensors"], "missing") is None
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="truncated"):
        read_tensor_unmapped([tmp_path / "cut.safetensors"], "c")


PEAK_DURING_LOAD = """
import sys
from pathlib import Path

import torch
import transformers.models.llama.modeling_llama  # imported before the measure: it is not the loading
from transformers import AutoModelForCausalLM

from avsr_cli.modeling.llm import load_llm

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key + ":")).split()[1]) * 1024

before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident size restarts from the current one
model = load_llm(Path(sys.argv[1]), None, torch.float32, n_tokens=int(sys.argv[2]))
print(status("VmHWM") - before)
"""


@pytest.mark.parametrize("tied", [True, False])
def test_resizing_the_embeddings_allocates_each_matrix_once(tmp_path, tied):
    """Loading an LLM and growing its vocabulary holds, at its peak, about the new embedding matrices (one if
    tied, two if not): no copy of the old ones, no throw-away random matrix beside them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, hidden = 64000, 256
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    matrix = (vocab + 5) * hidden * 4
    r = subprocess.run(
        [sys.executable, "-c", PEAK_DURING_LOAD, str(tmp_path), str(vocab + 5)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    growth = int(r.stdout.split()[-1])
    matrices = 1 if tied else 2
    assert growth < (matrices + 0.5) * matrix, f"peak grew {growth / matrix:.2f} embedding matrices"
