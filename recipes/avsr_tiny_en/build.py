"""Build the v2 speech corpus: the sentences of text.py spoken by the offline voices of voices.py, augmented.

Layout written under OUT (default ~/.cache/avsr/corpus/v2), the one `avsr train` / `avsr evaluate` read
(media + same-stem one-line .txt; the .json sidecars and hidden folders are ignored by the dataset reader):

    train/                         training sentences, 1-2 training voices each (p=--two-voices), augmented
    train-kokoro/                  opt-in (--kokoro-share P): a share P of the training sentences again, by
                                   one of 15 Kokoro voices (voices.py), augmented like train
    val/                           held-out sentences of the trained sources, training voices, augmented
                                   like train (--val-clips, default 200)
    test-heldout-source/           held-out source (fortunes), held-out voices, clean (--test-clips, 200)
    test-heldout-source-babble5/   the same clips with babble at 5 dB SNR (babble of other fortunes)
    .babble-train/, .babble-test/  clean clips of other sentences that babble noise is mixed from
    recipe.json                    settings, voices, counts, hours; <split>/manifest.jsonl per clip

Every clip has a `<id>.json` sidecar (voice, TTS settings, augmentation, seconds), written last: a clip
whose sidecar exists is skipped, so an interrupted build resumes where it stopped (files are written to
hidden temp names, then renamed). Voices and augmentation are drawn from a per-clip seeded generator, so a
clip is the same whatever --jobs, --limit or the order of runs (piper's own noise is the exception: it is
unseeded inside the model).

Augmentation (train and val), each step drawn independently per clip:
    silence pad   0.05-0.4 s before, 0.1-0.5 s after
    speed         p=0.6, sox `speed` 0.9-1.1 (tempo and pitch, as Kaldi speed perturbation)
    pitch         p=0.3, sox `pitch` -300..+300 cents
    reverb        p=0.3, sox `reverb` reverberance 10-70%, HF damping 20-80%, room 20-100%, pre-delay 0-30 ms
    noise         p=0.6, SNR 0-30 dB over active speech: babble 40 % (3-7 clips of .babble-train), white 25 %,
                  pink 25 %, brown 10 %
    codec         p=0.3, one of: mp3 (ffmpeg libmp3lame 16-64 kb/s), opus (ffmpeg libopus 6-24 kb/s),
                  telephone (sox: 8 kHz, 300-3400 Hz band, mu-law half the time), back to 16 kHz
    gain          peak at -15..-1 dBFS

    python -m recipes.avsr_tiny_en.build [--out DIR] [--limit N] [--jobs 1] [--seed 0] [--mbrola]
        [--kokoro-share P] [--only SPLIT ...]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from . import voices as V

SR = V.SAMPLE_RATE
CACHE = Path.home() / ".cache" / "avsr" / "corpus" / "v2"

# training voices: (entry, weight). "espeak" draws an accent and a variant; "mbrola:*" need --mbrola
TRAIN_VOICES = [
    ("piper:joe", 3.0),
    ("festival:kal_diphone", 1.0),
    ("festival:ked_diphone", 1.0),
    ("flite:kal16", 0.7),
    ("flite:kal", 0.3),
    ("flite:awb", 1.5),
    ("flite:rms", 1.5),
    ("espeak", 2.5),
]
MBROLA_VOICES = [(f"mbrola:{v}", 1.0) for v in V.MBROLA_VOICES]
TEST_VOICES = V.HELD_OUT  # hibari:heart, festival:cmu_us_slt_arctic_hts
BABBLE_TRAIN, BABBLE_TEST = 150, 60


def stable(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def rng_for(seed: int, *parts) -> np.random.Generator:
    return np.random.default_rng([seed, stable(*parts)])


def draw_voice(rng: np.random.Generator, pool: list[tuple[str, float]], exclude=()) -> str:
    names = [n for n, _ in pool if n not in exclude]
    w = np.array([w for n, w in pool if n not in exclude])
    return names[rng.choice(len(names), p=w / w.sum())]


def resolve(entry: str, rng: np.random.Generator) -> tuple[str, dict]:
    """A pool entry -> a concrete voice and its TTS settings."""
    if entry == "espeak":
        voice = (
            "espeak:"
            + V.ESPEAK_ACCENTS[rng.integers(len(V.ESPEAK_ACCENTS))]
            + V.ESPEAK_VARIANTS[rng.integers(len(V.ESPEAK_VARIANTS))]
        )
        return voice, {"speed": round(float(rng.uniform(0.85, 1.2)), 3), "pitch": int(rng.integers(25, 76))}
    if entry.startswith("piper:"):
        return entry, {
            "speed": round(float(rng.uniform(0.85, 1.15)), 3),
            "noise": round(float(rng.uniform(0.33, 0.9)), 3),
            "noise_w": round(float(rng.uniform(0.4, 1.1)), 3),
        }
    if entry.startswith("mbrola:"):
        return entry, {"speed": round(float(rng.uniform(0.85, 1.2)), 3), "pitch": int(rng.integers(30, 71))}
    if entry == "kokoro":
        voice = "kokoro:" + V.KOKORO_VOICES[rng.integers(len(V.KOKORO_VOICES))]
        return voice, {"speed": round(float(rng.uniform(0.85, 1.15)), 3)}
    return entry, {"speed": round(float(rng.uniform(0.85, 1.15)), 3)}


def slug(voice: str) -> str:
    return voice.replace(":", "-").replace("+", "-").replace("_", "-")


# ---------------------------------------------------------------- audio helpers


def read(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == SR, (path, rate)
    return audio.mean(axis=1)


def sox(src: Path, dst: Path, *effects: str, out_opts=("-r", str(SR), "-c", "1", "-b", "16")) -> None:
    subprocess.run(["sox", "-V1", str(src), *out_opts, str(dst), *effects], check=True, capture_output=True)


def active_rms(audio: np.ndarray) -> float:
    frame = SR // 50
    n = len(audio) // frame
    if n == 0:
        return float(np.sqrt(np.mean(audio**2)) + 1e-9)
    energy = np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = energy[energy > energy.max() * 10 ** (-30 / 10)]
    return float(np.sqrt(active.mean()) + 1e-9)


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)
    spec /= np.sqrt(f) if kind == "pink" else f  # 1/f power (pink) or 1/f^2 (brown)
    return np.fft.irfft(spec, n)


def babble(n: int, pool: list[Path], rng: np.random.Generator, k: int) -> tuple[np.ndarray, list[str]]:
    out = np.zeros(n, np.float64)
    picks = [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]
    for p in picks:
        x = read(p)
        x = x / (active_rms(x) + 1e-9)
        reps = int(np.ceil((n + len(x)) / len(x))) + 1
        tiled = np.tile(x, reps)
        start = int(rng.integers(len(x)))
        out += tiled[start : start + n]
    return out, [p.stem for p in picks]


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    noise = noise / (np.sqrt(np.mean(noise**2)) + 1e-9) * active_rms(speech) / 10 ** (snr_db / 20)
    return speech + noise


def codec(audio: np.ndarray, rng: np.random.Generator, tmp: Path, prof: dict) -> tuple[np.ndarray, dict]:
    src = tmp / "codec-in.wav"
    sf.write(src, audio, SR, subtype="PCM_16")
    kind = ["mp3", "opus", "telephone"][rng.integers(3)]
    back = tmp / "codec-out.wav"
    ff = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    if kind == "mp3":
        rate = int(rng.choice(prof["mp3_kbps"]))
        enc = tmp / "c.mp3"
        subprocess.run([*ff, "-i", str(src), "-c:a", "libmp3lame", "-b:a", f"{rate}k", str(enc)], check=True)
        subprocess.run([*ff, "-i", str(enc), "-ar", str(SR), "-ac", "1", str(back)], check=True)
        info = {"codec": "mp3", "kbps": rate}
    elif kind == "opus":
        rate = int(rng.choice(prof["opus_kbps"]))
        enc = tmp / "c.ogg"
        subprocess.run([*ff, "-i", str(src), "-c:a", "libopus", "-b:a", f"{rate}k", str(enc)], check=True)
        subprocess.run([*ff, "-i", str(enc), "-ar", str(SR), "-ac", "1", str(back)], check=True)
        info = {"codec": "opus", "kbps": rate}
    else:
        mulaw = bool(rng.random() < 0.5)
        narrow = tmp / "c8k.wav"
        opts = ("-r", "8000", "-c", "1") + (("-e", "u-law") if mulaw else ("-b", "16"))
        sox(src, narrow, "sinc", "300-3400", out_opts=opts)
        sox(narrow, back)
        info = {"codec": "telephone", "mulaw": mulaw}
    out = read(back)
    out = np.pad(out, (0, max(0, len(audio) - len(out))))[: max(len(audio), 1)]  # codecs pad/trim a little
    return out, info


# augmentation settings; the v2 corpus used these, slice.py passes its own (same keys)
V2_PROFILE = {
    "reverb_p": 0.3,
    "noise_p": 0.6,
    "snr_db": [(1.0, 0.0, 30.0)],  # (share, low, high)
    "noise_kinds": [("babble", 0.4), ("white", 0.25), ("pink", 0.25), ("brown", 0.1)],
    "codec_p": 0.3,
    "mp3_kbps": [16, 24, 32, 48, 64],
    "opus_kbps": [6, 8, 12, 16, 24],
}


def draw_snr(rng: np.random.Generator, bands: list) -> float:
    if len(bands) == 1:  # the v2 draw (one uniform), kept so that its clips rebuild identically
        return float(rng.uniform(bands[0][1], bands[0][2]))
    u, acc = rng.random(), 0.0
    for share, low, high in bands:  # noqa: B007 - the band the draw falls in is used below
        acc += share
        if u < acc:
            break
    return float(rng.uniform(low, high))


def draw_kind(u: float, kinds: list) -> str:
    acc = 0.0
    for kind, share in kinds:
        acc += share
        if u < acc:
            return kind
    return kinds[-1][0]


def augment(
    clean: Path, rng: np.random.Generator, babble_pool: list[Path], tmp: Path, profile: dict | None = None
) -> tuple[np.ndarray, dict]:
    prof = profile or V2_PROFILE
    info: dict = {}
    effects = ["pad", f"{rng.uniform(0.05, 0.4):.3f}", f"{rng.uniform(0.1, 0.5):.3f}"]
    if rng.random() < 0.6:
        f = float(rng.uniform(0.9, 1.1))
        effects += ["speed", f"{f:.4f}"]
        info["speed"] = round(f, 3)
    if rng.random() < 0.3:
        c = float(rng.uniform(-300, 300))
        effects += ["pitch", f"{c:.0f}"]
        info["pitch_cents"] = round(c)
    if rng.random() < prof["reverb_p"]:
        r = [rng.uniform(10, 70), rng.uniform(20, 80), rng.uniform(20, 100)]
        pre = rng.uniform(0, 30)
        effects += ["reverb", f"{r[0]:.0f}", f"{r[1]:.0f}", f"{r[2]:.0f}", "100", f"{pre:.0f}"]
        info["reverb"] = {
            "reverberance": round(r[0]),
            "hf_damping": round(r[1]),
            "room_scale": round(r[2]),
            "pre_delay_ms": round(pre),
        }
    shaped = tmp / "shaped.wav"
    sox(clean, shaped, *effects, "channels", "1", "rate", str(SR))
    audio = read(shaped).astype(np.float64)
    if rng.random() < prof["noise_p"]:
        snr = draw_snr(rng, prof["snr_db"])
        kind = draw_kind(rng.random(), prof["noise_kinds"])
        if kind == "babble":
            noise, picks = babble(len(audio), babble_pool, rng, int(rng.integers(3, 8)))
            info["babble_of"] = picks
        else:
            noise = colored_noise(len(audio), kind, rng)
        audio = mix(audio, noise, snr)
        info.update(noise=kind, snr_db=round(snr, 1))
    if rng.random() < prof["codec_p"]:
        audio, c = codec(audio.astype(np.float32), rng, tmp, prof)
        info.update(c)
    peak_db = float(rng.uniform(-15, -1))
    audio = audio * (10 ** (peak_db / 20) / (np.abs(audio).max() + 1e-9))
    info["peak_dbfs"] = round(peak_db, 1)
    return audio.astype(np.float32), info


# ---------------------------------------------------------------- clip jobs


def write_clip(job: dict) -> dict:
    """Make one clip (see `plan`); returns its sidecar info. Skips clips whose sidecar exists."""
    folder, cid = Path(job["folder"]), job["id"]
    sidecar = folder / f"{cid}.json"
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="avsr-v2-") as tmp:
        tmp = Path(tmp)
        clean = tmp / "clean.wav"
        if job.get("from"):  # babble5: the clean test clip plus babble
            clean = Path(job["from"])
        else:
            V.speak(job["text"], job["voice"], clean, **job["tts"])
        info = {
            k: job[k]
            for k in ("id", "split", "sentence_id", "source", "voice", "tts", "text", "context")
            if k in job
        }
        rng = rng_for(job["seed"], job["split"], cid)
        if job["kind"] == "augment":
            audio, aug = augment(clean, rng, [Path(p) for p in job["babble"]], tmp, job.get("profile"))
        elif job["kind"] == "babble5":
            audio = read(clean).astype(np.float64)
            noise, picks = babble(len(audio), [Path(p) for p in job["babble"]], rng, int(rng.integers(4, 8)))
            audio = mix(audio, noise, 5.0)
            audio = audio * (0.9 / max(np.abs(audio).max(), 0.9))
            aug = {"noise": "babble", "snr_db": 5.0, "babble_of": picks}
        else:  # clean
            audio, aug = read(clean), {}
        info["augment"] = aug
        info["seconds"] = round(len(audio) / SR, 2)
        tmp_wav = folder / f".tmp-{cid}.wav"
        sf.write(tmp_wav, np.clip(audio, -1, 1), SR, subtype="PCM_16")
        os.replace(tmp_wav, folder / f"{cid}.wav")
    tmp_txt = folder / f".tmp-{cid}.txt"
    tmp_txt.write_text(job["text"] + "\n")
    os.replace(tmp_txt, folder / f"{cid}.txt")
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    tmp_json = folder / f".tmp-{cid}.json"
    tmp_json.write_text(json.dumps(info))
    os.replace(tmp_json, sidecar)
    return info


def read_sentences(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def plan(rows: list[dict], out: Path, args) -> dict[str, list[dict]]:
    """All clip jobs, deterministic for a seed and a voice pool: {stage: [job, ...]}."""
    pool = TRAIN_VOICES + (MBROLA_VOICES if args.mbrola else [])
    seed = args.seed
    by = {
        s: sorted((r for r in rows if r["split"] == s), key=lambda r: r["id"])
        for s in ("train", "val", "test")
    }
    order = lambda rs, tag: sorted(rs, key=lambda r: stable(seed, tag, r["id"]))  # noqa: E731
    stages: dict[str, list[dict]] = {}

    def job(folder, split, row, entry, kind, extra_id="", **kw):
        rng = rng_for(seed, "voice", split, row["id"], entry, extra_id)
        voice, tts = resolve(entry, rng) if entry else (None, None)
        tts = tts if kind == "augment" else {"speed": 1.0}  # clean test clips and babble: plain voices
        cid = f"{row['id']}-{slug(voice)}" if voice else row["id"]
        return {
            "folder": str(out / folder),
            "id": cid,
            "split": split,
            "sentence_id": row["id"],
            "source": row["source"],
            "text": row["text"],
            "voice": voice,
            "tts": tts,
            "kind": kind,
            "seed": seed,
            **kw,
        }

    # babble pools: clean clips of sentences that are never clips themselves
    train_order = order(by["train"], "train")
    babble_train_rows = order(by["train"], "babble")[:BABBLE_TRAIN]
    test_order = order(by["test"], "test")
    test_rows, babble_test_rows = test_order[: args.test_clips], test_order[args.test_clips :][:BABBLE_TEST]
    stages["babble"] = [
        job(".babble-train", ".babble-train", r, draw_voice(rng_for(seed, "bt", r["id"]), pool), "clean")
        for r in babble_train_rows
    ]
    stages["babble"] += [
        job(".babble-test", ".babble-test", r, draw_voice(rng_for(seed, "bs", r["id"]), pool), "clean")
        for r in babble_test_rows
    ]
    babble_train = [
        str(Path(j["folder"]) / f"{j['id']}.wav") for j in stages["babble"] if j["split"] == ".babble-train"
    ]
    babble_test = [
        str(Path(j["folder"]) / f"{j['id']}.wav") for j in stages["babble"] if j["split"] == ".babble-test"
    ]
    # test: held-out source, held-out voices, clean; then the same clips with babble at 5 dB
    tests = []
    for r in test_rows:
        voice = TEST_VOICES[rng_for(seed, "testvoice", r["id"]).integers(len(TEST_VOICES))]
        tests.append(job("test-heldout-source", "test-heldout-source", r, voice, "clean"))
    stages["test"] = tests
    stages["test-babble5"] = [
        dict(
            j,
            folder=str(out / "test-heldout-source-babble5"),
            split="test-heldout-source-babble5",
            kind="babble5",
            babble=babble_test,
            **{"from": str(Path(j["folder"]) / f"{j['id']}.wav")},
        )
        for j in tests
    ]
    # val: held-out sentences of trained sources, one training voice, augmented like train
    stages["val"] = [
        job(
            "val",
            "val",
            r,
            draw_voice(rng_for(seed, "valvoice", r["id"]), pool),
            "augment",
            babble=babble_train,
        )
        for r in order(by["val"], "val")[: args.val_clips]
    ]
    # train: every training sentence by 1 voice, or 2 different voices with p=two_voices
    train = []
    for r in train_order:
        rng = rng_for(seed, "trainvoices", r["id"])
        first = draw_voice(rng, pool)
        entries = [first] + (
            [draw_voice(rng, pool, exclude=(first,))] if rng.random() < args.two_voices else []
        )
        for k, e in enumerate(entries):
            train.append(job("train", "train", r, e, "augment", extra_id=k, babble=babble_train))
    if args.limit is not None:
        train = train[: args.limit]
    stages["train"] = train
    # train-kokoro (opt-in): a share of the training sentences once more, by a Kokoro voice, augmented like
    # train; drawn from its own generators, so it leaves every other split's plan as it was
    stages["train-kokoro"] = [
        job("train-kokoro", "train-kokoro", r, "kokoro", "augment", babble=babble_train)
        for r in train_order
        if rng_for(seed, "kokoro", r["id"]).random() < args.kokoro_share
    ]
    return stages


def run_stage(name: str, jobs: list[dict], n_jobs: int) -> list[dict]:
    todo = [j for j in jobs if not (Path(j["folder"]) / f"{j['id']}.json").exists()]
    print(
        f"[{time.strftime('%H:%M:%S')}] {name}: {len(jobs)} clips, {len(jobs) - len(todo)} already there",
        file=sys.stderr,
        flush=True,
    )
    t0, done, last = time.time(), 0, time.time()
    failures = 0

    def report(final=False):
        dt = time.time() - t0
        rate = done / dt * 60 if dt > 0 else 0.0
        left = (len(todo) - done) / rate if rate else float("inf")
        print(
            f"[{time.strftime('%H:%M:%S')}] {name}: {done}/{len(todo)} new clips, {rate:.1f} clips/min, "
            f"~{left:.0f} min left{' (done)' if final else ''}",
            file=sys.stderr,
            flush=True,
        )

    def one(j):
        nonlocal failures
        try:
            return write_clip(j)
        except Exception as e:  # noqa: BLE001 - a voice that fails on one sentence must not stop the build
            failures += 1
            print(f"FAILED {j['id']} ({j['voice']}): {str(e)[:300]}", file=sys.stderr, flush=True)
            return None

    if n_jobs <= 1:
        for j in todo:
            one(j)
            done += 1
            if time.time() - last > 60:
                report()
                last = time.time()
    else:
        with ProcessPoolExecutor(n_jobs) as ex:
            for _ in ex.map(_safe_write, todo, chunksize=4):
                done += 1
                if time.time() - last > 60:
                    report()
                    last = time.time()
    report(final=True)
    if failures:
        print(f"{name}: {failures} clips failed", file=sys.stderr, flush=True)
    return todo


def _safe_write(j):
    try:
        return write_clip(j)
    except Exception as e:  # noqa: BLE001
        print(f"FAILED {j['id']} ({j['voice']}): {str(e)[:300]}", file=sys.stderr, flush=True)
        return None


# build order: babble first (train and val mix it in), then the evaluation splits, then training
STAGES = ("babble", "test", "test-babble5", "val", "train", "train-kokoro")


def write_split_manifest(folder: Path, write: bool = True) -> tuple[int, float]:
    """`folder/manifest.jsonl` from the clips' sidecars; returns (clips, seconds)."""
    lines, seconds = [], 0.0
    for sidecar in sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")):
        info = json.loads(sidecar.read_text())
        seconds += info.get("seconds", 0.0)
        lines.append(json.dumps({"media": f"{sidecar.stem}.wav", **info}))
    if write and folder.is_dir():
        tmp = folder / ".manifest.jsonl.tmp"
        tmp.write_text("".join(x + "\n" for x in lines))
        os.replace(tmp, folder / "manifest.jsonl")
    return len(lines), seconds


def write_manifests(out: Path, stages: dict[str, list[dict]], args, text: Path) -> None:
    summary = {}
    for jobs in stages.values():
        for j in jobs:
            summary.setdefault(
                j["split"], {"planned": 0, "written": 0, "seconds": 0.0, "folder": j["folder"]}
            )
            summary[j["split"]]["planned"] += 1
    for split, s in summary.items():
        s["written"], seconds = write_split_manifest(Path(s["folder"]), write=not split.startswith("."))
        s["hours"] = round((s.pop("seconds") + seconds) / 3600, 3)
    recipe = {
        "text": str(text),
        "text_sha256": hashlib.sha256(text.read_bytes()).hexdigest(),
        "seed": args.seed,
        "two_voices_p": args.two_voices,
        "limit": args.limit,
        "mbrola": args.mbrola,
        "kokoro_share": args.kokoro_share,
        "kokoro_voices": [f"kokoro:{v}" for v in V.KOKORO_VOICES] if args.kokoro_share else [],
        "train_voices": [
            {"voice": v, "weight": w} for v, w in TRAIN_VOICES + (MBROLA_VOICES if args.mbrola else [])
        ],
        "espeak": {"accents": V.ESPEAK_ACCENTS, "variants": V.ESPEAK_VARIANTS},
        "test_voices": TEST_VOICES,
        "excluded_voices": V.EXCLUDED,
        "augmentation": __doc__.split(
            "Augmentation (train and val), each step drawn independently per clip:"
        )[1]
        .split("\n\n")[0]
        .strip()
        .splitlines(),
        "splits": summary,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".recipe.json.tmp"
    tmp.write_text(json.dumps(recipe, indent=1))
    os.replace(tmp, out / "recipe.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=CACHE)
    ap.add_argument("--text", type=Path, default=CACHE / "text" / "sentences.tsv")
    ap.add_argument(
        "--limit", type=int, default=None, help="build only the first N training clips of the plan"
    )
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--two-voices", type=float, default=0.2, help="probability a sentence gets a second voice"
    )
    ap.add_argument("--val-clips", type=int, default=200)
    ap.add_argument("--test-clips", type=int, default=200)
    ap.add_argument(
        "--mbrola", action="store_true", help="add the mbrola voices (non-free) to the training pool"
    )
    ap.add_argument(
        "--kokoro-share",
        type=float,
        default=0.0,
        help="build train-kokoro/: this share of the training sentences again, by Kokoro voices",
    )
    ap.add_argument(
        "--manifests-only", action="store_true", help="only rewrite manifest.jsonl and recipe.json"
    )
    ap.add_argument(
        "--only",
        action="append",
        choices=STAGES,
        help="build only this split (repeatable; e.g. --only train-kokoro to build it before train is done)",
    )
    args = ap.parse_args()
    if not args.text.exists():
        raise SystemExit(f"{args.text} missing: run `python -m recipes.avsr_tiny_en.text` first")
    rows = read_sentences(args.text)
    stages = plan(rows, args.out, args)
    print("plan: " + ", ".join(f"{k} {len(v)}" for k, v in stages.items()), file=sys.stderr, flush=True)
    if not args.manifests_only:
        missing = sorted(
            {j["voice"] for js in stages.values() for j in js if j["voice"] and not V.available(j["voice"])}
        )
        if missing:
            raise SystemExit(
                f"voices not installed: {', '.join(missing)} (see recipes/avsr_tiny_en/APT_PACKAGES)"
            )
        write_manifests(args.out, stages, args, args.text)
        for name in [s for s in STAGES if not args.only or s in args.only]:  # in build order, however given
            run_stage(name, stages[name], args.jobs)
            write_manifests(args.out, stages, args, args.text)
    else:
        write_manifests(args.out, stages, args, args.text)
    print(
        f"[{time.strftime('%H:%M:%S')}] finished; recipe: {args.out / 'recipe.json'}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
