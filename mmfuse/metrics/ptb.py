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

import re
from functools import lru_cache

# pycocoevalcap/tokenizer/ptbtokenizer.py drops these after tokenizing (note: "-LRB-" in upper case,
# so the lower-cased "-lrb-" survives, as it does in every published coco-caption score).
COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# abbreviations whose period Stanford always keeps attached
ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr mt ft ave inc vs etc co corp ltd jan feb mar apr jun jul aug sep sept oct nov dec "
    "dept gov prof rd blvd gen sen rep rev hon capt col lt sgt bros".split()
)
NUMBER_ABBREVIATIONS = frozenset(["no", "nos"])  # kept only before a number: "no. 5"
UNICODE = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'",
                         "\u201a": "'", "\u00a0": " ", "\t": " ", "\n": " ", "\r": " "})
SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "wanna": ["wan", "na"], "gotta": ["got", "ta"]}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'m|'d|'ll|'re|'ve)$")
_INITIALS = re.compile(r"^(?:[^\W\d_]\.)+$")  # a. u.s. p.m. e.g. u.s.a.
_NUMBER = re.compile(r"^\d[\d,.:/]*\d$|^\d$")
_SYMBOL_SPLIT = re.compile(r"([$%+*^~|\\]|[#<>](?=\d))")
_TIME_SUFFIX = re.compile(r"^(\d+:\d+)(am|pm)$")


def coco_tokenize(text: str) -> list[str]:
    """Tokens of ``text`` as pycocoevalcap's PTBTokenizer leaves them (lower-cased, punctuation removed)."""
    return [t for t in ptb_tokenize(text) if t not in COCO_PUNCTUATION]


def ptb_tokenize(text: str) -> list[str]:
    """Stanford PTB tokens (lower-cased) of one line, before coco's punctuation filter.

    Equal to Stanford's after the filter; before it, some punctuation tokens that the filter removes
    may differ (the direction of a quote, an extra sentence-final period after ``p.m.``).
    """
    text = _normalise(text)
    words = text.split()
    out: list[str] = []
    for i, chunk in enumerate(words):
        # only "no." needs to see the next word (kept before a number): cache on that one bit
        before_digit = chunk.endswith(".") and i + 1 < len(words) and words[i + 1][:1].isdigit()
        out.extend(_chunk(chunk, before_digit))
    return out


def _normalise(text: str) -> str:
    """Lower case; curly quotes to straight ones; ellipsis and dashes as separate tokens."""
    if text.isascii():  # the common case; str.split() already treats tabs and newlines as spaces
        return text.lower()
    text = text.translate(UNICODE).lower()
    return text.replace("\u2026", " ... ").replace("\u2014", " -- ").replace("\u2013", " -- ")


@lru_cache(maxsize=2**18)
def _chunk(chunk: str, before_digit: bool) -> tuple[str, ...]:
    """One whitespace-separated chunk -> leading punctuation, core tokens, trailing punctuation."""
    lead, chunk = _leading(chunk)
    chunk, trail = _trailing(chunk, before_digit)
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
        elif c == "'" and not re.match(r"^'(\d\ds|em|n')", chunk):
            if re.match(r"^'t(is|was)$", chunk):
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


def _trailing(chunk: str, before_digit: bool) -> tuple[str, list[str]]:
    trail: list[str] = []
    while chunk:
        m = re.search(r"([!?]+|\.{2,}|[)\]}\",;:'`-]|(?<=.)/)$", chunk)
        if m is None:
            if chunk.endswith(".") and not _keeps_period(chunk, before_digit):
                trail.insert(0, ".")
                chunk = chunk[:-1]
                continue
            break
        tok = m.group(1)
        if tok == "'" and re.match(r"^'n'$", chunk):
            break
        if tok == "'" and chunk.endswith("''") and len(chunk) > 2:
            tok = "''"
        chunk = chunk[: m.start()] if tok != "''" else chunk[:-2]
        if tok.startswith("..") and _keeps_period(chunk + ".", before_digit):
            chunk, tok = chunk + ".", tok[1:]  # the abbreviation keeps one period
            if tok == ".":
                trail.insert(0, ".")
                continue
        trail[0:0] = _trailing_tokens(tok)
    return chunk, trail


def _trailing_tokens(tok: str) -> list[str]:
    if tok in BRACKETS:
        return [BRACKETS[tok]]
    if tok in ('"', "''"):
        return ["''"]
    if tok.startswith(".."):
        return ["..."] if len(tok) >= 3 else [".", "."]
    return [tok]


def _keeps_period(chunk: str, before_digit: bool) -> bool:
    """Whether Stanford keeps the final period of ``chunk`` as part of the word."""
    word = chunk[:-1]
    if _INITIALS.match(chunk):
        return True
    if word in ABBREVIATIONS:
        return True
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
    if re.fullmatch(r"\+\d[\d,.]*", chunk):  # a signed number: "+1"
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
