"""Tokenizer (spaCy blank English, lower-cased) and vocabulary."""

from __future__ import annotations

import pytest

from mmfuse.data.tokenize import tokenize, tokenize_many
from mmfuse.data.vocab import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID, Vocab
from mmfuse.errors import MmfuseError


def test_tokenize_lowercases_and_splits_punctuation() -> None:
    assert tokenize("A Dog's ball, next to  the  Cat.") == ["a", "dog", "'s", "ball", ",", "next", "to", "the", "cat", "."]
    assert tokenize("don't stop") == ["do", "n't", "stop"]


def test_tokenize_many_matches_one_by_one() -> None:
    texts = ["Two  dogs", "a RED circle , left", ""]
    assert list(tokenize_many(texts)) == [tokenize(t) for t in texts]
    assert tokenize("") == []


def test_vocab_orders_by_count_and_applies_min_count() -> None:
    vocab = Vocab.build([["b", "a", "a"], ["c", "a", "b"]], min_count=2)
    assert vocab.itos == SPECIALS + ("a", "b")
    assert vocab.index("c") == UNK_ID


def test_vocab_encode_decode_round_trip() -> None:
    vocab = Vocab.build([["a", "red", "circle"]])
    ids = vocab.encode(["a", "red", "square"])
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and ids[3] == UNK_ID
    assert vocab.decode(ids) == ["a", "red", "<unk>"]
    assert vocab.decode([vocab.index("red"), PAD_ID, EOS_ID, vocab.index("a")]) == ["red"]


def test_vocab_json_round_trip_and_validation() -> None:
    vocab = Vocab.build([["x", "y"]], min_count=1)
    assert Vocab.from_json(vocab.to_json()) == vocab
    with pytest.raises(MmfuseError):
        Vocab.from_json({"tokens": ["x", "<pad>"]})
    with pytest.raises(MmfuseError):
        Vocab.build([["x"]], min_count=0)
