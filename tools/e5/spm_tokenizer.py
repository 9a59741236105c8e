"""Build an XLM-R style tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) from pieces and scores.

XLM-R's SentencePiece model is a unigram model normalised with sentencepiece's built-in ``nmt_nfkc``
rule. The compiled form of that rule (the "precompiled charsmap") is taken from the installed
``sentencepiece`` library by training a throw-away model on a few words, so no file is downloaded.
Layout (mirroring ``../shared/xlmr-tokenizer``): Replace(ZWJ -> space) + Precompiled(nmt_nfkc),
WhitespaceSplit + Metaspace(always), Unigram(unk_id=3), ``<s> $A </s>``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from autext_jax.errors import InputDataError

ZERO_WIDTH_JOINER = "\u200d"


class TokenizerBuildError(InputDataError):
    """The tokenizer could not be built from the given files; the message says what is missing (exit 1)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _proto_fields(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) pairs of a serialized protobuf message (enough for ModelProto)."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        else:
            raise TokenizerBuildError(f"unexpected protobuf wire type {wire} in a sentencepiece model")
        yield number, value


@lru_cache(maxsize=1)
def nmt_nfkc_charsmap() -> bytes:
    """sentencepiece's compiled ``nmt_nfkc`` normalisation table (what XLM-R's tokenizer uses)."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise TokenizerBuildError(
            "the sentencepiece package is needed to build the XLM-R normaliser; pip install sentencepiece"
        ) from None
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world abc def"] * 20),
        model_writer=model,
        vocab_size=20,
        model_type="unigram",
        normalization_rule_name="nmt_nfkc",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    # ModelProto field 3 = NormalizerSpec; its field 2 = precompiled_charsmap.
    for number, value in _proto_fields(model.getvalue()):
        if number == 3:
            for inner, charsmap in _proto_fields(value):
                if inner == 2:
                    return bytes(charsmap)
    raise TokenizerBuildError("sentencepiece produced a model without a precompiled charsmap")


def build_xlmr_tokenizer(
    pieces: Sequence[tuple[str, float]], out_dir: str | Path, *, model_max_length: int = 512
) -> Path:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` loadable by ``transformers.AutoTokenizer``.

    ``pieces`` are in id order; ids 0-3 must be ``<s> <pad> </s> <unk>`` and ``<mask>`` must be present.
    """
    from tokenizers import normalizers
    from transformers import XLMRobertaTokenizer

    names = [p for p, _ in pieces]
    expected = ["<s>", "<pad>", "</s>", "<unk>"]
    if names[:4] != expected or "<mask>" not in names:
        raise TokenizerBuildError(f"pieces must start with {expected} and contain <mask>; got {names[:4]}")
    tok = XLMRobertaTokenizer(vocab=[(p, float(s)) for p, s in pieces], model_max_length=model_max_length)
    # XLM-R's own (2019) charsmap maps a zero-width joiner to a space; today's nmt_nfkc keeps it.
    tok.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace(ZERO_WIDTH_JOINER, " "), normalizers.Precompiled(list(nmt_nfkc_charsmap()))]
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    return out_dir
