"""v2 corpus text: everyday English sentences from freely licensed offline sources, normalised for speech.

Sources (Debian packages from `APT_PACKAGES`, plus the brotli 1.2.1 sdist from PyPI for the Canterbury texts):

    wordnet-examples   wordnet-base      example sentences of data.{noun,verb,adj,adv}; WordNet 3.0 licence
    gcide-citations    dict-gcide        quotations cited in the 1913 Webster (GCIDE); GPL-2+ (quoted: PD)
    devils-dictionary  dict-devil        Ambrose Bierce, The Devil's Dictionary (1911); public domain
    web-bible          sword-text-web    World English Bible (modern English, 2000s); public domain (capped)
    alice, as-you-like-it, paradise-lost, loc-workshop
                       brotli==1.2.1     Canterbury corpus texts (tests/testdata/*.txt); public domain
    fortunes           fortunes, fortunes-min   fortune-mod cookies; BSD-4-Clause collection   <- HELD OUT

Held-out source: `fortunes`. It is the most conversational, everyday text here (one-liners, advice, jokes, by
hundreds of authors), it is a different genre from every trained source (dictionary examples and citations,
books, scripture), and several of its files quote modern authors whose words are not public domain, so it is
better used to measure than baked into the weights. Technical/jargon files (computers, linux, perl...),
song lyrics, novel quotations (pratchett, startrek, zippy), ASCII art and stereotype jokes are left out.
Every sentence of a trained source that also occurs (normalised) in the held-out source is dropped.

Splits: held-out source -> `test`; each trained source -> ~3% `val` (by a seeded hash of the sentence, so a
sentence keeps its split when the sources change), the rest `train`. Large sources are capped (seeded).

Output under OUT (default ~/.cache/avsr/corpus/v2/text/):
    sentences.tsv     id, source, licence, split, words, text (sorted by id)
    sentences.jsonl   the same, one JSON object a line
    sources.json      per source: package, version, files, licence, sha256 of each file, sentence counts
    dropped.tsv       a sample of rejected candidates with the reason (for review)

    python -m recipes.avsr_tiny_en.text [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from .normalize import normalize_block

CACHE = Path.home() / ".cache" / "avsr" / "corpus" / "v2"
MIN_WORDS, MAX_WORDS = 3, 30
VAL_FRACTION = 0.03
HELD_OUT = "fortunes"

BROTLI = "brotli==1.2.1"
BROTLI_SHA256 = "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de"  # recorded, not enforced
CANTERBURY = {  # source -> (member, sha256)
    "alice": ("alice29.txt", "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0"),
    "as-you-like-it": ("asyoulik.txt", "eaa3526fe53859f34ecdf255712f9ecf0b2c903451d4755b2edaa2e2599cb0fc"),
    "paradise-lost": ("plrabn12.txt", "07e2e0b461af78c7c647cb53dab39de560198e16f799b4516eccf0fbd69f764c"),
    "loc-workshop": ("lcet10.txt", "5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f"),
}
FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_SKIP = {
    "ascii-art",
    "art",
    "computers",
    "debian",
    "linux",
    "linuxcookie",
    "perl",
    "knghtbrd",
    "translate-me",
    "pratchett",
    "startrek",
    "zippy",
    "songs-poems",
    "ethnic",
    "men-women",
    "drugs",
    "disclaimer",
    "definitions",
    "goedel",
    "paradoxum",
}
# sentences kept per source (before the val split; a seeded hash picks them): sized so that the training
# sentences, each spoken by 1-2 voices, come to about 30,000 clips, weighted towards everyday text
CAPS = {"wordnet-examples": 16000, "web-bible": 3000, "gcide-citations": 2500}
VERSE = {"paradise-lost", "as-you-like-it", "gcide-citations", "fortunes"}  # line-initial capitals are verse

LICENCES = {
    "wordnet-examples": "WordNet-3.0 (Princeton; permissive, BSD-like)",
    "gcide-citations": "GPL-2.0-or-later (GCIDE); the quoted works are public domain",
    "devils-dictionary": "public domain",
    "web-bible": "public domain",
    "alice": "public domain (Project Gutenberg etext)",
    "as-you-like-it": "public domain (Project Gutenberg etext)",
    "paradise-lost": "public domain (Project Gutenberg etext)",
    "loc-workshop": "public domain (Project Gutenberg etext of a Library of Congress publication)",
    "fortunes": "BSD-4-Clause (fortune-mod collection); some quotations belong to their authors",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deb_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"apt package {package} is not installed: apt-get install -y {package}")
    return out.stdout.strip()


# ---------------------------------------------------------------- sources: each yields text blocks


def wordnet_examples():
    files = [Path(f"/usr/share/wordnet/data.{pos}") for pos in ("noun", "verb", "adj", "adv")]

    def blocks():
        for f in files:
            for line in f.read_text(encoding="latin-1").splitlines():
                if line.startswith("  ") or "|" not in line:
                    continue  # licence header
                gloss = line.split("|", 1)[1]
                yield from re.findall(r'"([^"]+)"', gloss)

    return "wordnet-base", files, blocks


def gcide_citations():
    path = Path("/usr/share/dictd/gcide.dict.dz")

    def blocks():
        text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        # block quotations: lines indented by 8+ spaces, closed by a --Author line
        for para in re.split(r"\n\s*\n|\n\s*\[1913 Webster\]|\n\s*\[PJC\]", text):
            lines = para.split("\n")
            quote = []
            for line in lines:
                if re.match(r"\s{8,}\S", line):
                    quote.append(line)
                else:
                    quote = []
                joined = " ".join(x.strip() for x in quote)
                m = re.match(r"(.*?)\s--[A-Z]", joined)
                if m:
                    yield m.group(1)
                    quote = []
            # inline citations: "quoted text" --Author.
        for m in re.finditer(r'"([^"\n]{20,}(?:\n[^"\n]+){0,3})"\s*--\s*[A-Z]', text):
            yield m.group(1)

    return "dict-gcide", [path], blocks


def devils_dictionary():
    path = Path("/usr/share/dictd/devil.dict.dz")

    def blocks():
        text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        for para in re.split(r"\n\s*\n", text):
            if para.startswith(" ") or para.startswith("\t"):
                continue  # verse and attributions
            m = re.match(r"[A-Z][A-Z' -]+, (?:[a-z]+\.)+\s+(.*)", para.replace("\n", " "), re.S)
            if m:
                yield m.group(1)

    return "dict-devil", [path], blocks


def web_bible():
    files = sorted(Path("/usr/share/sword/modules/texts/ztext/engWEB2015eb").glob("*"))

    def blocks():
        books = subprocess.run(
            ["diatheke", "-b", "engWEB2015eb", "-f", "plain", "-k", "Genesis 1:1-Revelation 22:21"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in books.splitlines():
            m = re.match(r"^[1-4]?\s?[A-Z][A-Za-z ]+ \d+:\d+: (.*)$", line)
            if m:
                yield re.sub(r"\s*<[HG]\d+>", "", m.group(1))

    return "sword-text-web", files, blocks


def canterbury(source: str):
    member, _ = CANTERBURY[source]
    path = CACHE / "downloads" / member

    def blocks():
        text = path.read_text(encoding="latin-1")
        if source == "alice":
            text = text[text.index("CHAPTER I") :]
        if source == "loc-workshop":
            text = re.sub(
                r"\b([A-Z])([A-Z]{2,})\b", lambda m: m.group(1) + m.group(2).lower(), text
            )  # WEIBEL
        if source == "paradise-lost":
            text = (
                text[text.index("Of Man's first disobedience") :]
                if "Of Man's first disobedience" in text
                else text
            )
        if source == "as-you-like-it":
            # speeches: a speaker's name line (caps, tab) then indented verse/prose; stage directions in [ ]
            text = re.sub(r"\[[^\]]*\]", " ", text)
            text = re.sub(r"^[A-Z][A-Z ]+\t", "\n\n", text, flags=re.M)
        text = re.sub(r"^\s*CHAPTER [IVXL]+.*$", "\n", text, flags=re.M)
        text = re.sub(r"^\s*(BOOK|ACT|SCENE) [IVXL0-9]+.*$", "\n", text, flags=re.M)
        yield from re.split(r"\n\s*\n", text)

    return "brotli", [path], blocks


def fortunes():
    files = sorted(
        p
        for p in FORTUNE_DIR.iterdir()
        if p.is_file() and not p.is_symlink() and p.suffix != ".dat" and p.name not in FORTUNE_SKIP
    )

    def blocks():
        for f in files:
            for entry in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
                entry = re.split(r"\n\s*--\s", "\n" + entry, maxsplit=1)[0]  # attribution
                entry = re.sub(
                    r"^\s*(?:[A-Z][A-Za-z.]{0,15}|\(\d+\)|\d+\.)\s*:?\t\s*", "\n\n", entry, flags=re.M
                )
                entry = re.sub(r"^\s*(?:Q|A|\(\d+\))[:.]?\s+", "\n\n", entry, flags=re.M)
                yield from re.split(r"\n\s*\n", entry)

    return "fortunes", files, blocks


SOURCES = {
    "wordnet-examples": wordnet_examples,
    "gcide-citations": gcide_citations,
    "devils-dictionary": devils_dictionary,
    "web-bible": web_bible,
    **{name: (lambda n=name: canterbury(n)) for name in CANTERBURY},
    "fortunes": fortunes,
}

# ---------------------------------------------------------------- lexicon check (English, no odd words)


def lexicon() -> tuple[set[str], set[str]]:
    """(all known words in lower case, words that wamerican lists only in lower case)."""
    words, lower, names = set(), set(), set()
    dict_words = Path("/usr/share/dict/words")  # wamerican
    for w in dict_words.read_text(encoding="utf-8", errors="replace").split():
        w = w.removesuffix("'s")
        words.add(w.lower())
        (lower if w.islower() else names).add(w.lower())
    for pos in ("noun", "verb", "adj", "adv"):
        for line in Path(f"/usr/share/wordnet/index.{pos}").read_text(encoding="latin-1").splitlines():
            if not line.startswith(" "):
                for part in line.split(" ", 1)[0].split("_"):
                    words.add(part.lower())
    return words, lower - names


def fix_caps(sentence: str, lex: set[str]) -> str | None:
    """Words in capitals: emphasis (NOT, ME) becomes lower case; acronyms (FBI) and headings are dropped."""
    tokens = re.findall(r"[A-Za-z']+", sentence)
    caps = [t for t in tokens if len(t.strip("'")) > 1 and t.isupper()]
    if not caps:
        return sentence
    if len(caps) * 2 >= len(tokens):
        return None
    for t in caps:
        core = re.sub(r"'(s|d|ll|re|ve|t|m)$", "", t.lower()).strip("'")
        if core not in lex:
            return None

    def lower(m: re.Match) -> str:
        w = m.group(0).lower()
        return "I" + w[1:] if w.startswith("i'") else w

    out = re.sub(r"\b[A-Z][A-Z']*[A-Z]\b", lower, sentence)
    return out[0].upper() + out[1:]


def unverse(text: str, common: set[str]) -> str:
    """Join verse lines: a capital that starts a line mid-sentence becomes lower case when the word is a
    common word (in the lexicon in lower case only): 'As bees\nIn spring time' -> 'As bees in spring time'."""

    def fix(m: re.Match) -> str:
        prev, word = m.group(1), m.group(2)
        if prev in ".?!:" or word in ("I", "O") or word.lower() not in common:
            return m.group(0)
        return m.group(0)[: -len(word)] + word.lower()

    return re.sub(r"([^\s])[\"']?[ \t]*\n[ \t]*[\"'(]*([A-Z][a-z]+)\b", fix, text)


def english_problem(sentence: str, lex: set[str]) -> str | None:
    tokens = re.findall(r"[A-Za-z']+", sentence)
    n = len(tokens)
    if not MIN_WORDS <= n <= MAX_WORDS:
        return "length"
    unknown_lower = 0
    for t in tokens:
        core = t.lower().strip("'")
        core = re.sub(r"'(s|d|ll|re|ve|t|m)$", "", core)
        if core in lex or core.rstrip("s") in lex or core.replace("'", "") in lex:
            continue
        if t[0].isupper():
            continue  # a name
        unknown_lower += 1
    if unknown_lower > max(1, 0.15 * n):
        return "not-english"
    return None


def key(sentence: str) -> str:
    return re.sub(r"[^a-z']+", " ", sentence.lower()).strip()


def h(seed: int, text: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


# ---------------------------------------------------------------- main


def fetch_canterbury() -> dict[str, str]:
    """Extract the Canterbury texts from the brotli sdist (pip download, cached) and return their sha256."""
    down = CACHE / "downloads"
    down.mkdir(parents=True, exist_ok=True)
    sdist = next(down.glob("brotli-1.2.1.tar.gz"), None)
    if sdist is None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(down),
                BROTLI,
            ],
            check=True,
        )
        sdist = next(down.glob("brotli-1.2.1.tar.gz"))
    with tarfile.open(sdist) as tar:
        for member, _ in CANTERBURY.values():
            target = down / member
            if not target.exists():
                data = tar.extractfile(f"brotli-1.2.1/tests/testdata/{member}").read()
                with tempfile.NamedTemporaryFile(dir=down, delete=False) as tmp:
                    tmp.write(data)
                Path(tmp.name).rename(target)
    for _source, (member, pinned) in CANTERBURY.items():
        if pinned and sha256(down / member) != pinned:
            raise SystemExit(f"{down / member}: sha256 mismatch; delete it and run again")
    return {"sdist": sdist.name, "sdist_sha256": sha256(sdist)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=CACHE / "text")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    brotli = fetch_canterbury()
    lex, common = lexicon()
    order = [HELD_OUT] + [
        s for s in SOURCES if s != HELD_OUT
    ]  # the held-out source claims its sentences first
    seen: dict[str, str] = {}
    rows, meta = [], {}
    dropped: dict[str, Counter] = defaultdict(Counter)
    samples: list[tuple[str, str, str]] = []
    rng = random.Random(args.seed)
    for source in order:
        package, files, blocks = SOURCES[source]()
        kept = []
        for block in blocks():
            if source in VERSE:
                block = unverse(block, common)
            for s in normalize_block(block, keep_failures=True):
                if s is None:
                    dropped[source]["normalise"] += 1
                    continue
                s = fix_caps(s, lex)
                if s is None:
                    dropped[source]["all-caps"] += 1
                    continue
                problem = english_problem(s, lex)
                if problem is None and key(s) in seen:
                    problem = "duplicate" if seen[key(s)] == source else f"duplicate-of-{seen[key(s)]}"
                if problem:
                    dropped[source][problem] += 1
                    if rng.random() < 0.02:
                        samples.append((source, problem, s))
                    continue
                seen[key(s)] = source
                kept.append(s)
        available = len(kept)
        if source in CAPS and len(kept) > CAPS[source]:
            kept = sorted(kept, key=lambda s: h(args.seed, s))[: CAPS[source]]
        for s in kept:
            if source == HELD_OUT:
                split = "test"
            else:
                split = "val" if h(args.seed + 1, s) % 10000 < VAL_FRACTION * 10000 else "train"
            rows.append(
                {
                    "id": f"{source}-{hashlib.sha1(s.encode()).hexdigest()[:10]}",
                    "source": source,
                    "licence": LICENCES[source],
                    "split": split,
                    "words": len(s.split()),
                    "text": s,
                }
            )
        version = brotli["sdist"] if package == "brotli" else deb_version(package)
        meta[source] = {
            "package": "pypi:" + BROTLI
            if package == "brotli"
            else ("apt:fortunes, apt:fortunes-min" if package == "fortunes" else f"apt:{package}"),
            "version": version
            if package != "fortunes"
            else f"fortunes {deb_version('fortunes')}, fortunes-min {deb_version('fortunes-min')}",
            "files": {str(f): sha256(f) for f in files},
            "licence": LICENCES[source],
            "held_out_source": source == HELD_OUT,
            "candidates_kept": available,
            "cap": CAPS.get(source),
            "sentences": dict(Counter(r["split"] for r in rows if r["source"] == source)),
            "dropped": dict(dropped[source]),
        }
        if package == "brotli":
            meta[source]["sdist_sha256"] = brotli["sdist_sha256"]
        print(
            f"{source:20s} kept {len(kept):6d} of {available:6d}  {meta[source]['sentences']}  "
            f"dropped {dict(dropped[source])}",
            file=sys.stderr,
        )

    rows.sort(key=lambda r: r["id"])
    tmp = args.out / "sentences.tsv.tmp"
    with tmp.open("w") as f:
        f.write("id\tsource\tlicence\tsplit\twords\ttext\n")
        for r in rows:
            f.write(f"{r['id']}\t{r['source']}\t{r['licence']}\t{r['split']}\t{r['words']}\t{r['text']}\n")
    tmp.rename(args.out / "sentences.tsv")
    tmp = args.out / "sentences.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(args.out / "sentences.jsonl")
    totals = Counter(r["split"] for r in rows)
    summary = {
        "seed": args.seed,
        "min_words": MIN_WORDS,
        "max_words": MAX_WORDS,
        "val_fraction": VAL_FRACTION,
        "held_out_source": HELD_OUT,
        "totals": dict(totals),
        "sources": meta,
    }
    tmp = args.out / "sources.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.rename(args.out / "sources.json")
    samples.sort()
    (args.out / "dropped.tsv").write_text("".join(f"{a}\t{b}\t{c}\n" for a, b, c in samples))
    print(f"total {dict(totals)} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
