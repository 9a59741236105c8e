"""Training/evaluation data: load any supported file layout into one schema, split, tokenize, batch.

Every source is normalised to the columns ``id`` (str), ``text`` (str), ``bot`` (int8: 1 generated,
0 human, -1 missing), ``english`` (int8: 1 en, 0 es/other, -1 missing) and ``language`` (str, ``""``
if unknown), so the rest of the pipeline never looks at file formats.
Batches for training and evaluation are made by ``data/stream.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autext_jax.data.batching import bucket_lengths, tokenize
from autext_jax.data.sources import (
    FORMATS,
    DataError,
    DataUsageError,
    find_data_files,
    language_from_path,
    quiet_progress,
    read_source,
)
from autext_jax.normalize import NORMALIZATION_VERSION
from autext_jax.normalize import normalize as normalized

log = logging.getLogger(__name__)

_LABELS = {"human": 0, "generated": 1, "0": 0, "1": 1, "false": 0, "true": 1}
_LANGUAGES = {
    "en": "en", "english": "en", "eng": "en", "es": "es", "spanish": "es", "español": "es", "spa": "es"
}
_LANGUAGE_COLUMNS = ("language", "lang")
_NORMALIZE_VERSION = "normalize-v2"
_TOKENIZE_VERSION = "tokenize-v1"
COLUMNS = ("id", "text", "bot", "english", "language")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to cut it into training/validation batches.

    ``val_paths`` (optional) gives an explicit validation set; otherwise ``val_fraction`` of the
    rows of ``paths`` (chosen by a salted hash of ``language``+``id``) are held out. ``cache_dir``
    ("" = the ``datasets`` default) is where parsed files and token ids are cached. ``normalize``:
    tokenize texts after ``normalize.normalize``, as scoring does (``False``: the raw text).
    """

    paths: tuple[str, ...] = ()
    format: str = "auto"
    val_fraction: float = 0.1
    split_salt: str = "autext"
    max_length: int = 128
    languages: tuple[str, ...] = ("en", "es")
    val_paths: tuple[str, ...] = ()
    smallest_bucket: int = 16
    cache_dir: str = ""
    normalize: bool = True

    def __post_init__(self) -> None:
        for name in ("paths", "val_paths", "languages"):  # "x" or ["x"] (e.g. from a --set) → ("x",)
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.format not in FORMATS:
            raise DataUsageError(f"data format {self.format!r} is not one of {FORMATS}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataUsageError(f"val_fraction {self.val_fraction} must be in [0, 1)")
        if self.max_length < 2:
            raise DataUsageError(f"max_length must be at least 2, got {self.max_length}")

    @property
    def buckets(self) -> tuple[int, ...]:
        return bucket_lengths(self.max_length, smallest=min(self.smallest_bucket, self.max_length))


# ---- loading ---------------------------------------------------------------------------------


def _label_map(ds, column: str, where: str) -> dict[Any, int]:
    """Map every distinct label value to 1/0/-1; unknown values are an error listing what was found."""
    import datasets

    feature = ds.features[column]
    values = ds.unique(column)
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    mapping: dict[Any, int] = {}
    unknown = []
    for value in values:
        key = names[value] if names is not None and isinstance(value, int) and value >= 0 else value
        if key is None or (isinstance(key, str) and not key.strip()) or (names is not None and value == -1):
            mapping[value] = -1
            continue
        text = str(int(key)) if isinstance(key, (bool, float)) and float(key).is_integer() else str(key)
        code = _LABELS.get(text.strip().lower())
        if code is None:
            unknown.append(value)
        else:
            mapping[value] = code
    if unknown:
        shown = sorted(map(repr, values))
        more = f" and {len(shown) - 20} more" if len(shown) > 20 else ""
        bad = ", ".join(sorted(map(repr, unknown))[:20])
        raise DataError(
            f"{where}: column {column!r} has unknown label values {bad}"
            f" (values found: {', '.join(shown[:20])}{more}); expected human/generated or 0/1 (1 = generated)"
        )
    return mapping


def _text_id(text: str) -> str:
    return "text:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _normalize(ds, path: str):
    """One source file → the common schema (see module docstring)."""
    import datasets
    from datasets.fingerprint import Hasher

    if len(ds) == 0:
        raise DataError(f"{path} has no rows")
    columns = ds.column_names
    if "text" not in columns:
        raise DataError(f"{path} has no 'text' column; its columns are {columns}")
    missing_text = ds.data.column("text").null_count
    if missing_text:
        raise DataError(f"{path}: {missing_text} rows have no text; fix or remove them")
    label_column = next((c for c in ("label", "labels") if c in columns), None)
    labels = _label_map(ds, label_column, path) if label_column else {}
    language_column = next((c for c in _LANGUAGE_COLUMNS if c in columns), None)
    folder_language = language_from_path(path)

    def convert(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch["text"])
        texts = [str(t) for t in batch["text"]]
        out = {"text": texts}
        # A row without an id gets one from its text: stable wherever the file lives and in any order,
        # and duplicated texts land in the same split.
        ids = batch["id"] if "id" in batch else [None] * n
        out["id"] = [str(i) if i is not None else _text_id(t) for i, t in zip(ids, texts, strict=True)]
        out["bot"] = [labels[v] for v in batch[label_column]] if label_column else [-1] * n
        raw = batch[language_column] if language_column else [None] * n
        langs = []
        for value in raw:
            name = str(value).strip().lower() if value is not None else ""
            langs.append(_LANGUAGES.get(name, name) or folder_language)
        out["language"] = langs
        out["english"] = [(1 if lang == "en" else 0) if lang else -1 for lang in langs]
        return out

    features = datasets.Features(
        id=datasets.Value("string"),
        text=datasets.Value("string"),
        bot=datasets.Value("int8"),
        english=datasets.Value("int8"),
        language=datasets.Value("string"),
    )
    fingerprint = Hasher.hash(
        [_NORMALIZE_VERSION, ds._fingerprint, sorted(labels.items(), key=repr), label_column]
        + [language_column, folder_language]
    )
    out = ds.map(
        convert,
        batched=True,
        remove_columns=columns,
        features=features,
        new_fingerprint=fingerprint,
        desc=f"normalising {path.rstrip('/').rsplit('/', 1)[-1]}",
    )
    return out.select_columns(list(COLUMNS))


def load_examples(
    paths: Sequence[str | Path] | str | Path,
    format: str = "auto",
    *,
    languages: Sequence[str] | None = None,
    cache_dir: str | None = None,
):
    """Load and normalise every file under ``paths`` into one ``datasets.Dataset`` (schema above).

    ``languages`` (optional) keeps only those languages and fails if one of them has no rows.
    ``cache_dir`` overrides the ``datasets`` cache (default ``HF_DATASETS_CACHE``).
    """
    import datasets

    if format not in FORMATS:
        raise DataUsageError(f"data format {format!r} is not one of {FORMATS}")
    files = find_data_files(paths, format)
    with quiet_progress():
        parts = [_normalize(read_source(path, fmt, cache_dir), path) for path, fmt in files]
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if languages:
        ds = select_languages(ds, languages)
    return ds


def select_languages(ds, languages: Sequence[str]):
    """Keep rows whose language is in ``languages``; a requested language without rows is an error."""
    wanted = [_LANGUAGES.get(lang.lower(), lang.lower()) for lang in languages]
    found = np.asarray(column_values(ds, "language"), dtype=object)
    present = sorted(set(found.tolist()))
    missing = [lang for lang in wanted if lang not in present]
    if missing:
        raise DataUsageError(
            f"no rows in language(s) {missing}; the data has languages {present} "
            f"('' = unknown: add a language column or put files in en/ or es/ folders)"
        )
    keep = np.isin(found, wanted)
    if not keep.all():
        names, counts = np.unique(found[~keep], return_counts=True)
        dropped = {name or "unknown": int(n) for name, n in zip(names, counts, strict=True)}
        log.warning("keeping %d of %d rows (languages %s); left out %s", keep.sum(), len(ds), wanted, dropped)
        ds = ds.select(np.flatnonzero(keep))
    return ds


def summarize(ds) -> dict[str, dict[str, int]]:
    """Row counts per language and label, e.g. ``{"en": {"human": 9, "generated": 8, "unlabelled": 0}}``."""
    langs = np.asarray(column_values(ds, "language"), dtype=object)
    bot = np.asarray(column_values(ds, "bot"))
    out = {}
    for lang in sorted(set(langs.tolist())):
        rows = bot[langs == lang]
        counts = {"human": (rows == 0).sum(), "generated": (rows == 1).sum(), "unlabelled": (rows < 0).sum()}
        out[lang or "unknown"] = {k: int(v) for k, v in counts.items()}
    return out


def warn_about_rows(ds, what: str) -> dict[str, int]:
    """Log a warning with the counts when rows cannot teach the bot head well; returns the counts.

    Training still runs (a language-only run is legitimate), but never silently: one class only,
    rows without a human/generated label, and empty texts are each counted and named.
    """
    bot = np.asarray(column_values(ds, "bot"))
    texts = column_values(ds, "text")
    counts = {
        "rows": int(bot.size),
        "human": int((bot == 0).sum()),
        "generated": int((bot == 1).sum()),
        "unlabelled": int((bot < 0).sum()),
        "empty_text": sum(1 for t in texts if not t.strip()),
    }
    n = max(counts["rows"], 1)
    labelled = counts["human"] + counts["generated"]
    if labelled and not (counts["human"] and counts["generated"]):
        only = "human" if counts["human"] else "generated"
        log.warning(
            "%s data: all %d labelled rows are %s; the bot head cannot learn to tell the classes apart "
            "and no threshold is tuned on it", what, labelled, only,
        )
    if counts["unlabelled"]:
        log.warning(
            "%s data: %d of %d rows (%.0f%%) have no human/generated label; they train the language "
            "head only", what, counts["unlabelled"], counts["rows"], 100 * counts["unlabelled"] / n,
        )
    if counts["empty_text"]:
        log.warning(
            "%s data: %d of %d rows (%.0f%%) have an empty text", what, counts["empty_text"], counts["rows"],
            100 * counts["empty_text"] / n,
        )
    return counts


def column_values(ds, name: str) -> list:
    """One column as a Python list, fast (row-by-row access through ``ds[name]`` is slow for big data)."""
    return ds.with_format("arrow", columns=[name])[:].column(name).to_pylist()


# ---- split -----------------------------------------------------------------------------------


def _hash_unit(key: str) -> float:
    """A stable float in [0, 1) from a string (same on every machine and Python version)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_by_id(ds, val_fraction: float, salt: str = "autext"):
    """``(train, val)``: a row is in validation iff hash(salt, language, id) < val_fraction.

    The language is part of the key because the official files number ids per language (en id 5 and
    es id 5 are different texts). File order never matters.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataUsageError(f"val_fraction {val_fraction} must be in [0, 1)")
    ids, langs = column_values(ds, "id"), column_values(ds, "language")
    keys = (f"{salt}\x00{lang}\x00{i}" for i, lang in zip(ids, langs, strict=True))
    is_val = np.array([_hash_unit(key) < val_fraction for key in keys], dtype=bool)
    return ds.select(np.flatnonzero(~is_val)), ds.select(np.flatnonzero(is_val))


# ---- tokenization ----------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable identity for a tokenizer, so cached token ids are reused only with the same vocabulary."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Calling the tokenizer sets its truncation/padding state, which must not change the identity.
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        return Hasher.hash(json.dumps(state, sort_keys=True))
    return Hasher.hash([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])


def tokenize_dataset(
    ds, tokenizer, max_length: int, *, num_proc: int | None = None, normalize: bool = True
):
    """Add ``input_ids`` (list[int], special tokens included, truncated) and ``length``; cached on disk.

    ``normalize``: tokenize each text as scoring does, after ``normalize.normalize`` (so a model
    trains on what it will be asked to score). The map's fingerprint is (dataset, tokenizer
    vocabulary, max_length, normalization), so a second run with the same inputs reads the tokens
    from the ``datasets`` cache instead of tokenizing again.
    """
    import datasets
    from datasets.fingerprint import Hasher

    if len(ds) == 0:
        raise DataError("cannot tokenize an empty dataset")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [normalized(t).text for t in batch["text"]] if normalize else batch["text"]
        ids = tokenize(tokenizer, texts, max_length)
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    features = ds.features.copy()
    features["input_ids"] = datasets.Sequence(datasets.Value("int32"))
    features["length"] = datasets.Value("int32")
    key = [_TOKENIZE_VERSION, ds._fingerprint, tokenizer_fingerprint(tokenizer), max_length]
    key += [NORMALIZATION_VERSION] if normalize else []
    fingerprint = Hasher.hash(key)
    return ds.map(
        encode,
        batched=True,
        batch_size=1000,
        features=features,
        new_fingerprint=fingerprint,
        num_proc=num_proc,
        desc="tokenizing",
    )


def build_datasets(cfg: DataConfig, tokenizer):
    """``(train, val)`` tokenized datasets from a ``DataConfig`` (the usual training entry point)."""
    cache_dir = cfg.cache_dir or None
    examples = load_examples(cfg.paths, cfg.format, languages=cfg.languages, cache_dir=cache_dir)
    full = tokenize_dataset(examples, tokenizer, cfg.max_length, normalize=cfg.normalize)
    if cfg.val_paths:
        val = load_examples(cfg.val_paths, cfg.format, languages=cfg.languages, cache_dir=cache_dir)
        warn_about_rows(full, "training")
        warn_about_rows(val, "validation")
        return full, tokenize_dataset(val, tokenizer, cfg.max_length, normalize=cfg.normalize)
    train, val = split_by_id(full, cfg.val_fraction, cfg.split_salt)
    if len(train) == 0:
        raise DataError(f"val_fraction {cfg.val_fraction} left no training rows")
    warn_about_rows(train, "training")
    if len(val):
        warn_about_rows(val, "validation")
    return train, val


__all__ = [
    "DataConfig",
    "DataError",
    "build_datasets",
    "find_data_files",
    "load_examples",
    "select_languages",
    "split_by_id",
    "summarize",
    "tokenize_dataset",
    "warn_about_rows",
]
