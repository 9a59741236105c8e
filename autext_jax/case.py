"""Detect case flips and restore a plausible casing (the case step of ``normalize.py``).

Two evasions flip letter case: inside words ("hoUse", "THe") and at word starts (RAID's attack:
"the House", a sentence starting "the"). Human and model text rarely shows either, so a text is
treated as attacked only when such words are both several and a clear share of its words:

- *odd* words: a case change inside the word that no ordinary spelling has (ordinary: lower,
  UPPER, Title, CamelCase humps like "JavaScript"/"McDonald", an acronym plural like "URLs", one
  lower-case letter before a capitalised or upper-case rest like "iPhone", "eBay", "mRNA", "pH");
- *flipped starts*: a sentence starting in lower case, or a capitalised word mid-sentence whose
  lower-case form the same text also uses mid-sentence ("of the House ... the house").

An attacked text gets back, per word: the form the text itself uses most for that word in the
middle of sentences (its own vote); else, for an odd word, its first letter as it is and the rest
lower case (or upper case when most of the rest is upper: "NASa" → "NASA"); a sentence start is
capitalised. Letters keep their positions (only same-length case changes), so offsets hold.
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
    votes = Counter(word for _, word, first in words if not first and ordinary(word))
    forms: dict[str, Counter[str]] = {}
    for word, n in votes.items():
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
    """The casing this word gets in an attacked text (itself when nothing is wrong with it)."""
    if ordinary(word, strict=True):
        if first:
            return word if not word[0].islower() else _same_length(word, word[0].upper() + word[1:])
        if forms and len(forms) > 1:  # the text uses this word in several casings mid-sentence
            best, best_n = forms.most_common(1)[0]
            if best != word and best_n > forms[word]:
                return best
        return word
    if forms:
        best = forms.most_common(1)[0][0]
        return _same_length(word, best[0].upper() + best[1:] if first else best)
    rest = word[1:]
    upper = sum(c.isupper() for c in rest)
    rest = rest.upper() if len(rest) >= 2 and upper * 2 > len(rest) else rest.lower()
    head = word[0].upper() if first else word[0]
    return _same_length(word, head + rest)


def _same_length(word: str, fixed: str) -> str:
    """``fixed`` unless a case mapping changed the length ("ß" → "SS"): then the word stays."""
    return fixed if len(fixed) == len(word) else word


def _starts_sentence(text: str, start: int) -> bool:
    """After a sentence end (looked for in the 8 characters before: constant time per word)."""
    return _SENTENCE_END.search(text, max(0, start - 8), start) is not None
