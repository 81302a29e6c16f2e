"""What users of openai-whisper and faster-whisper try first: --model with a size, --language, a progress bar
that moves and transcripts a terminal shows whole, choices listed in --help, a zoo listing that fits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from avsr_cli.checkpoints.locate import find_checkpoint
from avsr_cli.checkpoints.zoo import load_zoo
from avsr_cli.cli import app
from avsr_cli.tasks.scoring import score
from tests.support.terminal import ANSI, run_in_pty, visible_lines
from tests.support.tiny import ffmpeg

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "heldout.wav"  # a sentence of 76 characters, 5 s, for the built-in model
runner = CliRunner()


def run(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avsr_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "AVSR_CHECKPOINT": "", **(env or {})},
    )


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("habits") / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", str(path))
    return path


@pytest.fixture(autouse=True)
def no_checkpoint_from_the_environment(monkeypatch):
    monkeypatch.delenv("AVSR_CHECKPOINT", raising=False)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty $AVSR_HOME for user cards, also seen by subprocesses."""
    monkeypatch.setenv("AVSR_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models").mkdir(parents=True)
    return tmp_path / "home" / "models"


# --- --model and sizes ---


@pytest.mark.parametrize("command", ["transcribe", "export-subtitles", "evaluate", "train"])
def test_every_command_with_a_checkpoint_takes_model(command):
    text = run(command, "--help", env={"COLUMNS": "200"}).stdout
    assert re.search(r"--checkpoint,\s*--model\s+-c", text), text


def test_model_tiny_is_the_tiny_checkpoint(wav, home, tiny_ckpt):
    assert find_checkpoint("tiny") == find_checkpoint("avsr-tiny-en") == find_checkpoint("tiny.en")
    # the same model chosen, and told apart before any weights load: it reads audio only
    by_size = cli("transcribe", wav, "--model", "tiny", "--mode", "vsr")
    by_name = cli("transcribe", wav, "--checkpoint", "avsr-tiny-en", "--mode", "vsr")
    assert by_size.returncode == by_name.returncode == 2
    assert by_size.stderr == by_name.stderr and "checkpoint 'avsr-tiny-en' reads only asr" in by_size.stderr
    r = cli("transcribe", CLIP, "--model", "tiny", "-f", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["model"] == "avsr-tiny-en"
    assert score([((ROOT / "examples" / "heldout.txt").read_text(), result["text"])]).wer <= 0.2
    # a card of that name comes first
    (home / "tiny.toml").write_text(f'name = "tiny"\ncheckpoint = "c"\n[parts.c]\npath = "{tiny_ckpt}"\n')
    assert load_zoo().get("tiny").name == "tiny" and find_checkpoint("tiny") == tiny_ckpt


def test_unknown_model_suggests_sizes_and_model_names(wav):
    r = cli("transcribe", wav, "--model", "bse")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'base'" in r.stderr and "tiny = avsr-tiny-en" in r.stderr, r.stderr
    r = run("transcribe", wav, "--model", "base.en")  # a size with no model yet: the sizes there are
    assert r.exit_code == 2 and "Whisper's 'base' size" in r.stderr and "tiny = avsr-tiny-en" in r.stderr
    r = run("evaluate", wav.parent, "--model", "tny")
    assert r.exit_code == 2 and "did you mean: tiny (= avsr-tiny-en)?" in r.stderr, r.stderr
    r = run("transcribe", wav, "--model", "omni-avsr-ts")
    assert r.exit_code == 2 and "did you mean: omni-avsr-t" in r.stderr


# --- --language ---


def test_language_outside_the_models_card_is_refused_naming_its_languages(wav):
    r = cli("transcribe", wav, "--language", "de")  # the built-in model, before it loads
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "avsr-tiny-en transcribes en (English) only" in r.stderr, r.stderr
    r = run("export-subtitles", wav, "--model", "tiny", "--language", "German")
    assert r.exit_code == 2 and "en (English)" in r.stderr
    r = run("transcribe", wav, "--language", "klingon")
    assert r.exit_code == 2 and "not a language" in r.stderr


def test_english_by_code_or_name_in_any_case(wav, tiny_ckpt):
    for language in ("en", "English", "ENGLISH"):
        r = run("transcribe", wav, "-c", tiny_ckpt, "--language", language, "--max-new-tokens", "2", "-q")
        assert r.exit_code == 0 and r.stdout, (language, r.stderr)


def test_a_checkpoint_without_a_card_is_taken_as_english_and_says_so(wav, tiny_ckpt, home):
    r = run("transcribe", wav, "-c", tiny_ckpt, "--language", "fr")
    assert r.exit_code == 2 and "has no model card" in r.stderr and "en (English)" in r.stderr, r.stderr
    # a card declares more: found by its name, and by its folder
    (home / "my-bilingual.toml").write_text(
        'name = "my-bilingual"\ncheckpoint = "c"\nlanguages = ["en", "fr"]\n'
        f'[parts.c]\npath = "{tiny_ckpt}"\n'
    )
    for checkpoint in ("my-bilingual", tiny_ckpt):
        r = run("transcribe", wav, "-c", checkpoint, "--language", "French", "--max-new-tokens", "2", "-q")
        assert r.exit_code == 0, (checkpoint, r.stderr)
    r = run("transcribe", wav, "-c", "my-bilingual", "--language", "de")
    assert r.exit_code == 2 and "en (English), fr (French)" in r.stderr


# --- --initial-prompt ---


def test_initial_prompt_reaches_the_model_and_a_long_one_is_refused(wav, tiny_ckpt):
    def transcribe(*extra):
        r = run("transcribe", wav, "-c", tiny_ckpt, "-f", "json", "--max-new-tokens", "4", "-q", *extra)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)

    plain, blank = transcribe(), transcribe("--initial-prompt", " ")
    prompted = transcribe("--initial-prompt", "hello world, Glasgow")
    assert prompted["options"]["initial_prompt"] == "hello world, Glasgow"
    # the random model's scores change with what precedes the instruction; a blank prompt changes nothing
    assert prompted["avg_logprob"] != plain["avg_logprob"]
    assert (blank["text"], blank["avg_logprob"]) == (plain["text"], plain["avg_logprob"])
    glossary = "the quick brown fox jumps over a lazy dog " * 40  # 360 words: over 224 tokens in any BPE
    for command in ("transcribe", "export-subtitles"):
        r = cli(command, wav, "-c", tiny_ckpt, "-q", "--initial-prompt", glossary)
        assert r.returncode == 2 and r.stdout == "", (command, r.stdout)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "initial prompt is" in lines[0] and "224" in lines[0], r.stderr


def test_openai_whispers_spellings_of_options_work(wav, tiny_ckpt, tmp_path):
    """`--output_dir`, `--output_format`, `--logprob_threshold`, `--beam_size=N` as whisper spells them: the
    same files as avsr's own spellings give; a misspelt one is still refused with the close names."""
    common = ["transcribe", wav, "-c", tiny_ckpt, "-q"]
    ours = run(
        *common, "--output-dir", tmp_path / "ours", "--output-format", "json", "--max-new-tokens", "4",
        "--logprob-threshold", "-0.5", "--num-beams", "2",
    )  # fmt: skip
    whisper = run(
        *common, "--output_dir", tmp_path / "whisper", "--output_format", "json", "--max_new_tokens", "4",
        "--logprob_threshold=-0.5", "--beam_size=2",
    )  # fmt: skip
    assert ours.exit_code == whisper.exit_code == 0, (ours.stderr, whisper.stderr)
    theirs = json.loads((tmp_path / "whisper" / "tone.json").read_text())
    mine = json.loads((tmp_path / "ours" / "tone.json").read_text())
    assert theirs["options"]["decoding"]["num_beams"] == 2 and theirs["options"]["logprob_threshold"] == -0.5
    for key in ("text", "segments", "options", "avg_logprob"):
        assert theirs[key] == mine[key], key
    wrong = run(*common, "--beam_sise", "2")
    assert wrong.exit_code == 2 and "--num-beams" in wrong.stderr
    assert "--output_dir" in run("--help", env={"COLUMNS": "200"}).stdout  # said where users look


@pytest.mark.parametrize("command", ["transcribe", "export-subtitles"])
def test_initial_prompt_shows_in_help(command):
    text = run(command, "--help", env={"COLUMNS": "200"}).stdout
    assert re.search(r"--initial-prompt\s+TEXT\s+Text given to the model with every chunk", text), text


# --- progress and what a terminal shows ---


def test_terminal_shows_steps_as_they_run_and_the_transcript_unwrapped():
    columns = 40
    status, screen = run_in_pty(["transcribe", CLIP], columns, env={"AVSR_CHECKPOINT": ""})
    assert status == 0, screen
    text = ANSI.sub("", screen)
    # one file, one chunk: the run's 0/5 s moves only at its end, so the steps show how far it is
    assert "heldout.wav: encoding" in text and "heldout.wav: decoding" in text, text
    reference = (ROOT / "examples" / "heldout.txt").read_text().strip()
    lines = visible_lines(screen)
    transcript = max(lines, key=lambda line: len(set(line.split()) & set(reference.split())))
    assert len(transcript) > columns, lines  # long enough that a wrap would show
    assert transcript == transcript.strip() and score([(reference, transcript)]).wer <= 0.2, lines


def test_stdout_redirected_from_a_terminal_gets_the_transcript(wav, tiny_ckpt, tmp_path):
    plain = cli("transcribe", wav, "-c", tiny_ckpt, "--max-new-tokens", "4")
    assert plain.returncode == 0 and plain.stdout.strip()
    with open(tmp_path / "out.txt", "wb") as out:  # `avsr transcribe x.wav > out.txt` typed at a terminal
        status, screen = run_in_pty(
            ["transcribe", wav, "-c", tiny_ckpt, "--max-new-tokens", "4"], 80, stdout=out
        )
    assert status == 0, screen
    assert (tmp_path / "out.txt").read_text() == plain.stdout
    assert "transcribing" in ANSI.sub("", screen)  # the progress was on the terminal


# --- --help ---


def command_params():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            yield name, param


@pytest.mark.parametrize("command", ["transcribe", "export-subtitles", "evaluate", "train", "crop-mouth"])
def test_choices_show_in_help(command):
    text = ANSI.sub("", run(command, "--help", env={"COLUMNS": "250"}).stdout)
    choices = {
        param.name: [str(getattr(c, "value", c)) for c in param.type_descriptor.choices]
        for name, param in command_params()
        if name == command and getattr(param, "type_descriptor", None) and param.type_descriptor.choices
    }
    for option, values in choices.items():
        assert "|".join(values) in text, (command, option, values)
    assert "dlib|face-alignment|mediapipe" in text
    if command != "crop-mouth":
        assert "auto|cpu|cuda|cuda:N" in text
    if command in ("transcribe", "export-subtitles", "evaluate"):
        assert "auto|float32|bfloat16|float16" in text and "int8" not in text


def test_choice_lists_are_the_librarys():
    from avsr_cli.checkpoints.loading import DTYPES
    from avsr_cli.frontends.face_backends import BACKENDS
    from avsr_cli.modeling.config import ENCODER_WINDOWS
    from avsr_cli.tasks.scoring import NORMALIZER_NAMES
    from avsr_cli.tasks.training.options import PRECISIONS

    params = {(name, p.name): p for name, p in command_params()}

    def choices(command: str, option: str) -> tuple:
        annotation = params[command, option].type_descriptor.annotation
        return typing.get_args(annotation)

    for command in ("transcribe", "export-subtitles", "evaluate", "train", "crop-mouth"):
        assert choices(command, "face_backend") == BACKENDS
    assert set(choices("transcribe", "dtype")) == {"auto", *DTYPES}
    assert choices("evaluate", "normalizer") == NORMALIZER_NAMES
    assert choices("train", "precision") == PRECISIONS
    assert choices("train", "encoder_window") == ENCODER_WINDOWS


def test_device_is_checked_and_its_forms_listed(wav):
    r = run("transcribe", wav, "--device", "gpu", env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "auto, cpu, cuda, cuda:N" in r.stderr


def test_file_arguments_have_word_placeholders():
    for name, param in command_params():
        if isinstance(param, typer.core.TyperArgument):
            usage = run(name, "--help", env={"COLUMNS": "200"}).stdout.splitlines()
            assert not any("TEXT" in line for line in usage if "Usage:" in line), (name, usage)


def test_crop_mouth_help_is_about_crop_mouth():
    text = ANSI.sub("", run("crop-mouth", "--help", env={"COLUMNS": "200"}).stdout)
    assert "VIDEO..." in text and "TEXT" not in text
    for other in ("vsr/avsr", "VAD", "torch"):
        assert other not in text, other


# --- the zoo listing ---


def test_zoo_listing_fits_80_columns_and_says_where_each_wer_comes_from():
    status, screen = run_in_pty(["download-checkpoint", "--list"], 80)
    assert status == 0, screen
    lines = visible_lines(screen)
    assert max(len(line) for line in lines) <= 80
    starts = {line.split()[0] for line in lines if line[:1].strip()}
    zoo = load_zoo()
    assert set(zoo.cards) <= starts, starts  # every name whole at the start of its line
    text = "\n".join(lines)
    assert "(measured)" in text and "(Llama-AVSR README)" in text and "(Omni-AVSR paper)" in text
    r = run("download-checkpoint", "--list")  # not a terminal: tab-separated, the source in its own column
    header, *rows = (line.split("\t") for line in r.stdout.splitlines())
    by_name = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert by_name["avsr-tiny-en"]["WER source"] == "measured"
    assert by_name["omni-avsr-s"]["WER source"] == "Omni-AVSR paper"
    assert by_name["llama-avsr-asr"]["languages"] == "en"
