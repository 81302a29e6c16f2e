"""Sentences full of names of people and places, dates and numbers, generated from templates.

    python -m recipes.avsr_tiny_en.names [--count 20] [--seed 0]

Every training source of text.py is a book or a dictionary: almost no first names, no modern place names, few
numbers, so the model never learnt to keep a name it hears. These sentences fill that gap for the
training slices (slice.py). People: first and last names of Faker's person providers (MIT licence; the
English, Irish, Indian, Spanish, French, German, Italian, Dutch, Swedish, Polish, Portuguese and Turkish
locales, ASCII spellings only). Places: the cities of the IANA time-zone database (public domain, read
from the system's /usr/share/zoneinfo) and Faker's country names. Every name of names_ab.py (the held-out
names test) is excluded, so that test stays unseen. Numbers, times and dates are written as words by the
corpus normaliser.
"""

from __future__ import annotations

import argparse
import importlib
import random
import re
from functools import lru_cache
from pathlib import Path

from .names_ab import SENTENCES as HELD_OUT_SENTENCES
from .normalize import normalize_block

LOCALES = [
    "en_US", "en_GB", "en_IE", "en_IN", "es_ES", "fr_FR", "de_DE", "it_IT", "nl_NL", "sv_SE", "pl_PL",
    "pt_PT", "tr_TR",
]  # fmt: skip
ZONEINFO = Path("/usr/share/zoneinfo")
ZONE_REGIONS = ("Africa", "America", "Asia", "Atlantic", "Australia", "Europe", "Indian", "Pacific")
WORD = re.compile(r"^[A-Z][a-z]{2,}$")

# {p}: a first name, {q}: another, {full}: first and last name, {last}: a last name, {city}, {city2},
# {country}, {n}: a small number, {big}: a larger one, {year}, {time}, {day}, {month}
TEMPLATES = [
    "{p} moved to {city} in {year}.",
    "Tell {p} the train to {city} leaves at {time}.",
    "{full} will meet us at the station in {city}.",
    "Have you heard from {p} since she went to {country}?",
    "Have you heard from {p} since he went to {country}?",
    "{p} and {q} drove from {city} to {city2} in one day.",
    "The flight from {city} was delayed by {n} hours.",
    "My cousin {p} has lived in {city} for {n} years.",
    "Please send the invoice to {full} before {day}.",
    "{p} says the museum in {city} opens at {time} on {day}s.",
    "We stayed with {p} and {q} near {city} last {month}.",
    "Doctor {last} will see you on {day} at {time}.",
    "The meeting with {full} moved to the {ordinal} of {month}.",
    "{p} bought {n} tickets for the concert in {city}.",
    "It is about {big} kilometres from {city} to {city2}.",
    "Ask {p} whether the office in {city} is open on {day}.",
    "{full} was born in {city} in {year}.",
    "The package for {p} arrived from {country} this morning.",
    "{p} ran the marathon in {city} in under {n} hours.",
    "Our guide in {city} was a student called {p}.",
    "I think {p} still owes {q} {big} dollars.",
    "The ferry from {city} to {city2} takes {n} hours.",
    "{p} called to say she is stuck in traffic outside {city}.",
    "{p} called to say he is stuck in traffic outside {city}.",
    "Professor {last} gave a talk in {city} on {day}.",
    "{p} works for a small company in {city}.",
    "Room {big} is booked for {full} until {day}.",
    "Grandma {p} still lives in a little house near {city}.",
    "The team from {country} scored {n} goals in the final.",
    "{p} wants to know if {q} is coming to {city} in {month}.",
    "The hotel in {city} costs {big} euros a night.",
    "{full} and {p} {last2} signed the contract in {city}.",
    "Her brother {p} teaches music in {city}.",
    "We landed in {city} at {time} and took a taxi to the hotel.",
    "Mister {last} left a message for you at {time}.",
    "{p} is flying to {country} on the {ordinal} of {month}.",
    "The bus to {city} leaves from platform {n}.",
    "{p} found {n} old letters from {city} in the attic.",
    "Is {p} still working in {city}, or did she move to {city2}?",
    "Can you pick up {p} from the airport in {city} on {day}?",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]  # fmt: skip
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "twelfth", "fifteenth", "twentieth", "twenty first", "thirtieth"]  # fmt: skip


def held_out_names() -> set[str]:
    return {n for _, names in HELD_OUT_SENTENCES for name in names for n in name.split()}


@lru_cache(maxsize=1)
def name_pools() -> tuple[list[str], list[str], list[str], list[str]]:
    """(first names, last names, cities, countries), sorted, without the held-out test's names."""
    banned = held_out_names()
    first, last = set(), set()
    for loc in LOCALES:
        # Faker (the corpus recipe's own dependency, PIP_PACKAGES): its name lists are class attributes
        person = importlib.import_module(f"faker.providers.person.{loc}").Provider
        for attr in ("first_names_male", "first_names_female", "first_names"):
            first.update(_names(getattr(person, attr, ())))
        last.update(_names(getattr(person, "last_names", ())))
    address = importlib.import_module("faker.providers.address.en_US").Provider
    countries = {c for c in address.countries if re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)*", c)}
    cities = set()
    for region in ZONE_REGIONS:
        for p in (ZONEINFO / region).glob("*"):
            city = p.name.replace("_", " ")
            if p.is_file() and all(WORD.match(w) for w in city.split()):
                cities.add(city)
    return tuple(sorted(x - banned) for x in (first, last, cities, countries))  # type: ignore[return-value]


def _names(values) -> set[str]:
    return {v for v in values if WORD.match(v)}


def name_sentences(count: int, seed: int) -> list[str]:
    """`count` normalised sentences (reproducible for a seed), each with at least one name."""
    return [text for text, _ in named_sentences(count, seed)]


NAME_SLOTS = ("p", "q", "full", "last", "last2", "city", "city2", "country")


def named_sentences(count: int, seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """`name_sentences` with the names each sentence holds (a glossary a user would give for it)."""
    first, last, cities, countries = name_pools()
    rng = random.Random(f"names:{seed}")
    out: list[tuple[str, tuple[str, ...]]] = []
    while len(out) < count:
        city, city2 = rng.sample(cities, 2)
        p, q = rng.sample(first, 2)
        last_name, last2 = rng.sample(last, 2)
        slots = {
            "p": p,
            "q": q,
            "full": f"{rng.choice(first)} {last_name}",
            "last": last_name,
            "last2": last2,
            "city": city,
            "city2": city2,
            "country": rng.choice(countries),
            "n": str(rng.randint(2, 12)),
            "big": str(rng.choice([rng.randint(13, 99), rng.randint(100, 999), rng.randint(1000, 9999)])),
            "year": str(rng.randint(1950, 2029)),
            "time": f"{rng.randint(1, 12)}:{rng.choice(['00', '15', '30', '45'])}",
            "day": rng.choice(DAYS),
            "month": rng.choice(MONTHS),
            "ordinal": rng.choice(ORDINALS),
        }
        template = rng.choice(TEMPLATES)
        names = tuple(slots[s] for s in NAME_SLOTS if "{" + s + "}" in template)
        out.extend((text, names) for text in normalize_block(template.format(**slots))[:1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    first, last, cities, countries = name_pools()
    print(
        f"# {len(first)} first names, {len(last)} last names, {len(cities)} cities, "
        f"{len(countries)} countries"
    )
    for s in name_sentences(args.count, args.seed):
        print(s)


if __name__ == "__main__":
    main()
