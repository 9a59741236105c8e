"""Undo cheap evasions before tokenizing, and say that they happened.

One function, ``normalize(text)``, used by every scoring path. It

- removes invisible characters a writer does not type: Unicode format characters (category Cf:
  zero-width space/joiners, word joiner, BOM, bidi controls, soft hyphen, tag characters) and
  variation selectors, keeping the ones that belong to an emoji sequence (ZWJ between emoji, a
  variation selector after a symbol, tag characters of a flag) or to a script that needs them (a
  joiner between two letters that are not Latin, Greek or Cyrillic);
- folds look-alike letters of other scripts (Cyrillic "а", Greek "Ο", Cherokee "Ꭺ") to the Latin
  letters they imitate, using Unicode's confusables data (the ``confusable_homoglyphs`` package),
  judged per word: a word mixing Latin letters with look-alikes is folded; a run of words written
  wholly in look-alikes of one script is folded only if every letter of the run has a Latin twin
  (a real Greek or Russian word nearly always has one that does not), and a lone one-letter word
  only when the text shows the attack elsewhere;
- maps space variants (no-break, thin, em, ideographic spaces) to a plain space;
- restores casing when the text has far more words with case changes inside them ("hoUse",
  "THe") than human or model text shows (``case.py`` says how).

The result keeps a map from every character of the normalized text back to the original, so spans
found in the normalized text (segments) are reported on the text the user sent. ``obfuscated`` is
true when characters a writer does not normally type were removed or folded, or casing was
restored; a lone BOM at the start and ordinary space variants change the text without setting it.

Fast path: a text with none of the characters above and few case changes inside words is returned
as it is (one C-level regex search and one ``findall``), so clean text costs almost nothing.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from autext_jax import case as case_step

REASONS = ("invisible", "confusable", "case", "space")
NORMALIZATION_VERSION = "normalize-1"  # bump when the output for some text changes (cached token ids)

_ZWJ, _ZWNJ, _BOM = "\u200d", "\u200c", "\ufeff"
_VARIATION_SELECTORS = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF), (0x180B, 0x180F))
# Default-ignorable code points outside category Cf (Unicode's DerivedCoreProperties): combining
# grapheme joiner, Hangul fillers, Khmer inherent vowels; all render as nothing.
_OTHER_IGNORABLE = (0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0)
# Cf characters that are visible (prepended concatenation marks): never removed.
_VISIBLE_FORMAT = frozenset(
    chr(c) for c in (*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x110BD, 0x110CD)
)
_TAGS = (0xE0000, 0xE007F)
_BLACK_FLAG = "\U0001f3f4"
_SPACE = " "
_FOLD_SCRIPTS_SKIPPED = ("LATIN", "COMMON", "INHERITED")
_ODD_SPACE_SHARE = 0.05  # space variants above this share of all spaces (and at least 3) are a signal
_ODD_SPACE_MIN = 3


@dataclass(frozen=True)
class Normalized:
    """A normalized text, what was changed, and where each of its characters came from.

    ``changed``: characters removed, folded, re-cased or replaced. ``reasons``: which steps changed
    something (a subset of ``REASONS``). ``obfuscated``: the changes look like an evasion (see the
    module docstring). ``origin`` (``None`` when nothing changed): for each character of ``text``,
    its index in the original, increasing.
    """

    text: str
    original_length: int
    changed: int = 0
    obfuscated: bool = False
    reasons: tuple[str, ...] = ()
    origin: np.ndarray | None = field(default=None, repr=False, compare=False)

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that ``text[start:end]`` came from (removed characters
        inside it included; an empty span maps to an empty span)."""
        if self.origin is None:
            return start, end
        n = len(self.text)
        if not 0 <= start <= end <= n:
            raise ValueError(f"span ({start}, {end}) is outside the normalized text of {n} characters")
        if start == end:
            at = int(self.origin[start]) if start < n else self.original_length
            return at, at
        return int(self.origin[start]), int(self.origin[end - 1]) + 1

    def original_tiling(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Spans that tile the normalized text, mapped to spans that tile the original: each cut
        moves to the original index of the character after it (a removed character before a cut
        joins the next span), the first span starts at 0 and the last ends at the original's end."""
        if self.origin is None or not spans:
            return list(spans)
        cuts = [0] + [self.original_offset(start) for start, _ in spans[1:]] + [self.original_length]
        return list(zip(cuts[:-1], cuts[1:], strict=True))

    def original_offset(self, index: int) -> int:
        """The original index of normalized position ``index`` (``len(text)`` maps to the original's end)."""
        if self.origin is None:
            return index
        return int(self.origin[index]) if index < len(self.text) else self.original_length


# ---- tables (built once, on first use) ---------------------------------------------------------


@cache
def _invisible() -> frozenset[str]:
    """Every character this step removes (emoji and script exceptions are decided in context)."""
    found = {
        chr(c)
        for plane in (range(0x0, 0x20000), range(0xE0000, 0xE1000))
        for c in plane
        if unicodedata.category(chr(c)) == "Cf"
    }
    for low, high in _VARIATION_SELECTORS:
        found.update(chr(c) for c in range(low, high + 1))
    found.update(chr(c) for c in _OTHER_IGNORABLE)
    return frozenset(found - _VISIBLE_FORMAT)


@cache
def _odd_spaces() -> frozenset[str]:
    """Space separators other than the plain space (no-break, thin, em, ideographic, ...)."""
    return frozenset(chr(c) for c in range(0x10000) if unicodedata.category(chr(c)) == "Zs") - {_SPACE}


@cache
def fold_table() -> dict[str, str]:
    """Letter of another script → the ASCII letter it imitates, from Unicode's confusables data.

    The data lists, per character, the characters it can be confused with (its whole class). A
    foreign letter's target is an ASCII letter of its class, of the same case when the class has
    one: Cyrillic "І" folds to "I", not to the class's prototype "l".
    """
    from confusable_homoglyphs import categories, confusables

    data = confusables.confusables_data
    table = {}
    for char, entries in data.items():
        if len(char) != 1 or not unicodedata.category(char).startswith("L"):
            continue
        if categories.alias(char) in _FOLD_SCRIPTS_SKIPPED:
            continue
        ascii_twins = [_plain(e["c"]) for e in entries if _plain(e["c"]).isascii()]
        ascii_twins = [c for c in ascii_twins if len(c) == 1 and c.isalpha()]
        for twin in list(ascii_twins):  # the class closure: the twin's own look-alikes
            ascii_twins += [_plain(e["c"]) for e in data.get(twin, ()) if _plain(e["c"]).isascii()]
        ascii_twins = [c for c in ascii_twins if len(c) == 1 and c.isalpha()]
        if not ascii_twins:
            continue
        same_case = [c for c in ascii_twins if c.isupper() == char.isupper()]
        table[char] = (same_case or ascii_twins)[0]
    return table


def _plain(chars: str) -> str:
    return unicodedata.normalize("NFC", chars.replace("\u200e", "").replace("\u200f", ""))


@cache
def _suspect() -> re.Pattern[str]:
    """Any character the slow path may change: one C-level search decides whether to take it."""
    codes = sorted(ord(c) for c in _invisible() | _odd_spaces() | set(fold_table()))
    ranges: list[list[int]] = []
    for code in codes:  # consecutive code points as ranges: a compact class is a fast one
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    parts = (re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)
    return re.compile("[" + "".join(parts) + "]")


@cache
def _script(char: str) -> str:
    from confusable_homoglyphs import categories

    return categories.alias(char)


# ---- the step ---------------------------------------------------------------------------------


def normalize(text: str) -> Normalized:
    """``text`` with evasions undone (see the module docstring); unchanged text is returned as is."""
    unusual = not text.isascii() and _suspect().search(text) is not None
    if not unusual and not case_step.suspicious(text):
        return Normalized(text, len(text))
    chars, origin, reasons, changed = list(text), list(range(len(text))), set(), 0
    obfuscated = False
    if unusual:
        chars, origin, removed, signal = _drop_invisible(text)
        if removed:
            reasons.add("invisible")
            changed += removed
            obfuscated |= signal
        spaces, odd = _map_spaces(chars)
        if odd:
            reasons.add("space")
            changed += odd
            obfuscated |= odd >= _ODD_SPACE_MIN and odd > _ODD_SPACE_SHARE * spaces
        folded = _fold_confusables(chars)
        if folded:
            reasons.add("confusable")
            changed += folded
            obfuscated = True
    recased = case_step.restore(chars)
    if recased:
        reasons.add("case")
        changed += recased
        obfuscated = True
    if not changed:
        return Normalized(text, len(text))
    return Normalized(
        "".join(chars),
        len(text),
        changed,
        obfuscated,
        tuple(r for r in REASONS if r in reasons),
        np.asarray(origin, dtype=np.int64),
    )


def _drop_invisible(text: str) -> tuple[list[str], list[int], int, bool]:
    """Characters and their origins without the invisible ones; how many went; whether that is a signal."""
    invisible = _invisible()
    chars, origin = [], []
    removed, signal = 0, False
    in_flag = False
    for i, char in enumerate(text):
        if char == _BLACK_FLAG:
            in_flag = True
        elif char in invisible and not _kept(text, i, in_flag):
            removed += 1
            signal |= not (char == _BOM and i == 0)
            continue
        elif not (_TAGS[0] <= ord(char) <= _TAGS[1]):
            in_flag = False
        chars.append(char)
        origin.append(i)
    return chars, origin, removed, signal


def _kept(text: str, i: int, in_flag: bool) -> bool:
    """Whether the invisible character at ``i`` belongs where it is (emoji sequence, joining script)."""
    char = text[i]
    code = ord(char)
    if _TAGS[0] <= code <= _TAGS[1]:
        return in_flag
    before = text[i - 1] if i else ""
    after = text[i + 1] if i + 1 < len(text) else ""
    if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:
        return bool(before) and not before.isspace() and not _alphabetic(before)
    if char in (_ZWJ, _ZWNJ):
        if _emoji_like(before) or _emoji_like(after):
            return _emoji_like(after) or after == ""
        return _joining_letter(before) and _joining_letter(after)
    return False


def _alphabetic(char: str) -> bool:
    """A Latin, Greek or Cyrillic letter (the scripts attacks imitate): no variation selector follows one."""
    return char.isalpha() and _script(char) in ("LATIN", "GREEK", "CYRILLIC")


def _emoji_like(char: str) -> bool:
    """A pictograph or symbol (emoji, a variation selector or skin-tone modifier inside a sequence)."""
    return bool(char) and (
        unicodedata.category(char) in ("So", "Sk") or 0xFE00 <= ord(char) <= 0xFE0F or char == "\u20e3"
    )


def _joining_letter(char: str) -> bool:
    """A letter or mark of a script that uses joiners (Arabic, Indic, ...), not Latin/Greek/Cyrillic."""
    if not char or unicodedata.category(char)[0] not in "LM":
        return False
    return _script(char) not in ("LATIN", "GREEK", "CYRILLIC", "COMMON")


def _map_spaces(chars: list[str]) -> tuple[int, int]:
    """Space variants → plain spaces in place; ``(all spaces, variants replaced)``."""
    odd_spaces = _odd_spaces()
    spaces = odd = 0
    for i, char in enumerate(chars):
        if char == _SPACE:
            spaces += 1
        elif char in odd_spaces:
            chars[i] = _SPACE
            spaces += 1
            odd += 1
    return spaces, odd


_WORD = re.compile(r"[^\W\d_]+")


def _fold_confusables(chars: list[str]) -> int:
    """Fold look-alike letters in place, judged per word and per run of foreign words; how many folded."""
    table = fold_table()
    text = "".join(chars)
    folds: list[tuple[int, str]] = []
    runs: list[list[tuple[int, int]]] = []  # runs of wholly foreign words, each word all look-alikes or not
    run: list[tuple[int, int]] = []
    run_genuine = False
    for match in _WORD.finditer(text):
        word = match.group()
        if word.isascii():
            if run and not run_genuine:
                runs.append(run)
            run, run_genuine = [], False
            continue
        latin = foreign = twins = 0
        for char in word:
            script = _script(char)
            if script == "LATIN":
                latin += 1
            elif script not in _FOLD_SCRIPTS_SKIPPED:
                foreign += 1
                twins += char in table
        if not foreign:  # Latin with accents (ñ, é): a word like any other, ends a foreign run
            if run and not run_genuine:
                runs.append(run)
            run, run_genuine = [], False
        elif latin:  # mixed-script word: fold if every foreign letter has a Latin twin
            if twins == foreign:
                folds += [(match.start() + k, table[c]) for k, c in enumerate(word) if c in table]
        else:
            run.append(match.span())
            run_genuine |= twins < foreign
    if run and not run_genuine:
        runs.append(run)
    lone = []
    for spans in runs:
        letters = sum(end - start for start, end in spans)
        target = folds if letters > 1 else lone
        for start, end in spans:
            target += [(k, table[text[k]]) for k in range(start, end)]
    if folds:  # a one-letter foreign word ("α" in a formula) is folded only beside other evidence
        folds += lone
    for k, char in folds:
        chars[k] = char
    return len(folds)
