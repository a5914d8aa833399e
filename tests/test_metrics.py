"""Metrics against hand-computed examples: accuracy, macro-F1 (absent classes), SQuAD exact match
and F1 (normalisation, best over gold answers), and the tie rule of ranked classification."""

import pytest

from bonito.evaluation.metrics import (
    accuracy,
    exact_match,
    macro_f1,
    normalize_answer,
    squad_scores,
    token_f1,
)
from bonito.evaluation.scoring import best_choice


def test_accuracy():
    assert accuracy(["Yes", "No", "No", "Yes"], ["Yes", "Yes", "No", "No"]) == 0.5


def test_macro_f1_gold_class_never_predicted_and_predicted_class_never_gold():
    gold = ["A", "A", "B", "B"]
    predicted = ["A", "A", "A", "C"]
    # A: 2 hits, 2 gold, 3 predicted -> F1 = 2*2 / (2+3) = 0.8; B (never predicted) and C (never
    # gold) score 0; the mean is over the three classes.
    assert macro_f1(gold, predicted) == pytest.approx(0.8 / 3)


def test_macro_f1_leaves_out_a_class_absent_from_gold_and_predictions():
    # choices Yes/No/Maybe, but Maybe is neither gold nor predicted: it is left out.
    gold = ["Yes", "No", "Yes", "No"]
    predicted = ["Yes", "Yes", "Yes", "No"]
    # Yes: 2 hits, 2 gold, 3 predicted -> 0.8; No: 1 hit, 2 gold, 1 predicted -> 2/3.
    assert macro_f1(gold, predicted) == pytest.approx((0.8 + 2 / 3) / 2)


def test_macro_f1_perfect_and_all_wrong():
    assert macro_f1(["x", "y"], ["x", "y"]) == 1.0
    assert macro_f1(["x", "x"], ["y", "y"]) == 0.0


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("An apple a day.", "apple day"),
        ("theatre, anthem", "theatre anthem"),  # articles only as whole words
        ("  U.S.  state-of-the-art\n", "us stateoftheart"),  # punctuation goes before articles
        ("A", ""),
    ],
)
def test_squad_normalisation(text, normalised):
    assert normalize_answer(text) == normalised


def test_exact_match_ignores_case_articles_and_punctuation():
    assert exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower", "a tower"]) == 0.0


def test_token_f1():
    # tokens cat, sat against cat, sat, down: precision 1, recall 2/3 -> 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counted overlap
    assert token_f1("the", "a") == 1.0  # both empty after normalisation
    assert token_f1("the", "cat") == 0.0


def test_squad_scores_take_the_best_gold_answer_and_average():
    predictions = ["blue sky", "Paris"]
    answers = [["red", "the blue sky is"], ["paris.", "France"]]
    scores = squad_scores(predictions, answers)
    assert scores["exact_match"] == 0.5
    assert scores["f1"] == pytest.approx((0.8 + 1.0) / 2)


def test_ties_in_ranked_classification_go_to_the_lowest_index():
    assert best_choice([-3.0, -1.5, -1.5]) == 1
    assert best_choice([-2.0, -2.0]) == 0
    assert best_choice([-4.0, -1.0, -2.0]) == 1
