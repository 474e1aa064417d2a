"""Data sets: sources, tokenization, vocabulary, the on-disk format and torch data sets."""
