"""``python -m autext_jax.infer``: every input kind, both output formats, and every bad-input case."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autext_jax import infer
from autext_jax.api import load


@pytest.fixture(scope="module")
def detector(tiny_model_dir):
    return load(tiny_model_dir, batch_size=2, max_length=64)


def run_cli(capsys, *argv) -> tuple[int, list[str], str]:
    code = infer.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def records(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]


def test_every_input_kind_in_input_order(tmp_path, capsys, tiny_model_dir, detector):
    (tmp_path / "a.txt").write_text("first line\n\nthird line\n")
    (tmp_path / "b.jsonl").write_text('{"id": "j1", "text": "json text"}\n\n{"text": "no id"}\n')
    (tmp_path / "c.csv").write_text('id,text\nc1,"a, quoted text"\n')
    with gzip.open(tmp_path / "d.tsv.gz", "wt") as f:  # the official AuTexTification layout
        f.write("id\ttext\tlabel\n7\tun texto en español\tgenerated\n")
    code, lines, err = run_cli(
        capsys, "positional", "--model", tiny_model_dir, "--max-length", 64, "--batch-size", 2,
        "-i", tmp_path / "a.txt", "-i", tmp_path / "b.jsonl", "-i", tmp_path / "c.csv",
        "-i", tmp_path / "d.tsv.gz", "--include-text", "--quiet",
    )
    assert code == 0, err
    got = records(lines)
    texts = ["positional", "first line", "", "third line", "json text", "no id", "a, quoted text",
             "un texto en español"]
    assert [r["text"] for r in got] == texts
    assert [r["id"] for r in got] == [0, 1, 2, 3, "j1", 5, "c1", "7"]
    scores = detector.score(texts)
    np.testing.assert_allclose([r["bot_prob"] for r in got], scores["bot_prob"], atol=1e-6, rtol=0)
    # Neighbouring texts score apart, so records written out of order would fail the comparison above.
    assert np.abs(np.diff(scores["bot_prob"])).min() > 1e-3
    assert [r["is_bot"] for r in got] == scores["is_bot"].tolist()
    columns = {"id", "bot_prob", "english_prob", "is_bot", "n_tokens", "truncated", "short", "obfuscated",
               "n_changed", "text"}
    assert set(got[0]) == columns


def test_stdin_to_csv_file_with_threshold(tmp_path, capsys, monkeypatch, tiny_model_dir):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n   \n")))
    out = tmp_path / "out.csv"
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "--format", "csv", "-o", out,
                               "--threshold", "0", "--long", "chunk", "--verbose")
    assert code == 0 and lines == []
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    assert all(r["is_bot"] == "True" and r["n_chunks"] == "1" for r in rows)
    assert f"model: {tiny_model_dir}" in err and "compilations:" in err and "Traceback" not in err


def test_missing_path_exits_2_with_one_line(tmp_path, capsys, tiny_model_dir):
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", tmp_path / "nope.txt")
    assert code == 2 and lines == []
    assert err.strip().count("\n") == 0 and "nope.txt" in err and "no such file" in err
    code, _, err = run_cli(capsys, "--model", tiny_model_dir, "hi", "-o", tmp_path / "no" / "out.jsonl")
    assert code == 2 and "--output" in err and err.strip().count("\n") == 0
    code, _, err = run_cli(capsys, "--model", tiny_model_dir, "hi", "--max-length", "4096")
    assert code == 2 and "max_length" in err and "Traceback" not in err


def test_a_positional_file_name_is_refused_with_the_flag_it_meant(tmp_path, capsys, monkeypatch,
                                                                   tiny_model_dir):
    (tmp_path / "small.tsv").write_text("id\ttext\n1\tthe cat\n")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "small.tsv", "-o", "out.jsonl")
    assert code == 2 and lines == [] and not (tmp_path / "out.jsonl").exists()
    assert err == ("autext-jax: error: 'small.tsv' is a file, not a text to score: did you mean "
                   "`-i small.tsv`? (to score the words themselves, pipe them on stdin)\n")
    code, _, err = run_cli(capsys, "--model", tiny_model_dir, "the cat", "data")
    assert code == 2 and "'data' is a folder" in err and "`-i data`" in err
    code, lines, _ = run_cli(capsys, "--model", tiny_model_dir, "small", "-q")  # no such file: a text
    assert code == 0 and len(lines) == 1


def test_undecodable_line_stops_after_earlier_records(tmp_path, capsys, tiny_model_dir):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok one\nok two\n\xff\xfe broken\nok four\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(capsys, "--model", tiny_model_dir, "-i", bad, "-o", out, "--quiet")
    assert code == 1 and f"{bad}:3" in err and "UTF-8" in err and "Traceback" not in err
    assert [r["id"] for r in records(out.read_text().splitlines())] == [0, 1]
    code, _, err = run_cli(capsys, "--model", tiny_model_dir, "-i", bad, "-o", out, "--on-error=skip", "-q")
    got = records(out.read_text().splitlines())
    assert code == 0 and [r["id"] for r in got] == [0, 1, 2, 3]
    assert got[2]["bot_prob"] is None and f"{bad}:3" in got[2]["error"] and got[3]["error"] is None


def test_malformed_jsonl_and_missing_text_column(tmp_path, capsys, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n{"txt": "no text field"}\n')
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", bad, "-q")
    assert code == 1 and f"{bad}:2" in err and "malformed JSON" in err
    assert [r["id"] for r in records(lines)] == [0]
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", bad, "-q", "--on-error", "skip")
    got = records(lines)
    assert code == 0 and [bool(r["error"]) for r in got] == [False, True, True]
    table = tmp_path / "t.tsv"
    table.write_text("id\tcontent\tlabel\n1\thello\thuman\n")
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", table, "-q")
    assert code == 1 and lines == [] and "no 'text' column; columns found: id, content, label" in err


def test_megabyte_text_truncated_and_long_text_chunked(tmp_path, capsys, tiny_model_dir):
    big = tmp_path / "big.txt"
    big.write_text(("the cat sat on the mat and " * 40_000)[:1_000_000] + "\nshort\n")
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", big, "-q")
    assert code == 0, err
    assert len(records(lines)) == 2
    # Chunk mode on 50 kB (a 1 MB text takes ~1300 windows of 512 tokens: too slow for a unit test).
    big.write_text(("the cat sat on the mat and " * 2_000)[:50_000] + "\nshort\n")
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", big, "-q", "--long", "chunk")
    got = records(lines)
    assert code == 0 and got[0]["n_chunks"] > 50 and got[1]["n_chunks"] == 1


def test_offline_hub_id_is_a_fast_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    code, lines, err = run_cli(capsys, "--model", "someone/not-cached-xyz", "hello")
    assert code == 2 and time.perf_counter() - start < 15
    assert "local directory" in err and err.strip().count("\n") == 0


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")


def test_console_script_compile_cache_second_run_loads(tmp_path, tiny_model_dir):
    script = Path(sys.executable).with_name("autext-jax")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "autext_jax.infer"]
    cache = tmp_path / "cache"
    argv = command + ["hello", "hola", "--model", str(tiny_model_dir), "-v"]
    env = dict(_env(), AUTEXT_JAX_COMPILE_CACHE=str(cache))
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-1000:]
    assert len(first.stdout.splitlines()) == 2 and first.stdout == second.stdout
    assert any(cache.iterdir())
    assert " 0 loaded from the cache" in first.stderr
    assert " 0 loaded from the cache" not in second.stderr and "loaded from the cache" in second.stderr


@pytest.mark.parametrize("entry", ["console script", "-m autext_jax", "-m autext_jax.infer"])
def test_every_entry_point_exits_with_mains_code(tmp_path, entry):
    script = Path(sys.executable).with_name("autext-jax")
    if entry == "console script" and not script.exists():
        pytest.skip("the console script is not installed next to this python")
    command = {"console script": [str(script)], "-m autext_jax": [sys.executable, "-m", "autext_jax"],
               "-m autext_jax.infer": [sys.executable, "-m", "autext_jax.infer"]}[entry]
    missing = tmp_path / "no-such-model"
    done = subprocess.run(command + ["hello", "--model", str(missing)], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and str(missing) in done.stderr


def test_ctrl_c_leaves_complete_records(tmp_path, tiny_model_dir):
    source = tmp_path / "many.txt"
    source.write_text("".join(f"text number {i} the cat\n" for i in range(200_000)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autext_jax.infer", "-i", str(source), "-o", str(out), "-q",
         "--model", str(tiny_model_dir), "--window", "16", "--batch-size", "1"],
        env=_env(), stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline and (not out.exists() or out.stat().st_size < 2000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-1000:]
    assert "interrupted" in err and "Traceback" not in err
    text = out.read_text()
    assert text.endswith("\n")
    got = records(text.splitlines())
    assert 10 < len(got) < 200_000 and [r["id"] for r in got] == list(range(len(got)))


def test_output_that_is_an_input_is_refused_before_opening(tmp_path, capsys, tiny_model_dir):
    source = tmp_path / "x.txt"
    source.write_text("one\ntwo\n")
    link = tmp_path / "link.txt"
    link.symlink_to(source)
    for output in (source, link):
        code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", source, "-o", output, "-q")
        assert code == 2 and lines == [] and "is the input" in err and err.strip().count("\n") == 0
        assert source.read_text() == "one\ntwo\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_one_line_exit_1(capsys, tiny_model_dir):
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "a", "b", "-o", "/dev/full", "-q")
    assert code == 1 and "/dev/full" in err and "No space left" in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    env = {k: v for k, v in _env().items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as usually
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "autext_jax.infer", "--model", str(tiny_model_dir), "a"],
                              stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().endswith("No space left on device (nothing written)")


def test_full_disk_leaves_only_complete_lines(tmp_path):
    class Full(io.RawIOBase):
        """A file that takes 80 bytes, then fails like a full disk (after a partial write)."""

        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def seekable(self):
            return True

        def write(self, b):
            room = 80 - len(self.data)
            if room <= 0:
                raise OSError(28, "No space left on device")
            self.data += bytes(b[:room])
            return min(room, len(b))

        def truncate(self, size=None):
            del self.data[size:]
            return size

    sink = Full()
    writer = infer.RecordWriter(sink, "jsonl", ["id", "bot_prob"], "out.jsonl")
    with pytest.raises(OSError, match="2 complete records written before it"):
        for i in range(10):
            writer.write({"id": f"record-{i}", "bot_prob": 0.5})
    assert sink.data.endswith(b"\n") and len(sink.data.splitlines()) == 2
    with pytest.raises(ValueError):  # never a bare NaN in JSON output
        writer.write({"id": 1, "bot_prob": float("nan")})


def test_tsv_is_one_row_per_line_even_with_an_unmatched_quote(tmp_path, capsys, tiny_model_dir):
    table = tmp_path / "q.tsv"
    body = 'id\ttext\r\n1\t"starts with a quote\r\n2\tplain\r\n3\tmore "quoted" text\r\n4\tlast\r\n'
    table.write_bytes(b"\xef\xbb\xbf" + body.encode())
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", table, "--include-text", "-q")
    got = records(lines)
    assert code == 0, err
    assert [(r["id"], r["text"]) for r in got] == [
        ("1", '"starts with a quote'), ("2", "plain"), ("3", 'more "quoted" text'), ("4", "last")
    ]


def test_skip_keeps_the_id_of_a_bad_record_and_odd_json_is_refused(tmp_path, capsys, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "keep-me", "text": 5}\n{"id": "n", "text": null}\n{"id": NaN, "text": "x"}\n'
        + "[" * 200_000 + "]" * 200_000 + "\n"
    )
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", bad, "-q", "--on-error", "skip")
    got = records(lines)
    assert code == 0, err
    assert [r["id"] for r in got] == ["keep-me", "n", 2, 3]
    assert "field 'text' must be a string, got int" in got[0]["error"] and "got null" in got[1]["error"]
    assert "non-standard JSON constant NaN" in got[2]["error"] and "nested too deeply" in got[3]["error"]
    bad.write_text("[" * 200_000 + "]" * 200_000 + "\n")
    code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", bad, "-q")
    assert code == 1 and f"{bad}:1" in err and err.strip().count("\n") == 0


def _model_copy(tiny_model_dir: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(tiny_model_dir, target)
    return target


def test_broken_model_is_one_line_exit_1_and_no_records(tmp_path, capsys, tiny_model_dir):
    from safetensors.numpy import load_file, save_file

    nan_dir = _model_copy(tiny_model_dir, tmp_path / "nan")
    state = load_file(str(nan_dir / "model.safetensors"))
    state["transformer.encoder.layer.0.output.dense.weight"][:] = np.nan
    save_file(state, str(nan_dir / "model.safetensors"))
    config = json.loads((tiny_model_dir / "config.json").read_text())
    string_dir = _model_copy(tiny_model_dir, tmp_path / "string")
    (string_dir / "config.json").write_text(json.dumps({**config, "threshold": "0.5"}))
    list_dir = _model_copy(tiny_model_dir, tmp_path / "list")
    (list_dir / "config.json").write_text(json.dumps([config]))
    for model, message in ((nan_dir, "NaN or infinite"), (string_dir, "threshold must be a number"),
                           (list_dir, "must hold a JSON object, not a list")):
        code, lines, err = run_cli(capsys, "--model", model, "hello", "-q")
        assert code == 1 and lines == [] and message in err, err
        assert err.strip().count("\n") == 0 and "Traceback" not in err
    with pytest.raises(SystemExit) as caught:  # an out-of-range --threshold is a usage error
        infer.main(["--threshold", "1.5", "hello"])
    assert caught.value.code == 2 and "outside [0, 1]" in capsys.readouterr().err


def test_inputs_may_be_urls(capsys, tiny_model_dir):
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/autext-infer-test/in.tsv", b"id\ttext\nu1\thello\n")
    try:
        source = "memory://autext-infer-test/in.tsv"
        code, lines, err = run_cli(capsys, "--model", tiny_model_dir, "-i", source, "-q")
        assert code == 0 and [r["id"] for r in records(lines)] == ["u1"], err
        code, _, err = run_cli(capsys, "--model", tiny_model_dir, "-i", "memory://autext-infer-test/none.tsv")
        assert code == 2 and "no such file" in err
    finally:
        memory.rm("/autext-infer-test", recursive=True)
