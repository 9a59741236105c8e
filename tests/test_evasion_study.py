"""``tools/evasion_attacks`` do what they say; ``tools/evasion_study`` reports them before and after."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from autext_jax.normalize import normalize
from tools import evasion_attacks as attacks
from tools import evasion_study as study

TEXT = "The 3 cats ate an apple and the 12 dogs ate a pear. El perro come una manzana. Then they slept."


@pytest.fixture(autouse=True, scope="module")
def _private_datasets_cache(tmp_path_factory):
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("datasets_cache"))
        yield


def test_each_attack_is_reproducible_and_rate_zero_changes_nothing():
    for attack in attacks.ATTACKS.values():
        once = attacks.attack_texts([TEXT] * 3, attack, seed=1)
        assert once == attacks.attack_texts([TEXT] * 3, attack, seed=1)
        assert attacks.attack_texts([TEXT], attack, rate=0.0) == [TEXT]
        assert once[0] != TEXT, attack.name


def test_attacks_change_what_they_name():
    rng = random.Random(0)
    glyphs = attacks.homoglyph(TEXT, rng, 1.0)
    assert all(c not in attacks.HOMOGLYPHS for c in glyphs) and len(glyphs) == len(TEXT)
    invisible = attacks.zero_width(TEXT, rng, 1.0)
    assert len(invisible) == 2 * len(TEXT)
    assert "".join(c for c in invisible if c not in attacks.INVISIBLE) == TEXT
    deleted = attacks.article_deletion(TEXT, rng, 1.0)
    assert deleted == "3 cats ate apple and 12 dogs ate pear. perro come manzana. Then they slept."
    numbers = attacks.number_swap(TEXT, rng, 1.0)
    assert [len(w) for w in numbers.split()] == [len(w) for w in TEXT.split()]
    assert attacks.paragraphs(TEXT, rng, 1.0).count("\n\n") == 2  # three sentences, two gaps
    starts = attacks.case_start(TEXT, rng, 1.0)
    assert starts.split()[0] == "the" and starts.split()[2] == "Cats"
    inner = attacks.case_inner(TEXT, rng, 1.0)
    assert inner.split()[0] == "THE" and inner.lower() == TEXT.lower()


def _write_data(root: Path) -> Path:
    human = "the of and to in is el la de que y en".split()
    generated = "report committee proposal economic impact members".split()
    for lang in ("en", "es"):
        (root / lang).mkdir(parents=True)
        lines = ["id\ttext\tlabel"]
        for i in range(40):
            words = generated if i % 2 else human
            text = " ".join(words[(i * 5 + k) % len(words)] for k in range(6 + i % 7))
            lines.append(f"{i}\t{text.capitalize()}.\t{'generated' if i % 2 else 'human'}")
        with gzip.open(root / lang / "train.tsv.gz", "wt") as f:
            f.write("\n".join(lines) + "\n")
    return root


def test_study_reports_every_attack_before_and_after(tmp_path, tiny_model_dir):
    data = _write_data(tmp_path / "data")
    out = tmp_path / "out"
    argv = [
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--val-fraction",
        "0.5",
        "--output-dir",
        str(out),
    ]
    assert study.main([*argv, "--attacks", "homoglyph", "zero_width", "article_deletion"]) == 0
    report = json.loads((out / "evasion.json").read_text())
    results = report["results"]
    assert list(results) == ["none", "homoglyph", "zero_width", "article_deletion"]
    clean = results["none"]["after"]
    assert results["none"]["changed_by_normalization"] == 0 and clean["all"]["flagged"] == 0
    assert set(clean) == {"all", "en", "es"} and clean["en"]["n"] + clean["es"]["n"] == report["n"]
    for name in ("homoglyph", "zero_width"):  # normalization restores the clean text exactly
        after = results[name]["after"]
        assert results[name]["changed_by_normalization"] == report["n"]
        assert after["all"]["flagged"] == 1.0
        for group in ("all", "en", "es"):
            assert after[group]["macro_f1"] == clean[group]["macro_f1"]
            assert after[group]["recall"] == clean[group]["recall"]
    assert results["article_deletion"]["after"]["all"]["flagged"] == 0
    assert report["token_ids"]["ids_unchanged"] == report["token_ids"]["texts"] == report["n"]
    table = (out / "evasion.md").read_text()
    assert table.startswith("| attack | macro-F1 all | macro-F1 en | macro-F1 es | recall |")
    assert "| homoglyph |" in table and f"Clean token ids unchanged: {report['n']} of {report['n']}" in table


def test_flags_only_counts_without_scoring(tmp_path, capsys):
    data = _write_data(tmp_path / "data")
    argv = ["--data", str(data), "--val-fraction", "0.5", "--flags-only"]
    argv += ["--attacks", "homoglyph", "case_inner"]
    assert study.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["token_ids"]["ids_unchanged"] == report["n"] > 0
    assert report["flags"]["none"] == {"flagged_human": 0.0, "flagged_generated": 0.0, "changed": 0.0,
                                       "words_wrong_before": 0.0, "words_wrong_after": 0.0}
    assert report["flags"]["homoglyph"]["words_wrong_before"] > 0.5
    assert report["flags"]["homoglyph"]["words_wrong_after"] == 0.0
    assert report["flags"]["homoglyph"]["flagged_human"] == report["flags"]["homoglyph"]["changed"] == 1.0


def test_study_refuses_a_bad_rate(tmp_path, capsys):
    assert study.main(["--data", str(tmp_path), "--rate", "nonsense=1"]) == 2
    assert "unknown attack 'nonsense'" in capsys.readouterr().err


def test_clean_fixture_texts_keep_their_token_ids(tmp_path):
    from autext_jax.hub import load_tokenizer, resolve_model_dir

    tokenizer = load_tokenizer(resolve_model_dir(None))
    texts = [TEXT, "¿Qué tal? ¡Muy bien! Señor Muñoz — “quotes” ❤\ufe0f 👍🏽", "iPhone and eBay, pH 7."]
    counts = study.token_ids_unchanged(texts, tokenizer, 128)
    assert counts == {
        "texts": 3,
        "ids_unchanged": 3,
        "ids_changed_flagged": 0,
        "ids_changed_unflagged": 0,
        "text_changed": 0,
        "flagged": 0,
    }
    attacked = attacks.zero_width(TEXT, random.Random(0), 1.0)
    assert normalize(attacked).text == TEXT
    counts = study.token_ids_unchanged([attacked], tokenizer, 128)
    assert counts["ids_changed_flagged"] == 1
