"""Where training and evaluation rows come from: files and folders (local or any ``paths.py`` URL such as
``gs://``), ``save_to_disk`` folders, and Hugging Face Hub datasets, each read into a ``datasets.Dataset``.

- TSV, CSV and JSONL files are read by ``tables.py`` (the reader scoring uses too), so quoting, BOMs,
  CRLF, gzip and ``file:line`` errors behave the same everywhere. Their columns come out as strings
  (a JSONL file may mix ``0`` and ``"human"`` labels); ``None`` marks a missing value. Only the columns
  the pipeline uses are kept. The parsed file is cached by ``datasets``, keyed by the file's identity
  (size and modification time, or the storage's own key for URLs).
- Parquet files and ``save_to_disk`` folders keep their own (typed) schema.
- ``hf://datasets/OWNER/NAME`` (optionally ``:SPLIT``, default ``train``) is a Hub dataset read with
  ``datasets.load_dataset``; offline or unreachable Hubs are one line saying so. A deeper
  ``hf://datasets/OWNER/NAME/path/file.tsv`` is one file of that repository, read like any URL.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from autext_jax import paths
from autext_jax.data import tables
from autext_jax.errors import EXIT_USAGE, InputDataError

# Training reads the labelled table formats of ``tables`` (same names), Parquet and saved datasets.
_TABLE_FORMATS = ("tsv", "csv", "jsonl")
FORMATS = ("auto", *_TABLE_FORMATS, "parquet", "disk")
HUB = "hub"
_HUB_ID = re.compile(r"^hf://datasets/([\w.-]+/[\w.-]+)(?::([\w.-]+))?/?$")
# Columns a table source keeps, each under one name (the first alias present wins).
_COLUMNS = {"id": ("id",), "text": ("text",), "label": ("label", "labels"), "language": ("language", "lang")}
_READ_VERSION = "tables-v1"


class DataError(InputDataError):
    """Input data the pipeline cannot use; the message names the file/column and what to fix (exit 1)."""


class DataUsageError(DataError):
    """A data setting or path that cannot work (bad format name, missing path, no such language): exit 2."""

    exit_code = EXIT_USAGE


def format_of(path: str) -> str | None:
    """A training file's format from its name (``.gz`` ignored), ``None`` for anything else (``.txt``)."""
    if paths.name(path).lower().removesuffix(".gz").endswith(".parquet"):
        return "parquet"
    fmt = tables.format_of(path, default=None)
    return fmt if fmt in _TABLE_FORMATS else None


def _is_saved_dataset(path: str) -> bool:
    return all(paths.isfile(paths.join(path, name)) for name in ("state.json", "dataset_info.json"))


def find_data_files(
    sources: Sequence[str | Path] | str | Path, format: str = "auto"
) -> list[tuple[str, str]]:
    """``(source, format)`` for every input: files as given, folders searched recursively (sorted),
    Hub dataset ids as they are."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    found: list[tuple[str, str]] = []
    for raw in sources:
        path = str(raw)
        if _HUB_ID.match(path):
            found.append((path, HUB))
            continue
        if not paths.exists(path):
            raise DataUsageError(f"data path {path} does not exist")
        if paths.isdir(path):
            found.extend(_folder_files(path, format))
        else:
            fmt = format if format != "auto" else format_of(path)
            if fmt is None:
                raise DataUsageError(
                    f"cannot tell the format of {path} from its suffix; set format: {FORMATS}"
                )
            found.append((path, fmt))
    if not found:
        raise DataUsageError("no data paths given")
    return found


def _folder_files(folder: str, format: str) -> list[tuple[str, str]]:
    if _is_saved_dataset(folder):
        return [(folder, "disk")]
    files = paths.walk_files(folder)
    saved = sorted({f.rsplit("/", 1)[0] for f in files if f.endswith("/state.json")})
    saved = [d for d in saved if _is_saved_dataset(d)]
    # Files inside a save_to_disk folder are that dataset's metadata, not data files.
    inside = tuple(d + "/" for d in saved)
    out = [
        (f, format if format != "auto" else fmt)
        for f in files
        if (fmt := format_of(f)) and not f.startswith(inside)
    ]
    out += [(d, "disk") for d in saved]
    if not out:
        raise DataError(
            f"no data files (*.tsv, *.csv, *.jsonl, *.json, *.parquet, optionally .gz) under {folder}"
        )
    return out


def language_from_path(path: str) -> str:
    """``en``/``es`` from the nearest folder (or the file's stem) named after a language, else ``""``."""
    parts = str(path).split("://", 1)[-1].rstrip("/").split("/")
    stem = parts[-1].split(".")[0].lower()
    for part in [stem, *(p.lower() for p in reversed(parts[:-1]))]:
        if part in ("en", "es"):
            return part
    return ""


def read_source(source: str, fmt: str, cache_dir: str | None = None):
    """The source as a ``datasets.Dataset``; anything unreadable or empty is a ``DataError`` naming it."""
    if fmt == HUB:
        return _read_hub(source, cache_dir)
    if fmt not in ("disk",) and _size(source) == 0:
        raise DataError(f"{source} is empty (no rows)")
    try:
        if fmt in _TABLE_FORMATS:
            return _read_table(source, fmt, cache_dir)
        return _read_other(source, fmt, cache_dir)
    except DataError:
        raise
    except Exception as err:  # parsers raise many types; the user needs the file and the reason
        cause = err.__cause__ or err.__context__
        if isinstance(cause, InputDataError):  # raised inside the datasets generator: ours, with file:line
            raise DataError(str(cause)) from None
        raise DataError(f"cannot read {source} as {fmt}: {type(err).__name__}: {err}") from err


def _size(path: str) -> int | None:
    try:
        return paths.filesystem(path).size(path) if paths.is_url(path) else paths.local(path).stat().st_size
    except (OSError, ValueError):
        return None


def _identity(path: str) -> str:
    """What changes when the file does: size + mtime locally, the storage's own key for URLs."""
    if paths.is_url(path):
        return paths.filesystem(path).ukey(path)
    stat = paths.local(path).stat()
    return f"{os.path.abspath(paths.local(path))}:{stat.st_size}:{stat.st_mtime_ns}"


def _read_table(path: str, fmt: str, cache_dir: str | None):
    import datasets
    from datasets.fingerprint import Hasher

    features = datasets.Features({name: datasets.Value("string") for name in _COLUMNS})
    fingerprint = Hasher.hash([_READ_VERSION, path, fmt, _identity(path)])
    with quiet_progress():
        return datasets.Dataset.from_generator(
            _table_rows,
            features=features,
            gen_kwargs={"path": path, "fmt": fmt},
            cache_dir=cache_dir,
            fingerprint=fingerprint,
        )


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No ``datasets`` progress bars for reading files: they are quick, and would precede every message."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _table_rows(path: str, fmt: str) -> Iterator[dict[str, str | None]]:
    """Rows of one table in the fixed schema of ``_COLUMNS`` (strings, ``None`` when missing)."""
    if fmt == "jsonl" and _starts_with(path, b"["):
        records = _json_array(path)
    else:
        records = tables.read(path, fmt, required=("text",))
    for record in records:
        if record.values is None:
            raise DataError(f"{record.problem}; fix or remove that line")
        row = {}
        for name, aliases in _COLUMNS.items():
            key = next((a for a in aliases if a in record.values), None)
            row[name] = _as_text(record.values[key], record.where, key) if key else None
        yield row


def _as_text(value, where: str, column: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    raise DataError(f"{where}: column {column!r} holds a {type(value).__name__}, expected a string or number")


def _starts_with(path: str, prefix: bytes) -> bool:
    with paths.open_binary(path) as stream:
        head = stream.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(prefix)


def _json_array(path: str) -> Iterator[tables.Record]:
    """A ``.json`` file holding one array of objects (not JSON Lines): records numbered by position."""
    try:
        with paths.open_text(path, encoding="utf-8-sig") as stream:
            items = json.load(stream)
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path}: not a JSON array of objects ({err})") from None
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        yield tables.Record(where, item) if isinstance(item, dict) else tables.Record(
            where, None, f"{where}: expected a JSON object"
        )


def _read_other(path: str, fmt: str, cache_dir: str | None):
    import datasets

    if fmt == "disk":
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            raise DataError(
                f"{path} holds several splits {sorted(loaded)}; pass one split's folder, e.g. "
                f"{paths.join(path, next(iter(loaded)))}"
            )
        return loaded
    if fmt == "parquet":
        return datasets.load_dataset("parquet", data_files=path, split="train", cache_dir=cache_dir)
    raise DataUsageError(f"data format {fmt!r} is not one of {FORMATS}")


def _read_hub(source: str, cache_dir: str | None):
    import datasets

    match = _HUB_ID.match(source)
    assert match is not None
    name, split = match.group(1), match.group(2) or "train"
    try:
        loaded = datasets.load_dataset(name, split=split, cache_dir=cache_dir)
    except Exception as err:  # offline, unreachable, unknown repo or split: all end the same way
        raise DataUsageError(f"cannot load Hub dataset {name} (split {split}): {_hub_reason(err)}") from None
    return loaded


def _hub_reason(err: Exception) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return "offline (HF_HUB_OFFLINE is set) and not in the local datasets cache; fetch it while online"
    first = " ".join(str(err).split())[:200]
    return f"{type(err).__name__}: {first}"
