"""Ingest's HTTP validation layer, lifespan included, with no broker anywhere (unit level).

Kafka and Redis point at closed ports: nothing here may reach them, which is the point: invalid
input is refused before any I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from ingest.config import IngestSettings
from ingest.main import create_app
from streamrec_dev.servers import free_port
from streamrec_shared.settings import KafkaSettings, RedisSettings

from tests.support.apps import serve


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = IngestSettings(
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.2),  # type: ignore[arg-type]
        kafka_connect_wait_s=0,
        max_event_bytes=1024,
        max_batch_bytes=4096,
        max_batch_events=5,
    )
    async with serve(create_app(settings)) as client:
        yield client


OK = {"user_id": "u1", "item_id": "i1", "type": "click"}


async def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) >= {"error"}, body
    error: dict[str, object] = body["error"]
    return error


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/events", content=b'{"user_id": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert (await error_of(response))["code"] == "malformed_json"


async def test_schema_violations_are_422_with_fields(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/events", json={**OK, "type": "teleport", "user_id": 3})
    assert response.status_code == 422
    fields = {d["field"] for d in (await error_of(response))["details"]}  # type: ignore[attr-defined]
    assert fields == {"type", "user_id"}


async def test_body_size_is_counted_not_trusted(client: httpx.AsyncClient) -> None:
    big = orjson.dumps({**OK, "context": {"k": "v" * 2000}})
    # Honest Content-Length over the limit:
    assert (
        await client.post("/v1/events", content=big, headers={"content-type": "application/json"})
    ).status_code == 413

    # A chunked body with no Content-Length at all: counted as it streams.
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 100):
            yield big[start : start + 100]

    response = await client.post(
        "/v1/events", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert (await error_of(response))["code"] == "payload_too_large"


async def test_wrong_media_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/events",
        content=b"user_id=u1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415


async def test_too_many_events_is_422_on_events(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/events/batch", json={"events": [OK] * 6})
    assert response.status_code == 422
    assert (await error_of(response))["details"][0]["field"] == "events"  # type: ignore[index]
    response = await client.post("/v1/events/batch", json={"events": [OK, {**OK, "item_id": ""}]})
    assert response.status_code == 422
    assert (await error_of(response))["details"][0]["field"] == "events[1].item_id"  # type: ignore[index]


async def test_valid_event_without_kafka_is_503_with_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/events", json={**OK, "event_id": "x1"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert (await error_of(response))["code"] == "unavailable"


async def test_probes_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"kafka": False}
    await client.post("/v1/events", json={**OK, "type": "nope"})
    metrics = (await client.get("/metrics")).text
    assert (
        'http_requests_total{method="POST",route="/v1/events",service="ingest",status="422"} 1.0'
        in metrics
    )
    assert "ingest_kafka_ack_seconds" in metrics


async def test_unknown_route_uses_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nope")
    assert response.status_code == 404
    assert (await error_of(response))["code"] == "not_found"
