"""The test GCS emulator (``gcs_emulator.py``) that also reports and paces uploads, for kill tests.

``python tests/gcs_journal_emulator.py PORT BUCKET JOURNAL PATTERN PAUSE_S [HOLD]``: every object
upload whose name contains ``PATTERN`` is appended to the local file ``JOURNAL`` (one name a line,
flushed) once it is stored, and the first upload of each such name is followed by ``PAUSE_S`` seconds
of silence. A test watching the journal can thus kill the uploader at a chosen moment of a checkpoint
save (before, during or after a given file) while the save is held there.

With ``HOLD`` (a local file path), such uploads are not answered while that file exists, for as long
as the test needs (a save held in flight: the test removes the file to let it finish), and the
server answers each request in its own thread, so that everything else (metrics, the run status)
goes on meanwhile.
"""

from __future__ import annotations

import os
import sys
import time

import gcs_emulator  # the routes call its upload handler, which calls gcs_emulator._insert

_store = gcs_emulator._insert
_seen: set[str] = set()
HOLD: str | None = None


def _insert_and_report(request, response, storage, *args, **kwargs):
    result = _store(request, response, storage, *args, **kwargs)
    name = (request.query.get("name") or [""])[0]
    if PATTERN and PATTERN in name:
        with open(JOURNAL, "a", encoding="utf-8") as out:
            out.write(name + "\n")
        if name not in _seen:
            _seen.add(name)
            time.sleep(PAUSE_S)
        while HOLD and os.path.exists(HOLD):
            time.sleep(0.05)
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
