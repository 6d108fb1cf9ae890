"""Metrics: BLEU as sacrebleu's defaults; accuracy ignores padding; perplexity from summed NLL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

from shared.training.metrics import corpus_bleu, masked_accuracy, perplexity


def test_bleu_perfect_and_partial() -> None:
    refs = ["A man is riding a bike down the street.", "Two dogs play in the snow."]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    hyps = ["A man rides a bike on the street.", "Two dogs play in snow."]
    score = corpus_bleu(hyps, refs)
    assert 0.0 < score < 100.0
    assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)


def test_bleu_rejects_misaligned_lists() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a", "b"], ["a"])


def test_masked_accuracy_ignores_padding() -> None:
    targets = np.array([[5, 6, 2, 0], [7, 2, 0, 0]])
    predictions = np.array([[5, 9, 2, 4], [7, 2, 1, 1]])  # wrong at one real position and at pads
    assert masked_accuracy(predictions, targets) == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="only padding"):
        masked_accuracy(np.zeros((1, 3)), np.zeros((1, 3)))


def test_perplexity() -> None:
    assert perplexity(10 * math.log(4.0), 10) == pytest.approx(4.0)
    assert math.isfinite(perplexity(1e9, 1))
    with pytest.raises(ValueError):
        perplexity(1.0, 0)
