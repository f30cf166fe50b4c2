"""Full-ranking metrics: ranks with exclusions and ties, HR@K and NDCG@K by hand."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from streamrec_shared.ranking import rank_metrics, target_ranks, tied_ranks, top_k


def f32(rows: list[list[float]]) -> npt.NDArray[np.float32]:
    return np.asarray(rows, dtype=np.float32)


def i64(values: list[int]) -> npt.NDArray[np.int64]:
    return np.asarray(values, dtype=np.int64)


def test_rank_counts_items_scored_above_the_target() -> None:
    scores = f32([[0.1, 0.5, 0.3, 0.9], [0.1, 0.5, 0.3, 0.9], [0.1, 0.5, 0.3, 0.9]])
    ranks = target_ranks(scores, i64([3, 2, 0]))
    assert ranks.tolist() == [0.0, 2.0, 3.0]
    assert ranks.dtype == np.float64


def test_excluded_items_do_not_count() -> None:
    scores = f32([[0.1, 0.5, 0.3, 0.9], [0.1, 0.5, 0.3, 0.9]])
    ranks = target_ranks(scores, i64([2, 0]), [i64([3]), i64([1, 3])])
    assert ranks.tolist() == [1.0, 1.0]


def test_empty_exclusions_change_nothing() -> None:
    scores = f32([[0.1, 0.5, 0.3, 0.9]])
    assert target_ranks(scores, i64([0]), [i64([])]).tolist() == [3.0]


def test_exclusion_does_not_modify_the_callers_scores() -> None:
    scores = f32([[0.1, 0.5, 0.3, 0.9]])
    target_ranks(scores, i64([0]), [i64([3])])
    assert scores[0, 3] == np.float32(0.9)


def test_each_row_has_its_own_exclusions() -> None:
    scores = f32([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    ranks = target_ranks(scores, i64([1, 1]), [i64([0]), i64([])])
    assert ranks.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("n", [1, 2, 5, 100])
def test_all_equal_scores_give_the_expected_rank(n: int) -> None:
    scores = np.zeros((3, n), dtype=np.float32)
    ranks = target_ranks(scores, i64([0, n - 1, n // 2]))
    assert ranks.tolist() == [(n - 1) / 2] * 3


def test_ties_count_half() -> None:
    scores = f32([[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 0.0]])
    assert target_ranks(scores, i64([0, 2])).tolist() == [1.5, 1.0]


def test_ties_with_excluded_items_do_not_count() -> None:
    scores = f32([[1.0, 1.0, 1.0, 1.0]])
    assert target_ranks(scores, i64([0]), [i64([1, 2])]).tolist() == [0.5]


def test_metrics_by_hand() -> None:
    ranks = np.array([0.0, 1.0, 9.5, 10.0, 25.0])
    metrics = rank_metrics(ranks)
    assert set(metrics) == {"events", "hr@10", "ndcg@10", "hr@20", "ndcg@20"}
    assert metrics["events"] == 5.0
    assert metrics["hr@10"] == pytest.approx(3 / 5)
    assert metrics["hr@20"] == pytest.approx(4 / 5)
    top10 = 1.0 + 1 / math.log2(3) + 1 / math.log2(11)  # rank 9.5 gains like position 9
    assert metrics["ndcg@10"] == pytest.approx(top10 / 5)
    assert metrics["ndcg@20"] == pytest.approx((top10 + 1 / math.log2(12)) / 5)


def test_custom_cutoffs() -> None:
    metrics = rank_metrics(np.array([0.0, 1.0, 2.0, 3.0]), cutoffs=(1, 3))
    assert metrics == pytest.approx(
        {
            "events": 4.0,
            "hr@1": 0.25,
            "ndcg@1": 0.25,
            "hr@3": 0.75,
            "ndcg@3": (1 + 1 / math.log2(3) + 1 / math.log2(4)) / 4,
        }
    )


def test_a_perfect_ranking_scores_one() -> None:
    assert rank_metrics(np.zeros(7)) == {
        "events": 7.0,
        "hr@10": 1.0,
        "ndcg@10": 1.0,
        "hr@20": 1.0,
        "ndcg@20": 1.0,
    }


def test_empty_input_gives_zeros() -> None:
    assert rank_metrics(np.zeros(0)) == {
        "events": 0.0,
        "hr@10": 0.0,
        "ndcg@10": 0.0,
        "hr@20": 0.0,
        "ndcg@20": 0.0,
    }


def test_ranks_feed_metrics_end_to_end() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 40)).astype(np.float32)
    targets = np.argmax(scores, axis=1)  # the model's favourite is always right
    assert rank_metrics(target_ranks(scores, targets))["ndcg@10"] == 1.0
    worst = np.argmin(scores, axis=1)
    assert rank_metrics(target_ranks(scores, worst))["hr@20"] == 0.0


def test_constant_scores_do_not_look_perfect_on_small_catalogues() -> None:
    """A tie straddling the cutoff counts by chance: a constant model gets exactly 10/15."""
    n = 15
    above, ties = tied_ranks(np.zeros((n, n), dtype=np.float32), np.arange(n))
    metrics = rank_metrics(above, ties=ties)
    assert metrics["hr@10"] == pytest.approx(10 / n)
    expected_ndcg = sum(1 / np.log2(p + 2) for p in range(10)) / n
    assert metrics["ndcg@10"] == pytest.approx(expected_ndcg)


def test_exact_ties_agree_with_plain_ranks_when_there_are_none() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(50, 40)).astype(np.float32)
    targets = rng.integers(0, 40, 50)
    above, ties = tied_ranks(scores, targets)
    assert not ties.any()
    assert rank_metrics(above, ties=ties) == rank_metrics(target_ranks(scores, targets))


def test_a_tie_across_the_cutoff_counts_partly() -> None:
    # 9 items above, the target tied with 1 other: positions 9 or 10, each with p = 1/2.
    metrics = rank_metrics(np.array([9.0]), cutoffs=(10,), ties=np.array([1.0]))
    assert metrics["hr@10"] == pytest.approx(0.5)
    assert metrics["ndcg@10"] == pytest.approx(0.5 / np.log2(11))
    assert rank_metrics(np.array([np.inf]), ties=np.array([0.0]))["hr@10"] == 0.0


@pytest.mark.parametrize("n", [1, 7, 1682, 30_000, 100_000])
@pytest.mark.parametrize("k", [1, 10, 100, 200_000])
def test_top_k_is_the_full_sort_s_head(n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    # Ties (rounded values) and excluded items (-inf), as the recommender's scores have.
    scores = np.round(rng.normal(size=n), 2).astype(np.float32)
    scores[rng.choice(n, n // 10, replace=False)] = -np.inf
    top = top_k(scores, k)
    assert len(top) == min(k, n)
    assert len(set(top.tolist())) == len(top)
    expected = np.sort(scores)[::-1][: len(top)]
    np.testing.assert_array_equal(scores[top], expected)  # the same values, highest first


def test_top_k_of_a_flat_or_mostly_excluded_catalogue() -> None:
    flat = np.zeros(50_000, dtype=np.float32)
    assert len(top_k(flat, 10)) == 10
    excluded = np.full(50_000, -np.inf, dtype=np.float32)
    excluded[[3, 40_000]] = [1.0, 2.0]
    assert top_k(excluded, 2).tolist() == [40_000, 3]
    assert top_k(excluded, 0).tolist() == []
