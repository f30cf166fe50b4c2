"""One training run: read the stream, learn off the event loop, judge, publish, checkpoint.

``batch`` reads a bounded offset range, holds out its newest share, trains (``epochs`` passes),
judges the candidate against the current version and publishes it or records the rejection.

``incremental`` follows the stream from its checkpoint (or the request's start): each fetch is
decoded and trained in the run's worker thread while aiokafka keeps fetching; every
``publish.every_events`` events or ``publish.every_s`` seconds the run judges its candidate on
the held-out sample, publishes it if it passes, writes a checkpoint, and only then commits the
consumer offsets. A restart resumes from the checkpoint's own positions, so every event below
them was trained exactly once and none above them is lost; the committed offsets follow the
checkpoints so lag tools see progress.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from streamrec_shared.artifacts import ArtifactError, DirectoryArtifactStore, StoredArtifact
from streamrec_shared.kafka import (
    KafkaUnavailableError,
    ResilientProducer,
    build_consumer,
    topic_partitions,
)
from streamrec_shared.kafka import dead_letter as park
from streamrec_shared.models.item_pooling import (
    ItemPoolingScorer,
    ItemPoolingWeights,
    load_weights,
    read_manifest,
)
from streamrec_shared.ranking import per_event_metrics, rank_metrics
from streamrec_shared.schemas.control import (
    BoundedStream,
    CandidateRejected,
    ControlMessageBase,
    FollowStream,
    ModelPublished,
    TrainingFailed,
    TrainingFinished,
    TrainingMode,
    TrainRequested,
)

from trainer.checkpoints import Checkpoints
from trainer.config import TrainerSettings
from trainer.gate import Verdict, judge, short_sample
from trainer.learner import Learner, Reading, decode_records
from trainer.metrics import TrainerMetrics
from trainer.model.item_pooling import Floats, load_training_state, save_training_state
from trainer.registry import Registry, RunRecord, RunStatus, VersionRecord

log = logging.getLogger(__name__)
T = TypeVar("T")
Record = tuple[int, int, bytes | None, bytes | None]  # partition, offset, key, value
# How a run began: from the latest version's weights and optimizer state, from its weights
# with fresh optimizer slots (a version without a usable training state), or from scratch.
WarmStart = Literal["weights+optimizer", "weights only", "cold"]


def register_run(registry: Registry, request: TrainRequested) -> RunRecord:
    """The registry's record of ``request`` (idempotent by run id: a repeat returns it)."""
    start, end = request.offset_bounds()
    return registry.create_run(
        request.run_id,
        request.spec_id,
        request.mode.value,
        request.model_dump(mode="json"),
        start,
        end,
    )


def reading_of(stream: BoundedStream | FollowStream) -> Reading:
    """What a run over ``stream`` reads of the events already in the topic: a range's offsets,
    or a follow from its named offsets, and in the other partitions from the beginning
    (``earliest``) or none (``latest``: it starts past every event there)."""
    if isinstance(stream, BoundedStream):
        return Reading({p: (r.start, r.end) for p, r in stream.partitions.items()})
    return Reading(
        {p: (offset, None) for p, offset in stream.offsets.items()},
        0 if stream.start == "earliest" else None,
    )


class RunStopped(Exception):
    """The run was asked to stop (or the service is shutting down)."""


@dataclass
class RunServices:
    """What every run shares, owned by the app's lifespan."""

    settings: TrainerSettings
    registry: Registry
    store: DirectoryArtifactStore
    checkpoints: Checkpoints
    producer: ResilientProducer
    metrics: TrainerMetrics

    @classmethod
    def build(
        cls,
        settings: TrainerSettings,
        registry: Registry,
        producer: ResilientProducer,
        metrics: TrainerMetrics,
    ) -> RunServices:
        store = DirectoryArtifactStore(settings.artifacts_dir)
        checkpoints = Checkpoints(store, settings.checkpoints_kept)
        return cls(settings, registry, store, checkpoints, producer, metrics)


@dataclass
class Baseline:
    version: int
    scorer: ItemPoolingScorer


@dataclass
class CycleResult:
    decision: str  # "published" | "rejected" | "deferred"
    reason: str
    metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None
    position: dict[int, int]
    events_trained: int
    item_count: int
    artifact: StoredArtifact | None
    scorer: ItemPoolingScorer | None  # None: deferred before any candidate was built
    seconds: float
    gate: dict[str, float | str | None] = field(default_factory=dict)
    checkpointed: bool = False  # the learner was checkpointed at ``position``


@dataclass
class Progress:
    """Live figures for the API (the registry keeps the durable ones)."""

    phase: str = "starting"
    events_observed: int = 0
    events_trained: int = 0
    steps: int = 0
    last_loss: float | None = None
    heldout: int = 0
    items: int = 0
    users: int = 0
    position: dict[int, int] = field(default_factory=dict)
    events_per_s: float = 0.0
    last_cycle: dict[str, Any] | None = None
    resumed_from_checkpoint: bool = False
    warm_start: WarmStart | None = None


class TrainingRun:
    def __init__(self, services: RunServices, request: TrainRequested) -> None:
        self.services = services
        self.request = request
        self.spec_id = request.spec_id
        self.run_id = request.run_id
        self.hp = request.spec.hyperparameters
        self.progress = Progress()
        self._stop = asyncio.Event()
        self._final_stop = False
        # TensorFlow steps in one thread, example building in another, so that they overlap.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"run-{self.run_id[:8]}")
        self._prep = ThreadPoolExecutor(1, thread_name_prefix=f"prep-{self.run_id[:8]}")
        self._learner: Learner | None = None
        self._baseline: Baseline | None = None
        self._random = random.Random(f"{self.run_id}:holdout")  # noqa: S311 - sampling
        self._dead: list[tuple[Record, str]] = []
        self._checkpointed_at = time.monotonic()  # the run's start counts as one
        self._training_states: deque[str] = deque()  # URIs of the states this run wrote
        self._rate_window: tuple[float, int] = (time.monotonic(), 0)

    @property
    def learner(self) -> Learner | None:
        """The run's learner once prepared (read its counters only: threads own it)."""
        return self._learner

    @property
    def group_id(self) -> str:
        return f"{self.services.settings.run_group_prefix}{self.spec_id}-{self.run_id}"

    def request_stop(self, final: bool) -> None:
        """``final``: the run ends as ``stopped``; otherwise (shutdown) it resumes on restart."""
        self._final_stop = self._final_stop or final
        self._stop.set()

    async def _in_worker(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _in_prep(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._prep, function, *args)

    async def _registry(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(function, *args, **kwargs)

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> RunStatus | None:
        """Run to the end; returns the final status, or ``None`` when interrupted by shutdown."""
        registry = self.services.registry
        try:
            await self._registry(registry.mark_run_running, self.run_id)
            if self.request.mode is TrainingMode.BATCH:
                await self._run_batch()
                status = RunStatus.SUCCEEDED
            else:
                await self._run_follow()
                status = RunStatus.STOPPED
        except RunStopped:
            if not self._final_stop:
                log.info("run %s interrupted; it resumes on restart", self.run_id)
                return None
            status = RunStatus.STOPPED
        except Exception as error:
            log.exception("run %s failed", self.run_id)
            await self._finish(RunStatus.FAILED, f"{type(error).__name__}: {error}")
            return RunStatus.FAILED
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._prep.shutdown(wait=False, cancel_futures=True)
        await self._finish(status, None)
        return status

    async def _finish(self, status: RunStatus, error: str | None) -> None:
        self.progress.phase = status.value
        await self._registry(self.services.registry.finish_run, self.run_id, status, error)
        message: ControlMessageBase
        if status is RunStatus.FAILED:
            message = TrainingFailed(
                run_id=self.run_id, spec_id=self.spec_id, error=(error or "")[:4000]
            )
        else:
            message = TrainingFinished(
                run_id=self.run_id,
                spec_id=self.spec_id,
                status="succeeded" if status is RunStatus.SUCCEEDED else "stopped",
                events_trained=self.progress.events_trained,
            )
        await self._announce(message, give_up_on_stop=False)

    async def _announce(self, message: ControlMessageBase, give_up_on_stop: bool = True) -> None:
        """Put a message on the control topic and wait for the broker's acknowledgement.

        Retries while Kafka is unavailable: a version is only announced once, and inference
        learns of it from this message.
        """
        topic = self.services.settings.topics.control
        for attempt in range(60):
            try:
                future = await self.services.producer.send(
                    topic, message.encode(), key=message.subject_key()
                )
                await future
                return
            except (KafkaUnavailableError, KafkaError, OSError):
                if give_up_on_stop and self._stop.is_set():
                    raise RunStopped() from None
                await asyncio.sleep(min(5.0, 0.2 * (attempt + 1)))
        log.error("could not announce %s for run %s", message.type, self.run_id)

    # --- preparing -----------------------------------------------------------------------

    def _prepare(self, resume: bool) -> None:
        """Learner from the run's checkpoint, else warm from the latest version, else fresh."""
        services = self.services
        max_seen = services.settings.max_seen_items
        latest = services.registry.latest_version(self.spec_id)
        checkpoint = services.checkpoints.latest(self.spec_id, self.run_id) if resume else None
        if checkpoint is not None:
            self._learner, meta = Learner.load(checkpoint, self.hp, max_seen)
            self.progress.resumed_from_checkpoint = True
            # How the run began (checkpoints from before this was recorded do not say).
            self.progress.warm_start = meta.get("warm_start")
        else:
            self._learner = Learner(self.hp, max_seen)
            self.progress.warm_start = "cold"
            if self.request.warm_start and latest is not None:
                self._warm_start(latest)
        self._refresh_baseline()

    def _warm_start(self, latest: VersionRecord) -> None:
        """Continue from ``latest``: its weights, and its optimizer state where it has one."""
        folder = self.services.store.open(latest.artifact_uri, latest.digest)
        weights = load_weights(folder)
        state = self._training_state(latest.version, read_manifest(folder), weights)
        # What the version's counts and held-out sample mean for this run depends on how much
        # of the version's events it reads again: the learner decides (``warm_start``).
        try:
            reread = self._require_learner().warm_start(
                weights, state, latest.trained_through, reading_of(self.request.stream)
            )
        except ValueError as error:
            log.warning("run %s starts cold: %s", self.run_id, error)
            self._learner = Learner(self.hp, self.services.settings.max_seen_items)
            return
        self.progress.warm_start = "weights only" if state is None else "weights+optimizer"
        if reread == "part" and self.hp.cooccurrence_weight > 0:
            log.info(
                "run %s reads part of v%d's events again: their item pairs are not counted"
                " again (offsets below %s)",
                self.run_id,
                latest.version,
                latest.trained_through,
            )

    def _training_state(
        self, version: int, manifest: dict[str, Any], weights: ItemPoolingWeights
    ) -> dict[str, Floats] | None:
        """The training state a version's manifest names, verified by its digest; ``None``
        (logged with the reason) where there is none to use."""
        reference = manifest.get("training_state")
        if reference is None:
            reason = "it names no training state (published before versions kept one)"
        else:
            try:
                folder = self.services.store.open(reference["uri"], reference["digest"])
                state = load_training_state(folder)
            except (ArtifactError, OSError) as error:
                reason = f"its training state cannot be used: {error}"
            else:
                if state["item_in"].shape == weights.item_in.shape:
                    return state
                reason = "its training state does not match its weights"
        log.warning(
            "run %s warm-starts from v%d with fresh optimizer slots: %s",
            self.run_id,
            version,
            reason,
        )
        return None

    def _refresh_baseline(self) -> None:
        """The version a candidate must not be worse than: the newest published one."""
        latest = self.services.registry.latest_version(self.spec_id)
        if latest is None or (self._baseline and self._baseline.version == latest.version):
            return
        folder = self.services.store.open(latest.artifact_uri, latest.digest)
        self._baseline = Baseline(latest.version, ItemPoolingScorer(load_weights(folder)))

    # --- the worker's share --------------------------------------------------------------

    def _observe(self, fetched: list[tuple[int, list[ConsumerRecord[bytes, bytes]]]]) -> None:
        """Prep thread: decode a fetch and build its examples (they train while the next fetch
        is read). Garbage is queued for the dead-letter topic; the learner's positions move
        past every record."""
        learner = self._require_learner()
        rate = self.request.validation.rate
        draw = self._random.random
        for partition, records in fetched:
            decoded = decode_records([record.value for record in records])
            for index, error in decoded.rejected:
                record = records[index]
                self._dead.append(((partition, record.offset, record.key, record.value), error))
            # One draw per interaction, in order.
            hold_out = [draw() < rate for _ in decoded.users]
            # Kept with held-out events too (see ``Learner.warm_start``).
            sources = [(partition, records[index].offset) for index in decoded.indices]
            learner.observe_many(
                decoded.users,
                decoded.items,
                decoded.weights,
                hold_out,
                {partition: records[-1].offset + 1},
                sources,
            )
        self._update_progress()

    def _train(self) -> None:
        """Training thread: every full mini-batch flushed so far."""
        self._require_learner().train_pending()
        self._update_progress()

    def _update_progress(self) -> None:
        learner = self._require_learner()
        progress = self.progress
        started, trained_then = self._rate_window
        now = time.monotonic()
        if now - started >= 1.0:
            progress.events_per_s = (learner.events_trained - trained_then) / (now - started)
            self._rate_window = (now, learner.events_trained)
        progress.events_observed = learner.events_observed
        progress.events_trained = learner.events_trained
        progress.steps = learner.model.steps
        progress.last_loss = learner.last_loss
        progress.heldout = len(learner.heldout)
        progress.items = len(learner.item_ids)
        progress.users = len(learner.users)
        progress.position = dict(learner.position)

    def _cycle(self, final_batch: bool) -> CycleResult:
        """Judge the candidate, store it if it passes, checkpoint (incremental runs, at most
        every ``checkpoint_every_s``)."""
        began = time.perf_counter()
        learner = self._require_learner()
        policy = self.request.validation
        self._refresh_baseline()
        if self._baseline is not None and not final_batch:
            short = self._short_sample()
            if short is not None:
                # Deferred whatever the metrics: no candidate to export and rank, and no flush
                # either (a flush trains a mini-batch of a few fresh events and a full share of
                # replay: done every cycle, it tilts learning towards the past).
                return self._deferred(learner, short, began)
        learner.train_pending(flush=True)
        weights = learner.candidate()
        scorer = ItemPoolingScorer(weights)
        above, ties = learner.rank(scorer, policy.max_events)
        metrics = rank_metrics(above, ties=ties)
        baseline = self._baseline
        if baseline is None:
            baseline_metrics, verdict = None, judge(policy, np.zeros(0), None, final_batch)
        else:
            # The same events, in the same order: the gate compares them pairwise.
            baseline_above, baseline_ties = learner.rank(baseline.scorer, policy.max_events)
            baseline_metrics = rank_metrics(baseline_above, ties=baseline_ties)
            verdict = judge(
                policy,
                per_event_metrics(above, ties=ties)[policy.metric],
                per_event_metrics(baseline_above, ties=baseline_ties)[policy.metric],
                final_batch,
            )
        decision, reason = verdict.decision, verdict.reason
        position = dict(learner.position)
        artifact = None
        if decision == "published":
            manifest = {
                "spec_id": self.spec_id,
                "run_id": self.run_id,
                "hyperparameters": self.hp.model_dump(),
                "trained_through": {str(p): o for p, o in position.items()},
                "events_trained": learner.events_trained,
                "metrics": metrics,
                "created_at": datetime.now(UTC).isoformat(),
            }
            artifact = self._store_version(weights, manifest)
        checkpointed = False
        if self.request.mode is TrainingMode.INCREMENTAL:
            if decision != "deferred":
                learner.release_heldout(keep=policy.min_events if policy.rolling_sample else 0)
            checkpointed = self._checkpoint_if_due()
        self._update_progress()
        return CycleResult(
            decision=decision,
            reason=reason,
            metrics=metrics,
            baseline_metrics=baseline_metrics,
            position=position,
            events_trained=learner.events_trained,
            item_count=len(weights.item_ids),
            artifact=artifact,
            scorer=scorer,
            seconds=time.perf_counter() - began,
            gate=verdict.record(),
            checkpointed=checkpointed,
        )

    def _short_sample(self) -> Verdict | None:
        """The deferral, while the held-out sample is smaller than the gate needs."""
        policy = self.request.validation
        # The gate ranks at most max_events of them.
        sample = min(len(self._require_learner().heldout), policy.max_events)
        return short_sample(policy, sample, final_batch=False)

    def _deferred(self, learner: Learner, verdict: Verdict, began: float) -> CycleResult:
        checkpointed = self._checkpoint_if_due()
        self._update_progress()
        return CycleResult(
            decision=verdict.decision,
            reason=verdict.reason,
            metrics={},
            baseline_metrics=None,
            position=dict(learner.position),
            events_trained=learner.events_trained,
            item_count=len(learner.item_ids),
            artifact=None,
            scorer=None,
            seconds=time.perf_counter() - began,
            gate=verdict.record(),
            checkpointed=checkpointed,
        )

    def _checkpoint_if_due(self) -> bool:
        due = time.monotonic() - self._checkpointed_at >= self.services.settings.checkpoint_every_s
        if due:
            self._save_checkpoint()
        return due

    def _store_version(
        self, weights: ItemPoolingWeights, manifest: dict[str, Any]
    ) -> StoredArtifact:
        """Store a version: its training state (so that a warm start continues with the
        optimizer state) first, then the serving artifact whose manifest names it by URI and
        digest. The state is an artifact of its own: serving never downloads it, and the
        serving digest still covers the reference to it."""
        store = self.services.store
        state = self._require_learner().training_state(len(weights.item_ids))
        training = store.write(
            f"training/{self.spec_id}", lambda folder: save_training_state(folder, state)
        )
        manifest = {**manifest, "training_state": {"uri": training.uri, "digest": training.digest}}
        artifact = store.write(
            f"models/{self.spec_id}", lambda folder: weights.save(folder, manifest)
        )
        # A warm start reads only the latest version's state: older ones this run wrote go.
        self._training_states.append(training.uri)
        while len(self._training_states) > self.services.settings.training_states_kept:
            store.delete(self._training_states.popleft())
        return artifact

    def _save_checkpoint(self) -> None:
        self._checkpointed_at = time.monotonic()
        learner = self._require_learner()
        extra = {"run_id": self.run_id, "warm_start": self.progress.warm_start}
        self.services.checkpoints.save(
            self.spec_id, self.run_id, lambda folder: learner.save(folder, extra)
        )

    def _require_learner(self) -> Learner:
        if self._learner is None:
            raise RuntimeError("the run has not prepared its learner")
        return self._learner

    # --- after a cycle, on the loop -----------------------------------------------------

    async def _record_cycle(self, result: CycleResult) -> None:
        registry = self.services.registry
        metrics = self.services.metrics
        metrics.cycle_seconds.labels(self.spec_id).observe(result.seconds)
        self.progress.last_cycle = {
            "decision": result.decision,
            "reason": result.reason,
            "metrics": result.metrics,
            "baseline_metrics": result.baseline_metrics,
            "at": datetime.now(UTC).isoformat(),
        }
        await self._registry(
            registry.record_step,
            self.run_id,
            self.progress.steps,
            result.events_trained,
            self.progress.last_loss or 0.0,
            {
                "decision": result.decision,
                "events_per_s": self.progress.events_per_s,
                "heldout": result.metrics,
                "gate": result.gate,
                "cycle_s": result.seconds,
                "warm_start": self.progress.warm_start,
            },
        )
        if result.decision == "published" and result.artifact is not None:
            version = await self._registry(
                registry.publish_version,
                self.spec_id,
                self.run_id,
                result.artifact.uri,
                result.artifact.digest,
                result.metrics,
                result.baseline_metrics,
                result.position,
                result.events_trained,
            )
            assert result.scorer is not None  # a published candidate was built and ranked
            self._baseline = Baseline(version.version, result.scorer)
            metrics.versions_published.labels(self.spec_id).inc()
            log.info(
                "run %s published %s v%d (%s)",
                self.run_id,
                self.spec_id,
                version.version,
                result.reason,
            )
            await self._announce(
                ModelPublished(
                    spec_id=self.spec_id,
                    version=version.version,
                    run_id=self.run_id,
                    family=self.request.spec.family,
                    artifact_uri=result.artifact.uri,
                    digest=result.artifact.digest,
                    trained_through=result.position,
                    events_trained=result.events_trained,
                    item_count=result.item_count,
                    metrics=result.metrics,
                    baseline_metrics=result.baseline_metrics,
                ),
                give_up_on_stop=False,
            )
        elif result.decision == "rejected":
            metrics.candidates_rejected.labels(self.spec_id).inc()
            await self._registry(
                registry.record_rejection,
                self.spec_id,
                self.run_id,
                result.metrics,
                result.baseline_metrics,
                result.position,
                result.events_trained,
                result.reason,
            )
            log.warning("run %s: candidate rejected: %s", self.run_id, result.reason)
            await self._announce(
                CandidateRejected(
                    spec_id=self.spec_id,
                    run_id=self.run_id,
                    reason=result.reason,
                    metrics=result.metrics,
                    baseline_metrics=result.baseline_metrics,
                ),
                give_up_on_stop=False,
            )
        await self._registry(
            registry.record_progress, self.run_id, result.position, result.events_trained
        )

    async def _park_dead_letters(self) -> None:
        dead, self._dead = self._dead, []
        settings = self.services.settings
        for (partition, offset, key, value), error in dead:
            await park(
                self.services.producer,
                settings.topics.events_dlq,
                (self.request.stream.topic, partition, offset),
                key,
                value,
                error,
            )
            self.services.metrics.dead_lettered.labels(self.request.stream.topic).inc()

    # --- consuming -----------------------------------------------------------------------

    async def _consumer(
        self, only: Collection[int] | None = None
    ) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
        """A consumer assigned (once: reassigning under a group trips aiokafka's coordinator)
        to the stream's partitions, or to those of ``only`` that exist."""
        settings = self.services.settings
        topic = self.request.stream.topic
        try:
            partitions = await topic_partitions(settings.kafka, topic)
        except KeyError:
            raise ValueError(f"topic {topic!r} does not exist") from None
        if only is not None:
            unknown = sorted(set(only) - set(partitions))
            if unknown:
                raise ValueError(f"partitions {unknown} do not exist in {topic!r}")
            partitions = sorted(only)
        consumer = build_consumer(
            settings.kafka,
            group_id=self.group_id,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await consumer.start()
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        return consumer, assigned

    async def _fetch(
        self, consumer: AIOKafkaConsumer, limit: int
    ) -> list[tuple[int, list[ConsumerRecord[bytes, bytes]]]]:
        batches = await consumer.getmany(timeout_ms=200, max_records=limit)
        return [(tp.partition, records) for tp, records in batches.items() if records]

    async def _run_follow(self) -> None:
        stream = self.request.stream
        if not isinstance(stream, FollowStream):
            raise TypeError("incremental runs follow a stream")
        await self._in_worker(self._prepare, True)
        learner = self._require_learner()
        consumer, assigned = await self._consumer()
        try:
            for tp in assigned:
                start = learner.position.get(tp.partition, stream.offsets.get(tp.partition))
                if start is not None:
                    consumer.seek(tp, start)
                elif stream.start == "earliest":
                    await consumer.seek_to_beginning(tp)
                else:
                    await consumer.seek_to_end(tp)
            self.progress.phase = "following"
            policy = self.request.publish
            limit = self.services.settings.fetch_max_records
            # Examples built but not trained yet, beyond which reading waits for training.
            backlog = 4 * max(limit, self.hp.batch_size)
            last_cycle, observed_then = time.monotonic(), learner.events_observed
            waiting_for_sample = False  # the last cycle deferred: too few held-out events
            training: asyncio.Future[None] | None = None
            reported = learner.events_trained
            while True:
                if self._stop.is_set():
                    if training is not None:
                        await training
                    await self._close_follow(consumer, assigned)
                    raise RunStopped()
                # Training runs in its thread throughout: it takes every full mini-batch as
                # soon as the prep thread has built it, while this loop reads the next fetch.
                fetched = await self._fetch(consumer, limit)
                if fetched:
                    await self._in_prep(self._observe, fetched)
                if training is not None and training.done():
                    training.result()
                    training = None
                if training is None and len(learner.pending):
                    training = asyncio.ensure_future(self._in_worker(self._train))
                while training is not None and not training.done():
                    if len(learner.pending) <= backlog:
                        break
                    await asyncio.sleep(0.005)
                self.services.metrics.events_trained.labels(self.spec_id).inc(
                    learner.events_trained - reported
                )
                reported = learner.events_trained
                if self._dead:
                    await self._park_dead_letters()
                new_events = learner.events_observed - observed_then
                due = new_events >= policy.every_events or (
                    new_events > 0 and time.monotonic() - last_cycle >= policy.every_s
                )
                # A deferred cycle comes again as soon as its sample suffices, not a full
                # interval later: judged cycles stay at least ``every_s`` apart, and where the
                # sample sets the pace (few events, many repeats) versions come sooner.
                due = due or (waiting_for_sample and self._short_sample() is None)
                if due:
                    if training is not None:
                        await training
                        training = None
                    result = await self._in_worker(self._cycle, False)
                    waiting_for_sample = result.decision == "deferred"
                    reported = learner.events_trained
                    await self._record_cycle(result)
                    if result.checkpointed:  # committed offsets never pass the checkpoint
                        await self._commit(consumer, assigned, result.position)
                    # A deferral (too few held-out events) counts as an attempt: the next one
                    # comes a full interval later, not at every fetch (each costs a registry
                    # write, and the held-out events keep accumulating meanwhile).
                    last_cycle, observed_then = time.monotonic(), learner.events_observed
        finally:
            await consumer.stop()

    async def _close_follow(
        self, consumer: AIOKafkaConsumer, assigned: list[TopicPartition]
    ) -> None:
        """On stop: one last checkpoint so that nothing observed is trained twice on restart."""
        learner = self._require_learner()
        if learner.events_observed == 0:
            return
        result = await self._in_worker(self._checkpoint_only)
        await self._commit(consumer, assigned, result)

    def _checkpoint_only(self) -> dict[int, int]:
        learner = self._require_learner()
        learner.train_pending(flush=True)
        self._save_checkpoint()
        return dict(learner.position)

    async def _commit(
        self, consumer: AIOKafkaConsumer, assigned: list[TopicPartition], position: dict[int, int]
    ) -> None:
        offsets = {
            tp: OffsetAndMetadata(position[tp.partition], "")
            for tp in assigned
            if tp.partition in position
        }
        if offsets:
            try:
                await consumer.commit(offsets)
            except Exception:  # the checkpoint is the source of truth; lag display can wait
                log.warning("run %s could not commit offsets", self.run_id, exc_info=True)

    async def _run_batch(self) -> None:
        stream = self.request.stream
        if not isinstance(stream, BoundedStream):
            raise TypeError("batch runs read a bounded range")
        await self._in_worker(self._prepare, False)
        consumer, wanted = await self._consumer(only=stream.partitions)
        records: list[Record] = []
        try:
            ends = await consumer.end_offsets(wanted)
            begins = await consumer.beginning_offsets(wanted)
            for tp in wanted:
                window = stream.partitions[tp.partition]
                if window.end > ends[tp] or window.start < begins[tp]:
                    raise ValueError(
                        f"partition {tp.partition}: range [{window.start}, {window.end}) is outside"
                        f" the stored [{begins[tp]}, {ends[tp]})"
                    )
            remaining = {
                tp: stream.partitions[tp.partition]
                for tp in wanted
                if stream.partitions[tp.partition].end > stream.partitions[tp.partition].start
            }
            for tp, window in remaining.items():
                consumer.seek(tp, window.start)
            self.progress.phase = "reading"
            while remaining:
                if self._stop.is_set():
                    raise RunStopped()
                batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=65_536)
                for tp, batch in batches.items():
                    end = remaining[tp].end if tp in remaining else 0
                    records.extend(
                        (r.partition, r.offset, r.key, r.value) for r in batch if r.offset < end
                    )
                    if batch and batch[-1].offset + 1 >= end:
                        remaining.pop(tp, None)
        finally:
            await consumer.stop()
        self.progress.phase = "training"
        result = await self._in_worker(self._train_batch, records)
        if self._dead:
            await self._park_dead_letters()
        await self._record_cycle(result)
        self.services.metrics.events_trained.labels(self.spec_id).inc(result.events_trained)

    def _train_batch(self, records: list[Record]) -> CycleResult:
        """Time-order the range, hold out its newest share, train, judge."""
        learner = self._require_learner()
        events: list[tuple[str, int, int, str, str, float]] = []
        for partition, offset, key, value in records:
            decoded = decode_records([value])
            if decoded.rejected:
                self._dead.append(((partition, offset, key, value), decoded.rejected[0][1]))
            if decoded.users:
                events.append(
                    (decoded.timestamps[0], partition, offset, decoded.users[0],
                     decoded.items[0], decoded.weights[0])
                )  # fmt: skip
            else:
                learner.skip(partition, offset)
        events.sort(key=lambda event: (event[0], event[1], event[2]))
        heldout_from = len(events) - int(len(events) * self.request.validation.rate)
        # Observed in chunks that end where a step is due: after events 0, 8192, 16384, ...
        bounds = [0, *range(1, len(events), 8192), len(events)]
        for begin, end in itertools.pairwise(bounds):
            chunk = events[begin:end]
            if not chunk:
                continue
            learner.observe_many(
                [event[3] for event in chunk],
                [event[4] for event in chunk],
                [event[5] for event in chunk],
                [begin + index >= heldout_from for index in range(len(chunk))],
                {event[1]: event[2] + 1 for event in chunk},
                [(event[1], event[2]) for event in chunk],
            )
            learner.train_pending()
        learner.train_pending(flush=True)
        if self.request.epochs > 1:
            learner.train_epochs(self.request.epochs - 1, seed=self.hp.seed)
        # The range is what the version covers, even where it ended in non-interactions.
        _, ends = self.request.offset_bounds()
        for partition, end in (ends or {}).items():
            learner.position[partition] = max(learner.position.get(partition, 0), end)
        return self._cycle(True)
