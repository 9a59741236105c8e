"""Fit the embedded default model's ``calibration.json`` on its validation split and ship it in the assets.

    python -m tools.calibrate_default_model [--data ../shared/data/autextification/subtask_1] [--report DIR]

Runs ``python -m autext_jax.evaluate --split validation --calibrate`` (the same id-hash split, fraction
and salt that trained ``autext-jax-mini``: ``configs/mini.py``), so the maps, operating points and
``min_tokens`` come from rows the model never trained on; then copies the fitted ``calibration.json``
into ``autext_jax/assets/autext-jax-mini/``. The weights are not touched. ``--report DIR`` keeps the
evaluation (``report.json`` with ECE before/after, ``reliability.png``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from autext_jax import calibration as calib
from autext_jax import evaluate
from autext_jax.hub import resolve_model_dir

DEFAULT_DATA = Path("../shared/data/autextification/subtask_1")
VAL_FRACTION, SALT = "0.1", "autext"  # configs/mini.py's data split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.calibrate_default_model", description=__doc__)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="AuTexTification subtask_1 folder")
    parser.add_argument("--report", default="runs/calibrate-default", help="where the evaluation goes")
    parser.add_argument("--method", choices=calib.METHODS, default="platt")
    args = parser.parse_args(argv)
    assets = resolve_model_dir(None)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model"
        code = evaluate.main(
            [
                "--data", args.data,
                "--split", "validation", "--val-fraction", VAL_FRACTION, "--split-salt", SALT,
                "--output-dir", args.report, "--calibrate", str(copy),
                "--calibration-method", args.method, "--bootstrap", "200",
            ]
        )  # fmt: skip
        if code:
            return code
        shutil.copyfile(copy / calib.FILE_NAME, Path(assets) / calib.FILE_NAME)
    print(f"wrote {Path(assets) / calib.FILE_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
