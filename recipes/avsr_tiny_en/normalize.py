"""Speech-style text normalisation for the v2 corpus: numbers spelled out, abbreviations expanded, symbols
dropped; only letters, apostrophes, spaces and . , ? ! survive. Standalone (no avsr_cli import).

    normalize_block(text) -> list of sentences (already normalised), or [] when nothing survives
"""

from __future__ import annotations

import re
import unicodedata

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split()
)
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]
ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def _below_1000(n: int) -> str:
    words = []
    if n >= 100:
        words += [ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else ""))
    elif n or not words:
        words.append(ONES[n])
    return " ".join(words).replace("-", " ")


def number_words(n: int) -> str:
    """Cardinal in words: 1234 -> one thousand two hundred thirty four (US style, no 'and')."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 1000:
        return _below_1000(n)
    words = []
    for value, name in SCALES:
        if n >= value:
            words += [number_words(n // value), name]
            n %= value
    if n:
        words.append(_below_1000(n))
    return " ".join(words)


def ordinal_words(n: int) -> str:
    words = number_words(n).split()
    last = words[-1]
    if last in ORDINAL_WORDS:
        words[-1] = ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_words(n: int) -> str:
    """1992 -> nineteen ninety two, 1900 -> nineteen hundred, 2005 -> two thousand five."""
    if 2000 <= n <= 2009:
        return number_words(n)
    hi, lo = divmod(n, 100)
    if lo == 0:
        return number_words(hi) + " hundred"
    return number_words(hi) + (" oh " if lo < 10 else " ") + number_words(lo)


def digits_words(s: str) -> str:
    return " ".join(ONES[int(c)] for c in s)


# expansions applied before sentence splitting (so their periods never end a sentence); case-sensitive
ABBREVIATIONS = [
    (r"\bMr\.", "Mister"),
    (r"\bMrs\.", "Missus"),
    (r"\bMs\.", "Miz"),
    (r"\bDr\.", "Doctor"),
    (r"\bProf\.", "Professor"),
    (r"\bSt\.(?=\s+[A-Z])", "Saint"),
    (r"\bSt\.", "Street"),
    (r"\bJr\.", "Junior"),
    (r"\bSr\.", "Senior"),
    (r"\bGen\.", "General"),
    (r"\bCol\.", "Colonel"),
    (r"\bCapt\.", "Captain"),
    (r"\bLt\.", "Lieutenant"),
    (r"\bSgt\.", "Sergeant"),
    (r"\bGov\.", "Governor"),
    (r"\bSen\.", "Senator"),
    (r"\bRep\.", "Representative"),
    (r"\bRev\.", "Reverend"),
    (r"\bHon\.", "Honorable"),
    (r"\bMt\.", "Mount"),
    (r"\bFt\.(?=\s+[A-Z])", "Fort"),
    (r"\bAve\.", "Avenue"),
    (r"\bBlvd\.", "Boulevard"),
    (r"\bWm\.", "William"),
    (r"\bChas\.", "Charles"),
    (r"\bGeo\.", "George"),
    (r"\bThos\.", "Thomas"),
    (r"\bJas\.", "James"),
    (r"\bvs\.", "versus"),
    (r"\bv\.(?=\s)", "versus"),
    (r"\betc\.(?=\s+[a-z])", "et cetera"),
    (r"\betc\.", "et cetera."),
    (r"\be\.\s?g\.", "for example"),
    (r"\bi\.\s?e\.", "that is"),
    (r"\bapprox\.", "approximately"),
    (r"\bInc\.", "Incorporated"),
    (r"\bLtd\.", "Limited"),
    (r"\bCorp\.", "Corporation"),
    (r"\bCo\.(?=\s+[a-z,])", "Company"),
    (r"\bDept\.", "Department"),
    (r"\bUniv\.", "University"),
    (r"\bNo\.(?=\s*\d)", "number"),
    (r"\bno\.(?=\s*\d)", "number"),
    (r"\bU\.\s?S\.\s?A\.", "United States of America"),
    (r"\bU\.\s?S\.", "United States"),
    (r"\bU\.\s?K\.", "United Kingdom"),
    (r"\bU\.\s?N\.", "United Nations"),
    (r"\bJan\.", "January"),
    (r"\bFeb\.", "February"),
    (r"\bAug\.", "August"),
    (r"\bSept?\.", "September"),
    (r"\bOct\.", "October"),
    (r"\bNov\.", "November"),
    (r"\bDec\.", "December"),
    (r"\bOK\b", "okay"),
    (r"\bO\.K\.", "okay"),
    (r"\bTV\b", "television"),
    (r"\bTV's\b", "television's"),
    (r"&", " and "),
    (r"\bw/", "with "),
]
ABBREVIATIONS = [(re.compile(p), r) for p, r in ABBREVIATIONS]

UNICODE_MAP = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u2032": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u00ab": '"',
    "\u00bb": '"',
    "\u2013": " - ",
    "\u2014": " -- ",
    "\u2015": " -- ",
    "\u2026": "...",
    "\u00a0": " ",
    "\u00a3": "£",
    "`": "'",
    "\u00b4": "'",
}


def to_ascii(text: str) -> str:
    """Typographic marks to ASCII; accented letters lose their accents (cafe); anything else is kept, so that
    the odd-character filter can drop the sentence later."""
    text = "".join(UNICODE_MAP.get(c, c) for c in text)
    out = []
    for c in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(c):
            continue
        out.append(c)
    return "".join(out)


def _money(m: re.Match) -> str:
    sym, whole, cents, scale = m.group(1), m.group(2).replace(",", ""), m.group(3), m.group(4)
    unit, sub = {"$": ("dollar", "cent"), "£": ("pound", "penny")}[sym]
    n = int(whole)
    words = number_words(n)
    if scale:
        return f"{words} {scale} {unit}s"
    words += f" {unit}" + ("" if n == 1 else "s")
    if cents and int(cents):
        c = int(cents)
        words += (
            " and " + number_words(c) + " " + (sub if c == 1 else ("pence" if sub == "penny" else "cents"))
        )
    return words


def _time(m: re.Match) -> str:
    h, mnt = int(m.group(1)), int(m.group(2))
    if h > 24 or mnt > 59:
        return m.group(0)
    if mnt == 0:
        return number_words(h) + " o'clock"
    return number_words(h) + (" oh " if mnt < 10 else " ") + number_words(mnt)


def _plain_number(m: re.Match) -> str:
    s = m.group(0)
    if "," in s:
        return number_words(int(s.replace(",", "")))
    if "." in s:
        whole, frac = s.split(".")
        return number_words(int(whole)) + " point " + digits_words(frac)
    if len(s) > 1 and s[0] == "0":
        return digits_words(s)  # 007, 0800: digit by digit
    n = int(s)
    if len(s) == 4 and 1100 <= n <= 2099:
        return year_words(n)
    if len(s) > 9:
        return digits_words(s)
    return number_words(n)


NUMBER_RULES = [
    (re.compile(r"([$£])\s?(\d[\d,]*)(?:\.(\d\d))?(?:\s(million|billion|thousand))?\b"), _money),
    (re.compile(r"\b(\d{1,2}):(\d\d)\b"), _time),
    (re.compile(r"\b(\d+)\s?%"), lambda m: number_words(int(m.group(1))) + " percent"),
    (re.compile(r"\b(\d+)(?:st|nd|rd|th)\b", re.I), lambda m: ordinal_words(int(m.group(1)))),
    (
        re.compile(r"\b(\d{4})s\b"),
        lambda m: (
            year_words(int(m.group(1)))[:-1] + "ies"
            if year_words(int(m.group(1))).endswith("y")
            else year_words(int(m.group(1))) + "s"
        ),
    ),
    (
        re.compile(r"\b(\d{1,3})s\b"),
        lambda m: (lambda w: w[:-1] + "ies" if w.endswith("y") else w + "s")(number_words(int(m.group(1)))),
    ),
    (
        re.compile(r"\b(1[1-9]\d\d|20\d\d)\s?-\s?(1[1-9]\d\d|20\d\d)\b"),
        lambda m: year_words(int(m.group(1))) + " to " + year_words(int(m.group(2))),
    ),
    (re.compile(r"\b1/2\b"), lambda m: "one half"),
    (re.compile(r"\b1/4\b"), lambda m: "one quarter"),
    (re.compile(r"\b3/4\b"), lambda m: "three quarters"),
    (re.compile(r"\b\d{1,3}(?:,\d{3})+\b|\b\d+\.\d+\b|\b\d+\b"), _plain_number),
]

SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z0-9])")
BAD = re.compile(r"https?:|www\.|@|\.com\b|\.org\b|\.net\b|\.edu\b|[<>{}=\\|^~#+*/_]")


def expand(text: str) -> str:
    for pattern, repl in ABBREVIATIONS:
        text = pattern.sub(repl, text)
    return text


def split_sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text).strip()
    parts = SENTENCE_END.split(text)
    out, carry = [], ""
    for p in parts:  # a split right after a single capital (initials: J. R. Smith) is undone
        p = carry + p
        if re.search(r"(?:^|\s)[A-Z]\.$", p):
            carry = p + " "
            continue
        carry = ""
        out.append(p)
    if carry:
        out.append(carry.strip())
    return out


def normalize_sentence(s: str) -> str | None:
    """One sentence to speech form, or None if it cannot be said cleanly."""
    if BAD.search(s):
        return None
    for pattern, fn in NUMBER_RULES:
        s = pattern.sub(fn, s)
    if re.search(r"\d", s):
        return None
    s = s.replace("--", ", ").replace(" - ", ", ")
    s = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", s)  # well-known -> well known
    s = s.replace("-", " ")
    s = re.sub(r"[\"()\[\]]", " ", s)
    s = re.sub(r"\s*[;:]\s*", ", ", s)
    s = re.sub(r"\.\.\.+", ",", s)
    s = re.sub(r"(^|[\s,.?!])'+|'+(?=$|[\s,.?!])", r"\1", s)  # quote marks, not apostrophes
    s = re.sub(r"\s+([,.?!])", r"\1", s)
    s = re.sub(r"([,.?!])[,.?!]+", lambda m: m.group(0)[-1] if m.group(0)[-1] in "?!" else m.group(1), s)
    s = re.sub(r"\s+", " ", s).strip(" ,")
    if not s or not re.fullmatch(r"[A-Za-z][A-Za-z ,.?!']*", s):
        return None
    if re.search(r"[.?!](?=.)", s.rstrip(".?!")):  # a period left inside: an unexpanded abbreviation
        return None
    s = re.sub(r"[,\s]+$", "", s)
    if not s:
        return None
    if s[-1] not in ".?!":
        s += "."
    return s[0].upper() + s[1:]


def normalize_block(text: str, keep_failures: bool = False) -> list:
    """The sentences of `text`, normalised; with keep_failures, None stands for each one that failed."""
    out = []
    for raw in split_sentences(expand(to_ascii(text))):
        s = normalize_sentence(raw)
        if s or keep_failures:
            out.append(s)
    return out


if __name__ == "__main__":
    import sys

    for line in sys.argv[1:] or sys.stdin:
        print(normalize_block(line))
