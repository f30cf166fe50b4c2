"""Arms 1–6 of the evaluation through the real stack: HTTP → ingest → Kafka → trainer and feature
updater → inference → HTTP, scored by the same prequential protocol as the in-process peers.

Every arm gets its own services (ingest, trainer, inference, feature updater: one uvicorn or
Python process each, as in a pod) on shared Kafka and Redis servers, with its own topics, Redis
key prefix, registry and artifact folder: arms never see each other's events, features or models,
and the same interactions go through each of them. What differs is only how the stack is driven:

| arm | model | features while evaluated | while evaluated |
|---|---|---|---|
| ``popularity-history`` | none (popularity fallback) | frozen at the end of the history | — |
| ``popularity-online`` | none (popularity fallback) | fresh | — |
| ``frozen`` | batch run on the history | frozen at the end of the history | — |
| ``frozen-fresh-features`` | batch run on the history | fresh | — |
| ``incremental`` (the product) | batch, then a follow run warm from it | fresh | publishes |
| ``periodic-retrain`` | batch, then a full retrain every 5 % | fresh | retrains |

"Frozen features" is the feature updater stopped once it has applied the history: users'
recent items and the popularity ranking stay as the history left them, what a static
deployment without a feature pipeline serves. The follow run of ``incremental`` starts at the
beginning of ``events`` warm from the batch version, so that it rebuilds users' recent items and
its replay sample from the history (a published version carries weights, not user state); the
replay waits until it has caught up with the history before evaluating. ``periodic-retrain``
requests a batch run from scratch over everything at each boundary and keeps replaying while it
trains (a retrain still running at the next boundary makes that boundary skip, and says so).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from streamrec_shared.kafka import ensure_topics
from streamrec_shared.settings import KafkaSettings, TopicSettings

from streamrec_dev.evaluation.data import Dataset
from streamrec_dev.evaluation.protocol import EvaluationResult, ProtocolConfig, evaluate
from streamrec_dev.evaluation.replay import (
    HistoryPosted,
    HttpRecommender,
    ReplayError,
    read_features_applied,
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

# The settings the in-process evaluation found best on ML-100K (README, evaluation section):
# tied embeddings, small batches, half of each step replayed. ``benchmarks/model_arms.py`` uses
# the same dictionary, so the in-process and through-the-stack figures are of one model.
EVALUATION_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 0.5,
    "batch_size": 128,
    "replay_fraction": 0.5,
    "tie_embeddings": True,
}
EVALUATION_SPEC = "evaluation"
ENDED = frozenset({"succeeded", "failed", "stopped"})  # a run's final statuses


@dataclass(frozen=True)
class StackArm:
    name: str
    summary: str
    trains: bool = False  # a batch run on the history before the evaluation
    fresh_features: bool = False  # the feature updater keeps running during the evaluation
    follows: bool = False  # a follow run (incremental training and publishing) after the batch
    retrain_windows: int = 0  # full retrains at this many evenly spaced points (0: none)


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
    publish_every_s: float = 2.0  # ... or this often, whichever comes first
    # Batch runs hold out the newest share of their range for the gate: keep it small, the
    # newest events are the most useful ones to learn.
    batch_holdout: float = 0.01
    # Held-out events a follow run's gated publish needs (the product's default: 100; its
    # held-out share of incoming events is 10 %, so about one publish per 1,000 events).
    gate_min_events: int = 100
    rate: float | None = None  # evaluated events/s (None: as fast as the stack answers)
    ready_timeout_s: float = 900.0
    parallel: int = 1  # arms at once (each on its own services)


class ArmStack:
    """The four services one arm runs on, on the shared Kafka and Redis."""

    def __init__(self, arm: StackArm, home: Path, kafka: KafkaServer, redis: RedisServer) -> None:
        self.arm = arm
        self.home = home
        self.kafka = kafka
        self.run_tag = uuid.uuid4().hex[:8]
        safe = re.sub(r"[^a-z0-9]+", "-", arm.name)
        self.topics = TopicSettings(default_partitions=1).isolated(f"eval-{safe}-{self.run_tag}")
        env = {
            "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            **self.topics.environment(),
            "STREAMREC_REDIS_URL": redis.url,
            "STREAMREC_REDIS_KEY_PREFIX": f"eval:{safe}:{self.run_tag}:",
            "STREAMREC_LOG_FORMAT": "text",
            "STREAMREC_LOG_LEVEL": "WARNING",
            "STREAMREC_TRAINER_DATABASE_URL": f"sqlite:///{home / 'registry.db'}",
            "STREAMREC_TRAINER_ARTIFACTS_DIR": str(home / "artifacts"),
            "STREAMREC_TRAINER_CONTROL_GROUP": f"trainer-{self.run_tag}",
            "STREAMREC_INFERENCE_ARTIFACTS_DIR": str(home / "artifacts"),
            "STREAMREC_INFERENCE_ARTIFACT_CACHE_DIR": str(home / "model-cache"),
            "STREAMREC_INFERENCE_SPEC_ID": EVALUATION_SPEC,
            "STREAMREC_INFERENCE_RUN_FEATURE_UPDATER": "false",
            "STREAMREC_INFERENCE_FEATURES_GROUP": f"features-{self.run_tag}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }

        def service(name: str, factory: str, **extra: str) -> ServiceServer:
            return ServiceServer(
                name=name,
                home=home,
                port=free_port(),
                app_factory=factory,
                env={**env, **extra},
            )

        self.trainer = service("trainer", "trainer.main:create_app")
        self.ingest = service("ingest", "ingest.main:create_app")
        self.inference = service(
            "inference",
            "inference.main:create_app",
            STREAMREC_INFERENCE_TRAINER_URL=self.trainer.url,
        )
        features_port = free_port()
        self.features = ModuleServer(
            name="features",
            home=home,
            port=features_port,
            module="inference.updater",
            args=("--metrics-port", str(features_port), "--metrics-host", "127.0.0.1"),
            env=env,
        )

    def servers(self) -> list[ManagedProcess]:
        return [self.trainer, self.ingest, self.features, self.inference]

    def start(self) -> None:
        kafka = KafkaSettings(bootstrap_servers=self.kafka.bootstrap)
        asyncio.run(ensure_topics(kafka, self.topics))
        for server in self.servers():
            server.start(timeout=120)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time each running service has used so far (user + system), for the report."""
        used = {}
        for server in self.servers():
            pid = server.pid()
            if pid is not None:
                used[server.name] = process_cpu_seconds(pid)
        return used

    def stop(self) -> None:
        stop_all(self.servers())


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ArmLog:
    """What an arm's driver did, for the report."""

    versions_published: int = 0
    rejections: int = 0
    retrains_requested: int = 0
    retrains_skipped: int = 0  # boundaries reached while the previous retrain still ran
    history_batch_s: float = 0.0
    catch_up_s: float = 0.0
    runs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ArmDriver:
    """Drives one arm's stack at the protocol's two hooks: after the history, after each event."""

    def __init__(
        self, arm: StackArm, stack: ArmStack, settings: StackEvaluationSettings, evaluated: int
    ) -> None:
        self.arm = arm
        self.stack = stack
        self.settings = settings
        self.log = ArmLog()
        self.trainer = httpx.Client(base_url=stack.trainer.url, timeout=30)
        self.inference = httpx.Client(base_url=stack.inference.url, timeout=30)
        self.retrain_every = evaluated // arm.retrain_windows if arm.retrain_windows else 0
        self.retrain_run: str | None = None

    def close(self) -> None:
        self.trainer.close()
        self.inference.close()

    # --- after the history ---------------------------------------------------------------

    def ready(self, posted: HistoryPosted) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        self._wait_features_applied(posted.events, deadline)
        self._create_spec()
        if self.arm.trains:
            started = time.perf_counter()
            run_id = self._request_batch(self.settings.history_epochs)
            self.log.runs.append(run_id)
            version = self._wait_version(1, run_id, deadline)
            self._wait_served(version, deadline)
            self.log.history_batch_s = time.perf_counter() - started
        if self.arm.follows:
            started = time.perf_counter()
            run_id = self._request_follow()
            self.log.runs.append(run_id)
            self._wait_caught_up(run_id, posted.end_offsets, deadline)
            self._wait_served(self._latest_version(), deadline)
            self.log.catch_up_s = time.perf_counter() - started
        if not self.arm.fresh_features:
            # From here on users' recent items and popularity stay as the history left them.
            self.stack.features.stop()

    def _create_spec(self) -> None:
        body = {
            "id": EVALUATION_SPEC,
            "description": f"evaluation arm {self.arm.name}",
            "spec": {"family": "item_pooling", "hyperparameters": self.settings.hyperparameters},
        }
        response = self.trainer.post("/v1/specs", json=body)
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

    def _request_follow(self) -> str:
        body = {
            "mode": "incremental",
            "warm_start": True,
            "stream": {"kind": "follow", "topic": self.stack.topics.events, "start": "earliest"},
            "validation": {"min_events": self.settings.gate_min_events},
            "publish": {
                "every_events": self.settings.publish_every_events,
                "every_s": self.settings.publish_every_s,
            },
        }
        return self._request(body)

    def _request(self, body: dict[str, Any]) -> str:
        response = self.trainer.post(f"/v1/specs/{EVALUATION_SPEC}/runs", json=body)
        if response.status_code != 202:
            raise ReplayError(f"requesting training: {response.status_code} {response.text}")
        return str(response.json()["run_id"])

    def _latest_version(self) -> int:
        response = self.trainer.get(f"/v1/specs/{EVALUATION_SPEC}/versions/latest")
        return int(response.json()["version"]) if response.status_code == 200 else 0

    def _wait_version(self, at_least: int, run_id: str, deadline: float) -> int:
        while time.monotonic() < deadline:
            version = self._latest_version()
            if version >= at_least:
                return version
            answer = self._run(run_id)
            if answer is not None and answer["run"]["status"] in ENDED:
                raise ReplayError(f"{self.arm.name}: run {run_id} ended: {answer['run']}")
            time.sleep(0.5)
        raise ReplayError(f"{self.arm.name}: no model version {at_least} in time")

    def _wait_served(self, version: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            served = self.inference.get("/v1/model").json().get("version")
            if served is not None and served >= version:
                return
            time.sleep(0.2)
        raise ReplayError(f"{self.arm.name}: inference did not serve version {version} in time")

    def _wait_caught_up(self, run_id: str, end_offsets: dict[int, int], deadline: float) -> None:
        """Until the follow run's position is past every offset of the history."""
        while time.monotonic() < deadline:
            answer = self._run(run_id)
            if answer is not None:
                if answer["run"]["status"] in ENDED:
                    raise ReplayError(f"{self.arm.name}: run {run_id} ended: {answer['run']}")
                live = answer.get("live") or {}
                position = {int(p): int(o) for p, o in (live.get("position") or {}).items()}
                if all(position.get(p, 0) >= end for p, end in end_offsets.items()):
                    return
            time.sleep(0.5)
        raise ReplayError(f"{self.arm.name}: the follow run did not catch up in time")

    def _run(self, run_id: str) -> dict[str, Any] | None:
        """The run as the trainer reports it; ``None`` until its control loop registered it."""
        response = self.trainer.get(f"/v1/runs/{run_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def _wait_features_applied(self, events: int, deadline: float) -> None:
        """Until the feature updater has applied every history event (its applied counter)."""
        url = f"{self.stack.features.url}/metrics"
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                if read_features_applied(client, url) >= events:
                    return
                time.sleep(0.2)
        raise ReplayError(f"{self.arm.name}: the feature updater did not apply the history")

    # --- after each evaluated event ---------------------------------------------------------

    def observed(self, count: int) -> None:
        if not self.retrain_every or count % self.retrain_every:
            return
        if self.retrain_run is not None:
            answer = self._run(self.retrain_run)
            if answer is None or answer["run"]["status"] not in ENDED:
                self.log.retrains_skipped += 1
                return
        self.retrain_run = self._request_batch(self.settings.retrain_epochs)
        self.log.runs.append(self.retrain_run)
        self.log.retrains_requested += 1

    def finish(self) -> dict[str, Any]:
        self.log.versions_published = self._latest_version()
        rejections = self.trainer.get(f"/v1/specs/{EVALUATION_SPEC}/rejections")
        self.log.rejections = len(rejections.json()) if rejections.status_code == 200 else 0
        return {"arm_summary": self.arm.summary, **self.log.as_dict()}


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


def run_arm(
    arm: StackArm,
    dataset: Dataset,
    home: Path,
    kafka: KafkaServer,
    redis: RedisServer,
    settings: StackEvaluationSettings,
    config: ProtocolConfig,
    progress: Callable[[int], None] | None = None,
) -> EvaluationResult:
    """One arm on its own services, start to stop."""
    stack = ArmStack(arm, home / arm.name, kafka, redis)
    evaluated = len(dataset.interactions) - int(len(dataset.interactions) * config.history_fraction)
    try:
        stack.start()
        driver = ArmDriver(arm, stack, settings, evaluated)
        replay = HttpRecommender(
            stack.ingest.url,
            stack.inference.url,
            ready=driver.ready,
            observed=driver.observed,
            rate=settings.rate,
            run_id=stack.run_tag,
            # Frozen features: the updater stops after the history, nothing to wait for.
            features_metrics_url=f"{stack.features.url}/metrics" if arm.fresh_features else None,
        )
        try:
            result = evaluate(
                f"stack:{arm.name}",
                replay,
                dataset.interactions,
                dataset=dataset.name,
                config=config,
                progress=progress,
            )
            result.extra.update(driver.finish())
            result.extra["cpu_s"] = stack.cpu_seconds()
        finally:
            replay.close()
            driver.close()
        return result
    finally:
        stack.stop()


def run_stack_arms(
    dataset: Dataset,
    arms: Sequence[StackArm],
    home: Path,
    settings: StackEvaluationSettings | None = None,
    config: ProtocolConfig | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[EvaluationResult]:
    """Every arm on the same interactions; ``parallel`` of them at once, results in arm order."""
    settings = settings or StackEvaluationSettings()
    config = config or ProtocolConfig()
    with shared_servers(home) as (kafka, redis):

        def one(arm: StackArm) -> EvaluationResult:
            advance = (lambda count: progress(arm.name, count)) if progress else None
            return run_arm(arm, dataset, home, kafka, redis, settings, config, advance)

        with ThreadPoolExecutor(max(1, settings.parallel)) as pool:
            return list(pool.map(one, arms))
