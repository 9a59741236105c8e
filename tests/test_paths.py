"""The path layer: local paths and fsspec URLs through one set of functions."""

from __future__ import annotations

import gzip

import pytest

from autext_jax import paths
from autext_jax.errors import UsageError


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "root")
        return
    base = f"memory://test-paths-{tmp_path.name}"
    yield base
    if paths.exists(base):
        paths.remove(base, recursive=True)


def test_the_same_calls_work_on_local_paths_and_urls(root):
    assert not paths.exists(root)
    paths.makedirs(paths.join(root, "sub"))
    assert paths.isdir(root) and paths.isdir(paths.join(root, "sub"))
    target = paths.join(root, "sub", "a.txt")
    paths.write_text(target, "héllo\n")
    assert paths.isfile(target) and paths.read_text(target) == "héllo\n"
    with paths.open_binary(paths.join(root, "b.txt.gz"), "wb") as stream:
        stream.write(b"zipped")
    with paths.open_binary(paths.join(root, "b.txt.gz")) as stream:
        assert stream.read() == b"zipped"
    assert [paths.name(p) for p in paths.listdir(root)] == ["b.txt.gz", "sub"]
    files = paths.walk_files(root)
    assert [paths.name(p) for p in files] == ["b.txt.gz", "a.txt"] and all(paths.exists(f) for f in files)
    assert paths.walk_files(target) == [target]
    paths.remove(target)
    assert not paths.exists(target)


def test_gzip_files_are_really_compressed(tmp_path):
    target = str(tmp_path / "x.gz")
    with paths.open_text(target, "w") as stream:
        stream.write("line\n")
    assert gzip.decompress((tmp_path / "x.gz").read_bytes()) == b"line\n"


def test_schemes_and_joins():
    assert paths.scheme("gs://bucket/run") == "gs" and paths.scheme("/tmp/x") is None
    assert paths.scheme("file:///tmp/x") is None and str(paths.local("file:///tmp/x")) == "/tmp/x"
    assert paths.join("gs://bucket/run/", "checkpoints", "7") == "gs://bucket/run/checkpoints/7"
    assert paths.join("/tmp/run", "export") == "/tmp/run/export"


def test_an_unknown_scheme_is_one_usage_line():
    with pytest.raises(UsageError, match=r"unknown storage scheme nosuch://"):
        paths.exists("nosuch://bucket/x")


def test_resolved_gives_one_spelling_per_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    where = str(tmp_path / "in" / "a.txt")
    for spelling in ("in/a.txt", "./in/../in/a.txt", where, f"file://{where}"):
        assert paths.resolved(spelling) == where, spelling
    for spelling in ("gs://bkt/corpus/a.parquet", "GS://bkt//corpus/a.parquet", "gs://bkt/corpus/a.parquet/"):
        assert paths.resolved(spelling) == "gs://bkt/corpus/a.parquet", spelling
