"""The pure-Python coco tokenizer equals pycocoevalcap's PTBTokenizer (Stanford, Java) token for token."""

from __future__ import annotations

import shutil

import pytest

from mmfuse.metrics import ptb
from mmfuse.metrics.ptb import (
    ABBREVIATIONS,
    CAPITAL_ABBREVIATIONS,
    NOT_UPPER_ABBREVIATIONS,
    coco_tokenize,
    coco_tokenize_all,
)
from tests.caption_corpus import caption_set, captions


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
    ("Born in Pa. and la. near the Mfg. plant, MFG. team, Tex. ranch and ark.",
     "born in pa. and la near the mfg. plant mfg team tex. ranch and ark"),
    ("Pvt. Jones of the Wm. Penn co. on Sq. 5 at Wed.", "pvt. jones of the wm. penn co. on sq. 5 at wed."),
    ("no. 5 and no. five, nos. 7 and No.", "no. 5 and no five nos. 7 and no"),
])
def test_known_cases(text: str, tokens: str) -> None:
    """Cases checked by hand against Stanford's output (they also run without Java)."""
    assert " ".join(coco_tokenize(text)) == tokens


def test_abbreviations_equal_stanford_in_every_case() -> None:
    """Each abbreviation (and a word that is none) in lower case, capitalised and in capitals, before
    a word and at the end: Stanford keeps some periods only for some ways of writing them."""
    words = sorted(ABBREVIATIONS | CAPITAL_ABBREVIATIONS | NOT_UPPER_ABBREVIATIONS) + ["dog", "mofo", "x"]
    texts = [t for w in words for form in (w, w.capitalize(), w.upper())
             for t in (f"the {form}.", f"the {form}. dog", f'"{form}."')]
    expected = _java_tokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    mismatches = [(t, expected[i][0], " ".join(coco_tokenize(t)))
                  for i, t in enumerate(texts) if " ".join(coco_tokenize(t)) != expected[i][0]]
    assert not mismatches, mismatches[:5]


def test_tokenizing_many_at_once_equals_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The corpus path (texts split as one string, distinct chunks tokenized once) changes nothing,
    including at the edges: empty texts, "no." before a number in the next text, NULs, case."""
    hyps, refs = caption_set(300, seed=4)
    texts = captions(2000, seed=3) + hyps + [r for rs in refs for r in rs] + [
        "", "  ", "no.", "5 apples", "no. 5", "in Pa.", "in pa.", "MFG.", "Zoë’s café…", "a\tb\nc", "ΣΑΣ σ"]
    got = coco_tokenize_all(texts)
    assert got.sentences() == [coco_tokenize(t) for t in texts]
    assert len(got.lengths) == len(texts) and len(set(got.words)) == len(got.words)
    split_apart = ["no.", "5 apples", "", "No.", "7", "no. 8 no.", "9", ""]  # every text its own batch too
    monkeypatch.setattr(ptb, "BATCH", 1)
    assert coco_tokenize_all(split_apart).sentences() == [coco_tokenize(t) for t in split_apart]
    monkeypatch.setattr(ptb, "BATCH", 3)
    assert coco_tokenize_all(split_apart + texts[:50]).sentences() == [coco_tokenize(t) for t in split_apart + texts[:50]]
    with_nul = ["a b", "c\0d e", "no."]
    assert coco_tokenize_all(with_nul).sentences() == [coco_tokenize(t) for t in with_nul]
    assert coco_tokenize_all([]).sentences() == []


def test_the_trailing_punctuation_is_found_where_the_regular_expression_finds_it() -> None:
    """Every chunk of up to four characters over letters and the marks that can end a token."""
    import itertools
    import re

    from mmfuse.metrics.ptb import _trailing_start

    pattern = re.compile(r"([!?]+|\.{2,}|[)\]}\",;:'`-]|(?<=.)/)$")
    alphabet = "a1.!?-/')]}\"`,;:("
    for length in range(1, 5):
        for chars in itertools.product(alphabet, repeat=length):
            chunk = "".join(chars)
            m = pattern.search(chunk)
            assert _trailing_start(chunk) == (m.start() if m else None), chunk
