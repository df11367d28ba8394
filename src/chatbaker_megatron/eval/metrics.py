"""Aggregations our local task YAMLs name (lm-eval's own `f1` aggregation is binary F1)."""

from __future__ import annotations

from collections.abc import Sequence


def macro_f1(items: Sequence[tuple[int, int]]) -> float:
    """Macro-averaged F1 over the classes seen in gold or predicted labels (KoBEST's metric).

    `items` are (gold, predicted) pairs, as lm-eval's multiple-choice `f1` metric yields them.
    """
    if not items:
        raise ValueError("macro F1 of no items")
    golds, preds = zip(*items)
    scores = []
    for label in sorted(set(golds) | set(preds)):
        tp = sum(g == label and p == label for g, p in items)
        fp = sum(g != label and p == label for g, p in items)
        fn = sum(g == label and p != label for g, p in items)
        # A class never predicted and never gold cannot occur; one with no
        # true positive scores 0, as scikit-learn's f1_score(average="macro").
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


AGGREGATIONS = {"macro_f1": macro_f1}
