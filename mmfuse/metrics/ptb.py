"""Caption tokenization equal to coco-caption's: Stanford PTBTokenizer (``-preserveLines
-lowerCase``) followed by pycocoevalcap's removal of punctuation tokens, in pure Python.

Covered (tested token for token against the Java tokenizer): words with accents, possessives and
contractions (``dog's`` -> ``dog 's``, ``don't`` -> ``do n't``, ``cannot``, ``gonna``), hyphenated
words, numbers (``3.5``, ``1,000``, ``10:30``), straight and curly quotes, brackets (which survive
coco's filter as ``-lrb-``, ``-rrb-``, ``-lsb-``...), sentence punctuation (``?!`` is one token and,
as in coco-caption, is kept), ellipses and dashes, repeated spaces, ``$``/``%``/``#``/``+`` and
common abbreviations (``mr.``, ``st.``, ``p.m.``, ``u.s.``). Not reproduced: emoticons, URLs,
e-mail addresses and emoji (Stanford drops some characters it cannot tokenize).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np

# pycocoevalcap/tokenizer/ptbtokenizer.py drops these after tokenizing (note: "-LRB-" in upper case,
# so the lower-cased "-lrb-" survives, as it does in every published coco-caption score).
COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# abbreviations whose period Stanford always keeps attached, in any case (the second half found by
# feeding the jar every word of one to three letters and a list of longer ones, at the end of a
# sentence and before a word, in lower case, capitalised and in capitals)
ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr mt ft ave inc vs etc co corp ltd jan feb mar apr jun jul aug sep sept oct nov dec "
    "dept gov prof rd blvd gen sen rep rev hon capt col lt sgt bros "
    "adj adm adv al ala ariz assn attys bancorp bhd brig calif cf cie cmdr colo comdr conn cos cpl ct dak det "
    "drs elec ens esq est ext fla fri ga govs ind intl invt jos kan kans ky lieut maj md messrs mich minn mlle "
    "mme mo mon mont natl neb nev okla penn pfc ph plc profs reps rt sens seq sfc spc sq ste supts sys tel "
    "pvt tenn thu thurs tue tues univ va vt wed wis wisc wm wyo".split()
)
CAPITAL_ABBREVIATIONS = frozenset("az la pa ark del ill ore tex wash".split())  # only with a capital: "Pa."
NOT_UPPER_ABBREVIATIONS = frozenset("mfg mtg pte pty".split())  # "mfg." and "Mfg." but not "MFG."
NUMBER_ABBREVIATIONS = frozenset(["no", "nos"])  # kept only before a number: "no. 5"


PERIOD_WORDS = ABBREVIATIONS | CAPITAL_ABBREVIATIONS | NOT_UPPER_ABBREVIATIONS | NUMBER_ABBREVIATIONS
_CASED = re.compile("(?:" + "|".join(sorted(CAPITAL_ABBREVIATIONS | NOT_UPPER_ABBREVIATIONS)) + r")\.")


class Case(Enum):
    """How the first word of a chunk was written: the few abbreviations above that depend on it."""

    LOWER = "lower"
    CAPITAL = "capital"
    UPPER = "upper"


# curly quotes to straight ones, ellipsis and dashes as separate tokens (str.split already treats tabs,
# newlines and no-break spaces as spaces); str.replace per character: str.translate is 10x slower
UNICODE = (("\u201c", '"'), ("\u201d", '"'), ("\u201e", '"'), ("\u2018", "'"), ("\u2019", "'"), ("\u201a", "'"),
           ("\u2026", " ... "), ("\u2014", " -- "), ("\u2013", " -- "))
SEPARATOR = "\0"  # between texts when many are split as one string
SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "wanna": ["wan", "na"], "gotta": ["got", "ta"]}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'m|'d|'ll|'re|'ve)$")
_INITIALS = re.compile(r"^(?:[^\W\d_]\.)+$")  # a. u.s. p.m. e.g. u.s.a.
_NUMBER = re.compile(r"^\d[\d,.:/]*\d$|^\d$")
_SYMBOL_SPLIT = re.compile(r"([$%+*^~|\\]|[#<>](?=\d))")
_TIME_SUFFIX = re.compile(r"^(\d+:\d+)(am|pm)$")
_QUOTED_START = re.compile(r"^'(\d\ds|em|n')")  # '90s 'em 'n': the quote is part of the word
_TIS = re.compile(r"^'t(is|was)$")
_SIGNED = re.compile(r"\+\d[\d,.]*")


@dataclass(frozen=True, eq=False)  # arrays: no field-wise ==
class TokenIds:
    """Tokenized sentences as one integer array: sentence ``s`` is ``ids[starts[s]:starts[s] + lengths[s]]``
    and token id ``t`` is the word ``words[t]``.

    Shape legend: S sentences, T tokens in all.
    """

    ids: np.ndarray  # (T,) int64
    lengths: np.ndarray  # (S,) int64
    words: list[str]

    @property
    def starts(self) -> np.ndarray:  # (S,)
        return np.cumsum(self.lengths) - self.lengths

    def sentences(self) -> list[list[str]]:
        """The tokens of every sentence as words."""
        words = [self.words[i] for i in self.ids.tolist()]
        ends = np.cumsum(self.lengths).tolist()
        return [words[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def intern(sentences: Sequence[Sequence[str]]) -> TokenIds:
    """Already tokenized sentences as a :class:`TokenIds`."""
    vocab: dict[str, int] = {}
    tokens = list(itertools.chain.from_iterable(sentences))
    # setdefault through map runs in C; an id is the first position of its token, made dense below
    first = np.fromiter(map(vocab.setdefault, tokens, itertools.count()), dtype=np.int64, count=len(tokens))
    dense = np.zeros(len(tokens) + 1, dtype=np.int64)
    dense[list(vocab.values())] = np.arange(len(vocab))
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    return TokenIds(dense[first], lengths, list(vocab))


def coco_tokenize_all(texts: Sequence[str]) -> TokenIds:
    """:func:`coco_tokenize` of many texts at once, as token ids.

    Equal to tokenizing each text alone, and faster: the texts are normalised and split on white space
    in C, a batch of texts as one string with a NUL chunk between texts; each distinct chunk is
    tokenized once; numpy lays the chunks' tokens out. (The one chunk whose tokens depend on the next
    one, ``no.`` before a number, is handled position by position.) A text that holds a NUL itself
    sends the call the slow way.
    """
    if any(SEPARATOR in t for t in texts):
        return intern([coco_tokenize(t) for t in texts])
    index: dict[str, int] = {}  # distinct chunk -> its first position (setdefault through map runs in C)
    positions = itertools.count()
    first = np.concatenate([np.zeros(0, dtype=np.int32)] + [  # (C,) every text's chunks and the NULs
        np.fromiter(map(index.setdefault, chunks, positions), dtype=np.int32, count=len(chunks))
        for chunks in _chunk_batches(texts)])
    dense = np.zeros(len(first) + 1, dtype=np.int32)
    dense[list(index.values())] = np.arange(len(index), dtype=np.int32)
    at = dense[first]  # (C,) distinct chunk at each position, numbered in first-seen order
    nul = int(dense[index[SEPARATOR]]) if len(texts) > 1 else -1  # the NUL's number (-1: no NUL)
    del first, dense
    vocab: dict[str, int] = {}
    distinct = list(index)
    tokens = [[vocab.setdefault(t, len(vocab)) for t in _coco_chunk(c, False)] if c != SEPARATOR else []
              for c in distinct]
    at = _before_numbers(at, distinct, tokens, vocab)
    cut = np.flatnonzero(at == nul)  # (S-1,)
    return _lay_out(at, tokens, np.concatenate(([0], cut, [len(at)])) if texts else np.zeros(1, np.int64),
                    list(vocab))


BATCH = 2000  # texts split as one string


def _chunk_batches(texts: Sequence[str]) -> Iterator[list[str]]:
    """The chunks of every text, a NUL chunk between two texts, ``BATCH`` texts at a time. A batch's
    chunks are dropped before the next is split, whose strings then take their memory: split all at
    once, the chunks of 24,000 captions (315k strings, 18 MB) took fresh memory from the system, 4,000
    page faults and 8 ms more in a process that tokenizes once (this machine: 1.6 us a fault)."""
    for start in range(0, len(texts), BATCH):
        plain = [t if t.isascii() else _unicode(t) for t in texts[start:start + BATCH]]  # str.replace where needed
        joined = f" {SEPARATOR} ".join(plain)
        yield (f"{SEPARATOR} {joined}" if start else joined).split()


def _coco_chunk(chunk: str, before_digit: bool) -> tuple[str, ...] | list[str]:
    """coco tokens of one chunk (as written). A plain word, or one with a final comma or period (that
    is no abbreviation's), skips the PTB rules: none of them applies, and coco drops the punctuation."""
    lower = chunk.lower()
    if lower.isalnum():
        return SPLIT_WORDS.get(lower) or (lower,)
    word = lower[:-1]
    if lower[-1] in ".," and len(word) > 1 and word.isalnum() and word not in PERIOD_WORDS:
        return SPLIT_WORDS.get(word) or (word,)
    case = _case(chunk) if "." in lower and _CASED.search(lower) else Case.LOWER
    return [t for t in _chunk(lower, before_digit, case) if t not in COCO_PUNCTUATION]


def _before_numbers(at: np.ndarray, distinct: list[str], tokens: list[list[int]], vocab: dict[str, int]) -> np.ndarray:
    """Point the positions of a chunk such as ``no.`` that is followed by a number at a variant chunk
    tokenized with ``before_digit``; ``tokens`` grows by those variants. (A text's last chunk is
    followed by the NUL chunk, never by a number.)"""
    variant: dict[int, int] = {}
    for i, chunk in enumerate(distinct):
        if "." in chunk and "no" in chunk.lower() and _coco_chunk(chunk, True) != _coco_chunk(chunk, False):
            variant[i] = len(tokens)
            tokens.append([vocab.setdefault(t, len(vocab)) for t in _coco_chunk(chunk, True)])
    if not variant:
        return at
    has_variant = np.zeros(len(distinct), dtype=bool)
    has_variant[list(variant)] = True
    pos = np.flatnonzero(has_variant[at[:-1]])  # (V,) such a chunk, followed by another
    pos = pos[[distinct[i][:1].isdigit() for i in at[pos + 1].tolist()]]  # ... by a number
    at[pos] = [variant[i] for i in at[pos].tolist()]
    return at


def _lay_out(at: np.ndarray, tokens: list[list[int]], bounds: np.ndarray, words: list[str]) -> TokenIds:
    """Token ids of every position's chunk, concatenated, and the token count of each text, whose
    chunks lie between consecutive ``bounds`` (a NUL separator has no tokens). Positions and indexes
    are int32 (half the memory of int64: 1,300 fewer page faults, 5 MB, tokenizing 24,000 captions in
    a fresh process); a set of captions stays far below 2**31 tokens."""
    count = np.fromiter(map(len, tokens), dtype=np.int32, count=len(tokens))  # tokens per distinct chunk
    flat = np.fromiter(itertools.chain.from_iterable(tokens), dtype=np.int64, count=int(count.sum()))
    n = count[at]  # (C,) tokens per position
    cum = np.concatenate(([0], np.cumsum(n, dtype=np.int64)))  # tokens before each position
    shift = (np.cumsum(count, dtype=np.int32) - count)[at]  # (C,) where each position's chunk's tokens start in flat
    shift -= cum[:-1].astype(np.int32)  # ... less where its own tokens start
    where = np.repeat(shift, n)
    where += np.arange(len(where), dtype=np.int32)
    return TokenIds(flat[where], np.diff(cum[bounds]), words)


def coco_tokenize(text: str) -> list[str]:
    """Tokens of ``text`` as pycocoevalcap's PTBTokenizer leaves them (lower-cased, punctuation removed)."""
    return [t for t in ptb_tokenize(text) if t not in COCO_PUNCTUATION]


def ptb_tokenize(text: str) -> list[str]:
    """Stanford PTB tokens (lower-cased) of one line, before coco's punctuation filter.

    Equal to Stanford's after the filter; before it, some punctuation tokens that the filter removes
    may differ (the direction of a quote, an extra sentence-final period after ``p.m.``).
    """
    words = (text if text.isascii() else _unicode(text)).split()  # str.split: tabs, newlines, no-break spaces
    out: list[str] = []
    for i, chunk in enumerate(words):
        # only "no." needs to see the next word (kept before a number): cache on that one bit
        before_digit = chunk.endswith(".") and i + 1 < len(words) and words[i + 1][:1].isdigit()
        out.extend(_chunk(chunk.lower(), before_digit, _case(chunk)))
    return out


_WORD = re.compile(r"[^\W\d_]+")


def _case(chunk: str) -> Case:
    """How the chunk's first word is written; only a chunk with a period can need it."""
    word = _WORD.search(chunk) if "." in chunk else None
    if word is None:
        return Case.LOWER
    text = word.group(0)
    return Case.UPPER if len(text) > 1 and text.isupper() else Case.CAPITAL if text[0].isupper() else Case.LOWER


def _unicode(text: str) -> str:
    """Curly quotes to straight ones; ellipsis and dashes as separate tokens."""
    for char, replacement in UNICODE:
        if char in text:
            text = text.replace(char, replacement)
    return text


@lru_cache(maxsize=2**18)
def _chunk(chunk: str, before_digit: bool, case: Case) -> tuple[str, ...]:
    """One lower-cased whitespace-separated chunk -> leading punctuation, core tokens, trailing
    punctuation. ``case``: how its first word was written."""
    lead, chunk = _leading(chunk)
    chunk, trail = _trailing(chunk, before_digit, case)
    return tuple(lead + _core(chunk) + trail)


def _leading(chunk: str) -> tuple[list[str], str]:
    lead: list[str] = []
    while chunk:
        c = chunk[0]
        if c == '"':
            lead.append("``")
        elif c in "([{":
            lead.append(BRACKETS[c])
        elif c == "`":
            lead.append("`")
        elif chunk.startswith("''"):
            lead.append("''")
            chunk = chunk[2:]
            continue
        elif c == "'" and not _QUOTED_START.match(chunk):
            if _TIS.match(chunk):
                return lead + ["'t"], chunk[2:]
            lead.append("`")
        elif chunk.startswith("--"):
            lead.append("--")
            chunk = chunk.lstrip("-")
            continue
        elif c == "-" and len(chunk) > 1:
            lead.append("-")
        else:
            break
        chunk = chunk[1:]
    return lead, chunk


def _trailing(chunk: str, before_digit: bool, case: Case) -> tuple[str, list[str]]:
    trail: list[str] = []
    while chunk:
        start = _trailing_start(chunk)
        if start is None:
            if chunk.endswith(".") and not _keeps_period(chunk, before_digit, case):
                trail.insert(0, ".")
                chunk = chunk[:-1]
                continue
            break
        tok = chunk[start:]
        if tok == "'" and chunk == "'n'":
            break
        if tok == "'" and chunk.endswith("''") and len(chunk) > 2:
            tok = "''"
        chunk = chunk[:start] if tok != "''" else chunk[:-2]
        if tok.startswith("..") and _keeps_period(chunk + ".", before_digit, case):
            chunk, tok = chunk + ".", tok[1:]  # the abbreviation keeps one period
            if tok == ".":
                trail.insert(0, ".")
                continue
        trail[0:0] = _trailing_tokens(tok)
    return chunk, trail


_CLOSING = frozenset(")]}\",;:'`-")


def _trailing_start(chunk: str) -> int | None:
    r"""Where the punctuation token that ends ``chunk`` starts: a run of ``!`` and ``?``, of two or more
    periods, one closing bracket, quote or other mark, or a slash after something; None where none
    does. What ``re.search(r"([!?]+|\.{2,}|[)\]}\",;:'`-]|(?<=.)/)$", chunk)`` finds (a test holds it
    to that), from the last character alone, where the regular expression tried every position: the
    1,075 distinct chunks of half the 8,092-image set that take the PTB rules took 4.7 ms instead of
    6.6 (with the other patterns compiled once)."""
    last = chunk[-1]
    if last in "!?":
        return len(chunk.rstrip("!?"))
    if last == ".":
        start = len(chunk.rstrip("."))
        return start if len(chunk) - start >= 2 else None
    if last in _CLOSING or (last == "/" and len(chunk) > 1):
        return len(chunk) - 1
    return None


def _trailing_tokens(tok: str) -> list[str]:
    if tok in BRACKETS:
        return [BRACKETS[tok]]
    if tok in ('"', "''"):
        return ["''"]
    if tok.startswith(".."):
        return ["..."] if len(tok) >= 3 else [".", "."]
    return [tok]


def _keeps_period(chunk: str, before_digit: bool, case: Case) -> bool:
    """Whether Stanford keeps the final period of ``chunk`` as part of the word."""
    word = chunk[:-1]
    if _INITIALS.match(chunk) or word in ABBREVIATIONS:
        return True
    if word in CAPITAL_ABBREVIATIONS:
        return case is not Case.LOWER
    if word in NOT_UPPER_ABBREVIATIONS:
        return case is not Case.UPPER
    return word in NUMBER_ABBREVIATIONS and before_digit


def _core(chunk: str) -> list[str]:
    """Split what is left of a chunk: brackets, dashes, symbols, commas, clitics."""
    if not chunk:
        return []
    for bracket in "()[]{}":
        if bracket in chunk:
            left, _, right = chunk.partition(bracket)
            return _core(left) + [BRACKETS[bracket]] + _core(right)
    if "'n'" in chunk.strip("'"):
        left, _, right = chunk.partition("'n'")
        return _core(left) + ["'n'"] + _core(right)
    time = _TIME_SUFFIX.match(chunk)
    if time:
        return [time.group(1), time.group(2)]
    if "--" in chunk:
        left, _, right = chunk.partition("--")
        return _core(left) + ["--"] + _core(right.lstrip("-"))
    if _SIGNED.fullmatch(chunk):  # a signed number: "+1"
        return [chunk]
    parts = [p for p in _SYMBOL_SPLIT.split(chunk) if p]
    if len(parts) > 1:
        return [tok for p in parts for tok in (_core(p) if len(p) > 1 or p.isalnum() else [p])]
    if "," in chunk and not _NUMBER.match(chunk):
        left, _, right = chunk.partition(",")
        return _core(left) + [","] + _core(right)
    return _word(chunk)


@lru_cache(maxsize=65536)
def _word(word: str) -> list[str]:
    """Contractions and possessives: ``do n't``, ``dog 's``, ``they 'd 've``, ``can not``."""
    if word in SPLIT_WORDS:
        return SPLIT_WORDS[word]
    m = _CLITIC.match(word)
    if m and m.group(1) not in ("'",):
        stem, clitic = m.group(1), m.group(2)
        if clitic == "n't" or stem[-1:] != "'":
            return list(_word(stem)) + [clitic]
    return [word]
