"""The test GCS emulator (``gcs_emulator.py``) that also reports and paces uploads, for kill tests.

``python tests/gcs_journal_emulator.py PORT BUCKET JOURNAL PATTERN PAUSE_S [HOLD]``: every object
upload whose name contains ``PATTERN`` is appended to the local file ``JOURNAL`` (one name a line,
flushed) once it is stored, and the first upload of each such name is followed by ``PAUSE_S`` seconds
of silence. A test watching the journal can thus kill the uploader at a chosen moment of a checkpoint
save (before, during or after a given file) while the save is held there.

With ``HOLD`` (a local file path), the server answers each request in its own thread, and while that
file exists each of its lines is a rule ``NAME_PART`` or ``NAME_PART|BODY_REGEX``: an upload whose
object name contains ``NAME_PART`` (and whose body matches ``BODY_REGEX``) is not stored or answered
until no rule holds it any more (the test edits or removes the file); its name is appended to
``JOURNAL.held`` once. Everything else goes on meanwhile: a test can hold a checkpoint save in flight
and stop the training loop before a chosen step, then let each go on in the order it needs.
"""

from __future__ import annotations

import re
import sys
import time

import gcs_emulator  # the routes call its upload handler, which calls gcs_emulator._insert

_store = gcs_emulator._insert
_seen: set[str] = set()
HOLD: str | None = None


def _held(name: str, body: bytes) -> bool:
    try:
        with open(HOLD, encoding="utf-8") as rules:
            lines = [line.rstrip("\n") for line in rules if line.strip()]
    except FileNotFoundError:
        return False
    for line in lines:
        part, _, pattern = line.partition("|")
        if part in name and (not pattern or re.search(pattern.encode(), body)):
            return True
    return False


def _body(request) -> bytes:
    data = request.data
    if isinstance(data, dict):
        data = data.get("content", b"")
    return data if isinstance(data, bytes) else str(data).encode()


def _insert_and_report(request, response, storage, *args, **kwargs):
    name = (request.query.get("name") or [""])[0]
    if HOLD and not name and isinstance(request.data, dict):  # a multipart upload names it in its metadata
        name = str(request.data.get("meta", {}).get("name", ""))
    if HOLD:
        body, noted = _body(request), False
        while _held(name, body):
            if not noted:
                with open(JOURNAL + ".held", "a", encoding="utf-8") as out:
                    out.write(name + "\n")
                noted = True
            time.sleep(0.05)
    result = _store(request, response, storage, *args, **kwargs)
    if PATTERN and PATTERN in name:
        with open(JOURNAL, "a", encoding="utf-8") as out:
            out.write(name + "\n")
        if name not in _seen:
            _seen.add(name)
            time.sleep(PAUSE_S)
    return result


if __name__ == "__main__":
    port, bucket, JOURNAL, PATTERN, PAUSE_S = (
        int(sys.argv[1]),
        sys.argv[2],
        sys.argv[3],
        sys.argv[4],
        float(sys.argv[5]),
    )
    HOLD = sys.argv[6] if len(sys.argv) > 6 else None
    gcs_emulator._insert = _insert_and_report
    if HOLD:
        from http import server

        server.HTTPServer = server.ThreadingHTTPServer  # a held upload must not stall the others
    from gcp_storage_emulator.server import create_server

    create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()
