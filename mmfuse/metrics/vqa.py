"""VQA accuracy, as the VQA challenge's evaluation code computes it (``vqaEval.py`` of the official
VQA API, GT-Vision-Lab/VQA, Python 3 version), and exact match for sources with one answer.

For each question, the predicted answer is cleaned (newlines and tabs to spaces, stripped), its
punctuation processed and then its words (lower-cased; number words to digits; articles dropped;
contractions written with their apostrophe). The human answers (ten in VQA v2) get only the
punctuation step, and only when they are not all the same (the official code does exactly this; VQA
v2's released answers are already normalised). The accuracy of a question is the average, over
leaving each annotator out in turn, of ``min(1, matches among the other answers / 3)``; the
overall, per-answer-type and per-question-type figures average that over questions.

Kept as the official code has them, because they change scores:

- punctuation: for each mark in :data:`PUNCTUATION`, in order, it is deleted where the *original*
  answer has it beside a space (or holds a comma between digits anywhere), else replaced by a space;
  ``'`` and ``:`` are not in the list; a period not followed by a digit is deleted, but only the
  first 32 (the official call passes ``re.UNICODE``, which is 32, where ``re.sub`` takes ``count``);
- a question's annotators are told apart by position (the official code compares answer records,
  which VQA v2 makes distinct with ``answer_id``), so two equal answers count twice;
- with one human answer there is no other annotator to agree with: the accuracy is 0. Sources with a
  single answer are scored by :func:`exact_match` instead.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Sequence

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
AGREEING = 3  # human answers that make a prediction fully right
PERIOD_LIMIT = 32  # periods the official code deletes at most (see the module docstring)

# The official table; keys with capitals ("Im", "Ive", "Id've", "I'dve") can never match a
# lower-cased word, so they are left out.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

_DIGIT_COMMA = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a lookahead, not a lookbehind, and
# can never fail in front of a period, so it is this one.
_PERIOD = re.compile(r"\.(?!\d)")


def strip_punctuation(text: str) -> str:
    """The official ``processPunctuation``: marks deleted or turned into spaces, periods deleted."""
    glued = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if mark in out:  # (else replacing is a no-op)
            beside_space = mark + " " in text or " " + mark in text
            out = out.replace(mark, "" if beside_space or glued else " ")
    return _PERIOD.sub("", out, count=PERIOD_LIMIT)


def normalise_words(text: str) -> str:
    """The official ``processDigitArticle``: lower case, number words as digits, no articles,
    contractions with their apostrophe, words joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalise_answer(answer: str) -> str:
    """A predicted answer as the official code compares it."""
    return normalise_words(strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


def question_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy of one predicted ``answer`` against the humans' answers (in [0, 1])."""
    if not human_answers:
        raise ValueError("a question needs at least one human answer")
    predicted = normalise_answer(answer)
    humans = list(human_answers)
    if len(set(humans)) > 1:
        humans = [strip_punctuation(h) for h in humans]
    matches = sum(h == predicted for h in humans)
    # leaving annotator k out: the others hold ``matches`` agreeing answers, less k's own
    return sum(min(1.0, (matches - (h == predicted)) / AGREEING) for h in humans) / len(humans)


def majority_answer(human_answers: Sequence[str]) -> str:
    """The most frequent human answer (the first given among equals), as VQA's
    ``multiple_choice_answer``."""
    return Counter(human_answers).most_common(1)[0][0]


def exact_match(answer: str, human_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals the normalised majority answer, else 0.0."""
    return float(normalise_answer(answer) == normalise_answer(majority_answer(human_answers)))


def vqa_scores(answers: Sequence[str], human_answers: Sequence[Sequence[str]], question_types: Sequence[str],
               answer_types: Sequence[str]) -> dict:
    """Overall, per-answer-type and per-question-type VQA accuracy and exact match (each in [0, 1]),
    with every question's figures in input order.

    Args:
        answers: Q predicted answers.
        human_answers: Q lists of human answers.
        question_types, answer_types: Q group names ("" where a source has none).
    """
    if not len(answers) == len(human_answers) == len(question_types) == len(answer_types) or not answers:
        raise ValueError("answers, human answers and types must be non-empty and of the same length")
    per_question = [{"vqa_accuracy": question_accuracy(a, h), "exact_match": exact_match(a, h)}
                    for a, h in zip(answers, human_answers)]
    return {"overall": _mean(per_question), "per_answer_type": _by_group(per_question, answer_types),
            "per_question_type": _by_group(per_question, question_types), "per_question": per_question}


def _mean(scores: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(s[key] for s in scores) / len(scores) for key in ("vqa_accuracy", "exact_match")}


def _by_group(scores: list[dict[str, float]], groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each non-empty group's means and question count, groups sorted by name."""
    members: dict[str, list[dict[str, float]]] = defaultdict(list)
    for score, group in zip(scores, groups):
        if group:
            members[group].append(score)
    return {g: {**_mean(members[g]), "questions": len(members[g])} for g in sorted(members)}
