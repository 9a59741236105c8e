"""One path layer for all that training and data touch: local paths and URLs (``gs://``, ``memory://``).

Local paths go through the standard library (fast, and behaviour unchanged); a URL goes through the
fsspec filesystem of its scheme (``gcsfs`` for ``gs://``). Nothing else in the package should call
``Path.exists`` or ``open`` on something that may be a URL: use these functions. Paths are plain
strings here, so they can be passed on unchanged to Orbax/tensorstore (which read ``gs://`` themselves).

An unknown scheme or a missing filesystem package is a ``UsageError`` (exit 2) with one line saying
what to install.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from functools import cache
from pathlib import Path
from typing import IO, Any

from autext_jax.errors import UsageError

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
# What to install for the schemes users meet on Cloud TPU; fsspec knows the rest.
_PACKAGE_FOR = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "hf": "huggingface_hub"}


def scheme(path: str | os.PathLike) -> str | None:
    """``"gs"`` for ``gs://bucket/x``; ``None`` for a local path (``file://`` counts as local)."""
    match = _URL.match(str(path))
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def is_url(path: str | os.PathLike) -> bool:
    return scheme(path) is not None


def local(path: str | os.PathLike) -> Path:
    """The local ``Path`` of a non-URL path (``file://`` stripped); a URL is a programming error here."""
    text = str(path)
    if is_url(text):
        raise ValueError(f"{text} is a URL, not a local path")
    return Path(text.removeprefix("file://")).expanduser()


@cache
def _filesystem(protocol: str):
    import fsspec

    try:
        return fsspec.filesystem(protocol)
    except ImportError as err:
        package = _PACKAGE_FOR.get(protocol, "the fsspec package for it")
        raise UsageError(f"{protocol}:// paths need {package}: pip install {package} ({err})") from None
    except ValueError:
        raise UsageError(
            f"unknown storage scheme {protocol}:// (use a local path, gs://, or an fsspec URL)"
        ) from None


def filesystem(path: str | os.PathLike):
    """The fsspec filesystem behind ``path`` (local paths get fsspec's local filesystem)."""
    return _filesystem(scheme(path) or "file")


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` for local paths and URLs alike (a URL keeps its ``//``)."""
    if not is_url(base):
        return str(local(base).joinpath(*parts))
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def resolved(path: str | os.PathLike) -> str:
    """One spelling per location: a local path made absolute (``~`` and ``file://`` expanded, ``..``
    folded); a URL with its scheme lower-cased and repeated or trailing ``/`` dropped."""
    text = str(path)
    if not is_url(text):
        return os.path.abspath(local(text))
    rest = re.sub(r"/{2,}", "/", _URL.sub("", text)).rstrip("/")
    return f"{scheme(text)}://{rest}"


def name(path: str | os.PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path: str | os.PathLike) -> bool:
    return local(path).exists() if not is_url(path) else filesystem(path).exists(str(path))


def isdir(path: str | os.PathLike) -> bool:
    return local(path).is_dir() if not is_url(path) else filesystem(path).isdir(str(path))


def isfile(path: str | os.PathLike) -> bool:
    return local(path).is_file() if not is_url(path) else filesystem(path).isfile(str(path))


def makedirs(path: str | os.PathLike) -> None:
    if is_url(path):
        filesystem(path).makedirs(str(path), exist_ok=True)
    else:
        local(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """The entries of a folder as full paths (URLs keep their scheme), sorted."""
    if not is_url(path):
        return sorted(str(p) for p in local(path).iterdir())
    prefix = f"{scheme(path)}://"
    entries = filesystem(path).ls(str(path), detail=False)
    return sorted(e if is_url(e) else prefix + e.lstrip("/") for e in entries if e.rstrip("/") != str(path))


def walk_files(path: str | os.PathLike) -> list[str]:
    """Every file below a folder (recursively), as full paths, sorted; a file is its own list."""
    if not is_url(path):
        root = local(path)
        return [str(root)] if root.is_file() else sorted(str(p) for p in root.rglob("*") if p.is_file())
    fs, prefix = filesystem(path), f"{scheme(path)}://"
    if fs.isfile(str(path)):
        return [str(path)]
    return sorted(f if is_url(f) else prefix + f.lstrip("/") for f in fs.find(str(path)))


def open_binary(path: str | os.PathLike, mode: str = "rb") -> IO[bytes]:
    """A binary file object; ``.gz`` files are decompressed (or compressed) on the fly."""
    raw: Any = open(local(path), mode) if not is_url(path) else filesystem(path).open(str(path), mode)
    return gzip.GzipFile(fileobj=raw, mode=mode) if str(path).endswith(".gz") else raw


def open_text(
    path: str | os.PathLike, mode: str = "r", encoding: str = "utf-8", newline: str | None = None
) -> IO[str]:
    binary = open_binary(path, mode.replace("t", "") + "b")
    return io.TextIOWrapper(binary, encoding=encoding, newline=newline)


def read_text(path: str | os.PathLike) -> str:
    with open_text(path) as stream:
        return stream.read()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small file whole; on local disks atomically (a reader never sees half of it)."""
    if is_url(path):
        filesystem(path).pipe(str(path), text.encode("utf-8"))
        return
    target = local(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def remove(path: str | os.PathLike, recursive: bool = False) -> None:
    if is_url(path):
        filesystem(path).rm(str(path), recursive=recursive)
    elif recursive:
        import shutil

        shutil.rmtree(local(path))
    else:
        local(path).unlink()
