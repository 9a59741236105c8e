"""The test GCS emulator (``gcs_emulator.py``) that also reports and paces uploads, for kill tests.

``python tests/gcs_journal_emulator.py PORT BUCKET JOURNAL PATTERN PAUSE_S``: every object upload
whose name contains ``PATTERN`` is appended to the local file ``JOURNAL`` (one name a line, flushed)
once it is stored, and the first upload of each such name is followed by ``PAUSE_S`` seconds of
silence. A test watching the journal can thus kill the uploader at a chosen moment of a checkpoint
save (before, during or after a given file) while the save is held there.
"""

from __future__ import annotations

import sys
import time

import gcs_emulator  # the routes call its upload handler, which calls gcs_emulator._insert

_store = gcs_emulator._insert
_seen: set[str] = set()


def _insert_and_report(request, response, storage, *args, **kwargs):
    result = _store(request, response, storage, *args, **kwargs)
    name = (request.query.get("name") or [""])[0]
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
    gcs_emulator._insert = _insert_and_report
    from gcp_storage_emulator.server import create_server

    create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()
