"""The model registry: specs, training runs and their steps, published versions, rejected
candidates and deployments, in SQLite (one file, the default) or PostgreSQL.

Every method is synchronous and one short transaction of its own, safe to call from several
threads at once (the trainer calls them through ``asyncio.to_thread``). Callers pass plain
values and get frozen records back; no ORM object leaves this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trainer.registry.errors import (
    InvalidTransition,
    RunConflict,
    SpecExists,
    UnknownRun,
    UnknownSpec,
    UnknownVersion,
)
from trainer.registry.records import (
    DeploymentChangeRecord,
    DeploymentRecord,
    RejectedRecord,
    RunRecord,
    SpecRecord,
    StepRecord,
    VersionRecord,
)
from trainer.registry.tables import (
    TERMINAL_RUN_STATUSES,
    Deployment,
    DeploymentChange,
    ModelSpec,
    ModelVersion,
    RejectedCandidate,
    RunMode,
    RunStatus,
    RunStep,
    TrainingRun,
    utcnow,
)

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
DATABASE_URL_ENV = "STREAMREC_TRAINER_DATABASE_URL"

# Execution option that marks a connection as one that writes (SQLite: BEGIN IMMEDIATE).
_WRITES = "streamrec_registry_writes"
# pg_advisory_xact_lock key that serialises concurrent `migrate()` calls on one database.
_MIGRATION_LOCK_KEY = 0x5EC_0001
_SQLITE_BUSY_TIMEOUT_S = 30.0
_DIGEST = re.compile(r"[0-9a-f]{64}")


def create_registry_engine(url: str) -> Engine:
    """An engine for the registry's database with the per-backend settings it relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    engine = create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_S},
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_begin): sqlite3's legacy mode starts
    # transactions only at the first INSERT/UPDATE, after the reads they depend on.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable with WAL except on power loss
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # A transaction that will write takes the write lock first (waiting up to the busy timeout).
    # A deferred one that read first could not upgrade once another writer committed
    # (SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out).
    writes = connection.get_execution_options().get(_WRITES, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def for_writes(engine: Engine) -> Engine:
    """The same engine (and pool), its transactions marked as writing: on SQLite they take the
    write lock at BEGIN."""
    return engine.execution_options(**{_WRITES: True})


def lock_for_migration(connection: Connection) -> None:
    """Serialise migrations of one database (PostgreSQL; SQLite's write lock already does)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})


def alembic_config() -> Config:
    """Alembic's configuration for the registry, built in code (no alembic.ini at runtime)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    return config


def _offsets(offsets: Mapping[int, int]) -> dict[str, Any]:
    """``{partition: offset}`` as its JSON object (string keys)."""
    return {str(int(partition)): int(offset) for partition, offset in offsets.items()}


class Registry:
    """``Registry("sqlite:///path/registry.db")`` or ``Registry("postgresql+psycopg://…")``.

    Call ``migrate()`` once before use (it is a no-op on an up-to-date database) and ``close()``
    at the end, or use it as a context manager.
    """

    def __init__(self, url: str) -> None:
        self._engine = create_registry_engine(url)
        self._writer = for_writes(self._engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    def migrate(self) -> None:
        """Bring the schema to the newest migration (alembic ``upgrade head``)."""
        config = alembic_config()
        with self._writer.begin() as connection:
            lock_for_migration(connection)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, writes: bool = False) -> Iterator[Session]:
        with Session(self._writer if writes else self._engine) as session, session.begin():
            yield session

    # ---------------------------------------------------------------------------- specs

    def create_spec(
        self, id: str, family: str, hyperparameters: Mapping[str, Any], description: str = ""
    ) -> SpecRecord:
        """A new spec; ``id`` is the caller's slug (validated by the caller)."""
        try:
            with self._transaction(writes=True) as session:
                if session.get(ModelSpec, id) is not None:
                    raise SpecExists(id)
                spec = ModelSpec(
                    id=id,
                    family=family,
                    hyperparameters=dict(hyperparameters),
                    description=description,
                    last_version=0,
                    created_at=utcnow(),
                )
                session.add(spec)
                session.flush()
                return SpecRecord.model_validate(spec)
        except IntegrityError as error:  # PostgreSQL: a concurrent create of the same id
            raise SpecExists(id) from error

    def get_spec(self, id: str) -> SpecRecord | None:
        with self._transaction() as session:
            spec = session.get(ModelSpec, id)
            return None if spec is None else SpecRecord.model_validate(spec)

    def list_specs(self) -> list[SpecRecord]:
        with self._transaction() as session:
            specs = session.scalars(select(ModelSpec).order_by(ModelSpec.id))
            return [SpecRecord.model_validate(spec) for spec in specs]

    # ----------------------------------------------------------------------------- runs

    def create_run(
        self,
        run_id: str,
        spec_id: str,
        mode: RunMode | str,
        request: Mapping[str, Any],
        start_offsets: Mapping[int, int],
        end_offsets: Mapping[int, int] | None,
    ) -> RunRecord:
        """A new run in status ``requested``.

        Idempotent: control messages can arrive twice, so an existing run with this id, spec
        and mode is returned as it is (whatever its status). Another spec or mode under the
        same id raises ``RunConflict``.
        """
        mode = RunMode(mode)
        try:
            with self._transaction(writes=True) as session:
                if (existing := session.get(TrainingRun, run_id)) is not None:
                    return _same_run(existing, spec_id, mode)
                if session.get(ModelSpec, spec_id) is None:
                    raise UnknownSpec(spec_id)
                now = utcnow()
                run = TrainingRun(
                    id=run_id,
                    spec_id=spec_id,
                    mode=mode.value,
                    status=RunStatus.REQUESTED.value,
                    request=dict(request),
                    start_offsets=_offsets(start_offsets),
                    end_offsets=None if end_offsets is None else _offsets(end_offsets),
                    trained_through=None,
                    events_trained=0,
                    error=None,
                    created_at=now,
                    updated_at=now,
                )
                session.add(run)
                session.flush()
                return RunRecord.model_validate(run)
        except IntegrityError:
            # PostgreSQL: the same message, delivered twice, was inserted by another thread.
            with self._transaction() as session:
                if (existing := session.get(TrainingRun, run_id)) is None:
                    raise
                return _same_run(existing, spec_id, mode)

    def mark_run_running(self, run_id: str) -> RunRecord:
        """``requested`` → ``running`` (``started_at`` set once); a running run stays running
        (resuming after a restart). A finished run raises ``InvalidTransition``."""
        with self._transaction(writes=True) as session:
            run = _locked_run(session, run_id)
            if run.status in TERMINAL_RUN_STATUSES:
                raise InvalidTransition(f"run {run_id} is {run.status}; it cannot run again")
            now = utcnow()
            run.status = RunStatus.RUNNING.value
            run.started_at = run.started_at or now
            run.updated_at = now
            session.flush()
            return RunRecord.model_validate(run)

    def record_progress(
        self, run_id: str, trained_through: Mapping[int, int], events_trained: int
    ) -> RunRecord:
        """How far the run has trained: per partition the next offset not yet trained on."""
        with self._transaction(writes=True) as session:
            run = _locked_run(session, run_id)
            run.trained_through = _offsets(trained_through)
            run.events_trained = events_trained
            run.updated_at = utcnow()
            session.flush()
            return RunRecord.model_validate(run)

    def finish_run(
        self, run_id: str, status: RunStatus | str, error: str | None = None
    ) -> RunRecord:
        """End the run as ``succeeded``, ``failed`` or ``stopped``.

        Finishing it again with the same status is a no-op (a stop delivered twice); with
        another status it raises ``InvalidTransition``.
        """
        status = RunStatus(status)
        if status not in TERMINAL_RUN_STATUSES:
            raise ValueError(f"{status} is not a final run status")
        with self._transaction(writes=True) as session:
            run = _locked_run(session, run_id)
            if run.status == status:
                return RunRecord.model_validate(run)
            if run.status in TERMINAL_RUN_STATUSES:
                raise InvalidTransition(f"run {run_id} is {run.status}; cannot become {status}")
            now = utcnow()
            run.status = status.value
            run.error = error
            run.finished_at = now
            run.updated_at = now
            session.flush()
            return RunRecord.model_validate(run)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._transaction() as session:
            run = session.get(TrainingRun, run_id)
            return None if run is None else RunRecord.model_validate(run)

    def list_runs(
        self,
        spec_id: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Newest first."""
        query = select(TrainingRun)
        if spec_id is not None:
            query = query.where(TrainingRun.spec_id == spec_id)
        if status is not None:
            query = query.where(TrainingRun.status == RunStatus(status).value)
        query = query.order_by(TrainingRun.created_at.desc(), TrainingRun.id.desc()).limit(limit)
        with self._transaction() as session:
            return [RunRecord.model_validate(run) for run in session.scalars(query)]

    def runs_in_status(self, statuses: Iterable[RunStatus | str]) -> list[RunRecord]:
        """Every run in one of ``statuses``, oldest first (resuming unfinished runs)."""
        wanted = sorted({RunStatus(status).value for status in statuses})
        query = (
            select(TrainingRun)
            .where(TrainingRun.status.in_(wanted))
            .order_by(TrainingRun.created_at, TrainingRun.id)
        )
        with self._transaction() as session:
            return [RunRecord.model_validate(run) for run in session.scalars(query)]

    # ---------------------------------------------------------------------------- steps

    def record_step(
        self, run_id: str, step: int, events: int, loss: float, metrics: Mapping[str, Any]
    ) -> StepRecord:
        """One step's metrics; recording a step number again replaces it (a resumed run
        repeats the steps after its last checkpoint)."""
        with self._transaction(writes=True) as session:
            if session.get(TrainingRun, run_id) is None:
                raise UnknownRun(run_id)
            row = session.get(RunStep, (run_id, step))
            if row is None:
                row = RunStep(run_id=run_id, step=step)
                session.add(row)
            row.recorded_at = utcnow()
            row.events = events
            row.loss = float(loss)
            row.metrics = dict(metrics)
            session.flush()
            return StepRecord.model_validate(row)

    def list_steps(self, run_id: str, limit: int = 1000) -> list[StepRecord]:
        """The last ``limit`` steps, in step order."""
        query = (
            select(RunStep)
            .where(RunStep.run_id == run_id)
            .order_by(RunStep.step.desc())
            .limit(limit)
        )
        with self._transaction() as session:
            return [StepRecord.model_validate(row) for row in session.scalars(query)][::-1]

    # ------------------------------------------------------------------------- versions

    def publish_version(
        self,
        spec_id: str,
        run_id: str | None,
        artifact_uri: str,
        digest: str,
        metrics: Mapping[str, Any],
        baseline_metrics: Mapping[str, Any] | None,
        trained_through: Mapping[int, int],
        events_trained: int,
    ) -> VersionRecord:
        """Record a stored artifact as the spec's next version (1, 2, … without gaps).

        The number comes from the spec row's ``last_version`` counter, bumped by an UPDATE in
        the transaction that inserts the version. The UPDATE locks the row: on PostgreSQL a
        concurrent publisher waits for our commit and then increments the committed value
        (READ COMMITTED re-reads the row it waited for); on SQLite the transaction holds the
        database's write lock from BEGIN IMMEDIATE. A rollback undoes the bump with the insert,
        so no number is lost, and none is ever taken twice, with no retry loop. The primary key
        (spec_id, version) backs this up.
        """
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"digest must be sha256 hex, got {digest!r}")
        with self._transaction(writes=True) as session:
            if run_id is not None and session.get(TrainingRun, run_id) is None:
                raise UnknownRun(run_id)
            session.execute(
                update(ModelSpec)
                .where(ModelSpec.id == spec_id)
                .values(last_version=ModelSpec.last_version + 1)
                .execution_options(synchronize_session=False)
            )
            version = session.scalar(select(ModelSpec.last_version).where(ModelSpec.id == spec_id))
            if version is None:
                raise UnknownSpec(spec_id)
            row = ModelVersion(
                spec_id=spec_id,
                version=version,
                run_id=run_id,
                artifact_uri=artifact_uri,
                digest=digest,
                metrics=dict(metrics),
                baseline_metrics=None if baseline_metrics is None else dict(baseline_metrics),
                trained_through=_offsets(trained_through),
                events_trained=events_trained,
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return VersionRecord.model_validate(row)

    def get_version(self, spec_id: str, version: int) -> VersionRecord | None:
        with self._transaction() as session:
            row = session.get(ModelVersion, (spec_id, version))
            return None if row is None else VersionRecord.model_validate(row)

    def latest_version(self, spec_id: str) -> VersionRecord | None:
        versions = self.list_versions(spec_id, limit=1)
        return versions[0] if versions else None

    def list_versions(self, spec_id: str, limit: int = 100) -> list[VersionRecord]:
        """Newest first."""
        query = (
            select(ModelVersion)
            .where(ModelVersion.spec_id == spec_id)
            .order_by(ModelVersion.version.desc())
            .limit(limit)
        )
        with self._transaction() as session:
            return [VersionRecord.model_validate(row) for row in session.scalars(query)]

    # ----------------------------------------------------------------------- rejections

    def record_rejection(
        self,
        spec_id: str,
        run_id: str | None,
        metrics: Mapping[str, Any],
        baseline_metrics: Mapping[str, Any] | None,
        trained_through: Mapping[int, int],
        events_trained: int,
        reason: str,
    ) -> RejectedRecord:
        """A candidate that was evaluated and not published; it takes no version number."""
        with self._transaction(writes=True) as session:
            if session.get(ModelSpec, spec_id) is None:
                raise UnknownSpec(spec_id)
            if run_id is not None and session.get(TrainingRun, run_id) is None:
                raise UnknownRun(run_id)
            row = RejectedCandidate(
                spec_id=spec_id,
                run_id=run_id,
                metrics=dict(metrics),
                baseline_metrics=None if baseline_metrics is None else dict(baseline_metrics),
                trained_through=_offsets(trained_through),
                events_trained=events_trained,
                reason=reason,
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return RejectedRecord.model_validate(row)

    def list_rejections(self, spec_id: str, limit: int = 100) -> list[RejectedRecord]:
        """Newest first."""
        query = (
            select(RejectedCandidate)
            .where(RejectedCandidate.spec_id == spec_id)
            .order_by(RejectedCandidate.id.desc())
            .limit(limit)
        )
        with self._transaction() as session:
            return [RejectedRecord.model_validate(row) for row in session.scalars(query)]

    # ---------------------------------------------------------------------- deployments

    def set_deployment(
        self,
        name: str,
        spec_id: str,
        stable_version: int | None,
        canary_version: int | None,
        canary_weight: float,
        reason: str,
    ) -> DeploymentRecord:
        """Create or replace deployment ``name`` and append the change to its history, in one
        transaction. Versions must be published versions of ``spec_id``."""
        if not 0.0 <= canary_weight <= 1.0:
            raise ValueError(f"canary_weight must be within [0, 1], got {canary_weight}")
        for attempt in range(2):
            try:
                return self._set_deployment(
                    name, spec_id, stable_version, canary_version, canary_weight, reason
                )
            except IntegrityError:
                # PostgreSQL: another writer created the same name first; now it exists.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _set_deployment(
        self,
        name: str,
        spec_id: str,
        stable_version: int | None,
        canary_version: int | None,
        canary_weight: float,
        reason: str,
    ) -> DeploymentRecord:
        with self._transaction(writes=True) as session:
            if session.get(ModelSpec, spec_id) is None:
                raise UnknownSpec(spec_id)
            for version in (stable_version, canary_version):
                if version is not None and session.get(ModelVersion, (spec_id, version)) is None:
                    raise UnknownVersion(f"{spec_id} has no version {version}")
            now = utcnow()
            row = session.get(Deployment, name, with_for_update=True)
            if row is None:
                row = Deployment(name=name)
                session.add(row)
            row.spec_id = spec_id
            row.stable_version = stable_version
            row.canary_version = canary_version
            row.canary_weight = float(canary_weight)
            row.updated_at = now
            session.add(
                DeploymentChange(
                    name=name,
                    spec_id=spec_id,
                    stable_version=stable_version,
                    canary_version=canary_version,
                    canary_weight=float(canary_weight),
                    reason=reason,
                    changed_at=now,
                )
            )
            session.flush()
            return DeploymentRecord.model_validate(row)

    def get_deployment(self, name: str) -> DeploymentRecord | None:
        with self._transaction() as session:
            row = session.get(Deployment, name)
            return None if row is None else DeploymentRecord.model_validate(row)

    def deployment_history(self, name: str, limit: int = 100) -> list[DeploymentChangeRecord]:
        """Newest first."""
        query = (
            select(DeploymentChange)
            .where(DeploymentChange.name == name)
            .order_by(DeploymentChange.id.desc())
            .limit(limit)
        )
        with self._transaction() as session:
            return [DeploymentChangeRecord.model_validate(row) for row in session.scalars(query)]


def _locked_run(session: Session, run_id: str) -> TrainingRun:
    # FOR UPDATE on PostgreSQL (read-modify-write without lost updates); SQLite holds the write
    # lock already and SQLAlchemy leaves the clause out there.
    run = session.get(TrainingRun, run_id, with_for_update=True)
    if run is None:
        raise UnknownRun(run_id)
    return run


def _same_run(existing: TrainingRun, spec_id: str, mode: RunMode) -> RunRecord:
    if existing.spec_id != spec_id or existing.mode != mode.value:
        raise RunConflict(
            f"run {existing.id} exists for {existing.spec_id}/{existing.mode}, "
            f"not {spec_id}/{mode.value}"
        )
    return RunRecord.model_validate(existing)
