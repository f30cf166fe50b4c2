"""The validation gate: a paired comparison that rejects regressions, not noisy windows."""

from __future__ import annotations

import numpy as np
import pytest
from streamrec_shared.ranking import per_event_metrics, rank_metrics
from streamrec_shared.schemas.control import ValidationPolicy
from trainer.gate import judge, short_sample

POLICY = ValidationPolicy(min_events=100, tolerance=0.01, confidence=0.95)


def hits(rate: float, events: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(events) < rate).astype(np.float64)


def test_the_first_version_is_published_without_comparison() -> None:
    verdict = judge(POLICY, np.zeros(3), None, final_batch=False)
    assert verdict.decision == "published"
    assert verdict.difference is None


def test_too_few_events_defer_the_decision_or_reject_a_final_batch() -> None:
    values = np.ones(99)
    assert judge(POLICY, values, values, final_batch=False).decision == "deferred"
    final = judge(POLICY, values, values, final_batch=True)
    assert final.decision == "rejected"
    assert "99 held-out events, the gate needs 100" in final.reason
    # The same rule a run applies before it builds a candidate at all.
    assert short_sample(POLICY, 99, final_batch=False) == judge(POLICY, values, values, False)
    assert short_sample(POLICY, 100, final_batch=False) is None


def test_a_consistent_drop_beyond_the_tolerance_is_rejected() -> None:
    current = hits(0.3, 400, seed=1)
    candidate = current.copy()
    candidate[np.flatnonzero(current)[:40]] = 0.0  # 40 of 400 hits lost: -0.1, every one paired
    verdict = judge(POLICY, candidate, current, final_batch=False)
    assert verdict.decision == "rejected"
    assert verdict.difference == pytest.approx(-0.1)
    assert verdict.upper_bound is not None
    assert verdict.upper_bound < -POLICY.tolerance
    assert verdict.reason.startswith("worse: ")


def test_a_noisy_window_whose_mean_is_below_the_tolerance_is_not_rejected() -> None:
    # Two models as good as each other, disagreeing on individual events: the mean difference
    # on 100 events falls beyond the tolerance by chance, which the old unpaired rule rejected.
    current = hits(0.2, 100, seed=3)
    candidate = hits(0.2, 100, seed=4)
    difference = candidate.mean() - current.mean()
    assert difference < -POLICY.tolerance
    verdict = judge(POLICY, candidate, current, final_batch=False)
    assert verdict.decision == "published"
    assert verdict.standard_error is not None
    assert verdict.standard_error > 0.03
    assert verdict.difference == pytest.approx(difference)


def test_a_higher_confidence_demands_more_evidence() -> None:
    current = hits(0.3, 200, seed=5)
    candidate = current.copy()
    lost = np.flatnonzero(current)[:10]
    candidate[lost] = 0.0
    gained = np.flatnonzero(current == 0)[:2]
    candidate[gained] = 1.0  # -8 / 200 = -0.04, SE ≈ 0.017: worse at 90 %, not at 99.9 %
    for confidence, decision in ((0.9, "rejected"), (0.999, "published")):
        policy = POLICY.model_copy(update={"confidence": confidence})
        assert judge(policy, candidate, current, final_batch=False).decision == decision


def test_the_gate_compares_the_same_events() -> None:
    with pytest.raises(ValueError, match="same events"):
        judge(POLICY, np.zeros(100), np.zeros(101), final_batch=False)


def test_per_event_metrics_average_to_rank_metrics() -> None:
    rng = np.random.default_rng(7)
    ranks = rng.integers(0, 40, 300).astype(np.float64)
    ranks[:5] = np.inf
    ties = rng.integers(0, 3, 300).astype(np.float64)
    per_event = per_event_metrics(ranks, ties=ties)
    means = rank_metrics(ranks, ties=ties)
    for name, values in per_event.items():
        assert len(values) == 300
        assert values.mean() == pytest.approx(means[name])
