"""The pure-Python coco tokenizer equals pycocoevalcap's PTBTokenizer (Stanford, Java) token for token."""

from __future__ import annotations

import shutil

import pytest

from mmfuse.metrics.ptb import coco_tokenize
from tests.caption_corpus import captions


def _java_tokenizer():
    if shutil.which("java") is None:
        pytest.skip("Java is not installed: the Stanford PTBTokenizer oracle cannot run")
    module = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer",
                                 reason="pycocoevalcap (test oracle, dev extra) is not installed")
    return module.PTBTokenizer()


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_stanford_ptb_tokenizer_on_varied_captions(seed: int) -> None:
    texts = captions(3000, seed=seed)
    expected = _java_tokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    mismatches = [(t, expected[i][0], " ".join(coco_tokenize(t)))
                  for i, t in enumerate(texts) if " ".join(coco_tokenize(t)) != expected[i][0]]
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("text,tokens", [
    ("A dog's ball, next to the cat.", "a dog 's ball next to the cat"),
    ("They don't know (really) what \"it\" is...", "they do n't know -lrb- really -rrb- what it is"),
    ("I'm gonna   cannot won't", "i 'm gon na can not wo n't"),
    ("at 5 p.m. with Dr. Smith in the U.S.", "at 5 p.m. with dr. smith in the u.s."),
    ("“smart” quotes — and ‘single’ ones…", "smart quotes and single ones"),
    ("1,000 apples at 3.5 kg for $5 (50%)", "1,000 apples at 3.5 kg for $ 5 -lrb- 50 % -rrb-"),
    ("what?! the cats' toys", "what ?! the cats toys"),
    ("", ""),
])
def test_known_cases(text: str, tokens: str) -> None:
    """Cases checked by hand against Stanford's output (they also run without Java)."""
    assert " ".join(coco_tokenize(text)) == tokens
