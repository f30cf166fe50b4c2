"""The local stack: which servers run, on which ports, in which folders under ``.run/``."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import httpx
from streamrec_shared.kafka import ensure_topics
from streamrec_shared.settings import KafkaSettings, TopicSettings

from streamrec_dev.servers import (
    REPO_ROOT,
    KafkaServer,
    ManagedProcess,
    ModuleServer,
    RedisServer,
    ServiceServer,
)


@dataclass(frozen=True)
class StackPorts:
    kafka: int = 19092
    kafka_controller: int = 19093
    redis: int = 16379
    gateway: int = 8000
    ingest: int = 8001
    trainer: int = 8002
    inference: int = 8003
    features: int = 8004


# Services in start order; each entry: name -> (app factory, port attribute).
SERVICES = {
    "ingest": "ingest.main:create_app",
    "trainer": "trainer.main:create_app",
    "inference": "inference.main:create_app",
    "gateway": "gateway.main:create_app",
}


@dataclass
class LocalStack:
    run_dir: Path = REPO_ROOT / ".run"
    ports: StackPorts = field(default_factory=StackPorts)
    demo_rate: float = 20.0

    # Built once: each server object keeps the child it spawned, so it can reap it on stop.
    @cached_property
    def kafka(self) -> KafkaServer:
        return KafkaServer(
            name="kafka",
            home=self.run_dir / "kafka",
            port=self.ports.kafka,
            controller_port=self.ports.kafka_controller,
        )

    @cached_property
    def redis(self) -> RedisServer:
        return RedisServer(name="redis", home=self.run_dir / "redis", port=self.ports.redis)

    def service_env(self) -> dict[str, str]:
        """The environment every service gets: the same variables a Kubernetes ConfigMap sets."""
        return {
            "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "STREAMREC_REDIS_URL": self.redis.url,
            "STREAMREC_LOG_FORMAT": os.environ.get("STREAMREC_LOG_FORMAT", "json"),
            "STREAMREC_GATEWAY_INGEST_URL": f"http://127.0.0.1:{self.ports.ingest}",
            "STREAMREC_GATEWAY_TRAINER_URL": f"http://127.0.0.1:{self.ports.trainer}",
            "STREAMREC_GATEWAY_INFERENCE_URL": f"http://127.0.0.1:{self.ports.inference}",
            "STREAMREC_TRAINER_DATABASE_URL": f"sqlite:///{self.run_dir / 'registry.db'}",
            "STREAMREC_TRAINER_ARTIFACTS_DIR": str(self.run_dir / "artifacts"),
            # Locally inference reads the trainer's store directly (verifying digests).
            "STREAMREC_INFERENCE_TRAINER_URL": f"http://127.0.0.1:{self.ports.trainer}",
            "STREAMREC_INFERENCE_ARTIFACTS_DIR": str(self.run_dir / "artifacts"),
            "STREAMREC_INFERENCE_ARTIFACT_CACHE_DIR": str(self.run_dir / "model-cache"),
            "STREAMREC_INFERENCE_SPEC_ID": DEMO_SPEC,
            # The feature updater runs as its own process (as in production), so it never
            # shares an event loop (or the GIL) with the requests it serves.
            "STREAMREC_INFERENCE_RUN_FEATURE_UPDATER": "false",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }

    @cached_property
    def _services(self) -> dict[str, ServiceServer]:
        return {
            name: ServiceServer(
                name=name,
                home=self.run_dir / "services",
                port=getattr(self.ports, name),
                app_factory=factory,
                env=self.service_env(),
            )
            for name, factory in SERVICES.items()
        }

    @cached_property
    def features(self) -> ModuleServer:
        port = self.ports.features
        return ModuleServer(
            name="features",
            home=self.run_dir / "services",
            port=port,
            module="inference.updater",
            args=("--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
            env=self.service_env(),
        )

    def service(self, name: str) -> ServiceServer:
        return self._services[name]

    def services(self) -> list[ServiceServer]:
        return list(self._services.values())

    @cached_property
    def demo(self) -> DemoStream:
        return DemoStream(
            name="demo",
            home=self.run_dir / "demo",
            port=0,
            ingest_url=self.service("ingest").url,
            rate=self.demo_rate,
        )

    def all(self) -> list[ManagedProcess]:
        return [self.kafka, self.redis, *self.services(), self.features, self.demo]

    def up(self, demo: bool = True, progress: Callable[[str], None] = print) -> None:
        """Start whatever is not running yet, in dependency order (idempotent)."""
        for infra in (self.kafka, self.redis):
            progress(f"{infra.name}: {'started' if infra.start(timeout=90) else 'already running'}")
        topics = self.create_topics()
        progress("topics: " + ", ".join(f"{name} ({state})" for name, state in topics.items()))
        for server in [*self.services(), self.features, *([self.demo] if demo else [])]:
            progress(f"{server.name}: {'started' if server.start() else 'already running'}")
        if demo:
            progress(f"training: {self.ensure_training()}")

    def ensure_training(self) -> str:
        """The demo's learning loop: spec ``default`` and an incremental run following ``events``.

        Idempotent: an existing spec is kept, and a run already following is left alone.
        """
        trainer = self.service("trainer").url
        with httpx.Client(base_url=trainer, timeout=30) as client:
            created = client.post("/v1/specs", json={"id": DEMO_SPEC, "description": "demo"})
            if created.status_code not in (201, 409):
                return f"could not create spec: {created.status_code} {created.text}"
            running = client.get("/v1/runs", params={"spec_id": DEMO_SPEC, "status": "running"})
            if running.status_code == 200 and running.json():
                return f"already running: run {running.json()[0]['run']['id']} follows events"
            requested = client.post(
                f"/v1/specs/{DEMO_SPEC}/runs",
                json={
                    "mode": "incremental",
                    "publish": {"every_s": 5},
                    "validation": {"rate": 0.2, "min_events": 50},
                },
            )
            if requested.status_code != 202:
                return f"could not request training: {requested.status_code} {requested.text}"
            return f"run {requested.json()['run_id']} follows events (spec {DEMO_SPEC})"

    def down(self, progress: Callable[[str], None] = print) -> None:
        """Stop exactly what ``up`` started (by PID file), in reverse order."""
        for server in reversed(self.all()):
            progress(f"{server.name}: {'stopped' if server.stop() else 'not running'}")

    def create_topics(self) -> dict[str, str]:
        kafka = KafkaSettings(bootstrap_servers=self.kafka.bootstrap)
        return asyncio.run(ensure_topics(kafka, TopicSettings()))


DEMO_SPEC = "default"


@dataclass
class DemoStream(ManagedProcess):
    """The synthetic clickstream posting to ingest, as a background process."""

    ingest_url: str = ""
    rate: float = 20.0

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "streamrec_dev.cli",
            "demo",
            "--ingest-url",
            self.ingest_url,
            "--rate",
            str(self.rate),
        ]

    def healthy(self) -> bool:
        return self.running()
