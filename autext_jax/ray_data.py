"""Ray Data: score a ``ray.data.Dataset`` with ``map_batches``, the detector loaded once per actor.

    import ray
    from autext_jax.ray_data import Scorer

    ds = ray.data.read_parquet("gs://bkt/corpus/")
    scores = ds.map_batches(Scorer, fn_constructor_kwargs={"text_column": "body", "id_column": "doc_id"},
                            batch_size=4096, batch_format="numpy", concurrency=4)   # + num_gpus=1 per actor
    scores.write_parquet("gs://bkt/scores/")

Each actor builds one ``Detector`` (``autext_jax.load``) in ``__init__``; every batch then goes through
the same engine and ``Detector.record`` as the CLI, so the columns and values are the CLI's: ``id``,
``bot_prob``, ``english_prob``, ``is_bot``, ``n_tokens``, ``truncated``. A null text gets ``error``
set and NaN scores (Ray has no "skip this row but keep its place"). Ray itself is imported only by
the caller: this module needs nothing from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

COLUMNS = ("id", "bot_prob", "english_prob", "is_bot", "n_tokens", "truncated", "error")


class Scorer:
    """A callable class for ``Dataset.map_batches`` (numpy batch format: a dict of column arrays)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        text_column: str = "text",
        id_column: str | None = "id",
        dtype: str = "float32",
        threshold: float | None = None,
        **options: Any,
    ):
        from autext_jax.api import load

        self.detector = load(model, dtype=dtype, threshold=threshold, **options)
        self.text_column = text_column
        self.id_column = id_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = batch[self.text_column]
        if self.id_column and self.id_column in batch:
            ids = batch[self.id_column].tolist()
        else:
            ids = list(range(len(texts)))
        out: dict[str, list] = {c: [] for c in COLUMNS}
        items = ((i, t if isinstance(t, str) else None) for i, t in enumerate(texts.tolist()))
        for index, doc in self.detector.run(items):
            out["id"].append(ids[index])
            if doc is None:
                record = {"bot_prob": float("nan"), "english_prob": float("nan"), "is_bot": False,
                          "n_tokens": 0, "truncated": False, "error": f"row {index}: text is not a string"}
            else:
                record = dict(self.detector.record(doc), error=None)
            for column in COLUMNS[1:]:
                out[column].append(record[column])
        return {
            "id": np.asarray(out["id"]),
            "bot_prob": np.asarray(out["bot_prob"], dtype=np.float64),
            "english_prob": np.asarray(out["english_prob"], dtype=np.float64),
            "is_bot": np.asarray(out["is_bot"], dtype=bool),
            "n_tokens": np.asarray(out["n_tokens"], dtype=np.int64),
            "truncated": np.asarray(out["truncated"], dtype=bool),
            "error": np.asarray(out["error"], dtype=object),
        }
