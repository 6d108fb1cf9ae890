"""Evaluation metrics in Python/numpy: corpus BLEU (via sacrebleu), ROUGE (via rouge-score), token accuracy, perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import sacrebleu

from shared.data.special_tokens import PAD_ID


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of detokenized hypotheses, one reference each; sacrebleu 13a defaults."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; "
            f"they pair up line by line"
        )
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (0-100) over the pairs, Google's rouge-score with stemming (the book's metric)."""
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references; they pair up line by line")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hypothesis, reference in zip(hypotheses, references):
        for name, score in scorer.score(reference, hypothesis).items():
            totals[name] += score.fmeasure
    return {name: 100.0 * total / len(hypotheses) for name, total in totals.items()}


def masked_accuracy(predictions: np.ndarray, targets: np.ndarray, pad_id: int = PAD_ID) -> float:
    """Fraction of non-pad target positions predicted exactly; both arguments are (B, T) ids."""
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions {predictions.shape} and targets {targets.shape} must have one shape"
        )
    mask = targets != pad_id  # (B, T)
    count = int(mask.sum())
    if count == 0:
        raise ValueError("targets hold only padding; accuracy is undefined")
    return float(((predictions == targets) & mask).sum() / count)


def perplexity(total_nll: float, num_tokens: int) -> float:
    """exp of the mean negative log-likelihood (natural log) per non-pad target token."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    # Cap the exponent so a diverged model reports inf-like 1e300 rather than raising OverflowError.
    return math.exp(min(total_nll / num_tokens, 690.0))
