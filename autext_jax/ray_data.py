"""Ray Data: score a ``ray.data.Dataset`` with ``map_batches``, the detector loaded once per actor.

    import ray
    from autext_jax.ray_data import Scorer

    ds = ray.data.read_parquet("gs://bkt/corpus/")
    scores = ds.map_batches(Scorer, fn_constructor_kwargs={"text_column": "body", "id_column": "doc_id"},
                            batch_size=4096, batch_format="numpy", concurrency=4)   # + num_gpus=1 per actor
    scores.write_parquet("gs://bkt/scores/")

Each actor builds one ``Detector`` (``autext_jax.load``) in ``__init__``; every batch then goes through
the same engine and record builder (``records.py``) as the CLI, so the rows are the CLI's with
``--on-error skip``: the same columns, values and Arrow types (``id``, ``bot_prob``, ``english_prob``,
``is_bot``, ``n_chunks`` with ``long="chunk"``, ``n_tokens``, ``truncated``, ``short``,
``operating_point``/``segments``/``text`` when asked for, ``error``). A row whose text is not a
string keeps its place with null scores and ``error`` set. Ids come from ``id_column``, which the
dataset must have (a row's place in a batch is no id). Ray itself is imported only by the caller.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autext_jax import records


class Scorer:
    """A callable class for ``Dataset.map_batches`` (numpy batch format: a dict of column arrays);
    each batch comes back as a ``pyarrow.Table`` of records."""

    def __init__(
        self,
        model: str | None = None,
        *,
        text_column: str = "text",
        id_column: str = "id",
        dtype: str = "float32",
        threshold: float | None = None,
        operating_point: str | None = None,
        segments: str | None = None,
        include_text: bool = False,
        **options: Any,
    ):
        from autext_jax.api import load

        self.detector = load(model, dtype=dtype, threshold=threshold, **options)
        self.text_column = text_column
        self.id_column = id_column
        self.segments = segments
        layout = records.Layout(
            ids=True,
            chunks=self.detector.engine.options.long == "chunk",
            operating_point=operating_point,
            segments=segments,
            text=include_text,
            errors=True,
        )
        self.builder = self.detector.builder(layout)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        for column in (self.text_column, self.id_column):
            if column not in batch:
                raise KeyError(
                    f"the dataset has no column {column!r} (columns: {', '.join(batch)}); "
                    "pick the text and id columns with text_column= and id_column="
                )
        texts, id_values = batch[self.text_column].tolist(), batch[self.id_column]
        int_ids = np.issubdtype(id_values.dtype, np.integer)
        ids = [i if int_ids or i is None else str(i) for i in id_values.tolist()]
        items = ((i, t if isinstance(t, str) else None) for i, t in enumerate(texts))
        rows = []
        for index, doc, spans in self.detector.scored(items, segments=self.segments):
            text = texts[index] if isinstance(texts[index], str) else None
            error = None
            if doc is None:
                kind = "null" if texts[index] is None else type(texts[index]).__name__
                error = f"id {ids[index]!r}: field {self.text_column!r} must be a string, got {kind}"
            rows.append(self.builder.build(doc, id=ids[index], text=text, error=error, segments=spans))
        return pa.Table.from_pylist(rows, schema=records.arrow_schema(self.builder.columns, int_ids))
