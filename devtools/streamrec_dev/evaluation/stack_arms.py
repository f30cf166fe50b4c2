"""Arms 1–6 of the evaluation through the real stack: HTTP → ingest → Kafka → trainer and feature
updater → inference → HTTP, scored by the same prequential protocol as the in-process peers.

One stream, many arms. The arms replay identical events and differ only in what serves them, so
they share the write path (one uvicorn or Python process per service, as in a pod, on one Kafka
and one Redis):

- one ingest and one ``events`` topic: the replay posts each interaction once;
- two feature updaters on ``events``, each with its own consumer group and Redis key prefix:
  *fresh* keeps running; *frozen* is stopped once it has applied the history, so that users'
  recent items and the popularity ranking stay as the history left them (what a static
  deployment without a feature pipeline serves);
- one trainer per trainer group, with its own control topic (a trainer acts on every
  ``train_requested`` of its topic, so groups never share one), registry and artifact folder,
  all reading the shared ``events``: ``product`` trains the batch version on the history (v1)
  and then, when arm 5 is run, follows the stream; ``periodic-retrain`` retrains from scratch;
- one inference process per arm: the Redis prefix of its features, its group's control topic
  and registry, the spec it serves (the popularity arms serve one that never gets a model, so
  every answer is inference's popularity fallback) and, for the frozen arms, version 1 pinned:
  the very version arm 5 starts from, so that arms 4 and 5 differ only by the follow run.

The replay (``HttpFeed``) posts the history, then for each evaluated interaction waits once for
the fresh updater to have applied the user's last event, asks every arm's inference at once, and
posts the event; ``evaluate_shared`` scores each arm on its own answers.

| arm | trainer group | model | features while evaluated |
|---|---|---|---|
| ``popularity-history`` | ``product`` | none (popularity fallback) | frozen |
| ``popularity-online`` | ``product`` | none (popularity fallback) | fresh |
| ``frozen`` | ``product`` | one batch run on the history: v1, pinned | frozen |
| ``frozen-fresh-features`` | ``product`` | the same v1, pinned | fresh |
| ``incremental`` (the product) | ``product`` | v1, then a follow run warm from it | fresh |
| ``periodic-retrain`` | ``periodic-retrain`` | its own v1, then a full retrain every 5 % | fresh |

The follow run of ``incremental`` starts at the beginning of ``events`` warm from v1, so that it
rebuilds users' recent items and its replay sample from the history (a published version carries
weights, not user state); the replay waits until it has caught up with the history before
evaluating. ``periodic-retrain`` requests a batch run from scratch over everything at each
boundary and keeps replaying while it trains (a retrain still running at the next boundary makes
that boundary skip, and says so).

CPU: each result's ``cpu_s`` holds the processes used by that arm alone: its inference, and for
the arms whose trainer keeps learning (5 and 6) that trainer (arm 5's also trained the batch
version the frozen arms serve); ``shared_cpu_s``, the same in every result, the others.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from streamrec_shared.kafka import ensure_topics
from streamrec_shared.schemas.models import ItemPoolingHyperparameters
from streamrec_shared.settings import KafkaSettings, TopicSettings

from streamrec_dev.evaluation.data import Dataset
from streamrec_dev.evaluation.protocol import (
    EvaluationResult,
    ProtocolConfig,
    evaluate_shared,
    split_point,
)
from streamrec_dev.evaluation.replay import (
    AppliedPositions,
    HistoryPosted,
    HttpFeed,
    HttpRanker,
    ReplayError,
    await_positions,
)
from streamrec_dev.servers import (
    KafkaServer,
    ManagedProcess,
    ModuleServer,
    RedisServer,
    ServiceServer,
    free_port,
    stop_all,
)

# The settings the in-process evaluation found best (README, evaluation section, with each
# change's figures): tied embeddings, small batches, half of each step replayed, each example's
# history out of its softmax. The mask reaches the newest 300 items while the model pools only
# the newest 50: serving excludes everything a user touched, so a heavy rater's older items
# should not be negatives either, but pooling them costs CPU and adds nothing. A learning rate
# of 0.7 and the item-to-item term at weight 6 (the product's default is 4) suit a drifting
# stream and cost ML-100K nothing. ``benchmarks/model_arms.py`` uses the same dictionary, so the
# in-process and through-the-stack figures are of one model; the stack's inference keeps as
# many recent items as the model pools.
EVALUATION_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 0.7,
    "cooccurrence_weight": 6.0,
    "batch_size": 128,
    "replay_fraction": 0.5,
    "tie_embeddings": True,
    "mask_history": True,
    "history_length": 50,
    "mask_length": 300,
}
EVALUATION_SPEC = "evaluation"
# What the popularity arms' inference serves: no run ever trains it, so every answer comes from
# inference's popularity fallback.
POPULARITY_SPEC = "popularity-only"
ENDED = frozenset({"succeeded", "failed", "stopped"})  # a run's final statuses


@dataclass(frozen=True)
class StackArm:
    name: str
    summary: str
    trains: bool = False  # a batch run on the history before the evaluation
    fresh_features: bool = False  # reads the features of the updater that keeps running
    follows: bool = False  # a follow run (incremental training and publishing) after the batch
    retrain_windows: int = 0  # full retrains at this many evenly spaced points (0: none)

    @property
    def group(self) -> str:
        """The trainer group. Arms 1–5 share one: the frozen arms pin the batch version that
        arm 5's follow run starts from (one batch run fewer: 83 of the ML-100K run's trainer
        CPU s in session 17), the popularity arms need a trainer that never trains their spec.
        Full retrains publish versions of their own, so arm 6 has its own trainer."""
        return "periodic-retrain" if self.retrain_windows else "product"

    @property
    def learns(self) -> bool:
        """Its trainer keeps training after the batch version (its CPU is then the arm's)."""
        return self.follows or self.retrain_windows > 0

    @property
    def spec_id(self) -> str:
        return EVALUATION_SPEC if self.trains else POPULARITY_SPEC

    @property
    def pinned_version(self) -> int | None:
        """The frozen arms serve the batch version and nothing else."""
        return 1 if self.trains and not self.learns else None


STACK_ARMS: dict[str, StackArm] = {
    arm.name: arm
    for arm in (
        StackArm("popularity-history", "1. popularity from the history only"),
        StackArm("popularity-online", "2. popularity updated online", fresh_features=True),
        StackArm("frozen", "3. model trained on the history, frozen", trains=True),
        StackArm(
            "frozen-fresh-features",
            "4. frozen model, fresh Redis features",
            trains=True,
            fresh_features=True,
        ),
        StackArm(
            "incremental",
            "5. the product: fresh features + incremental training + publishing",
            trains=True,
            fresh_features=True,
            follows=True,
        ),
        StackArm(
            "periodic-retrain",
            "6. full retraining every 5 % of the stream",
            trains=True,
            fresh_features=True,
            retrain_windows=20,
        ),
    )
}


@dataclass(frozen=True)
class StackEvaluationSettings:
    hyperparameters: dict[str, Any] = field(
        default_factory=lambda: dict(EVALUATION_HYPERPARAMETERS)
    )
    history_epochs: int = 10  # passes of the batch run over the history (as in process)
    retrain_epochs: int = 10  # passes of each full retrain of ``periodic-retrain``
    publish_every_events: int = 1000  # ``incremental``'s publish cadence (as in process) ...
    # ... or this often, whichever comes first. With ``gate_rate`` 0.3 (synthetic, arm 5,
    # one run each): every 2 s 34 versions, HR@10 0.419; every 1 s 61 versions, 0.468.
    # ML-100K: 289 versions, 0.227 (against 133 and 0.226), trainer CPU unchanged (123 s).
    publish_every_s: float = 1.0
    # Batch runs hold out the newest share of their range for the gate: keep it small, the
    # newest events are the most useful ones to learn.
    batch_holdout: float = 0.01
    # Held-out events a follow run's gated publish needs; None: the product's own default
    # (``ValidationPolicy.min_events``).
    gate_min_events: int | None = None
    # Share of events a follow run holds out for its gate; None: the product's default
    # (``ValidationPolicy.rate``, 0.1). Where the sample sets the pace (the gate needs 30
    # scorable events; 64 % of synthetic events are repeats), 0.3 brings versions sooner:
    # synthetic arm 5 at every 2 s, 26 versions and HR@10 0.399/0.409 at 0.1, 34 and 0.419 at
    # 0.3. A held-out event is trained once the cycle that judged it is over.
    gate_rate: float | None = 0.3
    rate: float | None = None  # evaluated events/s (None: as fast as the stack answers)
    # The trainers' scheduling niceness: the serving path (ingest, the feature updater, the
    # inference services, Kafka, Redis) runs first and the learning trainers take the CPU it
    # leaves, as in a deployment where training does not share the serving pods' CPUs. On two
    # shared cores, at 0 a trainer in the middle of a step delays every hop of the replay's
    # chain. Session 20, ML-100K's first 40,000 events, all six arms, one run each: the
    # evaluated part 314 s at 0, 275 s at 10; arm 5 HR@10 0.217 / 0.215, 236 / 212 versions;
    # arm 6 0.211 / 0.211, 5 retrains each.
    trainer_niceness: int = 10
    ready_timeout_s: float = 900.0


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class GroupLog:
    """What a trainer group was asked to do, for the report of the arms it trains."""

    retrains_requested: int = 0
    retrains_skipped: int = 0  # boundaries reached while the previous retrain still ran
    history_batch_s: float = 0.0
    catch_up_s: float = 0.0
    runs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TrainerGroup:
    """One trainer (own control topic, registry and artifact folder) on the shared ``events``,
    and what the evaluation asks of it: the batch run on the history, then a follow run or
    periodic full retrains, as its arms say."""

    def __init__(
        self,
        name: str,
        arms: Sequence[StackArm],
        home: Path,
        env: dict[str, str],
        topics: TopicSettings,
        settings: StackEvaluationSettings,
        evaluated: int,
    ) -> None:
        self.name = name
        self.arms = list(arms)
        self.home = home
        self.topics = topics
        self.settings = settings
        self.trains = any(arm.trains for arm in arms)
        self.follows = any(arm.follows for arm in arms)
        windows = max(arm.retrain_windows for arm in arms)
        self.retrain_every = evaluated // windows if windows else 0
        self.retrain_run: str | None = None
        self.log = GroupLog()
        self.server = ServiceServer(
            name=f"trainer-{name}",
            home=home,
            port=free_port(),
            app_factory="trainer.main:create_app",
            niceness=settings.trainer_niceness,
            env={
                **env,
                **topics.environment(),
                "STREAMREC_TRAINER_DATABASE_URL": f"sqlite:///{home / 'registry.db'}",
                "STREAMREC_TRAINER_ARTIFACTS_DIR": str(self.artifacts_dir),
                "STREAMREC_TRAINER_CONTROL_GROUP": f"trainer-{name}-{uuid.uuid4().hex[:8]}",
            },
        )
        self.http = httpx.Client(base_url=self.server.url, timeout=30)

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def close(self) -> None:
        self.http.close()

    # --- after the history -----------------------------------------------------------------

    def request_history_batch(self) -> str:
        self._create_spec()
        run_id = self._request_batch(self.settings.history_epochs)
        self.log.runs.append(run_id)
        return run_id

    def request_follow(self) -> str:
        body = {
            "mode": "incremental",
            "warm_start": True,
            "stream": {"kind": "follow", "topic": self.topics.events, "start": "earliest"},
            "validation": {
                key: value
                for key, value in (
                    ("min_events", self.settings.gate_min_events),
                    ("rate", self.settings.gate_rate),
                )
                if value is not None
            },
            "publish": {
                "every_events": self.settings.publish_every_events,
                "every_s": self.settings.publish_every_s,
            },
        }
        run_id = self._request(body)
        self.log.runs.append(run_id)
        return run_id

    def _create_spec(self) -> None:
        body = {
            "id": EVALUATION_SPEC,
            "description": f"evaluation, trainer group {self.name}",
            "spec": {"family": "item_pooling", "hyperparameters": self.settings.hyperparameters},
        }
        response = self.http.post("/v1/specs", json=body)
        if response.status_code not in (201, 409):
            raise ReplayError(f"creating the spec: {response.status_code} {response.text}")

    def _request_batch(self, epochs: int) -> str:
        body = {
            "mode": "batch",
            "epochs": epochs,
            "warm_start": False,  # a full retrain, from scratch
            "validation": {"rate": self.settings.batch_holdout, "min_events": 1},
        }
        return self._request(body)

    def _request(self, body: dict[str, Any]) -> str:
        response = self.http.post(f"/v1/specs/{EVALUATION_SPEC}/runs", json=body)
        if response.status_code != 202:
            raise ReplayError(f"requesting training: {response.status_code} {response.text}")
        return str(response.json()["run_id"])

    def latest_version(self, spec_id: str = EVALUATION_SPEC) -> int:
        response = self.http.get(f"/v1/specs/{spec_id}/versions/latest")
        return int(response.json()["version"]) if response.status_code == 200 else 0

    def rejections(self, spec_id: str) -> int:
        response = self.http.get(f"/v1/specs/{spec_id}/rejections")
        return len(response.json()) if response.status_code == 200 else 0

    def wait_version(self, at_least: int, run_id: str, deadline: float) -> int:
        while time.monotonic() < deadline:
            version = self.latest_version()
            if version >= at_least:
                return version
            answer = self.run(run_id)
            if answer is not None and answer["run"]["status"] in ENDED:
                raise ReplayError(f"{self.name}: run {run_id} ended: {answer['run']}")
            time.sleep(0.5)
        raise ReplayError(f"{self.name}: no model version {at_least} in time")

    def wait_caught_up(self, run_id: str, end_offsets: dict[int, int], deadline: float) -> None:
        """Until the follow run's position is past every offset of the history."""
        while time.monotonic() < deadline:
            answer = self.run(run_id)
            if answer is not None:
                if answer["run"]["status"] in ENDED:
                    raise ReplayError(f"{self.name}: run {run_id} ended: {answer['run']}")
                live = answer.get("live") or {}
                position = {int(p): int(o) for p, o in (live.get("position") or {}).items()}
                if all(position.get(p, 0) >= end for p, end in end_offsets.items()):
                    return
            time.sleep(0.5)
        raise ReplayError(f"{self.name}: the follow run did not catch up in time")

    def run(self, run_id: str) -> dict[str, Any] | None:
        """The run as the trainer reports it; ``None`` until its control loop registered it."""
        response = self.http.get(f"/v1/runs/{run_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    # --- after each evaluated event ---------------------------------------------------------

    def observed(self, count: int) -> None:
        if not self.retrain_every or count % self.retrain_every:
            return
        if self.retrain_run is not None:
            answer = self.run(self.retrain_run)
            if answer is None or answer["run"]["status"] not in ENDED:
                self.log.retrains_skipped += 1
                return
        self.retrain_run = self._request_batch(self.settings.retrain_epochs)
        self.log.runs.append(self.retrain_run)
        self.log.retrains_requested += 1


class ArmInference:
    """One arm's inference process: the features, registry and spec (or version) it serves."""

    def __init__(
        self, arm: StackArm, group: TrainerGroup, home: Path, env: dict[str, str], prefix: str
    ) -> None:
        self.arm = arm
        self.group = group
        pinned = {"STREAMREC_INFERENCE_MODEL_VERSION": str(arm.pinned_version)}
        self.server = ServiceServer(
            name=f"inference-{arm.name}",
            home=home,
            port=free_port(),
            app_factory="inference.main:create_app",
            env={
                **env,
                **group.topics.environment(),
                "STREAMREC_REDIS_KEY_PREFIX": prefix,
                "STREAMREC_INFERENCE_TRAINER_URL": group.server.url,
                "STREAMREC_INFERENCE_ARTIFACTS_DIR": str(group.artifacts_dir),
                "STREAMREC_INFERENCE_ARTIFACT_CACHE_DIR": str(home / f"model-cache-{arm.name}"),
                "STREAMREC_INFERENCE_SPEC_ID": arm.spec_id,
                "STREAMREC_INFERENCE_RUN_FEATURE_UPDATER": "false",
                **(pinned if arm.pinned_version else {}),
            },
        )
        self.ranker = HttpRanker(self.server.url)

    def wait_served(self, version: int, deadline: float) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            while time.monotonic() < deadline:
                served = client.get("/v1/model").json().get("version")
                if served is not None and served >= version:
                    return
                time.sleep(0.2)
        raise ReplayError(f"{self.arm.name}: inference did not serve version {version} in time")


class SharedStack:
    """Every service of the run on the shared Kafka and Redis, and the hooks that drive it: after
    the history (``ready``) and after each evaluated event (``observed``)."""

    def __init__(
        self,
        arms: Sequence[StackArm],
        home: Path,
        kafka: KafkaServer,
        redis: RedisServer,
        settings: StackEvaluationSettings,
        evaluated: int,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.run_tag = uuid.uuid4().hex[:8]
        self.topics = TopicSettings(default_partitions=1).isolated(f"eval-{self.run_tag}")
        env = {
            "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "STREAMREC_REDIS_URL": redis.url,
            "STREAMREC_LOG_FORMAT": "text",
            "STREAMREC_LOG_LEVEL": "WARNING",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            # Inference and the feature updaters keep as many recent items as the model pools.
            "STREAMREC_INFERENCE_RECENT_ITEMS": str(
                ItemPoolingHyperparameters(**settings.hyperparameters).history_length
            ),
        }
        shared_env = {**env, **self.topics.environment()}
        self.ingest = ServiceServer(
            name="ingest",
            home=home,
            port=free_port(),
            app_factory="ingest.main:create_app",
            env={
                **shared_env,
                "STREAMREC_REDIS_KEY_PREFIX": f"eval:{self.run_tag}:ingest:",
                # The replay posts one event at a time and waits for each: there is nothing to
                # batch with, and the producer's linger (2 ms) cost ~3.5 ms per POST here.
                "STREAMREC_KAFKA_LINGER_MS": "0",
            },
        )
        self.redis_url = redis.url
        fresh_prefix = f"eval:{self.run_tag}:fresh:"
        frozen_prefix = f"eval:{self.run_tag}:frozen:"
        self.fresh_features = (
            self._updater("features-fresh", home, shared_env, fresh_prefix)
            if any(arm.fresh_features for arm in arms)
            else None
        )
        self.frozen_features = (
            self._updater("features-frozen", home, shared_env, frozen_prefix)
            if not all(arm.fresh_features for arm in arms)
            else None
        )
        self.frozen_features_cpu_s = 0.0  # measured when it stops, before the evaluation
        self.groups: dict[str, TrainerGroup] = {}
        for name in dict.fromkeys(arm.group for arm in arms):
            # Each group's own topics (control above all), reading the shared events.
            topics = self.topics.isolated(name).model_copy(update={"events": self.topics.events})
            members = [arm for arm in arms if arm.group == name]
            self.groups[name] = TrainerGroup(
                name, members, home / name, env, topics, settings, evaluated
            )
        self.inference = [
            ArmInference(
                arm,
                self.groups[arm.group],
                home,
                env,
                fresh_prefix if arm.fresh_features else frozen_prefix,
            )
            for arm in arms
        ]

    @staticmethod
    def _updater(name: str, home: Path, env: dict[str, str], prefix: str) -> ModuleServer:
        port = free_port()
        return ModuleServer(
            name=name,
            home=home,
            port=port,
            module="inference.updater",
            args=("--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
            env={
                **env,
                "STREAMREC_REDIS_KEY_PREFIX": prefix,
                "STREAMREC_INFERENCE_FEATURES_GROUP": f"{name}-{uuid.uuid4().hex[:8]}",
            },
        )

    def servers(self) -> list[ManagedProcess]:
        updaters = [u for u in (self.fresh_features, self.frozen_features) if u is not None]
        return [
            self.ingest,
            *updaters,
            *(group.server for group in self.groups.values()),
            *(arm.server for arm in self.inference),
        ]

    def start(self) -> None:
        kafka = KafkaSettings(bootstrap_servers=self.kafka.bootstrap)
        for topics in (self.topics, *(group.topics for group in self.groups.values())):
            asyncio.run(ensure_topics(kafka, topics))
        with ThreadPoolExecutor(len(self.servers())) as pool:
            # Started at once: each is mostly importing (TensorFlow for the trainers).
            list(pool.map(lambda server: server.start(timeout=180), self.servers()))

    def stop(self) -> None:
        for group in self.groups.values():
            group.close()
        for arm in self.inference:
            arm.ranker.close()
        stop_all(self.servers())

    # --- after the history ---------------------------------------------------------------

    def ready(self, posted: HistoryPosted) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        if self.frozen_features is not None:
            self._wait_features_applied(self.frozen_features, posted.end_offsets, deadline)
            # From here on the frozen features stay as the history left them.
            pid = self.frozen_features.pid()
            self.frozen_features_cpu_s = process_cpu_seconds(pid) if pid is not None else 0.0
            self.frozen_features.stop()
        started = time.perf_counter()
        # The batch runs train at once, each in its own trainer.
        batches = [
            (group, group.request_history_batch()) for group in self.groups.values() if group.trains
        ]
        for group, run_id in batches:
            version = group.wait_version(1, run_id, deadline)
            self._wait_served(group, version, deadline)
            group.log.history_batch_s = time.perf_counter() - started
        for group in self.groups.values():
            if group.follows:
                started = time.perf_counter()
                run_id = group.request_follow()
                group.wait_caught_up(run_id, posted.end_offsets, deadline)
                self._wait_served(group, group.latest_version(), deadline)
                group.log.catch_up_s = time.perf_counter() - started

    def _wait_served(self, group: TrainerGroup, version: int, deadline: float) -> None:
        for arm in self.inference:
            if arm.group is group and arm.arm.trains:
                arm.wait_served(arm.arm.pinned_version or version, deadline)

    def applied_positions(self, updater: ModuleServer) -> AppliedPositions:
        """Where ``updater`` has got to in the shared events (its positions in Redis)."""
        prefix = updater.env["STREAMREC_REDIS_KEY_PREFIX"]
        return AppliedPositions(self.redis_url, prefix, self.topics.events)

    def _wait_features_applied(
        self, updater: ModuleServer, end_offsets: Mapping[int, int], deadline: float
    ) -> None:
        """Until the feature updater has applied every history event."""
        positions = self.applied_positions(updater)
        try:
            applied = await_positions(positions, end_offsets, deadline - time.monotonic(), 0.2)
        finally:
            positions.close()
        if not applied:
            raise ReplayError(f"{updater.name} did not apply the history in time")

    # --- after each evaluated event ---------------------------------------------------------

    def observed(self, count: int) -> None:
        for group in self.groups.values():
            group.observed(count)

    # --- the report -----------------------------------------------------------------------

    def cpu_seconds(self) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """CPU time (user + system) each process has used: per arm, those it uses alone;
        then the shared ones."""

        def used(server: ManagedProcess) -> float:
            pid = server.pid()
            return process_cpu_seconds(pid) if pid is not None else 0.0

        shared = {"ingest": used(self.ingest)}
        if self.fresh_features is not None:
            shared["features-fresh"] = used(self.fresh_features)
        if self.frozen_features is not None:
            shared["features-frozen"] = self.frozen_features_cpu_s
        own: dict[str, dict[str, float]] = {}
        for arm in self.inference:
            own[arm.arm.name] = {"inference": used(arm.server)}
            if arm.arm.learns:  # the batch version is a small part of what its trainer did
                own[arm.arm.name]["trainer"] = used(arm.group.server)
        for group in self.groups.values():
            if not any(arm.learns for arm in group.arms):
                shared[group.server.name] = used(group.server)
        return own, shared

    def report(self, arm: ArmInference) -> dict[str, Any]:
        """What the stack did for ``arm`` (its ``extra`` next to the replay's figures)."""
        group, spec, pinned = arm.group, arm.arm.spec_id, arm.arm.pinned_version
        log = group.log if arm.arm.trains else GroupLog()
        published, rejections = pinned, 0  # a frozen arm: its version, not what arm 5 published
        if pinned is None:
            published, rejections = group.latest_version(spec), group.rejections(spec)
        else:
            log = GroupLog(history_batch_s=log.history_batch_s, runs=log.runs[:1])
        return {
            "arm_summary": arm.arm.summary,
            "trainer_group": group.name,
            "features": "fresh" if arm.arm.fresh_features else "frozen",
            "versions_published": published,
            "rejections": rejections,
            "trainer_niceness": self.settings.trainer_niceness,
            **log.as_dict(),
        }


@contextmanager
def shared_servers(home: Path) -> Iterator[tuple[KafkaServer, RedisServer]]:
    kafka = KafkaServer(
        name="kafka", home=home / "kafka", port=free_port(), controller_port=free_port()
    )
    redis = RedisServer(name="redis", home=home / "redis", port=free_port())
    try:
        kafka.start(timeout=120)
        redis.start()
        yield kafka, redis
    finally:
        stop_all([kafka, redis])


def run_stack_arms(
    dataset: Dataset,
    arms: Sequence[StackArm],
    home: Path,
    settings: StackEvaluationSettings | None = None,
    config: ProtocolConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[EvaluationResult]:
    """Every arm on one shared stream through one shared stack, results in arm order."""
    settings = settings or StackEvaluationSettings()
    config = config or ProtocolConfig()
    total = len(dataset.interactions)
    evaluated = total - split_point(total, config.history_fraction)
    with shared_servers(home) as (kafka, redis):
        stack = SharedStack(arms, home, kafka, redis, settings, evaluated)
        try:
            stack.start()
            # Only fresh features change while evaluated: nothing to wait for otherwise.
            fresh = stack.fresh_features
            positions = stack.applied_positions(fresh) if fresh is not None else None
            feed = HttpFeed(
                stack.ingest.url,
                ready=stack.ready,
                observed=stack.observed,
                rate=settings.rate,
                run_id=stack.run_tag,
                features=positions,
            )
            try:
                results = evaluate_shared(
                    feed,
                    {f"stack:{arm.arm.name}": arm.ranker for arm in stack.inference},
                    dataset.interactions,
                    dataset=dataset.name,
                    config=config,
                    progress=progress,
                    before_asking=feed.wait_for_user,
                    concurrent=True,
                )
            finally:
                feed.close()
                if positions is not None:
                    positions.close()
            own_cpu, shared_cpu = stack.cpu_seconds()
            for arm, result in zip(stack.inference, results, strict=True):
                result.extra.update(stack.report(arm))
                result.extra["cpu_s"] = own_cpu[arm.arm.name]
                result.extra["shared_cpu_s"] = shared_cpu
            return results
        finally:
            stack.stop()
