"""The local stack exactly as `make up` runs it (own folder and ports), over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from streamrec_dev.servers import free_port, port_open
from streamrec_dev.stack import LocalStack, StackPorts
from streamrec_shared.settings import KafkaSettings

from tests.support.kafka import read_topic

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    ports = StackPorts(**{name: free_port() for name in StackPorts.__dataclass_fields__})
    stack = LocalStack(run_dir=Path(tmp_path_factory.mktemp("run")), ports=ports, demo_rate=50.0)
    try:
        stack.up(demo=True, progress=lambda _: None)
        yield stack
    finally:
        stack.down(progress=lambda _: None)


def test_every_service_is_up_and_ready(stack: LocalStack) -> None:
    for service in stack.services():
        assert httpx.get(f"{service.url}/healthz").status_code == 200, service.name
        assert httpx.get(f"{service.url}/readyz").status_code == 200, service.name


def test_console_shows_every_service_ready(stack: LocalStack) -> None:
    page = httpx.get(stack.service("gateway").url + "/")
    assert page.status_code == 200
    assert page.text.count("<td class='ready'>ready</td>") == 3, page.text


def test_a_posted_event_lands_in_kafka(stack: LocalStack) -> None:
    ingest = stack.service("ingest").url
    response = httpx.post(
        f"{ingest}/v1/events",
        json={"event_id": "e2e-1", "user_id": "e2e-user", "item_id": "i1", "type": "purchase"},
    )
    assert response.status_code == 202, response.text
    kafka = KafkaSettings(bootstrap_servers=stack.kafka.bootstrap)
    records = asyncio.run(read_topic(kafka, "events", expected=1, timeout_s=20))
    ours = [orjson.loads(r.value) for r in records if r.key == b"e2e-user"]
    assert [event["event_id"] for event in ours] == ["e2e-1"]
    # The demo stream is running too: other users' events arrive (it needs a moment to start).
    for _ in range(20):
        if any(r.key != b"e2e-user" for r in records):
            break
        records = asyncio.run(read_topic(kafka, "events", expected=len(records) + 1, timeout_s=1))
    assert any(r.key != b"e2e-user" for r in records)


def test_up_again_changes_nothing(stack: LocalStack) -> None:
    before = {server.name: server.pid() for server in stack.all()}
    lines: list[str] = []
    stack.up(demo=True, progress=lines.append)
    assert {server.name: server.pid() for server in stack.all()} == before
    assert all("already running" in line for line in lines if not line.startswith("topics"))
    assert "(exists)" in next(line for line in lines if line.startswith("topics"))


def test_down_stops_exactly_what_up_started(tmp_path: Path) -> None:
    ports = StackPorts(**{name: free_port() for name in StackPorts.__dataclass_fields__})
    own = LocalStack(run_dir=tmp_path / "run", ports=ports)
    try:
        own.up(demo=False, progress=lambda _: None)
        assert all(server.running() for server in [own.kafka, own.redis, *own.services()])
    finally:
        own.down(progress=lambda _: None)
    for server in own.all():
        assert not server.running(), server.name
        assert not server.pid_file.exists(), server.name
    assert not port_open(ports.kafka)
    assert not port_open(ports.ingest)


def test_the_demo_stream_is_learned_and_published(stack: LocalStack) -> None:
    """The main job: demo events flow through ingest and Kafka into a published model."""
    trainer = stack.service("trainer").url
    deadline = time.monotonic() + 90
    version = None
    while time.monotonic() < deadline:
        response = httpx.get(f"{trainer}/v1/specs/default/versions/latest")
        if response.status_code == 200 and response.json()["events_trained"] > 0:
            version = response.json()
            break
        time.sleep(1)
    assert version is not None, "no version of the demo spec was published"
    assert len(version["digest"]) == 64
    runs = httpx.get(f"{trainer}/v1/runs", params={"spec_id": "default"}).json()
    assert [run["run"]["status"] for run in runs] == ["running"]


def test_inference_serves_the_published_model_with_fresh_features(stack: LocalStack) -> None:
    inference = stack.service("inference").url
    deadline = time.monotonic() + 90
    model: dict[str, object] = {}
    while time.monotonic() < deadline:
        model = httpx.get(f"{inference}/v1/model").json()
        if model["version"] is not None:
            break
        time.sleep(1)
    assert model["version"] is not None, "inference never loaded the demo model"
    ingest = stack.service("ingest").url
    posted = httpx.post(
        f"{ingest}/v1/events",
        json={"user_id": "e2e-fresh", "item_id": "i1", "type": "click"},
    )
    assert posted.status_code == 202
    for _ in range(50):  # the feature updater sees the event within moments
        body = httpx.get(f"{inference}/v1/recommendations", params={"user_id": "e2e-fresh"}).json()
        if body["fallback"] is None:
            break
        time.sleep(0.1)
    assert body["fallback"] is None, body
    # The demo keeps training: a newer version may have been swapped in since (versions only
    # grow; clean-clone CI once read v8 from /v1/model, then got an answer from v9).
    assert isinstance(body["model_version"], int)
    assert isinstance(model["version"], int)
    assert body["model_version"] >= model["version"]
    assert len(body["items"]) == 10
    assert "i1" not in [item["item_id"] for item in body["items"]], "seen items are excluded"
