"""The merged decoder a card's `llm.cpu_matrices` keeps in the cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from avsr_cli.checkpoints import loading, merged_llm
from avsr_cli.checkpoints.loading import load_checkpoint
from avsr_cli.errors import CheckpointError
from avsr_cli.modeling.decoding import DecodingOptions
from avsr_cli.modeling.llama_config import SafetensorsReader
from avsr_cli.modeling.model import ModalityInputs


def map_safetensors(path):
    """(every tensor of `path` as a view of its private memory map, the file's metadata)."""
    reader = SafetensorsReader([path])
    return {n: reader.mapped(n) for n in reader.names()}, reader.metadata


def _card(trained_ckpt, tmp_path):
    """`trained_ckpt` with a card that allows bfloat16 matrices."""
    ckpt = tmp_path / "card"
    shutil.copytree(trained_ckpt, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(
        json.dumps({**config, "llm": {**config["llm"], "cpu_matrices": "bfloat16"}})
    )
    return ckpt


@pytest.fixture
def bf16_cpu(monkeypatch):
    """The card's bf16 matrices are honoured on CPUs with bf16 kernels (elsewhere bf16 is emulated)."""
    monkeypatch.setattr(loading, "cpu_computes_bf16", lambda: True)


def _texts(model, frames, beams):
    options = DecodingOptions(num_beams=beams, max_new_tokens=12)
    hyps = model.decode("asr", ModalityInputs(frames, 4), None, options)
    return [h.text for h in hyps], [h.avg_logprob for h in hyps]


def test_the_merged_decoder_is_kept_and_mapped_by_the_next_load(
    trained_ckpt, tmp_path, bf16_cpu, merged_llm_dir, monkeypatch
):
    """The first load builds and merges the decoder and writes it to the cache; the next maps it
    from there, reading no LLM weights, and decodes exactly the same, greedy and beams; a new adapter
    replaces the kept file."""
    ckpt = _card(trained_ckpt, tmp_path)
    first = load_checkpoint(ckpt, device="cpu", merge_lora=True)
    entry = merged_llm.merged_llm_entry(first.config, ckpt, _llm_dir(first), "bfloat16")
    assert entry.path.is_file()
    with monkeypatch.context() as patch:
        patch.setattr(loading, "load_llm", lambda *a, **k: pytest.fail("the LLM was loaded again"))
        second = load_checkpoint(ckpt, device="cpu", merge_lora=True)
    embed = second.llm.get_input_embeddings().weight
    assert torch.equal(embed, map_safetensors(entry.path)[0]["model.embed_tokens.weight"])
    assert embed.dtype == torch.bfloat16
    assert first.llm.steps_before_packing == second.llm.steps_before_packing == loading.PACK_AFTER_STEPS
    assert first.llm.layers_packed and second.llm.layers_packed and second.llm.head is None
    rng = np.random.RandomState(3)
    audio = [(0.1 * rng.randn(int(s * 16000))).astype(np.float32) for s in (1.0, 2.3)]
    feats = first.audio_frontend(audio)
    frames = first.audio_encoder(feats.input_features, feats.n_frames)
    for beams in (1, 3):
        assert _texts(first, frames, beams) == _texts(second, frames, beams)
    adapter = ckpt / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes())  # a new adapter file (new modification time)
    load_checkpoint(ckpt, device="cpu", merge_lora=True)
    folder = entry.path.name.split("-", 1)[0]
    again = list(merged_llm_dir.glob(f"{folder}-*.safetensors"))
    assert len(again) == 1 and again[0] != entry.path


def _qkv(model) -> torch.Tensor:
    return model.llm.model.layers[1].self_attn.weight()


def _llm_dir(model):
    from avsr_cli.checkpoints.sources import resolve_source

    return resolve_source(model.config.llm.source)


def test_a_damaged_or_unwritable_cache_costs_only_time(trained_ckpt, tmp_path, bf16_cpu):
    ckpt = _card(trained_ckpt, tmp_path)
    want = load_checkpoint(ckpt, device="cpu", merge_lora=True)
    path = merged_llm.merged_llm_entry(want.config, ckpt, _llm_dir(want), "bfloat16").path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    got = load_checkpoint(ckpt, device="cpu", merge_lora=True)
    assert torch.equal(_qkv(got), _qkv(want))
    assert map_safetensors(path)[1]["key"]  # written again, whole
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.MonkeyPatch.context() as patch:  # a cache folder that cannot be made
        patch.setattr(merged_llm, "merged_llm_dir", lambda: blocked / "merged-llm")
        got = load_checkpoint(ckpt, device="cpu", merge_lora=True)
    assert torch.equal(_qkv(got), _qkv(want))


def test_mapped_files_are_checked(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(4, 4), "b": torch.ones(3, dtype=torch.bfloat16)}, str(path))
    tensors, _ = map_safetensors(path)
    assert tensors["a"].shape == (4, 4) and tensors["b"].dtype == torch.bfloat16
    tensors["a"][0, 0] = 5  # a private map: the file keeps its bytes
    assert map_safetensors(path)[0]["a"][0, 0] == 1
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="w.safetensors"):
        map_safetensors(path)
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="unreadable"):
        map_safetensors(path)


def test_the_cache_keeps_the_most_recently_used_decoders(
    trained_ckpt, tmp_path, bf16_cpu, merged_llm_dir, monkeypatch
):
    """Decoders of other checkpoint folders (other clones) are kept up to merged_llm.KEEP, the least
    recently used going first: a load from the cache counts as a use."""
    monkeypatch.setattr(merged_llm, "KEEP", 2)
    for old in merged_llm_dir.glob("*"):
        old.unlink()
    paths = {}
    for name in ("a", "b", "a", "c"):
        ckpt = tmp_path / name
        if not ckpt.exists():
            ckpt = _card(trained_ckpt, tmp_path / f"{name}-parent").rename(ckpt)
        model = load_checkpoint(ckpt, device="cpu", merge_lora=True)
        paths[name] = merged_llm.merged_llm_entry(model.config, ckpt, _llm_dir(model), "bfloat16").path
    assert paths["a"].exists() and not paths["b"].exists() and paths["c"].exists()
