"""metrics.jsonl (tolerant of a broken last line) and TensorBoard event files read back by a real parser."""

from __future__ import annotations

import json
import math
import struct

import pytest

from autext_jax.train import metric_writers as mw
from autext_jax.train import throughput


def _events(data: bytes):
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == mw._masked_crc(data[i : i + 8])
        payload = data[i + 12 : i + 12 + n]
        assert struct.unpack("<I", data[i + 12 + n : i + 16 + n])[0] == mw._masked_crc(payload)
        event = event_pb2.Event()
        event.ParseFromString(payload)
        out.append(event)
        i += 16 + n
    return out


@pytest.mark.parametrize("where", ["local", "memory"])
def test_tensorboard_scalars_local_and_at_a_url(tmp_path, where):
    workdir = str(tmp_path) if where == "local" else "memory://tb-run"
    writers = mw.MetricWriters(workdir, enabled=True, tensorboard=True)
    writers.write({"split": "train", "step": 3, "loss": 0.25, "lr": 1e-4, "mfu": 0.4})
    writers.write({"split": "val", "step": 3, "macro_f1": {"en": 0.75}, "rows": 10, "bot_loss": None})
    writers.close()
    from autext_jax import paths

    files = paths.walk_files(paths.join(workdir, mw.TENSORBOARD_DIR))
    assert len(files) == 1 and paths.name(files[0]).startswith("events.out.tfevents.")
    with paths.open_binary(files[0]) as f:
        events = _events(f.read())
    assert events[0].file_version == "brain.Event:2"
    scalars = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
    assert scalars == {
        (3, "train/loss"): 0.25,
        (3, "train/lr"): pytest.approx(1e-4),
        (3, "train/mfu"): pytest.approx(0.4),
        (3, "val/macro_f1/en"): 0.75,
        (3, "val/rows"): 10.0,
    }
    assert mw._crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_jsonl_keeps_records_up_to_the_step_and_skips_a_broken_line(tmp_path, caplog):
    path = tmp_path / mw.METRICS_FILE
    path.write_text('{"split": "train", "step": 1}\n{"split": "train", "step": 2}\n{"split": "tr')
    log = mw.JsonlLog(str(tmp_path))
    log.start_at(1)
    assert "skipped 1 unreadable line" in caplog.text
    log.write({"split": "train", "step": 2, "loss": 0.5})
    log.flush()
    assert [r["step"] for r in mw.read_records(str(path))] == [1, 2]


def test_jsonl_lines_are_strict_json_even_for_a_diverged_metric(tmp_path):
    log = mw.JsonlLog(str(tmp_path))
    log.start_at(0)
    log.write(
        {"split": "train", "step": 1, "loss": float("nan"), "grad_norm": float("inf"), "f1": [0.5, -math.inf]}
    )
    log.flush()
    line = (tmp_path / mw.METRICS_FILE).read_text().strip()

    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant}")

    assert json.loads(line, parse_constant=refuse) == {
        "split": "train",
        "step": 1,
        "loss": None,
        "grad_norm": None,
        "f1": [0.5, None],
    }


def test_flops_and_mfu():
    from conftest import tiny_encoder_config

    enc = tiny_encoder_config()
    per_token = 2 * (4 * 32 * 32 + 2 * 32 * 64) + 2 * 2 * 16 * 32
    assert throughput.train_flops(enc, 8, 16) == 3 * per_token * 2 * 8 * 16
    assert throughput.mfu(197e12, 1.0, "TPU v5 lite", 1) == pytest.approx(1.0)
    assert throughput.mfu(1e12, 1.0, "cpu", 1) is None
