"""Does `--initial-prompt` help the built-in model spell names? An A/B on sentences full of names.

    python -m recipes.avsr_tiny_en.names_ab [--out DIR] [--threads 1]

16 sentences naming people and places (written for this test, in no training source), spoken by the
held-out voices (voices.HELD_OUT that are installed), transcribed by the built-in model without a prompt
and with the glossary of every name in the set (the same list for every clip, as a user passes one), once
per placement of the prompt in the model's input (modeling/model.py CONTEXT_PLACEMENTS). Prints a markdown
table: names kept (a name counts when its words appear in the normalised hypothesis) and WER (LRS
normaliser). Clips are cached in DIR (default ~/.cache/avsr/names-ab).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch

from avsr_cli.modeling.model import CONTEXT_PLACEMENTS
from avsr_cli.tasks.scoring import get_normalizer, score
from avsr_cli.tasks.transcribe import Transcriber

from .voices import HELD_OUT, available, speak

# (sentence, the names in it)
SENTENCES = [
    ("Tell Maria the train to Glasgow leaves at nine.", ["Maria", "Glasgow"]),
    ("Oliver drove from Lisbon to Porto in one afternoon.", ["Oliver", "Lisbon", "Porto"]),
    ("Priya says the museum in Vienna opens late on Fridays.", ["Priya", "Vienna"]),
    ("We met Henrik at the harbour in Bergen last summer.", ["Henrik", "Bergen"]),
    ("Ask Fatima whether the flight to Nairobi was delayed.", ["Fatima", "Nairobi"]),
    ("The letter from Dublin was addressed to Siobhan.", ["Dublin", "Siobhan"]),
    ("Mateo has never seen snow in Santiago.", ["Mateo", "Santiago"]),
    ("Please send the report to Yuki before she leaves Osaka.", ["Yuki", "Osaka"]),
    ("Grandma Ingrid still lives in a small house near Uppsala.", ["Ingrid", "Uppsala"]),
    ("Kofi and Ama walked along the beach in Accra.", ["Kofi", "Ama", "Accra"]),
    ("The conference in Edinburgh was opened by Doctor Ramirez.", ["Edinburgh", "Ramirez"]),
    ("Nadia bought a painting at the market in Marrakesh.", ["Nadia", "Marrakesh"]),
    ("Our guide in Krakow was a student called Tomasz.", ["Krakow", "Tomasz"]),
    ("Leila booked a room by the river in Bordeaux.", ["Leila", "Bordeaux"]),
    ("The ferry from Helsinki to Tallinn takes two hours.", ["Helsinki", "Tallinn"]),
    ("Connor promised to call his sister in Melbourne.", ["Connor", "Melbourne"]),
]
GLOSSARY = ", ".join(dict.fromkeys(n for _, names in SENTENCES for n in names))


def clips(out: Path) -> list[Path]:
    """The sentences spoken by the installed held-out voices in turn (cached)."""
    voices = [v for v in HELD_OUT if available(v)]
    if not voices:
        raise SystemExit(f"no held-out voice installed ({', '.join(HELD_OUT)}): see voices.py")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (text, _) in enumerate(SENTENCES):
        voice = voices[i % len(voices)]
        path = out / f"{i:02d}-{voice.replace(':', '-')}.wav"
        if not path.exists():
            speak(text, voice, path)
        paths.append(path)
    return paths


def names_kept(hypotheses: list[str]) -> int:
    norm = get_normalizer("lrs")
    kept = 0
    for hyp, (_, names) in zip(hypotheses, SENTENCES, strict=True):
        words = f" {norm(hyp)} "
        kept += sum(re.search(rf" {re.escape(norm(n))} ", words) is not None for n in names)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/avsr/names-ab")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="a checkpoint (default: the built-in model)")
    parser.add_argument("--placements", default=",".join(CONTEXT_PLACEMENTS), help="prompt placements to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = clips(args.out)
    transcriber = Transcriber.from_checkpoint(args.checkpoint)
    refs = [text for text, _ in SENTENCES]
    total = sum(len(names) for _, names in SENTENCES)
    rows = [("no prompt", None, CONTEXT_PLACEMENTS[0])]
    rows += [(f"glossary, {p}", GLOSSARY, p) for p in CONTEXT_PLACEMENTS if p in args.placements.split(",")]
    print(f"prompt: {GLOSSARY!r}\n")
    print("| run | names kept | WER |\n| --- | ---: | ---: |")
    for label, prompt, placement in rows:
        transcriber.model.context_placement = placement
        options = replace(transcriber.options, initial_prompt=prompt)
        results = list(transcriber.transcribe_many(paths, options))
        hyps = [r.text if hasattr(r, "text") else "" for r in results]
        wer = score(list(zip(refs, hyps, strict=True))).wer
        print(f"| {label} | {names_kept(hyps)}/{total} | {100 * wer:.1f} % |", flush=True)
        for ref, hyp in zip(refs, hyps, strict=True):
            if ref != hyp:
                print(f"{label}: {ref} -> {hyp}", file=sys.stderr)


if __name__ == "__main__":
    main()
