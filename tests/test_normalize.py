"""``normalize``: each cheap evasion is undone and flagged; legitimate text comes through untouched."""

from __future__ import annotations

import random
import re

import pytest

from autext_jax import case
from autext_jax.normalize import fold_table, normalize
from tools import evasion_attacks as attacks

EN = (
    "The committee will publish its final report next week, after reviewing all the comments it "
    "received. Experts expect that the proposal will change how companies export their products, "
    "and several members said the economic impact could be larger than expected."
)
ES = (
    "El comité publicará su informe final la próxima semana, tras revisar todos los comentarios. "
    "Los expertos esperan que la propuesta cambie la manera en que las empresas exportan sus "
    "productos, y varios miembros dijeron que el impacto económico podría ser mayor de lo previsto."
)

LEGITIMATE = [
    "¿Dónde está el niño? ¡Qué año! Señor Muñoz, pingüino, acción.",
    "“Curly quotes” and ‘single ones’ — em dash – en dash … ellipsis, 10 °C, 5 € and ½ cup.",
    "Family: 👨\u200d👩\u200d👧 love ❤\ufe0f thumbs 👍🏽 keycap 1\ufe0f\u20e3 "
    "flag 🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f done.",
    "Socrates (Σωκράτης) was born in Athens; the Greek word λόγος means word.",
    "In Moscow people say «Я люблю Москву» and write Москва on the signs.",
    "The α-helix and β-sheet; π is about 3.14 and μ is the mean.",
    "Persian: می\u200cخواهم and Hindi: क्\u200dष stay joined.",
    "My iPhone and iPad run iOS; McDonald's, JavaScript, YouTube, NASA and URLs are fine. Call me ASAP.",
    "Prices: 10\u00a0000 € and 5\u202f% in French typography.",
    "A plain ASCII sentence with nothing unusual in it at all.",
]


def test_legitimate_text_is_unchanged_and_not_flagged():
    for text in LEGITIMATE:
        result = normalize(text)
        if "\u00a0" in text:  # a no-break space becomes a plain space, without a flag
            assert result.text == text.replace("\u00a0", " ").replace("\u202f", " ")
            assert result.changed == 2 and result.reasons == ("space",)
        else:
            assert result.text == text, text
            assert result.changed == 0 and result.reasons == ()
        assert not result.obfuscated, text


@pytest.mark.parametrize("text", [EN, ES])
def test_homoglyphs_are_folded_back_and_flagged(text):
    attacked = attacks.homoglyph(text, random.Random(0), 1.0)
    assert sum(a != b for a, b in zip(attacked, text, strict=True)) > 50
    result = normalize(attacked)
    assert result.text == text
    assert result.obfuscated and result.reasons == ("confusable",)
    assert result.changed == sum(a != b for a, b in zip(attacked, text, strict=True))


@pytest.mark.parametrize("text", [EN, ES])
def test_invisible_characters_are_removed_and_flagged(text):
    attacked = attacks.zero_width(text, random.Random(1), 1.0)
    result = normalize(attacked)
    assert result.text == text
    assert result.obfuscated and result.reasons == ("invisible",)
    assert result.changed == len(attacked) - len(text)


def test_every_invisible_kind_is_removed():
    kinds = [
        "\u00ad",
        "\u200b",
        "\u200c",
        "\u200d",
        "\u2060",
        "\ufeff",
        "\u202e",
        "\u2066",
        "\ufe0f",
        "\U000e0041",
    ]
    for kind in kinds:
        result = normalize(f"hel{kind}lo world")
        assert result.text == "hello world" and result.obfuscated, repr(kind)


def test_a_leading_bom_is_removed_without_a_flag():
    result = normalize("\ufeffHello world")
    assert result.text == "Hello world" and result.changed == 1 and not result.obfuscated


def test_space_variants_become_spaces_and_many_of_them_are_a_signal():
    attacked = attacks.whitespace(EN, random.Random(2), 0.3)
    result = normalize(attacked)
    assert re.sub(" +", " ", result.text) == EN
    assert result.obfuscated and "space" in result.reasons


def test_case_flips_inside_words_are_restored_and_flagged():
    text = EN + " " + EN.replace("committee", "board")
    attacked = attacks.case_inner(text, random.Random(3), 0.1)
    wrong_before = _wrong_words(attacked, text)
    assert wrong_before >= 10
    result = normalize(attacked)
    assert result.obfuscated and result.reasons == ("case",)
    assert _wrong_words(result.text, text) <= wrong_before // 5


def test_a_few_unusual_casings_are_not_an_attack():
    text = "The pH of the water at GmbH sites was low, said the iPhone app. " + EN
    assert normalize(text).text == text
    assert not normalize(text).obfuscated


def test_case_restoration_follows_the_text_own_usage():
    words = ["the", "committee", "will", "publish", "its", "report"]
    chars = list(
        "The COMmittee will puBLish its rePort. the committee will publish its report. "
        "The committee Will publish its report."
    )
    assert case.restore(chars) > 0
    assert "".join(chars).split(". ")[0] == "The committee will publish its report"
    assert all(w in "".join(chars).lower() for w in words)


def test_mixed_attacks_are_all_undone():
    attacked = attacks.zero_width(attacks.homoglyph(EN, random.Random(4), 1.0), random.Random(5), 0.5)
    result = normalize(attacked)
    assert result.text == EN and result.reasons == ("invisible", "confusable")


def test_offsets_map_back_to_the_original():
    attacked = attacks.zero_width(attacks.homoglyph(ES, random.Random(6), 1.0), random.Random(7), 0.7)
    result = normalize(attacked)
    assert result.text == ES
    assert len(result.origin) == len(result.text)
    table = fold_table()
    for i, char in enumerate(result.text):
        source = attacked[result.origin[i]]
        assert source == char or table.get(source) == char
    for word in re.finditer(r"\w+", result.text):
        a, b = result.original_span(*word.span())
        source = attacked[a:b]
        assert "".join(table.get(c, c) for c in source if c not in attacks.INVISIBLE) == word.group()
        assert source[0] not in attacks.INVISIBLE and source[-1] not in attacks.INVISIBLE
    assert result.original_span(len(result.text), len(result.text)) == (len(attacked), len(attacked))
    assert result.original_offset(len(result.text)) == len(attacked)
    with pytest.raises(ValueError, match="outside"):
        result.original_span(0, len(result.text) + 1)


def test_unchanged_text_has_the_identity_map():
    result = normalize(EN)
    assert result.origin is None and result.original_span(4, 9) == (4, 9)


def test_a_real_foreign_run_is_kept_but_look_alikes_inside_latin_words_are_folded():
    text = "The «Москва» sign and the Greek «ΑΘΗΝΑ» sign were photographed."
    assert normalize(text).text == text
    result = normalize("The w\u043erd Москва.")  # Cyrillic o inside a Latin word; a real Russian word
    assert result.text == "The word Москва." and result.obfuscated


def test_a_lone_lookalike_letter_is_folded_only_beside_other_evidence():
    assert normalize("Let α be the angle.").text == "Let α be the angle."
    assert normalize("Let α be the \u0430ngle.").text == "Let a be the angle."


def test_fold_table_comes_from_the_confusables_data():
    table = fold_table()
    assert table["\u0430"] == "a" and table["\u0391"] == "A" and table["\u0406"] == "I"
    assert len(table) > 200
    assert all(len(t) == 1 and t.isascii() and t.isalpha() for t in table.values())
    assert "ñ" not in table and "é" not in table


def test_clean_token_ids_are_unchanged(tmp_path):
    from autext_jax.data.batching import tokenize
    from autext_jax.hub import load_tokenizer, resolve_model_dir

    tokenizer = load_tokenizer(resolve_model_dir(None))
    texts = [EN, ES, *LEGITIMATE]
    assert tokenize(tokenizer, [normalize(t).text for t in texts], 512) == tokenize(tokenizer, texts, 512)
    attacked = attacks.homoglyph(EN, random.Random(8), 1.0)
    assert tokenize(tokenizer, [normalize(attacked).text], 512) == tokenize(tokenizer, [EN], 512)
    assert tokenize(tokenizer, [attacked], 512) != tokenize(tokenizer, [EN], 512)


def _wrong_words(text: str, reference: str) -> int:
    return sum(a != b for a, b in zip(text.split(), reference.split(), strict=True))
