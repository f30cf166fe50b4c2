"""A real trainer process for inference tests, and the way to make it publish."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from streamrec_dev.servers import ServiceServer, free_port
from streamrec_shared.settings import KafkaSettings, TopicSettings

SMALL_SPEC: dict[str, Any] = {
    "family": "item_pooling",
    "hyperparameters": {"embedding_dim": 16, "history_length": 5, "batch_size": 64,
                        "learning_rate": 0.3, "initial_capacity": 16},
}  # fmt: skip


def platform_env(kafka: KafkaSettings, topics: TopicSettings) -> dict[str, str]:
    """The variables a ConfigMap would set for these brokers and topics."""
    return {
        "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        **topics.environment(),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def trainer_server(
    home: Path,
    kafka: KafkaSettings,
    topics: TopicSettings,
    unique: str,
    settings: Mapping[str, str] | None = None,
) -> ServiceServer:
    """A trainer process; ``settings``: more of its environment variables."""
    return ServiceServer(
        name="trainer",
        home=home,
        port=free_port(),
        app_factory="trainer.main:create_app",
        env={
            **platform_env(kafka, topics),
            "STREAMREC_TRAINER_DATABASE_URL": f"sqlite:///{home / 'registry.db'}",
            "STREAMREC_TRAINER_ARTIFACTS_DIR": str(home / "artifacts"),
            "STREAMREC_TRAINER_CONTROL_GROUP": f"trainer-{unique}",
            **(settings or {}),
        },
    )


async def poll(client: httpx.AsyncClient, path: str, done: Any, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    body = None
    while time.monotonic() < deadline:
        try:
            response = await client.get(path)
            if response.status_code == 200 and done(body := response.json()):
                return body
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path}: last {body}")


async def publish_batch(trainer: httpx.AsyncClient, spec_id: str, epochs: int = 20) -> int:
    """Train ``spec_id`` on everything in ``events`` now; wait for the version it publishes."""
    before = await trainer.get(f"/v1/specs/{spec_id}/versions/latest")
    last = before.json()["version"] if before.status_code == 200 else 0
    response = await trainer.post(
        f"/v1/specs/{spec_id}/runs",
        json={
            "mode": "batch",
            "epochs": epochs,
            # Publish whatever it learned: these tests are about serving, not the gate.
            "validation": {"tolerance": 1.0, "min_events": 1},
        },
    )
    assert response.status_code == 202, response.text
    version = await poll(
        trainer, f"/v1/specs/{spec_id}/versions/latest", lambda v: v["version"] > last
    )
    return int(version["version"])
