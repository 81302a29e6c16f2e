"""The Typer options that several commands share, each defined once: its flags, help and checks.

A command names them as parameter types (`device: DeviceOpt = "auto"`); the defaults stay in the signatures,
since commands differ there (export-subtitles merges speech closer than transcribe does).
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..modeling.config import MAX_CONTEXT_TOKENS


class Mode(str, enum.Enum):
    asr = "asr"
    vsr = "vsr"
    avsr = "avsr"


class Segmentation(str, enum.Enum):
    auto = "auto"
    vad = "vad"
    off = "off"


class Decoding(str, enum.Enum):
    beam = "beam"
    reference = "reference"


# Options shared by the commands that run a model.
CHECKPOINT_FLAGS = ("--checkpoint", "--model", "-c")  # --model: the name openai-whisper users know
CheckpointOpt = Annotated[
    Optional[str],
    typer.Option(
        *CHECKPOINT_FLAGS,
        help="Checkpoint directory, model name or size (tiny = avsr-tiny-en); download-checkpoint --list.",
        envvar="AVSR_CHECKPOINT",
    ),
]
LanguageOpt = Annotated[
    Optional[str],
    typer.Option(
        metavar="LANG",
        help="Language of the speech, a code or a name (en, English); one the model does not transcribe is "
        "refused, naming those it does. Default: the model's.",
        show_default=False,
    ),
]
NumBeamsOpt = Annotated[Optional[int], typer.Option(min=1, help="Beams (default: the checkpoint's).")]
MaxNewTokensOpt = Annotated[
    Optional[int], typer.Option(min=1, help="Most tokens to generate (default: the checkpoint's).")
]
DecodingOpt = Annotated[
    Decoding,
    typer.Option(
        help="beam: deterministic beam search; reference: the reference's beam sampling "
        "(temperature 0.6, top-p 0.9), seeded."
    ),
]
LengthPenaltyOpt = Annotated[
    float, typer.Option(help="Beam search: exponent of the length normalisation (>1 favours longer text).")
]
NoRepeatNgramOpt = Annotated[
    Optional[int],
    typer.Option(
        min=0,
        help="Never repeat an n-gram of this many tokens (0: off; default: the checkpoint's), "
        "as faster-whisper's no_repeat_ngram_size.",
    ),
]
MergeGapOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="Speech regions closer than this (s) share a chunk; smaller: finer timing, less context.",
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed for --decoding reference (and noise in evaluate).")]
AudioRateOpt = Annotated[
    Optional[int], typer.Option(help="Audio compression rate (one the checkpoint was trained with).")
]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        help="Most clips (or chunks) decoded together (default: 16 decoder rows, clips x beams, 4 clips at "
        "least).",
        show_default=False,
    ),
]
BatchSecondsOpt = Annotated[
    float, typer.Option(min=0.1, help="Most seconds of media decoded together (memory grows with it).")
]
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _device(value: str) -> str:
    if not DEVICE_RE.match(value):
        raise typer.BadParameter(f"{value!r} is not one of auto, cpu, cuda, cuda:N (N: a GPU number).")
    return value


DeviceOpt = Annotated[
    str, typer.Option(metavar="<auto|cpu|cuda|cuda:N>", callback=_device, help="Where the model runs.")
]
DtypeOpt = Annotated[
    Literal["auto", "float32", "bfloat16", "float16"],
    typer.Option(
        help="Precision of weights and compute (auto: bfloat16 on a GPU that has it, else fp32; on a CPU "
        "with bfloat16 kernels, a model whose card allows it keeps its LLM's matrices in bfloat16)."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="More detail on stderr (per file or step).")
]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        envvar="AVSR_THREADS",
        help="CPU threads for torch and ffmpeg (default: the physical cores; the VAD always uses one).",
        show_default=False,
    ),
]
ModeOpt = Annotated[
    Optional[Mode],
    typer.Option(
        help="asr: audio; vsr: lips; avsr: both. Default: per file, the richest mode the checkpoint has "
        "and the file's streams allow (avsr, else asr, else vsr)."
    ),
]


def lips_only(text: str) -> str:
    """The help of an option used only when reading lips, on a command that may not read them."""
    return "vsr/avsr: " + text[0].lower() + text[1:]


FaceBackend = Literal["dlib", "face-alignment", "mediapipe"]  # frontends.face.BACKENDS
FACE_BACKEND_HELP = "Face landmarks by dlib (offline), face-alignment (FAN, needs its weights) or mediapipe."
FaceBackendOpt = Annotated[FaceBackend, typer.Option(help=lips_only(FACE_BACKEND_HELP))]
DETECT_EVERY_HELP = "Run the face detector every N frames, track the face in between (1: every frame)."
DetectEveryOpt = Annotated[int, typer.Option(min=1, help=lips_only(DETECT_EVERY_HELP))]


class OutputFormat(str, enum.Enum):
    txt = "txt"
    json = "json"
    srt = "srt"
    vtt = "vtt"
    tsv = "tsv"
    all = "all"


FORMAT_HELP = (
    "txt, json, srt, vtt, tsv, or all; repeat for several (they need --output-dir). json and tsv carry each "
    "segment's avg_logprob and low_confidence."
)
FormatsOpt = Annotated[list[OutputFormat], typer.Option("--output-format", "-f", help=FORMAT_HELP)]
OutputDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output-dir",
        "-o",
        metavar="DIR",
        help="Write DIR/<stem>.<ext> per format and list the files on stdout (default: print to stdout).",
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace output files that already exist.")]
SkipExistingOpt = Annotated[
    bool,
    typer.Option(
        "--skip-existing",
        help="Skip inputs whose output files all exist whole (re-run a batch): an empty output, or one that "
        "does not parse, is made again.",
    ),
]
# Silero VAD settings, named as faster-whisper's vad_parameters (seconds here, not milliseconds).
VadThresholdOpt = Annotated[
    float, typer.Option(min=0.01, max=0.99, help="VAD: speech probability that starts a speech region.")
]
VadMinSilenceOpt = Annotated[float, typer.Option(min=0.0, help="VAD: silence (s) that ends a speech region.")]
VadSpeechPadOpt = Annotated[
    float, typer.Option(min=0.0, help="VAD: padding (s) added to each side of speech.")
]
VadMinSpeechOpt = Annotated[float, typer.Option(min=0.0, help="VAD: shorter speech regions (s) are dropped.")]
LogprobThresholdOpt = Annotated[
    Optional[float],
    typer.Option(
        help="Segments whose mean token log-probability is below this are flagged low_confidence "
        "(faster-whisper's log_prob_threshold; default: the checkpoint's, else -1.0)."
    ),
]
InitialPromptOpt = Annotated[
    Optional[str],
    typer.Option(
        metavar="TEXT",
        help="Text given to the model with every chunk: names, jargon, spellings (whisper's initial prompt; "
        "an LLM decoder has no windows that carry earlier text, so every chunk gets the same prompt). "
        f"At most {MAX_CONTEXT_TOKENS} tokens.",
    ),
]
VideoRateOpt = Annotated[Optional[int], typer.Option(help="Video compression rate.")]
# Word timestamps and openai-whisper's word layout of subtitles (tasks/word_cues.py), named as whisper's.
WordTimestampsOpt = Annotated[
    bool,
    typer.Option(
        "--word-timestamps",
        help="Time every word (forced alignment): json lists each segment's words with start, end and "
        "probability; srt and vtt cues start and end with their words.",
    ),
]
AlignerOpt = Annotated[
    Optional[str],
    typer.Option(
        metavar="NAME_OR_DIR",
        help="What times the words (needs --word-timestamps): a zoo aligner (wav2vec2-base-960h: avsr "
        "download-checkpoint it first) or a wav2vec2 CTC model folder (safetensors). Default: the "
        "checkpoint's own aligner.",
        show_default=False,
    ),
]
WORD_LAYOUT = "srt/vtt in whisper's word layout; needs --word-timestamps"
HighlightWordsOpt = Annotated[
    bool,
    typer.Option(
        "--highlight-words",
        help=f"Underline each word as it is spoken (<u>word</u>, a cue per word): {WORD_LAYOUT}.",
    ),
]
MaxLineWidthOpt = Annotated[
    Optional[int],
    typer.Option(min=1, metavar="N", help=f"Characters per line, filled word by word: {WORD_LAYOUT}."),
]
MaxLineCountOpt = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        metavar="N",
        help=f"Lines per cue (with --max-line-width; segments then run on): {WORD_LAYOUT}.",
    ),
]
MaxWordsPerLineOpt = Annotated[
    Optional[int],
    typer.Option(min=1, metavar="N", help=f"Words per cue (without --max-line-width): {WORD_LAYOUT}."),
]


ReportJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print summary.json to stdout instead of the table.")
]
EmbedAudioOpt = Annotated[
    bool,
    typer.Option(
        "--report-embed-audio",
        help="In report.html, embed the first seconds of each worst clip's audio as the model heard it "
        "(noise mixed in), so the page plays them after being moved; default: link the media.",
    ),
]
MouthCacheOpt = Annotated[
    Optional[Path], typer.Option(help="Where mouth crops are cached (default: avsr cache/mouth).")
]
