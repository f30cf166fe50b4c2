"""Smoke run of the six evaluation arms through the real stack (issue 5), on a small synthetic
stream: every arm must produce sane figures, and each must have been driven the way it claims
(one shared stream, each arm's own inference). No threshold on quality: that is the benchmark's
job (``make bench-eval``)."""

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
    settings = StackEvaluationSettings(history_epochs=2, retrain_epochs=2, gate_min_events=10)
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
        if name != "frozen":  # frozen features: cold users get the prior ("model_prior")
            assert extra["fallbacks"].get("None", 0) > results[name].scored / 2, name


def test_frozen_arms_keep_their_one_version(results: dict[str, EvaluationResult]) -> None:
    for name in ("frozen", "frozen-fresh-features"):
        assert results[name].extra["model_versions"] == {"1": results[name].scored}, name


def test_frozen_arms_serve_the_version_arm_5_started_from(
    results: dict[str, EvaluationResult],
) -> None:
    incremental = results["incremental"].extra
    for name in ("frozen", "frozen-fresh-features"):
        extra = results[name].extra
        assert extra["trainer_group"] == incremental["trainer_group"], name
        assert extra["runs"] == incremental["runs"][:1], name  # its batch run, not the follow
        assert extra["versions_published"] == 1, name
    assert results["periodic-retrain"].extra["trainer_group"] != incremental["trainer_group"]
    assert set(incremental["cpu_s"]) == {"inference", "trainer"}


def test_the_learning_arms_publish_while_evaluated(results: dict[str, EvaluationResult]) -> None:
    incremental = results["incremental"].extra
    assert len(incremental["model_versions"]) >= 2, incremental
    retrain = results["periodic-retrain"].extra
    assert retrain["retrains_requested"] >= 1, retrain
    assert retrain["retrains_requested"] + retrain["retrains_skipped"] == 20, retrain
    assert len(retrain["model_versions"]) >= 2, retrain


def test_the_stream_was_posted_once_and_waited_for_once(
    results: dict[str, EvaluationResult],
) -> None:
    # One feed for every arm: the same figures in every result, one POST per interaction.
    feeds = {
        (extra["run_id"], extra["posted"], extra["features_wait_s"], extra["features_timeouts"])
        for extra in (result.extra for result in results.values())
    }
    assert len(feeds) == 1, feeds
    _, posted, waited_s, timeouts = feeds.pop()
    assert posted == EVENTS
    # Before each question it waited for the fresh updater, never in vain.
    assert waited_s > 0
    assert timeouts == 0


def test_frozen_feature_arms_read_the_features_the_history_left(
    results: dict[str, EvaluationResult],
) -> None:
    # Items a user touched while evaluated are in the fresh features' seen set, which inference
    # excludes, and not in the frozen ones: only arms reading frozen features return them from
    # answers built on their features. (Inference answers from memory when Redis runs past its
    # budget, which happens under load: such answers may return them in any arm.)
    without_features = {"model_without_features", "memory_popularity"}
    for name, arm in STACK_ARMS.items():
        extra = results[name].extra
        assert extra["features"] == ("fresh" if arm.fresh_features else "frozen"), name
        from_features = {
            path: count
            for path, count in extra["touched_returned"].items()
            if path not in without_features
        }
        assert bool(from_features) != arm.fresh_features, (name, extra["touched_returned"])
