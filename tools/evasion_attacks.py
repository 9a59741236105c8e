"""The cheap evasions of the RAID benchmark (Dugan et al., ACL 2024), written from the paper's descriptions.

Each attack is ``attack(text, rng, rate) -> text``; ``rate`` is its strength (the paper's values
are the defaults in ``ATTACKS``). The character-level ones are what ``autext_jax.normalize`` undoes;
the others are here for reference (they change words, so no normalization can undo them).

- ``homoglyph``: Latin letters → Cyrillic/Greek look-alikes (rate: share of replaceable letters; 1.0);
- ``zero_width``: an invisible character (U+200B, U+200C, U+2060, U+FEFF) after a share of all
  characters (1.0: after every one);
- ``whitespace``: a share of the spaces doubled or replaced by a no-break, thin, narrow no-break or
  em space (0.2);
- ``case_start``: the case of a share of word-initial letters flipped (RAID's upper/lower swap; 0.05);
- ``case_inner``: the case of a share of letters inside words flipped (0.05);
- ``misspelling``: a share of words of four letters or more get a typo (adjacent letters swapped,
  one dropped or doubled; RAID uses a list of common English misspellings, these work for Spanish
  too; 0.2);
- ``article_deletion``: a share of the English and Spanish articles deleted (0.5);
- ``number_swap``: a share of the numbers get random digits (0.5);
- ``paragraphs``: a blank line before a share of the sentences (0.5).

The homoglyph table here is written independently of the confusables data the normalizer uses, so
a test that the normalizer undoes it is not circular.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

HOMOGLYPHS = {
    "a": "а", "c": "с", "d": "ԁ", "e": "е", "h": "һ", "i": "і", "j": "ј", "o": "оο", "p": "рρ",
    "s": "ѕ", "x": "х", "y": "у", "A": "АΑ", "B": "ВΒ", "C": "С", "E": "ЕΕ", "H": "НΗ", "I": "ІΙ",
    "K": "КΚ", "M": "МΜ", "N": "Ν", "O": "ОΟ", "P": "РΡ", "T": "ТΤ", "X": "ХΧ", "Z": "Ζ",
}  # fmt: skip
INVISIBLE = ("\u200b", "\u200c", "\u2060", "\ufeff")
SPACE_VARIANTS = ("  ", "\u00a0", "\u2009", "\u202f", "\u2003")
ARTICLES = frozenset("a an the el la los las un una unos unas".split())
_WORD = re.compile(r"[^\W\d_]+")
_NUMBER = re.compile(r"\d+")
_SENTENCE_GAP = re.compile(r"(?<=[.!?]) (?=\S)")


def homoglyph(text: str, rng: random.Random, rate: float) -> str:
    return "".join(rng.choice(HOMOGLYPHS[c]) if c in HOMOGLYPHS and rng.random() < rate else c for c in text)


def zero_width(text: str, rng: random.Random, rate: float) -> str:
    return "".join(c + rng.choice(INVISIBLE) if rng.random() < rate else c for c in text)


def whitespace(text: str, rng: random.Random, rate: float) -> str:
    return "".join(rng.choice(SPACE_VARIANTS) if c == " " and rng.random() < rate else c for c in text)


def case_start(text: str, rng: random.Random, rate: float) -> str:
    return _WORD.sub(
        lambda m: _flip(m.group()[0]) + m.group()[1:] if rng.random() < rate else m.group(), text
    )


def case_inner(text: str, rng: random.Random, rate: float) -> str:
    def flip_inside(m: re.Match) -> str:
        word = m.group()
        return word[0] + "".join(_flip(c) if rng.random() < rate else c for c in word[1:])

    return _WORD.sub(flip_inside, text)


def _flip(char: str) -> str:
    flipped = char.lower() if char.isupper() else char.upper()
    return flipped if len(flipped) == 1 else char


def misspelling(text: str, rng: random.Random, rate: float) -> str:
    def typo(m: re.Match) -> str:
        word = m.group()
        if len(word) < 4 or rng.random() >= rate:
            return word
        k = rng.randrange(1, len(word) - 2)
        kind = rng.randrange(3)
        if kind == 0:
            return word[:k] + word[k + 1] + word[k] + word[k + 2 :]
        if kind == 1:
            return word[:k] + word[k + 1 :]
        return word[: k + 1] + word[k:]

    return _WORD.sub(typo, text)


def article_deletion(text: str, rng: random.Random, rate: float) -> str:
    out = re.sub(
        r"\b(\w+) ",
        lambda m: "" if m.group(1).lower() in ARTICLES and rng.random() < rate else m.group(),
        text,
    )
    return out


def number_swap(text: str, rng: random.Random, rate: float) -> str:
    def swap(m: re.Match) -> str:
        if rng.random() >= rate:
            return m.group()
        return "".join(rng.choice("0123456789") for _ in m.group())

    return _NUMBER.sub(swap, text)


def paragraphs(text: str, rng: random.Random, rate: float) -> str:
    return _SENTENCE_GAP.sub(lambda m: "\n\n" if rng.random() < rate else " ", text)


@dataclass(frozen=True)
class Attack:
    name: str
    apply: Callable[[str, random.Random, float], str]
    rate: float
    character_level: bool  # undone by normalization (the others change words)


ATTACKS = {
    a.name: a
    for a in (
        Attack("homoglyph", homoglyph, 1.0, True),
        Attack("zero_width", zero_width, 1.0, True),
        Attack("whitespace", whitespace, 0.2, True),
        Attack("case_start", case_start, 0.05, True),
        Attack("case_inner", case_inner, 0.05, True),
        Attack("misspelling", misspelling, 0.2, False),
        Attack("article_deletion", article_deletion, 0.5, False),
        Attack("number_swap", number_swap, 0.5, False),
        Attack("paragraphs", paragraphs, 0.5, False),
    )
}


def attack_texts(texts: list[str], attack: Attack, rate: float | None = None, seed: int = 0) -> list[str]:
    """``texts`` under ``attack`` (its default rate unless ``rate``), reproducibly per seed and attack."""
    rng = random.Random(f"{seed}:{attack.name}")
    strength = attack.rate if rate is None else rate
    return [attack.apply(text, rng, strength) for text in texts]
