"""Detect case flips inside words and restore a plausible casing (the case step of ``normalize.py``).

Flipping the case of letters inside words ("hoUse", "THe") changes how the text tokenizes and
throws a detector far off. Human and model text rarely has such words, so a text is treated as
attacked when at least ``MIN_ODD`` different *odd* words make up at least ``MIN_SHARE`` of its
words. Odd: a case change inside the word that no ordinary spelling has (ordinary: lower, UPPER,
Title, CamelCase humps like "JavaScript"/"McDonald", an acronym plural like "URLs", one lower-case
letter before a capitalised or upper-case rest like "iPhone", "eBay", "mRNA", "pH"). Flips of
word-initial letters (RAID's upper/lower swap: "the House") make ordinary-looking words and are
not undone; they barely move the detector (see the README's evasion table).

In an attacked text each odd word gets back the form the text itself uses most for that word in
the middle of sentences (its own vote: plain forms, or a CamelCase/"iPhone" form that occurs at
least twice); else its first letter as it is and the rest lower case (or upper case when most of
the rest is upper: "NASa" → "NASA"). Ordinary words are left alone. Letters keep their positions
(only same-length case changes), so offsets hold.
"""

from __future__ import annotations

import re
from collections import Counter

_LOWER, _UPPER = "a-zß-öø-ÿ", "A-ZÀ-ÖØ-Þ"
_WORD = re.compile(f"[{_LOWER}{_UPPER}]+")
_INNER = re.compile(f"[{_LOWER}][{_UPPER}]|[{_UPPER}]{{2}}[{_LOWER}]")
_CAMEL = re.compile(f"(?:[{_UPPER}][{_LOWER}]+){{2,}}")
_BRAND = re.compile(f"[{_LOWER}](?:[{_UPPER}][{_LOWER}]+|[{_UPPER}]+s?)")  # iPhone, eBay, iOS, mRNA, pH
_SENTENCE_END = re.compile(r"[.!?¿¡:\n][\"'”’»)\]]*\s*$")
MIN_ODD = 2  # different words with unusual casing, at least this many ...
MIN_SHARE = 0.04  # ... and at least this share of the words with two or more letters


def suspicious(text: str) -> bool:
    """Cheap pre-check: several case changes inside words? (``restore`` decides.)"""
    for found, _ in enumerate(_INNER.finditer(text), start=1):
        if found >= MIN_ODD:
            return True
    return False


def ordinary(word: str, strict: bool = False) -> bool:
    """A casing people and models write: lower, UPPER, Title, an acronym plural; unless ``strict``
    (an attacked text, where "fInal" and "ExPerts" look just like them), also CamelCase humps and
    a one-letter lower-case prefix ("iPhone")."""
    if word.islower() or word.isupper() or (word[0].isupper() and word[1:].islower()):
        return True
    if len(word) >= 3 and word[-1] == "s" and word[:-1].isupper():
        return True
    return not strict and (_CAMEL.fullmatch(word) is not None or _BRAND.fullmatch(word) is not None)


def restore(chars: list[str]) -> int:
    """Restore casing in place when the text looks case-attacked; the number of letters changed.

    Attacked: at least ``MIN_ODD`` different odd words, making up at least ``MIN_SHARE`` of the words
    (a brand like "iPhone" repeated, or "pH" in one text, is not enough).
    """
    text = "".join(chars)
    words = [
        (m.start(), m.group(), k == 0 or _starts_sentence(text, m.start()))
        for k, m in enumerate(_WORD.finditer(text))
    ]
    counted = sum(1 for w in words if len(w[1]) >= 2)
    odd = [word for _, word, _ in words if not ordinary(word)]
    if len({w.lower() for w in odd}) < MIN_ODD or len(odd) < MIN_SHARE * counted:
        return 0
    # The text's own usage: plain forms (lower, UPPER, Title) anywhere, a CamelCase or "iPhone"
    # form only when it occurs twice (a random flip rarely repeats itself exactly).
    seen = Counter(word for _, word, first in words if not first and ordinary(word))
    forms: dict[str, Counter[str]] = {}
    for word, n in seen.items():
        if ordinary(word, strict=True) or n >= 2:
            forms.setdefault(word.lower(), Counter())[word] = n
    changed = 0
    for start, word, first in words:
        fixed = _fixed(word, first, forms.get(word.lower()))
        for k, (old, new) in enumerate(zip(word, fixed, strict=True)):
            if old != new:
                chars[start + k] = new
                changed += 1
    return changed


def _fixed(word: str, first: bool, forms: Counter[str] | None) -> str:
    """The casing an odd word gets in an attacked text (any other word stays as it is)."""
    if ordinary(word, strict=True) or (forms and word in forms):
        return word
    if forms:
        best = forms.most_common(1)[0][0]
        return _same_length(word, best[0].upper() + best[1:] if first else best)
    rest = word[1:]
    upper = sum(c.isupper() for c in rest)
    rest = rest.upper() if len(rest) >= 2 and upper * 2 > len(rest) else rest.lower()
    return _same_length(word, word[0] + rest)


def _same_length(word: str, fixed: str) -> str:
    """``fixed`` unless a case mapping changed the length ("ß" → "SS"): then the word stays."""
    return fixed if len(fixed) == len(word) else word


def _starts_sentence(text: str, start: int) -> bool:
    """After a sentence end (looked for in the 8 characters before: constant time per word)."""
    return _SENTENCE_END.search(text, max(0, start - 8), start) is not None
