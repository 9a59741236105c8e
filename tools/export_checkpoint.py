"""Re-export a model directory in our reference layout (optionally float16), check it scores the same.

    python -m tools.export_checkpoint SRC OUT [--storage-dtype float16] [--check-texts FILE] [--tolerance T]

SRC is anything ``autext_jax.load`` accepts (our layout, the published layout, a pickled ``.bin``
with ``--allow-pickle``, a ``--key-map``). OUT gets ``model.safetensors``, ``config.json`` and the
tokenizer files. Both directories then score the check texts (built-in EN/ES samples, or one text
per line of ``--check-texts``) and the largest probability difference must stay within
``--tolerance``. Prints that difference and each written file's sha256 (for model cards).
Exit codes: 0 done, 1 difference over tolerance, 2 bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from autext_jax import cli
from autext_jax.errors import UsageError

SAMPLE_TEXTS = (
    "The Commission shall publish the report every two years and submit it to the Council.",
    "lol cannot believe the game last night, totally worth staying up",
    "To replace the filter, first switch off the unit and remove the front cover.",
    "El presente Reglamento entrará en vigor a los veinte días de su publicación.",
    "No me puedo creer que mañana ya sea lunes otra vez",
    "Para cambiar la rueda, afloja primero las tuercas con la llave.",
    "",
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def max_probability_difference(src: Path, out: Path, texts: list[str]) -> float:
    """Largest |Δ| of bot_prob or english_prob between the two directories on ``texts``."""
    import autext_jax

    a = autext_jax.load(str(src)).score(texts)
    b = autext_jax.load(str(out)).score(texts)
    return float(
        max(np.abs(a[k].astype(np.float64) - b[k]).max() for k in ("bot_prob", "english_prob"))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="model directory to read")
    parser.add_argument("out", type=Path, help="directory to write (created)")
    parser.add_argument("--storage-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--key-map", help="JSON file of HF key -> reference key overrides")
    parser.add_argument("--allow-pickle", action="store_true", help="accept a pickled pytorch_model.bin")
    parser.add_argument("--transformer-name", help="set config.json's transformer_name (informational)")
    parser.add_argument("--check-texts", type=Path, help="one text per line (default: built-in samples)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max |Δ probability| allowed")
    cli.add_debug_flag(parser)
    return cli.main("export_checkpoint", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from autext_jax.convert import export_checkpoint, load_checkpoint

    if args.out.resolve() == args.src.resolve():
        raise UsageError("OUT must differ from SRC")
    texts = list(SAMPLE_TEXTS)
    if args.check_texts is not None:
        texts = args.check_texts.read_text(encoding="utf-8").splitlines()
    loaded = load_checkpoint(args.src, key_map=args.key_map, allow_pickle=args.allow_pickle)
    config = loaded.config
    if args.transformer_name:
        config = config.replace(transformer_name=args.transformer_name)
    export_checkpoint(
        loaded.model, config, args.out, tokenizer_dir=args.src, storage_dtype=args.storage_dtype
    )
    diff = max_probability_difference(args.src, args.out, texts)
    for path in sorted(p for p in args.out.iterdir() if p.is_file()):
        print(f"sha256 {sha256(path)}  {path.name}  ({path.stat().st_size:,} bytes)")
    verdict = "ok" if diff <= args.tolerance else "OVER TOLERANCE"
    print(f"max |Δ probability| on {len(texts)} texts: {diff:.3g} (tolerance {args.tolerance:g}): {verdict}")
    return 0 if diff <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
