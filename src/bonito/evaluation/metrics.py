"""Scores of predictions against gold, as fractions in [0, 1]: accuracy and macro-F1 for ranked
classification, SQuAD exact match and F1 for extractive QA."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence
from statistics import fmean

PUNCTUATION = frozenset(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b")


def accuracy(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Share of predictions equal to the gold label."""
    return fmean(g == p for g, p in zip(gold, predicted, strict=True))


def macro_f1(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Mean per-class F1 over the classes that occur in the gold labels or the predictions
    (scikit-learn's default): a gold class never predicted, or a class predicted but never gold,
    scores 0; a class in neither has no defined F1 and is left out."""
    pairs = list(zip(gold, predicted, strict=True))
    gold_counts, predicted_counts = Counter(gold), Counter(predicted)
    hits = Counter(g for g, p in pairs if g == p)
    classes = gold_counts.keys() | predicted_counts.keys()
    return fmean(2 * hits[c] / (gold_counts[c] + predicted_counts[c]) for c in classes)


def classification_scores(gold: Sequence[Hashable], predicted: Sequence[Hashable]) -> dict:
    """Accuracy and macro-F1."""
    return {"accuracy": accuracy(gold, predicted), "macro_f1": macro_f1(gold, predicted)}


def normalize_answer(text: str) -> str:
    """SQuAD's official normalisation: lower case, punctuation removed, then the articles a, an
    and the, then runs of whitespace made one space."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1 if the normalised prediction equals any normalised gold answer, else 0."""
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answer: str) -> float:
    """F1 of the normalised tokens shared with one gold answer; when either has no tokens left,
    1 if both are empty and 0 otherwise (the SQuAD 2.0 script's rule)."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict:
    """Mean exact match and mean F1, each the best over an example's gold answers."""
    pairs = list(zip(predictions, answers, strict=True))
    return {
        "exact_match": fmean(exact_match(p, golds) for p, golds in pairs),
        "f1": fmean(max(token_f1(p, gold) for gold in golds) for p, golds in pairs),
    }


METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "exact_match": "exact match"}


def metric_name(metric: str) -> str:
    """How a metric is named in tables: `macro_f1` -> macro-F1, `f1` -> F1."""
    return METRIC_NAMES.get(metric, metric.upper())
