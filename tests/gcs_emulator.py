"""A local Cloud Storage emulator for tests: ``python tests/gcs_emulator.py PORT BUCKET [REFUSE]``.

``gcp-storage-emulator`` (PyPI, pure Python, in memory) with one fix: its downloads lack the
``x-goog-generation`` header that tensorstore (Orbax's storage layer) reads, so reading an OCDBT
manifest back fails with "Malformed StorageGeneration". The header is added from the object's
metadata, as real GCS sends it. With ``REFUSE``, media uploads of objects whose name contains it
are answered 403 (as for a bucket without write permission there): a real storage failure for tests.
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 - not found: the original handler already answered 404
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", 1))


_insert = objects.insert
_REFUSE = sys.argv[3] if __name__ == "__main__" and len(sys.argv) > 3 else None


def _insert_or_refuse(request, response, storage, *args, **kwargs):
    name = (request.query.get("name") or [""])[0]
    if _REFUSE and _REFUSE in name:
        response.status = HTTPStatus.FORBIDDEN
        response.json({"error": {"code": 403, "message": f"refused by the test emulator: {name}"}})
        return None
    return _insert(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation
objects.insert = _insert_or_refuse

from gcp_storage_emulator.server import create_server  # noqa: E402 - routes bind the patched handler

if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()
