"""Validation scoring and THE selection rule of stage 2, written once.

Every choice stage 2 makes on validation — the best epoch of each classifier inside the
loop, the best epoch read back from a recorded curve, the best setting of a method, and
the learning rate of the cross-entropy warm start — compares score rows with
:func:`better`:

1. the higher validation **balanced accuracy** wins;
2. on a tie, the lower **class-balanced log-loss** wins (the mean over classes of the
   mean negative log-likelihood of their samples): balanced accuracy on a small
   validation split moves in coarse steps, and the log-loss breaks its ties;
3. log-losses within a relative ``LOG_LOSS_RTOL`` of each other count as equal, and a
   full tie keeps the earlier candidate (the earlier epoch, the earlier setting).

The tolerance makes the choices independent of the last bits of floating-point
arithmetic: the same classifier scored in a pass with other settings, or on another CPU
whose BLAS sums in another order, gives a log-loss that differs by about 1e-7 relatively,
which must not change which epoch or setting is chosen. Balanced accuracy is a ratio of
counts and is compared exactly (within ``ACC_ATOL``, far below one image's weight).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis.metrics import grouped_balanced_accuracy

LOG_LOSS_RTOL = 1e-4  # log-losses this close (relatively) are a tie: last-bit differences never decide
ACC_ATOL = 1e-9  # balanced accuracies this close are equal (a ratio of counts; sums in another order)
SCORE_COLUMNS = ("val_balanced_acc", "val_log_loss")  # what a score row holds: accuracy, then minus the log-loss


def _score_rows(s) -> torch.Tensor:
    """Scores as ``(G, C)`` float64 rows, on the device of a tensor, else the CPU (never the
    default device: a caller may have set another)."""
    if isinstance(s, torch.Tensor):
        return s.to(torch.float64).reshape(len(s), -1)
    s = np.asarray(s, dtype=np.float64)
    return torch.from_numpy(s.reshape(len(s), -1))


def better(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(G, C)`` score rows -> ``(G,)``: whether each row of ``a`` beats the row of ``b``
    under the selection rule (the module docstring). Column 0 is balanced accuracy, column
    1 (when present) minus the log-loss; a row of ``a`` that only ties ``b`` does not beat
    it (the earlier candidate is kept)."""
    a, b = _score_rows(a), _score_rows(b)
    acc_gt = a[:, 0] > b[:, 0] + ACC_ATOL
    if a.shape[1] < 2:
        return acc_gt
    acc_eq = (a[:, 0] - b[:, 0]).abs() <= ACC_ATOL
    scale = torch.maximum(a[:, 1].abs(), b[:, 1].abs())
    finite = torch.isfinite(b[:, 1])
    loss_gt = torch.where(finite, a[:, 1] > b[:, 1] + LOG_LOSS_RTOL * scale, a[:, 1] > b[:, 1])
    return acc_gt | (acc_eq & loss_gt)


def best_index(rows) -> int:
    """Index of the best of ``rows`` (``(N,)`` or ``(N, C)`` scores: epochs of a curve, or
    settings of a method), scanning in order and moving only when :func:`better` says so:
    the same choice the loop makes epoch after epoch. 0 for a single row."""
    rows = np.asarray(rows, dtype=np.float64)
    rows = rows.reshape(len(rows), -1)
    best = 0
    for i in range(1, len(rows)):
        if bool(better(rows[i : i + 1], rows[best : best + 1])[0]):
            best = i
    return best


def score_row(record: dict) -> list[float]:
    """The score row of a recorded setting (``val_balanced_acc``, ``val_log_loss``):
    missing figures score lowest."""
    acc = record.get("val_balanced_acc")
    loss = record.get("val_log_loss")
    return [-math.inf if acc is None else acc, -math.inf if loss is None else -loss]


def best_record(records: list[dict]) -> int:
    """Index of the best of recorded settings (dicts with ``val_balanced_acc`` and
    ``val_log_loss``) under the selection rule."""
    return best_index([score_row(r) for r in records])


def head_validation_scores(head, x: torch.Tensor, labels: torch.Tensor, num_classes: int, max_logits: int = 1 << 22):
    """``(G, 2)``: each classifier's balanced accuracy on ``x``, then minus its
    class-balanced log-loss: the score rows :func:`better` compares. Computed in row chunks
    so that at most ``max_logits`` logits (G x rows x K) exist at once: the validation split of
    a large dataset scored by a whole grid never needs G full logit matrices."""
    g = head.groups()
    rows = max(1, max_logits // max(1, g * num_classes))
    preds, nll = [], labels.new_zeros(g, num_classes, dtype=torch.float32)  # x may be a source like Standardised
    for i in range(0, len(x), rows):
        logits, y = head(x[i : i + rows]).float(), labels[i : i + rows]
        preds.append(logits.argmax(2))
        picked = F.log_softmax(logits, dim=2).gather(2, y.expand(g, -1).unsqueeze(2)).squeeze(2)
        nll.index_add_(1, y, -picked)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    log_loss = (nll[:, present] / counts[present]).mean(1).nan_to_num(nan=math.inf)
    accuracy = grouped_balanced_accuracy(torch.cat(preds, dim=1), labels, num_classes)
    return torch.stack([accuracy, -log_loss], dim=1)
