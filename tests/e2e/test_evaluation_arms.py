"""Smoke run of the six evaluation arms through the real stack (issue 5), on a small synthetic
stream: every arm must produce sane figures, and each must have been driven the way it claims.
No threshold on quality: that is the benchmark's job (``make bench-eval``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamrec_dev.evaluation.data import Dataset, synthetic
from streamrec_dev.evaluation.protocol import EvaluationResult
from streamrec_dev.evaluation.stack_arms import (
    STACK_ARMS,
    StackEvaluationSettings,
    run_stack_arms,
)
from streamrec_dev.synthetic import DriftingClickstream

pytestmark = pytest.mark.e2e

EVENTS = 3000


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EvaluationResult]:
    dataset: Dataset = synthetic(DriftingClickstream(events=EVENTS, users=150, drift_at=0.75))
    settings = StackEvaluationSettings(
        history_epochs=2, retrain_epochs=2, gate_min_events=10, parallel=len(STACK_ARMS)
    )
    home = Path(tmp_path_factory.mktemp("arms"))
    ran = run_stack_arms(dataset, list(STACK_ARMS.values()), home, settings)
    return {result.arm.removeprefix("stack:"): result for result in ran}


def test_every_arm_scored_every_interaction_with_sane_figures(
    results: dict[str, EvaluationResult],
) -> None:
    assert set(results) == set(STACK_ARMS)
    for name, result in results.items():
        assert result.evaluated == EVENTS - EVENTS // 2, name
        assert result.scored > 0, name
        assert result.extra["recommend_failures"] == 0, name
        assert result.extra["recommend_requests"] == result.scored, name
        assert result.metrics["events"] == result.scored, name
        for metric in ("hr@10", "ndcg@10", "hr@20", "ndcg@20"):
            assert 0.0 <= result.metrics[metric] <= 1.0, (name, metric)
        assert result.metrics["hr@10"] <= result.metrics["hr@20"], name
        assert len(result.windows) == 20, name


def test_popularity_arms_never_serve_a_model(results: dict[str, EvaluationResult]) -> None:
    for name in ("popularity-history", "popularity-online"):
        extra = results[name].extra
        assert extra["model_versions"] == {"None": results[name].scored}, name
        assert extra["versions_published"] == 0, name


def test_model_arms_answer_from_the_model(results: dict[str, EvaluationResult]) -> None:
    for name in ("frozen", "frozen-fresh-features", "incremental", "periodic-retrain"):
        extra = results[name].extra
        assert "None" not in extra["model_versions"], name
        if name != "frozen":  # frozen features: cold users stay on popularity
            assert extra["fallbacks"].get("None", 0) > results[name].scored / 2, name


def test_frozen_arms_keep_their_one_version(results: dict[str, EvaluationResult]) -> None:
    for name in ("frozen", "frozen-fresh-features"):
        assert results[name].extra["model_versions"] == {"1": results[name].scored}, name


def test_the_learning_arms_publish_while_evaluated(results: dict[str, EvaluationResult]) -> None:
    incremental = results["incremental"].extra
    assert len(incremental["model_versions"]) >= 2, incremental
    retrain = results["periodic-retrain"].extra
    assert retrain["retrains_requested"] >= 1, retrain
    assert retrain["retrains_requested"] + retrain["retrains_skipped"] == 20, retrain
    assert len(retrain["model_versions"]) >= 2, retrain


def test_fresh_feature_arms_waited_for_the_updater(results: dict[str, EvaluationResult]) -> None:
    for name, arm in STACK_ARMS.items():
        extra = results[name].extra
        assert extra["features_timeouts"] == 0, name
        assert (extra["features_wait_s"] > 0) == arm.fresh_features, name
