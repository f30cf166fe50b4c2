"""Full-ranking top-K metrics, the same everywhere: trainer's gate, benchmarks, evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

DEFAULT_CUTOFFS = (10, 20)


def target_ranks(
    scores: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    exclude: Sequence[npt.NDArray[np.int64]] | None = None,
) -> npt.NDArray[np.float64]:
    """0-based rank of each row's target among all items, excluded items removed.

    Ties count half (the expected rank under random tie-breaking), so a model that scores
    everything equally does not look perfect.
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    rows = np.arange(len(targets))
    if exclude is not None:
        for row, items in enumerate(exclude):
            if len(items):
                scores[row, items] = -np.inf
    target_scores = scores[rows, targets][:, None]
    above = (scores > target_scores).sum(axis=1)
    ties = (scores == target_scores).sum(axis=1) - 1
    return above + ties / 2.0  # type: ignore[no-any-return]


def rank_metrics(
    ranks: npt.NDArray[np.float64], cutoffs: Sequence[int] = DEFAULT_CUTOFFS
) -> dict[str, float]:
    """Mean HR@K and NDCG@K (one relevant item per row) for each cutoff K, plus the count."""
    metrics: dict[str, float] = {"events": float(len(ranks))}
    for k in cutoffs:
        hit = ranks < k
        metrics[f"hr@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        gains = np.where(hit, 1.0 / np.log2(np.floor(ranks) + 2.0), 0.0)
        metrics[f"ndcg@{k}"] = float(gains.mean()) if len(ranks) else 0.0
    return metrics
