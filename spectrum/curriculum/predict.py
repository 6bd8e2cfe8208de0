"""A learnability model: the loss a training sequence sheds per phase, predicted from its tokens.

Only a sample of the training data is scored (evaluated at every checkpoint and fitted); the rest
gets its learnability from what its target tokens shed where they were measured:

1. per token type ``v`` (the target's id) and phase ``p``, the mean shed of the scored tokens
   with that target, shrunk towards the phase's mean over all scored tokens with a prior weight
   of ``prior`` tokens: ``(sum_v + prior * mean) / (count_v + prior)``. A type never scored gets
   the mean;
2. a sequence's raw prediction is the mean of that table over its targets (tokens 1.. of the
   window: the first token has no context and is never a target);
3. a line per phase, ``a_p + b_p * raw``, fitted on out-of-fold raw predictions, calibrates the
   shrinkage; predictions are clipped at 0.

Scored sequences keep their measured shed in the export (shrunk toward the model's out-of-fold
prediction by its reliability: :mod:`spectrum.curriculum.shrinkage`); the model serves the others.

Its accuracy is measured on scored sequences it was not fitted on: ``folds``-fold cross-validation
with whole documents held out (a held-out sequence's document contributes nothing to the table),
R^2 of predicted against measured shed per phase (the calibration of a fold is fitted on the
other folds too, so nothing of a held-out sequence enters its prediction). The final model is fitted on every scored token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from spectrum.curriculum.weights import sequence_means


def _type_table(target_ids: np.ndarray, shed: np.ndarray, vocab: int, prior: float) -> np.ndarray:
    """(vocab, P) shrunk mean shed per target type."""
    P = shed.shape[1]
    sums = np.zeros((vocab, P))
    np.add.at(sums, target_ids, shed)
    counts = np.bincount(target_ids, minlength=vocab)[:, None].astype(np.float64)
    mean = shed.mean(0) if len(shed) else np.zeros(P)
    return (sums + prior * mean) / (counts + prior)


def _raw(table: np.ndarray, target_ids: np.ndarray, seq_index: np.ndarray, n_seq: int) -> np.ndarray:
    """(n_seq, P) mean of ``table`` over each sequence's targets."""
    return sequence_means(table[target_ids], seq_index, n_seq)


def r2(measured: np.ndarray, predicted: np.ndarray) -> float:
    ss = float(((measured - measured.mean()) ** 2).sum())
    return 1.0 - float(((measured - predicted) ** 2).sum()) / ss if ss > 0 else float("nan")


@dataclass
class ShedModel:
    """The fitted model: the type table and the per-phase calibration lines (see the module doc)."""

    table: np.ndarray  # (vocab, P)
    intercept: np.ndarray  # (P,)
    slope: np.ndarray  # (P,)
    cv_r2: list[float] = field(default_factory=list)  # per phase, held-out documents
    cv_r2_raw: list[float] = field(default_factory=list)  # the same without calibration
    prior: float = 20.0
    folds: int = 5
    n_sequences: int = 0
    n_documents: int = 0
    #: (S, P) the prediction of each scored sequence by the model fitted without its document
    held_out: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_phases(self) -> int:
        return self.table.shape[1]

    def predict(self, target_ids: np.ndarray, seq_index: np.ndarray, n_seq: int) -> np.ndarray:
        """(n_seq, P) predicted shed of sequences given their targets (ids >= vocab: the mean)."""
        ids = np.asarray(target_ids, dtype=np.int64)
        vocab = self.table.shape[0]
        table = np.vstack([self.table, self.table.mean(0, keepdims=True)])
        ids = np.where((ids >= 0) & (ids < vocab), ids, vocab)
        raw = _raw(table, ids, np.asarray(seq_index, dtype=np.int64), n_seq)
        return np.clip(self.intercept + self.slope * raw, 0.0, None)

    def report(self) -> dict:
        return {"model": "per-target-type mean shed, shrunk, calibrated per phase",
                "prior_tokens": self.prior, "folds": self.folds, "held_out": "whole documents",
                "scored_sequences": self.n_sequences, "scored_documents": self.n_documents,
                "cv_r2": self.cv_r2, "cv_r2_uncalibrated": self.cv_r2_raw}


def _calibrate(raw: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    P = raw.shape[1]
    a, b = np.zeros(P), np.ones(P)
    for p in range(P):
        x, y = raw[:, p], measured[:, p]
        if np.ptp(x) > 0:
            b[p], a[p] = np.polyfit(x, y, 1)
        else:
            a[p], b[p] = y.mean(), 0.0
    return a, b


def fit_shed_model(target_ids: np.ndarray, seq_index: np.ndarray, token_shed: np.ndarray,
                   seq_docs: Sequence[str], vocab: int, *, prior: float = 20.0,
                   folds: int = 5, seed: int = 0) -> ShedModel:
    """Fit the model on scored tokens and measure it on held-out documents.

    ``target_ids`` (N), ``seq_index`` (N, 0..S-1) and ``token_shed`` (N, P) describe the scored
    tokens; ``seq_docs`` (S) the document of each sequence. The measured shed of a sequence is the
    mean of its tokens' shed (what :func:`spectrum.curriculum.weights.learnability` reports).
    """
    ids = np.asarray(target_ids, dtype=np.int64)
    si = np.asarray(seq_index, dtype=np.int64)
    shed = np.asarray(token_shed, dtype=np.float64)
    S, P = len(seq_docs), shed.shape[1]
    measured = _raw(shed, np.arange(len(shed)), si, S) if len(shed) else np.zeros((S, P))
    docs, doc_of_seq = np.unique(np.asarray(seq_docs, dtype=str), return_inverse=True)
    k = max(2, min(folds, len(docs)))
    fold_of_doc = np.random.default_rng(seed).permutation(len(docs)) % k
    fold_of_seq = fold_of_doc[doc_of_seq]
    oof = np.zeros((S, P))
    for f in range(k):
        train_tok = fold_of_seq[si] != f
        table = _type_table(ids[train_tok], shed[train_tok], vocab, prior)
        held = fold_of_seq == f
        oof[held] = _raw(table, ids, si, S)[held]
    cal = np.zeros((S, P))
    for f in range(k):  # the calibration of each fold is fitted on the other folds too
        held = fold_of_seq == f
        if held.all():
            continue
        fa, fb = _calibrate(oof[~held], measured[~held])
        cal[held] = np.clip(fa + fb * oof[held], 0.0, None)
    a, b = _calibrate(oof, measured)
    return ShedModel(table=_type_table(ids, shed, vocab, prior), intercept=a, slope=b,
                     cv_r2=[r2(measured[:, p], cal[:, p]) for p in range(P)],
                     cv_r2_raw=[r2(measured[:, p], oof[:, p]) for p in range(P)],
                     prior=prior, folds=k, n_sequences=S, n_documents=len(docs), held_out=cal)
