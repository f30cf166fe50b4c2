"""The model registry on both of its backends: a SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from trainer.registry import (
    InvalidTransition,
    Registry,
    RunConflict,
    RunMode,
    RunStatus,
    SpecExists,
    UnknownRun,
    UnknownSpec,
    UnknownVersion,
)
from trainer.registry.store import alembic_config, for_writes
from trainer.registry.tables import metadata

pytestmark = pytest.mark.integration

T = TypeVar("T")
DIGEST = "ab" * 32
TABLES = {
    "model_specs",
    "training_runs",
    "run_steps",
    "model_versions",
    "rejected_candidates",
    "deployments",
    "deployment_history",
}


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    with Registry(registry_url) as registry:
        registry.migrate()
        yield registry


def _assert_recent_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is UTC
    assert abs(datetime.now(UTC) - value) < timedelta(minutes=1)


def _in_threads(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(0..count-1)`` in threads that start together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return [results[i] for i in range(count)]


def _publish(registry: Registry, spec_id: str, run_id: str | None = None, **metrics: float) -> int:
    return registry.publish_version(
        spec_id,
        run_id,
        artifact_uri=f"file:///artifacts/{spec_id}",
        digest=DIGEST,
        metrics=metrics or {"hr@10": 0.3},
        baseline_metrics=None,
        trained_through={0: 10},
        events_trained=10,
    ).version


# ------------------------------------------------------------------------------- migrations


def test_migrate_creates_the_schema_and_a_second_run_changes_nothing(registry_url: str) -> None:
    with Registry(registry_url) as registry:
        assert set(inspect(registry.engine).get_table_names()) == set()
        registry.migrate()
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        with registry.engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == head == "0001"
        assert set(inspect(registry.engine).get_table_names()) == {*TABLES, "alembic_version"}

        registry.create_spec("kept", "pooling", {})
        registry.migrate()  # a no-op: the data is still there
        assert [s.id for s in registry.list_specs()] == ["kept"]


def test_the_migration_creates_exactly_the_models_tables(registry: Registry) -> None:
    with registry.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_downgrade_removes_everything_and_upgrade_restores_it(registry: Registry) -> None:
    config = alembic_config()
    with for_writes(registry.engine).begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(registry.engine).get_table_names()) <= {"alembic_version"}
    registry.migrate()
    assert set(inspect(registry.engine).get_table_names()) >= TABLES


# ------------------------------------------------------------------------------------ specs


def test_specs(registry: Registry) -> None:
    created = registry.create_spec("pooling-default", "pooling", {"dim": 32}, "mean pooling")
    assert created.hyperparameters == {"dim": 32}
    assert created.last_version == 0
    _assert_recent_utc(created.created_at)
    assert registry.get_spec("pooling-default") == created
    assert registry.get_spec("missing") is None

    registry.create_spec("a-first", "two-tower", {"layers": [64, 32]})
    assert [s.id for s in registry.list_specs()] == ["a-first", "pooling-default"]
    with pytest.raises(SpecExists):
        registry.create_spec("pooling-default", "pooling", {})


# ------------------------------------------------------------------------------------- runs


def test_a_run_from_request_to_success(registry: Registry) -> None:
    registry.create_spec("s", "pooling", {})
    request: dict[str, Any] = {"type": "train_requested", "run_id": "r1", "mode": "batch"}
    run = registry.create_run("r1", "s", "batch", request, {0: 0, 1: 5}, {0: 100, 1: 50})
    assert (run.status, run.mode) == (RunStatus.REQUESTED, RunMode.BATCH)
    assert run.request == request
    assert run.start_offsets == {0: 0, 1: 5}  # int keys, as given
    assert run.end_offsets == {0: 100, 1: 50}
    assert (run.trained_through, run.started_at, run.finished_at) == (None, None, None)
    _assert_recent_utc(run.created_at)

    # The same control message again: the same run, not a second one.
    assert registry.create_run("r1", "s", RunMode.BATCH, request, {0: 0, 1: 5}, None) == run
    with pytest.raises(RunConflict):
        registry.create_run("r1", "s", "incremental", request, {}, None)

    running = registry.mark_run_running("r1")
    assert running.status is RunStatus.RUNNING
    _assert_recent_utc(running.started_at)
    assert registry.mark_run_running("r1").started_at == running.started_at  # resumed

    progressed = registry.record_progress("r1", {0: 40, 1: 20}, events_trained=55)
    assert (progressed.trained_through, progressed.events_trained) == ({0: 40, 1: 20}, 55)
    assert progressed.updated_at >= running.updated_at

    done = registry.finish_run("r1", "succeeded")
    assert (done.status, done.error) == (RunStatus.SUCCEEDED, None)
    _assert_recent_utc(done.finished_at)
    assert registry.finish_run("r1", RunStatus.SUCCEEDED) == done  # delivered twice
    with pytest.raises(InvalidTransition):
        registry.finish_run("r1", "failed")
    with pytest.raises(InvalidTransition):
        registry.mark_run_running("r1")
    with pytest.raises(ValueError, match="final"):
        registry.finish_run("r1", "running")
    assert registry.get_run("r1") == done


def test_listing_runs(registry: Registry) -> None:
    registry.create_spec("a", "pooling", {})
    registry.create_spec("b", "pooling", {})
    for run_id, spec in (("r1", "a"), ("r2", "b"), ("r3", "a"), ("r4", "a")):
        registry.create_run(run_id, spec, "incremental", {}, {0: 0}, None)
    registry.mark_run_running("r3")
    registry.finish_run("r4", "failed", error="boom")

    assert [r.id for r in registry.list_runs()] == ["r4", "r3", "r2", "r1"]
    assert [r.id for r in registry.list_runs(spec_id="a", limit=2)] == ["r4", "r3"]
    assert [r.id for r in registry.list_runs(status="failed")] == ["r4"]
    assert registry.get_run("r4").error == "boom"  # type: ignore[union-attr]
    unfinished = registry.runs_in_status([RunStatus.REQUESTED, "running"])
    assert [r.id for r in unfinished] == ["r1", "r2", "r3"]  # oldest first


def test_concurrent_deliveries_of_one_request_make_one_run(registry: Registry) -> None:
    registry.create_spec("s", "pooling", {})
    runs = _in_threads(
        6, lambda _: registry.create_run("dup", "s", "incremental", {"n": 1}, {0: 3}, None)
    )
    assert all(run == runs[0] for run in runs)
    assert len(registry.list_runs()) == 1


def test_runs_and_steps_need_what_they_refer_to(registry: Registry) -> None:
    with pytest.raises(UnknownSpec):
        registry.create_run("r", "missing", "batch", {}, {}, {})
    for call in (
        lambda: registry.mark_run_running("missing"),
        lambda: registry.record_progress("missing", {0: 1}, 1),
        lambda: registry.finish_run("missing", "stopped"),
        lambda: registry.record_step("missing", 1, 1, 0.5, {}),
    ):
        with pytest.raises(UnknownRun):
            call()
    assert registry.get_run("missing") is None
    assert registry.list_runs(spec_id="missing") == []


# ------------------------------------------------------------------------------------ steps


def test_steps(registry: Registry) -> None:
    registry.create_spec("s", "pooling", {})
    registry.create_run("r", "s", "incremental", {}, {}, None)
    for step in range(1, 8):
        registry.record_step("r", step, events=step * 256, loss=1.0 / step, metrics={"eps": 9.5})
    again = registry.record_step("r", 7, events=2000, loss=0.01, metrics={"eps": 1.0})
    _assert_recent_utc(again.recorded_at)

    steps = registry.list_steps("r")
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6, 7]
    assert (steps[0].events, steps[0].loss, steps[0].metrics) == (256, 1.0, {"eps": 9.5})
    assert steps[-1] == again  # recorded again: replaced
    assert [s.step for s in registry.list_steps("r", limit=3)] == [5, 6, 7]  # the last ones
    assert registry.list_steps("other") == []


# --------------------------------------------------------------------------------- versions


def test_publishing_versions(registry: Registry) -> None:
    registry.create_spec("s", "pooling", {})
    registry.create_spec("other", "pooling", {})
    registry.create_run("r", "s", "batch", {}, {0: 0}, {0: 10})
    assert registry.latest_version("s") is None

    first = registry.publish_version(
        "s", "r", "file:///a/1", DIGEST, {"hr@10": 0.2}, None, {0: 10, 2: 7}, 17
    )
    assert (first.spec_id, first.version, first.run_id) == ("s", 1, "r")
    assert first.trained_through == {0: 10, 2: 7}
    assert first.baseline_metrics is None
    _assert_recent_utc(first.created_at)
    second = registry.publish_version(
        "s", None, "file:///a/2", DIGEST, {"hr@10": 0.3}, {"hr@10": 0.2}, {0: 20}, 27
    )
    assert (second.version, second.baseline_metrics) == (2, {"hr@10": 0.2})
    assert _publish(registry, "other") == 1  # numbered per spec

    assert registry.latest_version("s") == second
    assert registry.get_version("s", 1) == first
    assert registry.get_version("s", 3) is None
    assert [v.version for v in registry.list_versions("s")] == [2, 1]
    assert [v.version for v in registry.list_versions("s", limit=1)] == [2]
    assert registry.get_spec("s").last_version == 2  # type: ignore[union-attr]

    with pytest.raises(UnknownSpec):
        _publish(registry, "missing")
    with pytest.raises(UnknownRun):
        _publish(registry, "s", run_id="missing")
    with pytest.raises(ValueError, match="sha256"):
        registry.publish_version("s", None, "file:///x", "not-hex", {}, None, {}, 0)
    assert registry.latest_version("s") == second  # failed publishes took no number


def test_concurrent_publishers_get_every_number_once(registry: Registry) -> None:
    registry.create_spec("s", "pooling", {})
    numbers = _in_threads(8, lambda _: [_publish(registry, "s") for _ in range(5)])
    assert sorted(n for batch in numbers for n in batch) == list(range(1, 41))
    for batch in numbers:
        assert batch == sorted(batch)  # each writer sees its own numbers increase
    assert [v.version for v in registry.list_versions("s")] == list(range(40, 0, -1))


def test_rejections(registry: Registry) -> None:
    registry.create_spec("s", "pooling", {})
    registry.create_run("r", "s", "incremental", {}, {}, None)
    first = registry.record_rejection(
        "s", "r", {"hr@10": 0.1}, {"hr@10": 0.3}, {0: 5, 1: 6}, 11, "hr@10 below baseline"
    )
    assert first.trained_through == {0: 5, 1: 6}
    _assert_recent_utc(first.created_at)
    second = registry.record_rejection("s", None, {"hr@10": 0.2}, None, {0: 9}, 14, "too few")
    assert [r.id for r in registry.list_rejections("s")] == [second.id, first.id]
    assert registry.list_rejections("s", limit=1) == [second]
    assert registry.latest_version("s") is None  # a rejection takes no version
    with pytest.raises(UnknownSpec):
        registry.record_rejection("missing", None, {}, None, {}, 0, "x")
    with pytest.raises(UnknownRun):
        registry.record_rejection("s", "missing", {}, None, {}, 0, "x")


# ------------------------------------------------------------------------------ deployments


def test_deployments_keep_their_history(registry: Registry) -> None:
    registry.create_spec("s", "pooling", {})
    for _ in range(2):
        _publish(registry, "s")
    assert registry.get_deployment("default") is None

    first = registry.set_deployment("default", "s", 1, None, 0.0, "first version")
    assert (first.stable_version, first.canary_version, first.canary_weight) == (1, None, 0.0)
    _assert_recent_utc(first.updated_at)
    canary = registry.set_deployment("default", "s", 1, 2, 0.1, "canary v2")
    assert registry.get_deployment("default") == canary
    promoted = registry.set_deployment("default", "s", 2, None, 0.0, "promote v2")
    registry.set_deployment("other", "s", 2, None, 0.0, "another name")

    history = registry.deployment_history("default")
    assert [h.reason for h in history] == ["promote v2", "canary v2", "first version"]
    assert (history[1].stable_version, history[1].canary_version) == (1, 2)
    assert history[1].canary_weight == pytest.approx(0.1)
    assert history[0].changed_at == promoted.updated_at
    assert registry.deployment_history("default", limit=1) == history[:1]

    with pytest.raises(UnknownVersion):
        registry.set_deployment("default", "s", 3, None, 0.0, "no such version")
    with pytest.raises(UnknownSpec):
        registry.set_deployment("default", "missing", None, None, 0.0, "no such spec")
    with pytest.raises(ValueError, match="canary_weight"):
        registry.set_deployment("default", "s", 1, 2, 1.5, "too much")
    assert registry.get_deployment("default") == promoted  # failed changes changed nothing
    assert len(registry.deployment_history("default")) == 3


def test_timestamps_are_stored_as_instants(registry: Registry) -> None:
    # Whatever the session time zone, what comes back is the UTC instant that went in.
    registry.create_spec("s", "pooling", {})
    if registry.engine.dialect.name == "postgresql":
        with registry.engine.begin() as connection:
            connection.execute(text("SET TIME ZONE 'America/New_York'"))
            stored = connection.execute(text("SELECT created_at FROM model_specs")).scalar_one()
        assert stored == registry.get_spec("s").created_at  # type: ignore[union-attr]
    _assert_recent_utc(registry.get_spec("s").created_at)  # type: ignore[union-attr]
