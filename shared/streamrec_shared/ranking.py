"""Full-ranking top-K metrics, the same everywhere: trainer's gate, benchmarks, evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

DEFAULT_CUTOFFS = (10, 20)
# Below this many scores one argpartition is as fast as anything else.
TOP_K_SAMPLED_ABOVE = 20_000
TOP_K_SAMPLE = 1_000


def top_k(scores: npt.NDArray[np.floating], k: int) -> npt.NDArray[np.intp]:
    """The indices of the ``k`` highest scores, highest first (exact).

    For a large catalogue a threshold comes first: the k-th highest of a strided sample of
    ~1,000 scores. At least k scores (those sampled) reach it, so every one of the true top k
    does too, and one comparison over the array leaves ~k·n/1,000 candidates to partition.
    At 100,000 items that is ~0.1 ms instead of ~0.8 ms for an argpartition of the whole array.
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.intp)
    candidates: npt.NDArray[np.intp] | None = None
    if n > TOP_K_SAMPLED_ABOVE and k * 8 < TOP_K_SAMPLE:
        sample = scores[:: n // TOP_K_SAMPLE]
        threshold = np.partition(sample, len(sample) - k)[len(sample) - k]
        candidates = np.flatnonzero(scores >= threshold)
        if len(candidates) > n // 4:  # a flat or mostly excluded array: no gain
            candidates = None
    pool = scores if candidates is None else scores[candidates]
    if k < len(pool):
        best = np.argpartition(pool, len(pool) - k)[len(pool) - k :]
    else:
        best = np.arange(len(pool))
    best = best[np.argsort(-pool[best], kind="stable")]
    return best if candidates is None else candidates[best]


def tied_ranks(
    scores: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    exclude: Sequence[npt.NDArray[np.int64]] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per row: how many items score above the target, and how many tie with it (excluded
    items removed). ``rank_metrics(above, ties=ties)`` then scores ties exactly."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    rows = np.arange(len(targets))
    if exclude is not None:
        for row, items in enumerate(exclude):
            if len(items):
                scores[row, items] = -np.inf
    target_scores = scores[rows, targets][:, None]
    above = (scores > target_scores).sum(axis=1).astype(np.float64)
    ties = ((scores == target_scores).sum(axis=1) - 1).astype(np.float64)
    return above, ties


def target_ranks(
    scores: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    exclude: Sequence[npt.NDArray[np.int64]] | None = None,
) -> npt.NDArray[np.float64]:
    """0-based expected rank of each row's target (ties count half), excluded items removed."""
    above, ties = tied_ranks(scores, targets, exclude)
    return above + ties / 2.0


def per_event_metrics(
    ranks: npt.NDArray[np.float64],
    cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
    ties: npt.NDArray[np.float64] | None = None,
) -> dict[str, npt.NDArray[np.float64]]:
    """Each row's HR@K and NDCG@K (one relevant item per row) for each cutoff K.

    ``ranks`` are 0-based positions (``inf``: never ranked). With ``ties`` (from
    ``tied_ranks``: ``ranks`` is then the count above), a target tied with ``t`` others is
    equally likely at each of the ``t + 1`` positions, so a tie straddling K counts partly and a
    model that scores everything equally gets exactly the chance level.
    """
    if ties is None:
        ties = np.zeros(len(ranks))
    values: dict[str, npt.NDArray[np.float64]] = {}
    for k in cutoffs:
        above = np.floor(np.minimum(ranks, k))  # inf (never ranked) becomes k: no gain
        spread = ties + 1.0
        values[f"hr@{k}"] = np.clip((k - above) / spread, 0.0, 1.0)
        # Sum of discounts over the positions [above, min(above + ties, k - 1)], averaged.
        discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
        last = np.minimum(above + spread, k).astype(np.int64)
        values[f"ndcg@{k}"] = (discounts[last] - discounts[above.astype(np.int64)]) / spread
    return values


def rank_metrics(
    ranks: npt.NDArray[np.float64],
    cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
    ties: npt.NDArray[np.float64] | None = None,
) -> dict[str, float]:
    """Mean HR@K and NDCG@K over the rows (see ``per_event_metrics``), plus the count."""
    metrics: dict[str, float] = {"events": float(len(ranks))}
    for name, values in per_event_metrics(ranks, cutoffs, ties).items():
        metrics[name] = float(values.mean()) if len(values) else 0.0
    return metrics
