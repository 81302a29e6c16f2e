"""A fresh training slice for one avsr-tiny-en run, and the held-out two-sentence set.

    python -m recipes.avsr_tiny_en.slice --slice K [--clips 2000] [--replay 0] [--jobs 2] [--out DIR]

Slice K (a seed) draws its own sentences, voices and augmentation, so each run trains on clips no earlier
run saw. What differs from the v2 corpus, after docs/model-diagnostics.md:
- clips of 1 to 3 sentences (shares 0.5, 0.35, 0.15; at most 55 words, about 25 s), so the model learns to go
  on after a full stop;
- 30 % of the sentences name people and places, with dates and numbers (names.py); the rest are training
  sentences of text.py, slice K taking the K-th window of a seeded order (new sentences each slice), with
  the World English Bible capped at 10 % (its phrases leaked into transcripts);
- voices Whisper base can follow: espeak-ng down from 2.5 to 0.3 of the pool weight;
- noise on 60 % of the clips, 60 % of it at 10-30 dB and 40 % at 5-10 dB (none below 5 dB, where Whisper
  base failed 79 % of the training clips); no white noise; opus at 16 kb/s and more; less reverb and codec.
  Slices 1-5 were made with less noise (NOISE_BEFORE_SLICE_6: half the clips, 15 % of it at 5-10 dB), and
  held-out 5 dB babble got worse with each (docs/training.md); they rebuild as they were;
- a context prompt (`--initial-prompt`'s glossary of names) on about 30 % of the clips: half the clips with
  names list them among 1-5 others, 15 % of the rest list others only (a listed name need not be said);
  the manifest's `context` column.
With `--replay N`, N one-sentence clips made as the v2 corpus made them (its voices, noise and codecs) join
the slice: fine-tuning on the slice alone cost the shipped model 1.6-2.2 points on one-sentence clips.

Held-out two-sentence set (`test-heldout-source-2sent/`, same for every slice): 60 clips, each two sentences
of the held-out source (fortunes) that no other test split uses, by the held-out voices, clean.

Writes OUT/slice-K/train/ (clips, .txt, sidecars, manifest.jsonl) and OUT/test-heldout-source-2sent/; needs
OUT/.babble-train/ (build.py --only babble). Resumes like build.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import build as B
from . import voices as V
from .names import name_pools, named_sentences

SLICE_VOICES = [(v, w) for v, w in B.TRAIN_VOICES if v != "espeak"] + [("espeak", 0.3)]
SLICE_PROFILE = {
    "reverb_p": 0.2,
    "noise_p": 0.6,
    "snr_db": [(0.6, 10.0, 30.0), (0.4, 5.0, 10.0)],
    "noise_kinds": [("babble", 0.55), ("pink", 0.3), ("brown", 0.15)],
    "codec_p": 0.2,
    "mp3_kbps": [24, 32, 48, 64],
    "opus_kbps": [16, 24, 32],
}
# slices 1-5: 7.5 % of clips at 5-10 dB, against 10 % in the v2 corpus (and 10 % more below 5 dB)
NOISE_BEFORE_SLICE_6 = {"noise_p": 0.5, "snr_db": [(0.85, 10.0, 30.0), (0.15, 5.0, 10.0)]}
SENTENCES_PER_CLIP = [(1, 0.5), (2, 0.35), (3, 0.15)]
MAX_WORDS = 55
NAMES_SHARE = 0.3
BIBLE_SHARE = 0.1
# Context prompts (`--initial-prompt`, modeling/model.py CONTEXT_TEMPLATE): a glossary as a user gives one,
# the clip's own names among others; also on clips without names, so the model learns that a listed name
# need not be said
CONTEXT_P_NAMED = 0.5
CONTEXT_P_PLAIN = 0.15
CONTEXT_OTHERS = (1, 6)
TWO_SENTENCE_CLIPS = 60
TWO_SENTENCE_SKIP = 400  # fortunes that build.py's test and babble splits use come first in its order


def slice_sentences(rows: list[dict], k: int, count: int) -> list[tuple[str, str, str]]:
    """(id, source, text) for slice k: training sentences (its window of a seeded order) and names."""
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: B.stable("slice-order", r["id"]))
    bible = [r for r in train if r["source"] == "web-bible"]
    other = [r for r in train if r["source"] != "web-bible"]
    n_names = round(count * NAMES_SHARE)
    n_bible = round(count * BIBLE_SHARE)
    n_other = count - n_names - n_bible
    picked = _window(other, k, n_other) + _window(bible, k, n_bible)
    out = [(r["id"], r["source"], r["text"]) for r in picked]
    out += [(f"names-{k}-{i:05d}", "names", s) for i, (s, _) in enumerate(named_sentences(n_names, seed=k))]
    rng = B.rng_for(k, "slice-mix")
    return [out[i] for i in rng.permutation(len(out))]


def _window(rows: list, k: int, n: int) -> list:
    """The k-th window of n rows, wrapping around once the rows run out."""
    if not rows or n <= 0:
        return []
    start = (k * n) % len(rows)
    return [rows[(start + i) % len(rows)] for i in range(n)]


def contexts(groups: list[list[tuple[str, str, str]]], k: int) -> list[str | None]:
    """A glossary prompt per clip (None for most): the names of the clip's sentences and others, shuffled."""
    drawn = [int(sid.rsplit("-", 1)[1]) for g in groups for sid, source, _ in g if source == "names"]
    # named_sentences is one seeded stream: its first n sentences are slice_sentences' own
    held = named_sentences(max(drawn, default=-1) + 1, seed=k)
    names = {f"names-{k}-{i:05d}": held[i][1] for i in drawn}
    first, last, cities, countries = name_pools()
    pool = first + last + cities + countries
    out: list[str | None] = []
    for n, clip in enumerate(groups):
        rng = B.rng_for(k, "slice-context", n)
        own = [name for sid, _, _ in clip for name in names.get(sid, ())]
        if rng.random() >= (CONTEXT_P_NAMED if own else CONTEXT_P_PLAIN):
            out.append(None)
            continue
        others = [pool[int(i)] for i in rng.integers(0, len(pool), int(rng.integers(*CONTEXT_OTHERS)))]
        listed = list(dict.fromkeys(own + others))
        out.append(", ".join(listed[int(i)] for i in rng.permutation(len(listed))))
    return out


def slice_profile(k: int) -> dict:
    """Slice k's augmentation: SLICE_PROFILE, with the noise slices 1-5 were made with for those."""
    return SLICE_PROFILE | NOISE_BEFORE_SLICE_6 if k <= 5 else SLICE_PROFILE


def group(sentences: list[tuple[str, str, str]], k: int) -> list[list[tuple[str, str, str]]]:
    """Sentences -> clips of 1-3 sentences (at most MAX_WORDS words)."""
    rng = B.rng_for(k, "slice-group")
    sizes, shares = zip(*SENTENCES_PER_CLIP, strict=True)
    clips, i = [], 0
    while i < len(sentences):
        want = int(rng.choice(sizes, p=shares))
        clip = [sentences[i]]
        i += 1
        while len(clip) < want and i < len(sentences):
            words = sum(len(t.split()) for _, _, t in clip) + len(sentences[i][2].split())
            if words > MAX_WORDS:
                break
            clip.append(sentences[i])
            i += 1
        clips.append(clip)
    return clips


def babble_pool(out: Path) -> list[str]:
    babble = sorted(str(p) for p in (out / ".babble-train").glob("*.wav") if not p.name.startswith("."))
    if not babble:
        raise SystemExit(
            f"{out / '.babble-train'} is empty: run `python -m recipes.avsr_tiny_en.build --only babble`"
        )
    return babble


def replay_jobs(rows: list[dict], out: Path, k: int, clips: int) -> list[dict]:
    """`clips` one-sentence clips of training sentences made as the v2 corpus made them (its voice pool,
    noise, codecs: build.V2_PROFILE), into slice k's folder: the distribution the shipped model learnt, so
    that a fine-tune on the slice keeps what it knew."""
    babble = babble_pool(out) if clips else []
    train = sorted(
        (r for r in rows if r["split"] == "train"), key=lambda r: B.stable("replay-order", r["id"])
    )
    return [
        clip_job(
            out, k, "replay", n, [(r["id"], r["source"], r["text"])], B.TRAIN_VOICES, babble, B.V2_PROFILE
        )
        for n, r in enumerate(_window(train, k, clips))
    ]


def clip_job(
    out: Path,
    k: int,
    kind: str,
    n: int,
    sentences: list[tuple[str, str, str]],
    voices: list,
    babble: list[str],
    profile: dict,
    context: str | None = None,
) -> dict:
    """Clip n of a `kind` ("slice" or "replay") of slice k: `sentences` ((id, source, text)) spoken in turn
    by a voice drawn from `voices`, augmented with `profile`, with an optional context prompt."""
    rng = B.rng_for(k, f"{kind}-voice", n)
    voice, tts = B.resolve(B.draw_voice(rng, voices), rng)
    return {
        "folder": str(out / f"slice-{k}" / "train"),
        "id": f"{kind[0]}{k}-{n:05d}-{B.slug(voice)}",
        "split": f"slice-{k}",
        "sentence_id": "+".join(i for i, _, _ in sentences),
        "source": "+".join(dict.fromkeys(src for _, src, _ in sentences)),
        "text": " ".join(t for _, _, t in sentences),
        "voice": voice,
        "tts": tts,
        "kind": "augment",
        "seed": k,
        "babble": babble,
        "profile": profile,
        **({"context": context} if context else {}),
    }


def slice_jobs(rows: list[dict], out: Path, k: int, clips: int) -> list[dict]:
    babble = babble_pool(out)
    # about 1.75 sentences a clip
    groups = group(slice_sentences(rows, k, int(clips * 1.75) + 10), k)[:clips]
    prompts = contexts(groups, k)
    return [
        clip_job(out, k, "slice", n, clip, SLICE_VOICES, babble, slice_profile(k), context)
        for n, (clip, context) in enumerate(zip(groups, prompts, strict=True))
    ]


def two_sentence_jobs(rows: list[dict], out: Path) -> list[dict]:
    """The held-out two-sentence set: pairs of fortunes beyond those build.py's test splits use."""
    test = sorted((r for r in rows if r["split"] == "test"), key=lambda r: B.stable(0, "test", r["id"]))
    pool = [r for r in test[TWO_SENTENCE_SKIP:] if int(r["words"]) <= 20]
    jobs = []
    for n in range(TWO_SENTENCE_CLIPS):
        a, b = pool[2 * n], pool[2 * n + 1]
        voice = B.TEST_VOICES[n % len(B.TEST_VOICES)]
        jobs.append(
            {
                "folder": str(out / "test-heldout-source-2sent"),
                "id": f"{a['id']}+{b['id'][-10:]}-{B.slug(voice)}",
                "split": "test-heldout-source-2sent",
                "sentence_id": f"{a['id']}+{b['id']}",
                "source": "fortunes",
                "text": f"{a['text']} {b['text']}",
                "voice": voice,
                "tts": {"speed": 1.0},
                "kind": "clean",
                "seed": 0,
            }
        )
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slice", type=int, required=True, help="slice number (its seed)")
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=B.CACHE)
    ap.add_argument("--text", type=Path, default=B.CACHE / "text" / "sentences.tsv")
    ap.add_argument(
        "--replay", type=int, default=0, help="one-sentence clips made as the v2 corpus made them"
    )
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    rows = B.read_sentences(args.text)
    stages = {
        "test-heldout-source-2sent": two_sentence_jobs(rows, args.out),
        f"slice-{args.slice}": slice_jobs(rows, args.out, args.slice, args.clips)
        + replay_jobs(rows, args.out, args.slice, args.replay),
    }
    missing = sorted({j["voice"] for js in stages.values() for j in js if not V.available(j["voice"])})
    if missing:
        raise SystemExit(
            f"voices not installed: {', '.join(missing)} (see recipes/avsr_tiny_en/APT_PACKAGES)"
        )
    for name, jobs in stages.items():
        B.run_stage(name, jobs, args.jobs)
        B.write_split_manifest(Path(jobs[0]["folder"]))
    print(f"slice {args.slice}: {len(stages[f'slice-{args.slice}'])} clips", file=sys.stderr)


if __name__ == "__main__":
    main()
