"""Killing the trainer mid-stream (SIGKILL, no shutdown hook) and starting it again.

The run must come back by itself (no crash loop), resume from its last checkpoint and observe
every event exactly once over its lifetime: none lost, none counted twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from streamrec_dev.servers import ServiceServer
from streamrec_shared.settings import KafkaSettings, TopicSettings

from tests.support.streams import chain_events, produce
from tests.support.trainer import poll, trainer_server

pytestmark = pytest.mark.integration

SPEC = {
    "id": "restartable",
    "spec": {
        "family": "item_pooling",
        "hyperparameters": {"embedding_dim": 8, "history_length": 4, "batch_size": 32},
    },
}


@pytest.fixture
def trainer_process(
    kafka_settings: KafkaSettings, topic_settings: TopicSettings, tmp_path: Path, unique: str
) -> Iterator[ServiceServer]:
    # A checkpoint at every publish cycle, so that the kill comes after one.
    server = trainer_server(
        tmp_path / "trainer",
        kafka_settings,
        topic_settings,
        unique,
        {"STREAMREC_TRAINER_CHECKPOINT_EVERY_S": "0"},
    )
    yield server
    server.kill()


async def test_killed_trainer_resumes_from_its_checkpoint(
    trainer_process: ServiceServer, kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    trainer_process.start(timeout=90)
    async with httpx.AsyncClient(base_url=trainer_process.url, timeout=10) as client:
        assert (await client.post("/v1/specs", json=SPEC)).status_code == 201
        response = await client.post(
            "/v1/specs/restartable/runs",
            json={
                "mode": "incremental",
                "publish": {"every_s": 0.3},
                "validation": {"min_events": 1, "tolerance": 1.0},
            },
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]
        first = chain_events(30, 20, 20)
        await produce(kafka_settings, topic_settings.events, first)
        await poll(
            client,
            f"/v1/runs/{run_id}",
            lambda b: sum((b["run"]["trained_through"] or {}).values()) >= 300,
        )

        trainer_process.kill()  # SIGKILL mid-stream: no checkpoint on the way out
        second = chain_events(30, 20, 20, prefix="j")
        await produce(kafka_settings, topic_settings.events, second)
        total = len(first) + len(second)

        trainer_process.start(timeout=90)
        body = await poll(
            client,
            f"/v1/runs/{run_id}",
            lambda b: b["live"] is not None and b["live"]["events_observed"] >= total,
        )
        assert body["live"]["resumed_from_checkpoint"] is True
        await asyncio.sleep(1.5)  # any double counting would show up as more than `total`
        body = (await client.get(f"/v1/runs/{run_id}")).json()
        assert body["live"]["events_observed"] == total
        assert body["run"]["status"] == "running"
        latest = await poll(
            client,
            "/v1/specs/restartable/versions/latest",
            lambda v: sum(v["trained_through"].values()) == total,
        )
        assert latest["events_trained"] <= total
