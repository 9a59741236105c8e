"""Corpus mode (``autext_jax/corpus.py``), Parquet in/out, RAID output, every local device."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import autext_jax
from autext_jax import calibration as calib
from autext_jax import corpus, infer, paths
from tests.helpers.corpus import cli, env, run, tree, write_parquet_corpus

FILES, GROUPS, ROWS = 5, 4, 40  # 20 parts of 40 rows with --rows-per-part 40


def _args(model, source, out, *extra):
    return ("-i", source, "--text-column", "body", "--id-column", "doc_id", "-o", f"{out}/", "--model", model,
            "--max-length", 32, "--rows-per-part", ROWS, "--format", "parquet", "-q",
            # small batches: slow enough for a kill to land mid-run (the same flags on every run:
            # byte-identical output needs the same batching)
            "--window", 8, "--batch-size", 1, *extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """The corpus and one uninterrupted run of it."""
    root = tmp_path_factory.mktemp("corpus")
    write_parquet_corpus(root / "in", FILES, GROUPS, ROWS)
    done = run(*_args(tiny_model_dir, root / "in", root / "ref"))
    assert done.returncode == 0, done.stderr[-2000:]
    return root


def test_uninterrupted_run_parts_manifests_and_success(reference):
    files = tree(reference / "ref")
    parts = sorted(k for k in files if k.startswith("part-"))
    assert len(parts) == FILES * GROUPS and parts[0] == "part-00000.parquet"
    assert not any("_tmp" in k for k in files)
    success = json.loads(files["_SUCCESS"])
    assert success == {"parts": 20, "parts_done": 20, "records": FILES * GROUPS * ROWS, "malformed": 0}
    table = pq.read_table(reference / "ref" / "part-00005.parquet")
    columns = ["id", "bot_prob", "english_prob", "is_bot", "n_tokens", "truncated", "short", "obfuscated",
               "n_changed", "source"]
    assert table.column_names == columns
    assert set(table.column("source").to_pylist()) == {str(reference / "in" / "shard-001.parquet")}
    assert table.column("id").to_pylist() == [f"f1-{i}" for i in range(40, 80)]  # file 1, row group 1
    assert any(table.column("truncated").to_pylist())  # 32 tokens cut some of the texts
    manifest = json.loads(files["_manifests/part-00005.json"])
    assert manifest["records"] == 40 and manifest["row_groups"] == [1] and manifest["first_row"] == 40


def test_kill_9_then_rerun_is_byte_identical(reference, tiny_model_dir):
    out = reference / "killed"
    # A slow run (one text per batch) so that the kill lands in the middle.
    argv = cli(*_args(tiny_model_dir, reference / "in", out))
    proc = subprocess.Popen(argv, env=env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((out / "_manifests").glob("*.json"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "_SUCCESS").exists(), "the run finished before the kill: make parts slower"
    again = run(*_args(tiny_model_dir, reference / "in", out), "-v")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already done" in again.stderr
    assert tree(out) == tree(reference / "ref")  # every part once, byte for byte, no temp files


def test_kill_9_with_the_output_on_gcs_then_rerun_equals_the_local_run(
    reference, tiny_model_dir, gcs, gs_in_process
):
    out = "gs://bkt/corpus-killed"
    proc = subprocess.Popen(cli(*_args(tiny_model_dir, reference / "in", out)), env=env(**gcs),
                            stderr=subprocess.DEVNULL)
    fs = gs_in_process
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        fs.invalidate_cache()  # gcsfs caches listings: look at the bucket itself
        if len(fs.glob("bkt/corpus-killed/_manifests/*.json")) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not paths.exists(paths.join(out, "_SUCCESS")), "the run ended before the kill: make parts slower"
    again = run(*_args(tiny_model_dir, reference / "in", out), "-v", **gcs)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already done" in again.stderr
    fs.invalidate_cache()
    remote = {name.removeprefix("bkt/corpus-killed/"): fs.cat(name) for name in fs.find("bkt/corpus-killed")}
    assert remote == tree(reference / "ref")  # every part once, byte for byte, no temporary objects


def test_three_shards_cover_the_corpus_exactly_once(reference, tiny_model_dir):
    out = reference / "sharded"
    procs = [subprocess.Popen(cli(*_args(tiny_model_dir, reference / "in", out, "--shard", f"{i}/3")),
                              env=env(), stderr=subprocess.PIPE, text=True) for i in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    assert tree(out) == tree(reference / "ref")


def test_a_sigterm_mid_corpus_exits_143_and_the_rerun_resumes(reference, tiny_model_dir):
    out = reference / "termed"
    argv = cli(*_args(tiny_model_dir, reference / "in", out))
    proc = subprocess.Popen(argv, env=env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((out / "_manifests").glob("*.json"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert not list(out.glob("_tmp/*"))
    assert run(*_args(tiny_model_dir, reference / "in", out)).returncode == 0
    assert tree(out) == tree(reference / "ref")


def test_malformed_records_are_counted_and_a_different_command_is_refused(tmp_path, tiny_model_dir):
    source = tmp_path / "in"
    source.mkdir()
    table = pa.table({"body": ["fine text", None, "another"], "doc_id": [7, 8, 9]})
    pq.write_table(table, source / "a.parquet")
    (source / "b.jsonl").write_text('{"body": "json text"}\n{bad json\n')
    base = ("-i", source, "--text-column", "body", "--id-column", "doc_id", "--model", tiny_model_dir, "-q")
    failed = run(*base, "-o", f"{tmp_path / 'strict'}/")
    assert failed.returncode == 1 and "a.parquet:row 1" in failed.stderr and "Traceback" not in failed.stderr
    done = run(*base, "-o", f"{tmp_path / 'out'}/", "--on-error", "skip")
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "out" / "_manifests"
    manifests = [json.loads((folder / f"part-0000{i}.json").read_text()) for i in (0, 1)]
    assert [(m["records"], m["malformed"]) for m in manifests] == [(3, 1), (2, 1)]
    rows = [json.loads(line) for line in (tmp_path / "out" / "part-00000.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [7, 8, 9] and "error" in rows[1] and rows[0]["n_tokens"] > 2
    refused = run(*base, "-o", f"{tmp_path / 'out'}/", "--on-error", "skip", "--threshold", "0.1")
    assert refused.returncode == 2 and "different command" in refused.stderr


def test_parquet_file_out_equals_jsonl_and_raid_is_a_json_array(tmp_path, tiny_model_dir):
    write_parquet_corpus(tmp_path / "in", 1, 2, 10)
    source = tmp_path / "in" / "shard-000.parquet"
    common = ("-i", source, "--text-column", "body", "--id-column", "doc_id", "--model", tiny_model_dir, "-q")
    assert run(*common, "-o", tmp_path / "s.parquet").returncode == 0
    assert run(*common, "-o", tmp_path / "s.jsonl").returncode == 0
    raid = run(*common, "--format", "raid", "-o", tmp_path / "raid.json")
    assert raid.returncode == 0, raid.stderr[-1000:]
    jsonl = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert pq.read_table(tmp_path / "s.parquet").to_pylist() == jsonl
    assert json.loads((tmp_path / "raid.json").read_text()) == [
        {"id": r["id"], "score": r["bot_prob"]} for r in jsonl
    ]


def test_shard_auto_from_the_environment():
    assert corpus.parse_shard("auto", {"AUTEXT_JAX_SHARD": "2/5"}) == (2, 5)
    tpu = {"TPU_WORKER_ID": "3", "TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3"}
    assert corpus.parse_shard("auto", tpu) == (3, 4)
    assert corpus.parse_shard("auto", {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    with pytest.raises(corpus.UsageError, match="pass --shard I/N"):
        corpus.parse_shard("auto", {})
    with pytest.raises(corpus.UsageError, match="0 <= I < N"):
        corpus.parse_shard("3/3", {})


def test_eight_local_devices_give_the_same_records_and_no_training_import(tmp_path, tiny_model_dir):
    write_parquet_corpus(tmp_path / "in", 1, 1, 30)
    source = tmp_path / "in" / "shard-000.parquet"
    common = ["-i", str(source), "--text-column", "body", "--model", str(tiny_model_dir), "-q", "-v"]
    one = run(*common, "-o", tmp_path / "one.jsonl")
    # Ends as the CLI does (exit_fast: no interpreter teardown): XLA's teardown with 8 forced host devices
    # aborted now and then on a loaded machine ("terminate called ..."), after every record was written.
    probe = (
        "import sys, jax; from autext_jax import infer; code = infer.main(sys.argv[1:]); "
        "assert len(jax.devices()) == 8, jax.devices(); "
        "assert not [m for m in sys.modules if m.startswith(('autext_jax.train', 'ray'))]; "
        "infer.exit_fast(code)"
    )
    eight = subprocess.run(
        [sys.executable, "-c", probe, *common, "-o", str(tmp_path / "eight.jsonl")], capture_output=True,
        text=True, timeout=300, env=env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
    )
    assert one.returncode == 0 and eight.returncode == 0, eight.stderr[-2000:]
    shapes = eight.stderr.split("shapes rows x length: ")[1].split(")")[0].split(", ")
    assert all(int(s.split("x")[0]) % 8 == 0 for s in shapes), shapes
    a = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "eight.jsonl").read_text().splitlines()]
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 30
    assert all(abs(x["bot_prob"] - y["bot_prob"]) < 1e-5 for x, y in zip(a, b, strict=True))
    assert os.path.getsize(tmp_path / "one.jsonl") > 0



def _in_process(capsys, *argv) -> tuple[int, str]:
    code = infer.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_the_identity_has_every_output_option_and_inputs_resolved(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    point = calib.OperatingPoint(0.1, raw_logit=0.0, threshold=0.5, fpr=0.1, recall=0.5)
    calib.Calibration(operating_points={"fpr=0.1": point}).save(model)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("the cat sat on the mat\nel perro come pan\n")
    monkeypatch.chdir(tmp_path)
    base = ("--model", model, "--max-length", 32, "-q")
    assert _in_process(capsys, *base, "-i", "in/a.txt", "-o", "out/") == (0, "")
    done = tree(tmp_path / "out")
    # The same command with an absolute input, or typed from another folder: the same run, nothing redone.
    assert _in_process(capsys, *base, "-i", tmp_path / "in" / "a.txt", "-o", "out/") == (0, "")
    monkeypatch.chdir(tmp_path / "in")
    assert _in_process(capsys, *base, "-i", "./a.txt", "-o", "../out/") == (0, "")
    assert tree(tmp_path / "out") == done
    identity = json.loads(done["_corpus.json"])
    assert identity["inputs"] == [str(tmp_path / "in" / "a.txt")] and identity["model"] == str(model)
    # Anything that changes the rows is another command, refused before a part is skipped or written.
    for extra in (["--segments", "window"], ["--operating-point", "fpr=0.1"], ["--include-text"],
                  ["--input-format", "jsonl"], ["--long", "chunk", "--stride", "8"]):
        code, err = _in_process(capsys, *base, "-i", "./a.txt", "-o", "../out/", *extra)
        assert code == 2 and "holds the output of a different command" in err, (extra, err)
    assert tree(tmp_path / "out") == done


def test_rows_of_two_txt_inputs_are_told_apart_by_source(tmp_path, tiny_model_dir, capsys):
    duckdb = pytest.importorskip("duckdb")
    lines = {"a.txt": ["the cat sat", "on the mat", "el perro"], "b.txt": ["come pan", "y la casa"]}
    for name, text in lines.items():
        (tmp_path / name).write_text("\n".join(text) + "\n")
    out = tmp_path / "out"
    code, err = _in_process(capsys, "--model", tiny_model_dir, "--max-length", 32, "-q", "--format",
                            "parquet", "-i", tmp_path / "a.txt", "-i", tmp_path / "b.txt", "-o", f"{out}/")
    assert code == 0, err
    parts = f"{out}/part-*.parquet"
    rows = duckdb.sql(f"SELECT source, id FROM read_parquet('{parts}') ORDER BY source, id").fetchall()
    want = [(str(tmp_path / name), i) for name, text in lines.items() for i in range(len(text))]
    assert rows == want  # the ids restart in each .txt file: (source, id) names a row
    # Joined back to the inputs: each row's record is that of line `id` of its `source` (each file
    # scored in one call, as its part is).
    detector = autext_jax.load(str(tiny_model_dir), max_length=32)
    scored = {name: detector.score_records(text) for name, text in lines.items()}
    table = pq.read_table(out)  # the folder as one dataset (pyarrow skips _SUCCESS, _corpus.json, ...)
    assert table.num_rows == 5
    for row in table.to_pylist():
        record = scored[paths.name(row["source"])][row["id"]]
        assert row == {"id": row["id"], "source": row["source"], **{k: record[k] for k in row if k in record}}
        assert set(row) - set(record) == {"id", "source"}
