"""The one table reader: formats, quoting rules, BOM/CRLF, gzip, URLs and error positions."""

from __future__ import annotations

import gzip

import pytest

from autext_jax.data import tables
from autext_jax.errors import InputDataError


def _read(path, fmt, **kwargs):
    return [(r.where.rsplit(":", 1)[-1], r.values, r.problem) for r in tables.read(str(path), fmt, **kwargs)]


def test_formats_from_names():
    assert [tables.format_of(p) for p in ("a.TSV.gz", "b.jsonl", "c.csv", "d.txt", "e", "-")] == [
        "tsv", "jsonl", "csv", "txt", "txt", "txt"
    ]
    assert tables.format_of("gs://bucket/x.json") == "jsonl" and tables.format_of("x.bin", None) is None


def test_tsv_rows_are_lines_and_csv_rows_follow_quotes(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_bytes(b'\xef\xbb\xbfid\ttext\r\n1\t"open\r\n\r\n2\ta "b" c\r\n3\ttoo\tmany\r\n')
    assert _read(tsv, "tsv") == [
        ("2", {"id": "1", "text": '"open'}, None),
        ("4", {"id": "2", "text": 'a "b" c'}, None),
        ("5", None, f"{tsv}:5: 3 fields, the header has 2"),
    ]
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('id,text\n1,"two\nlines"\n2,plain\n3,"never closed\n4,x\n')
    got = _read(csv_path, "csv")
    assert got[0] == ("2", {"id": "1", "text": "two\nlines"}, None)
    assert got[1] == ("4", {"id": "2", "text": "plain"}, None)
    assert got[2][1] is None and got[2][0] == "5" and "malformed CSV" in got[2][2]  # named where it starts


def test_header_problems_raise_and_bad_lines_are_records(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_text("id\tbody\n1\tx\n")
    with pytest.raises(InputDataError, match="no 'text' column; columns found: id, body"):
        list(tables.read(str(table), "tsv", required=("text",)))
    lines = tmp_path / "l.jsonl"
    lines.write_bytes(b'{"text": "a"}\n\n\xff\n{"id": 1}\n[1]\n{"text": Infinity}\n')
    got = _read(lines, "jsonl", required=("text",))
    assert [g[0] for g in got] == ["1", "3", "4", "5", "6"]
    assert got[0][1] == {"text": "a"} and "not valid UTF-8" in got[1][2]
    assert "field 'text'" in got[2][2] and "field 'text'" in got[3][2] and "constant Infinity" in got[4][2]


def test_gzip_txt_and_truncated_gzip(tmp_path):
    path = tmp_path / "t.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("one\r\ntwo\n\n")
    assert [v["text"] for _, v, _ in _read(path, "txt")] == ["one", "two", ""]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(InputDataError, match="cannot read"):
        list(tables.read(str(path), "txt"))
