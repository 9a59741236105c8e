"""tools/e5/prune_vocab.py: pruned model + tokenizer behave exactly like the full ones on kept pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.e5 import PIECES, write_synthetic_e5
from tools.e5 import import_e5, prune_vocab
from tools.e5.q4 import read_e5_bin

NAMES = [p for p, _ in PIECES]
CORPUS = ["the cat sat on the mat"] * 4 + [
    "el gato está en la alfombra",
    "la alfombra",
    "pingüino",
    "the gato",
]


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prune")
    write_synthetic_e5(root / "tiny.bin", seed=1)
    out = root / "full"
    import_e5.write_checkpoint(read_e5_bin(root / "tiny.bin"), out)
    return out


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.tsv"
    rows = [f"{i}\t{text}\t{'human' if i % 2 else 'generated'}" for i, text in enumerate(CORPUS)]
    path.write_text("id\ttext\tlabel\n" + "\n".join(rows) + "\n")
    return path


def _counts(**by_piece: int) -> np.ndarray:
    counts = np.zeros(len(PIECES), np.int64)
    for piece, n in by_piece.items():
        counts[NAMES.index(piece.replace("_", "\u2581"))] = n
    return counts


def test_selection_keeps_frequent_pieces_and_the_characters_to_spell_dropped_ones():
    counts = _counts(_the=10, _cat=6, _gato=3, _pingüino=1)
    sel = prune_vocab.select_pieces(PIECES, counts, keep=2)
    kept = {NAMES[i] for i in sel.kept}
    specials = {"<s>", "<pad>", "</s>", "<unk>", "<mask>"}
    spelling = {"\u2581", "g", "a", "t", "o"}  # to re-spell the dropped "▁gato"
    assert kept == specials | {"\u2581the", "\u2581cat"} | spelling | {"\u2581pingüino"}
    assert (sel.n_frequent, sel.n_chars, sel.n_unspellable, sel.distinct_used) == (2, 5, 1, 4)
    assert sel.coverage == pytest.approx(17 / 20)  # ▁the, ▁cat and the kept ▁pingüino
    assert list(sel.kept) == sorted(sel.kept)  # new ids keep the original order: specials stay 0..3
    everything = prune_vocab.select_pieces(PIECES, counts, keep=10)
    assert everything.coverage == 1.0 and everything.n_chars == 0


def test_all_chars_keeps_every_single_character_piece():
    sel = prune_vocab.select_pieces(PIECES, _counts(_the=1), keep=1, all_chars=True)
    assert {p for p in NAMES if len(p) == 1} <= {NAMES[i] for i in sel.kept}


def test_cli_prunes_and_pruned_model_matches_full_model(full_dir, corpus_file, tmp_path, capsys):
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer, XLMRobertaModel

    out = tmp_path / "pruned"
    args = ["--model", str(full_dir), "--out", str(out), "--data", str(corpus_file), "--keep", "6"]
    assert prune_vocab.main(args + ["--report", "--check-texts", "2"]) == 0
    printed = capsys.readouterr().out
    assert "coverage" in printed and "'more_unk': 0" in printed

    vocab_map = json.loads((out / "vocab_map.json").read_text())
    kept = np.array(vocab_map["original_ids"])
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == kept.size == vocab_map["vocab_size"] < len(PIECES)
    full_w = load_file(str(full_dir / "model.safetensors"))
    pruned_w = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(pruned_w[prune_vocab.WORD_KEY], full_w[prune_vocab.WORD_KEY][kept])
    assert all(np.array_equal(pruned_w[k], v) for k, v in full_w.items() if k != prune_vocab.WORD_KEY)

    full_tok, pruned_tok = (
        AutoTokenizer.from_pretrained(str(full_dir)),
        AutoTokenizer.from_pretrained(str(out)),
    )
    text = "the cat sat on the mat"  # only kept pieces
    full_ids = full_tok(text)["input_ids"]
    new_id = {int(old): new for new, old in enumerate(kept)}
    assert pruned_tok(text)["input_ids"] == [new_id[i] for i in full_ids]
    dropped = "la alfombra"  # its pieces were dropped: re-spelt from characters, never <unk>
    assert 3 not in pruned_tok(dropped)["input_ids"] and len(pruned_tok(dropped)["input_ids"]) > 4

    hidden = []
    for directory in (full_dir, out):
        model = XLMRobertaModel.from_pretrained(str(directory), add_pooling_layer=False).eval()
        tok = AutoTokenizer.from_pretrained(str(directory))
        with torch.no_grad():
            hidden.append(model(**tok(text, return_tensors="pt")).last_hidden_state.numpy())
    np.testing.assert_array_equal(hidden[0], hidden[1])


def test_cli_bad_inputs_exit_2_with_one_line(full_dir, tmp_path, capsys):
    assert (
        prune_vocab.main(["--model", str(tmp_path), "--out", str(tmp_path / "o"), "--data", str(tmp_path)])
        == 2
    )
    assert (
        prune_vocab.main(
            ["--model", str(full_dir), "--out", str(tmp_path / "o"), "--data", str(tmp_path / "missing.tsv")]
        )
        == 2
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("prune_vocab: error:") for e in errors)
