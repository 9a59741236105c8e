"""metrics: macro-F1, confusion matrix, ROC, threshold choice and bootstrap CIs against sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import scores_with_labels as _scores
from sklearn import metrics as skm

from autext_jax import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_f1_and_confusion_match_sklearn(seed):
    labels, probs = _scores(200, seed)
    for threshold in (0.0, 0.3, 0.5, 0.7, 1.01):
        pred = metrics.predict(probs, threshold)
        expected = skm.f1_score(labels, pred, average="macro", labels=[0, 1], zero_division=0)
        assert metrics.macro_f1(labels, pred) == pytest.approx(expected, abs=1e-12)
        expected_matrix = skm.confusion_matrix(labels, pred, labels=[0, 1])
        assert metrics.confusion_matrix(labels, pred).tolist() == expected_matrix.tolist()
    # Degenerate: one class only in labels and predictions.
    assert metrics.macro_f1([1, 1, 1], [1, 1, 1]) == pytest.approx(0.5)
    assert metrics.macro_f1([0, 1], [1, 0]) == 0.0
    with pytest.raises(ValueError, match="0 \\(human\\) or 1"):
        metrics.macro_f1([0, 2], [0, 1])


@pytest.mark.parametrize("ties", [False, True])
def test_roc_matches_sklearn(ties):
    labels, probs = _scores(300, 3, ties=ties)
    fpr, tpr, thresholds = metrics.roc_curve(labels, probs)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, probs, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thr[1:])
    assert metrics.roc_auc(labels, probs) == pytest.approx(skm.roc_auc_score(labels, probs), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_best_threshold_is_the_best(ties):
    labels, probs = _scores(300, 4, ties=ties)
    threshold, score = metrics.best_threshold(labels, probs)
    brute = max(
        skm.f1_score(labels, probs >= t, average="macro", labels=[0, 1], zero_division=0)
        for t in np.unique(probs)
    )
    assert score == pytest.approx(brute, abs=1e-12)
    assert metrics.macro_f1(labels, metrics.predict(probs, threshold)) == pytest.approx(score, abs=1e-12)
    # Separable data: the threshold lands strictly between the classes, not on a score.
    threshold, score = metrics.best_threshold([0, 0, 1, 1], np.array([0.1, 0.2, 0.8, 0.9], np.float32))
    assert score == 1.0 and 0.2 < threshold < 0.8


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2, 0.5])
def test_threshold_for_fpr_is_largest_recall_within_budget(target):
    labels, probs = _scores(400, 5, ties=True)
    threshold = metrics.threshold_for_fpr(labels, probs, target)
    pred = metrics.predict(probs, threshold)
    (tn, fp), (fn, tp) = metrics.confusion_matrix(labels, pred)
    assert fp / (fp + tn) <= target
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, probs, drop_intermediate=False)
    assert tp / (tp + fn) == pytest.approx(sk_tpr[sk_fpr <= target].max())
    # Unreachable budget: the top score is a human text, so nothing may be flagged.
    threshold = metrics.threshold_for_fpr([0, 1, 1], np.array([0.9, 0.5, 0.4], np.float32), 0.0)
    assert threshold > 0.9 and not metrics.predict([0.9, 0.5, 0.4], threshold).any()


def test_bootstrap_ci():
    labels, probs = _scores(400, 6)
    pred = metrics.predict(probs, 0.5)
    point = metrics.macro_f1(labels, pred)
    low, high = metrics.bootstrap_ci(labels, pred, n=300, seed=1)
    assert low < point < high and 0.02 < high - low < 0.2
    assert metrics.bootstrap_ci(labels, pred, n=300, seed=1) == (low, high)
    assert metrics.bootstrap_ci(labels, pred, n=300, seed=2) != (low, high)
    big_labels, big_probs = _scores(6400, 7)
    big_low, big_high = metrics.bootstrap_ci(big_labels, metrics.predict(big_probs, 0.5), n=300, seed=1)
    assert 0.15 < (big_high - big_low) / (high - low) < 0.4  # width shrinks like 1/sqrt(n): 1/4 here
    narrow = metrics.bootstrap_ci(labels, pred, n=300, seed=1, level=0.5)
    assert low < narrow[0] < narrow[1] < high
    assert metrics.bootstrap_ci([0, 1] * 20, [0, 1] * 20, n=50) == (1.0, 1.0)  # perfect predictions
