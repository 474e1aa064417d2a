"""VQA accuracy against figures worked out by hand from the official evaluation code's rules."""

from __future__ import annotations

import pytest

from mmfuse.metrics.vqa import (
    exact_match,
    normalise_answer,
    question_accuracy,
    strip_punctuation,
    vqa_scores,
)


@pytest.mark.parametrize("raw, expected", [
    ("yes.", "yes"),  # a period not followed by a digit is deleted
    ("3.5", "3.5"),  # ... one followed by a digit stays
    ("t-shirt", "t shirt"),  # a mark with no space beside it becomes a space
    ("yes , sir", "yes  sir"),  # ... one beside a space is deleted
    ("black/white, red", "black white red"),  # ',' beside a space: every ',' deleted; '/' is not, so a space
    ("1,000 cats/dogs", "1000 catsdogs"),  # a comma between digits anywhere: every mark deleted
    ("don't: 5", "don't: 5"),  # the apostrophe and the colon are not in the official list
    ("(red)", " red "),
    ("." * 34, ".."),  # only the first 32 periods go (the official call's count)
])
def test_strip_punctuation_follows_the_official_rules(raw, expected):
    assert strip_punctuation(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("The two dogs", "2 dogs"),  # lower case, number words as digits, articles dropped
    ("None", "0"),
    ("an apple\tand\na pear ", "apple and pear"),  # tabs and newlines are spaces
    ("dont know", "don't know"),  # contractions get their apostrophe
    ("Im sure", "im sure"),  # the official table's capitalised keys never match lower-cased words
    ("  Yes!!  ", "yes"),
    ("ten.", "10"),
])
def test_normalise_answer(raw, expected):
    assert normalise_answer(raw) == expected


@pytest.mark.parametrize("answer, humans, expected", [
    ("Two", ["2"] * 10, 1.0),  # 9 agreeing others whoever is left out
    ("2", ["2"] * 2 + ["3"] * 8, 0.6),  # (2 x 1/3 + 8 x 2/3) / 10
    ("2", ["2"] * 3 + ["3"] * 7, 0.9),  # (3 x 2/3 + 7 x 1) / 10
    ("2", ["2"] * 4 + ["3"] * 6, 1.0),  # 3 agreeing others always
    ("2", ["2"] + ["3"] * 9, 0.3),  # (1 x 0 + 9 x 1/3) / 10
    ("cat", ["dog"] * 10, 0.0),
    ("t-shirt", ["t-shirt"] * 10, 0.0),  # all humans equal: their answers are not processed, the prediction is
    ("t-shirt", ["t-shirt"] * 9 + ["shirt"], 1.0),  # answers differ: they get the punctuation step too
    ("yes", ["Yes"] * 3 + ["yes"] * 7, 1.0),  # humans are not lower-cased: 7 agree
    ("yes", ["Yes"] * 8 + ["yes"] * 2, 0.6),  # 2 agree: (2 x 1/3 + 8 x 2/3) / 10
    ("yes", ["yes"], 0.0),  # one annotator: nobody else to agree with
    ("yes", ["yes", "yes", "yes"], 2 / 3),  # three: two others at most
])
def test_question_accuracy_matches_hand_computed_figures(answer, humans, expected):
    assert question_accuracy(answer, humans) == pytest.approx(expected, abs=1e-12)


def test_exact_match_compares_with_the_majority_answer_both_normalised():
    assert exact_match("Two.", ["2", "2", "3"]) == 1.0
    assert exact_match("3", ["2", "2", "3"]) == 0.0
    assert exact_match("the dog", ["Dog"]) == 1.0  # a single answer: normalised like the prediction


def test_vqa_scores_average_per_answer_and_question_type():
    scores = vqa_scores(["2", "yes", "red"],
                        [["2"] * 2 + ["3"] * 8, ["yes"] * 10, ["blue"] * 10],
                        ["how many", "is the", "what color"], ["number", "yes/no", "other"])
    assert scores["overall"]["vqa_accuracy"] == pytest.approx((0.6 + 1 + 0) / 3)
    assert scores["overall"]["exact_match"] == pytest.approx(1 / 3)  # "2" is not the majority "3"
    assert scores["per_answer_type"]["number"] == {"vqa_accuracy": pytest.approx(0.6), "exact_match": 0.0,
                                                   "questions": 1}
    assert list(scores["per_question_type"]) == ["how many", "is the", "what color"]
    assert [q["vqa_accuracy"] for q in scores["per_question"]] == pytest.approx([0.6, 1.0, 0.0])


def test_vqa_scores_refuse_mismatched_lengths_and_questions_without_answers():
    with pytest.raises(ValueError):
        vqa_scores(["a"], [["a"], ["b"]], ["", ""], ["", ""])
    with pytest.raises(ValueError):
        question_accuracy("a", [])
