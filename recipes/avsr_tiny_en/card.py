"""The built-in model's card (models/avsr-tiny-en.toml) brought in line with a shipped adapter.

A shipped candidate may decode at another rate, beam count or token budget than the adapter it replaces
(the line stacks 2 frames, not 4), and its WER rows must be its own. `update_card` writes what a run
measured into the card's machine-read fields and keeps its comments and prose (tomlkit, not a rewrite):
[compression] and [decoding] from the candidate's config.json, each [[wer]] row that a set of the run's
evaluation measures; rows the run did not measure are dropped (numbers of the adapter it replaces). The
prose in `notes` describes the recipe; a new recipe still needs its words reviewed.
"""

from __future__ import annotations

import datetime
from pathlib import Path

# ship_eval.py's set names -> the card's [[wer]] dataset strings
CARD_ROWS = {
    "heldout-clean": (
        "held-out source (fortunes), held-out voices (hibari heart, festival slt), 100 clips, clean"
    ),
    "heldout-clean (hibari-heart)": "held-out source, held-out voice hibari heart, 50 clips, clean",
    "heldout-babble5": "held-out source, held-out voices, 100 clips, 5 dB held-out babble",
    "heldout-2sent": "held-out source, held-out voices, 60 clips of two sentences, clean",
    "audioeval-en": "pytest-audioeval English clips (3)",
    "lrs3": "an LRS3 test clip (Omni-AVSR's example video), against Whisper base's transcript",
}
DECODING_KEYS = ("num_beams", "max_new_tokens", "no_repeat_ngram_size")


def update_card(card: Path, config: dict, table: list[dict], command: str, date: str | None = None) -> None:
    """Rewrite `card`'s [compression], [decoding] and [[wer]] for the adapter `config` describes, measured
    by `command` with the results `table` (ship_eval.py's rows)."""
    import tomlkit  # the dev extra's, as the recipe's other tools (PIP_PACKAGES)

    doc = tomlkit.parse(card.read_text())
    rates = list(config["compression"]["audio_rates"])
    doc["compression"]["mode"] = config["compression"]["mode"]
    doc["compression"]["audio_rates"] = rates
    for key in DECODING_KEYS:
        if key in config["decoding"]:
            doc["decoding"][key] = config["decoding"][key]
        elif key in doc["decoding"]:
            del doc["decoding"][key]
    day = date or datetime.date.today().isoformat()
    measured = {CARD_ROWS[r["set"]]: r for r in table if r["set"] in CARD_ROWS}
    rows = tomlkit.aot()
    for row in doc.get("wer", []):
        result = measured.pop(row["dataset"], None)
        if result is None:
            continue  # a number of the adapter this one replaces
        row["value"] = result["avsr"]
        row["audio_rate"] = rates[0]
        row["source"] = _source(command, day, result)
        rows.append(row)
    for dataset, result in measured.items():
        rows.append(
            tomlkit.item(
                {
                    "dataset": dataset,
                    "mode": "asr",
                    "audio_rate": rates[0],
                    "value": result["avsr"],
                    "source": _source(command, day, result),
                }
            )
        )
    doc["wer"] = rows
    card.write_text(tomlkit.dumps(doc))


def _source(command: str, day: str, result: dict) -> str:
    whisper = "" if result["set"] == "lrs3" else f" (Whisper base {result['whisper']})"
    return f"measured with `{command}` on {day}{whisper}"
