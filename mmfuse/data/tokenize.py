"""Caption tokenization: spaCy's rule-based English tokenizer (``spacy.blank("en")``), lower-cased."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Iterator


@lru_cache(maxsize=1)
def _nlp():
    import spacy

    return spacy.blank("en")


def tokenize(text: str) -> list[str]:
    """Split one caption into lower-cased tokens (whitespace tokens dropped)."""
    return next(tokenize_many([text]))


def tokenize_many(texts: Iterable[str]) -> Iterator[list[str]]:
    """Tokenize many captions in one streaming pass through spaCy's tokenizer."""
    for doc in _nlp().tokenizer.pipe(texts, batch_size=1000):
        yield [tok.lower_ for tok in doc if not tok.is_space]
