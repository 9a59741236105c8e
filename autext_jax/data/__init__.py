"""Data for scoring and training: table reading, training sources, token shapes, datasets and batches."""
