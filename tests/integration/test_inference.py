"""Inference against real Kafka, Redis and a real trainer process that publishes versions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from inference.config import InferenceSettings
from inference.main import create_app
from streamrec_dev.servers import RedisServer, ServiceServer, free_port
from streamrec_shared.kafka import ResilientProducer
from streamrec_shared.schemas.events import EventIn, EventType
from streamrec_shared.settings import KafkaSettings, RedisSettings, TopicSettings

from tests.support.apps import serve
from tests.support.kafka import read_topic
from tests.support.streams import START, chain_events, produce
from tests.support.trainer import SMALL_SPEC, poll, publish_batch, trainer_server

pytestmark = pytest.mark.integration


@pytest.fixture
def trainer_process(
    kafka_settings: KafkaSettings, topic_settings: TopicSettings, tmp_path: Path, unique: str
) -> Iterator[ServiceServer]:
    server = trainer_server(tmp_path / "trainer", kafka_settings, topic_settings, unique)
    server.start(timeout=90)
    yield server
    server.stop()


@pytest.fixture
async def trainer(trainer_process: ServiceServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=trainer_process.url, timeout=30) as client:
        assert (
            await client.post("/v1/specs", json={"id": "chain", "spec": SMALL_SPEC})
        ).status_code == 201
        yield client


def inference_settings(
    kafka: KafkaSettings,
    topics: TopicSettings,
    redis: RedisSettings,
    trainer_url: str,
    tmp_path: Path,
    unique: str,
) -> InferenceSettings:
    return InferenceSettings(
        spec_id="chain",
        trainer_url=trainer_url,
        artifact_cache_dir=tmp_path / "cache",
        features_group=f"features-{unique}",
        kafka=kafka,
        topics=topics,
        redis=redis,
    )  # fmt: skip


@pytest.fixture
def settings(
    kafka_settings: KafkaSettings,
    topic_settings: TopicSettings,
    redis_settings: RedisSettings,
    trainer_process: ServiceServer,
    tmp_path: Path,
    unique: str,
) -> InferenceSettings:
    return inference_settings(
        kafka_settings, topic_settings, redis_settings, trainer_process.url, tmp_path, unique
    )


@asynccontextmanager
async def serving_a_version(
    trainer: httpx.AsyncClient, settings: InferenceSettings, kafka_settings: KafkaSettings
) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    """Inference serving a version trained on the chain stream: the client and the version."""
    await produce(kafka_settings, settings.topics.events, chain_events(40, 25, 30))
    version = await publish_batch(trainer, "chain")
    async with serve(create_app(settings)) as inference:
        await poll(inference, "/v1/model", lambda m: m["version"] == version)
        yield inference, version


async def recommend(client: httpx.AsyncClient, user: str, **params: object) -> dict:  # type: ignore[type-arg]
    response = await client.get("/v1/recommendations", params={"user_id": user, **params})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_fallbacks_personalisation_fresh_events_and_filters(
    trainer: httpx.AsyncClient, settings: InferenceSettings, kafka_settings: KafkaSettings
) -> None:
    topics = settings.topics
    async with serve(create_app(settings)) as inference:
        # No model yet: popularity from the features the updater built, and said so.
        await produce(kafka_settings, topics.events, chain_events(40, 25, 30))
        body = await poll(inference, "/v1/recommendations?user_id=nobody",
                          lambda b: len(b["items"]) == 10)  # fmt: skip
        assert body["fallback"] == "popularity"
        assert body["model_version"] is None
        assert (await inference.get("/v1/items/i1/similar")).status_code == 503

        version = await publish_batch(trainer, "chain")
        await poll(inference, "/v1/model", lambda m: m["version"] == version)

        # A known user: personalised, seen items excluded, the chain learned.
        body = await recommend(inference, "u0")
        assert body["fallback"] is None
        assert body["model_version"] == version
        assert len(body["rec_id"]) == 32
        served = [item["item_id"] for item in body["items"]]
        # u0 walked i0..i24; seen items are excluded; the next step of the chain comes first.
        assert not {f"i{n}" for n in range(25)} & set(served)
        assert served[0] == "i25"

        # A user's fresh event changes their next recommendations, before any retraining.
        await produce(kafka_settings, topics.events, chain_events(1, 1, 30, start_index=10,
                                                                 user_prefix="fresh"))  # fmt: skip
        fresh = await poll(inference, "/v1/recommendations?user_id=fresh0",
                           lambda b: b["fallback"] is None)  # fmt: skip
        assert "i11" in [item["item_id"] for item in fresh["items"][:3]]

        # Unknown user: the model's prior (trending when asked), never an error.
        prior = await recommend(inference, "stranger", k=5)
        assert (prior["fallback"], prior["model_version"]) == ("model_prior", version)
        assert len(prior["items"]) == 5
        unknown = await recommend(inference, "stranger", trending="true", k=5)
        assert unknown["fallback"] == "trending"
        assert len(unknown["items"]) == 5

        # Business rules: unavailable items are never recommended; tags filter.
        upsert = await inference.post("/v1/items", json={"items": [
            {"item_id": "i25", "title": "Twenty-five", "available": False},
            {"item_id": "i27", "title": "Twenty-seven", "tags": ["drama"]},
        ]})  # fmt: skip
        assert upsert.status_code == 200, upsert.text
        body = await recommend(inference, "u0", k=30)
        assert "i25" not in [i["item_id"] for i in body["items"]]
        drama = await recommend(inference, "u0", tag="drama")
        assert [(i["item_id"], i["title"]) for i in drama["items"]] == [("i27", "Twenty-seven")]
        excluded = await recommend(inference, "u0", exclude=["i26"])
        assert "i26" not in [i["item_id"] for i in excluded["items"]]

        similar = await inference.get("/v1/items/i3/similar", params={"k": 5})
        assert similar.status_code == 200
        assert len(similar.json()["items"]) == 5
        assert (await inference.get("/v1/items/nope/similar")).status_code == 404

        # Bad input: clear errors.
        for params in ({"user_id": "u0", "k": 0}, {"user_id": "u0", "k": 5000}, {}):
            assert (await inference.get("/v1/recommendations", params=params)).status_code == 422


async def test_hot_swap_under_load_fails_no_request_and_new_items_become_recommendable(
    trainer: httpx.AsyncClient, settings: InferenceSettings, kafka_settings: KafkaSettings
) -> None:
    topics = settings.topics
    async with serving_a_version(trainer, settings, kafka_settings) as (inference, first):
        # Per client: requests in flight during the swap finish on the old version, so across
        # concurrent clients completion order may interleave versions; one client's sequence of
        # requests must never go back.
        seen_versions: dict[str, list[int]] = {}
        failures: list[str] = []
        stop = asyncio.Event()

        async def hammer(user: str) -> None:
            mine = seen_versions.setdefault(user, [])
            while not stop.is_set():
                response = await inference.get("/v1/recommendations", params={"user_id": user})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    mine.append(response.json()["model_version"])

        load = [asyncio.create_task(hammer(f"u{n}")) for n in range(4)]
        try:
            # New items launch: a second chain that version `first` has never seen.
            await produce(kafka_settings, topics.events, chain_events(40, 30, 10, prefix="n"))
            second = await publish_batch(trainer, "chain")
            await poll(inference, "/v1/model", lambda m: m["version"] == second)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*load)

    assert failures == []
    for user, versions in seen_versions.items():
        assert versions[0] == first, user
        assert versions[-1] == second, user
        assert versions == sorted(versions), f"{user}: a request went back to an older version"
    async with serve(create_app(settings)) as inference:
        await poll(inference, "/v1/model", lambda m: m["version"] == second)
        similar = await inference.get("/v1/items/n4/similar")
        assert similar.status_code == 200
        # A user on the new chain gets new items.
        await produce(kafka_settings, topics.events, chain_events(1, 3, 10, prefix="n",
                                                                 user_prefix="newbie"))  # fmt: skip
        body = await poll(inference, "/v1/recommendations?user_id=newbie0",
                          lambda b: b["fallback"] is None)  # fmt: skip
        assert body["items"][0]["item_id"].startswith("n")


async def test_items_launched_after_the_version_are_recommended_before_the_next_one(
    trainer: httpx.AsyncClient, settings: InferenceSettings, kafka_settings: KafkaSettings
) -> None:
    async with serving_a_version(trainer, settings, kafka_settings) as (inference, version):
        # An item the version has never seen: its first users come to it from i5.
        launch = START + timedelta(days=1)
        events = []
        for user in range(5):
            for step, item in enumerate(("i5", "new1")):
                at = launch + timedelta(seconds=10 * user + step)
                events.append(EventIn(user_id=f"launch{user}", item_id=item,
                                      type=EventType.CLICK, timestamp=at))  # fmt: skip
        # A user one step before i5 on the chain: the model sends them near i5, and new1 with
        # it (4th of 30 in a run, after i6, i5 and i7, which also have the counted term).
        events.append(EventIn(user_id="probe", item_id="i4", type=EventType.CLICK,
                              timestamp=launch + timedelta(minutes=5)))  # fmt: skip
        await produce(kafka_settings, settings.topics.events, events)
        body = await poll(inference, "/v1/recommendations?user_id=probe&k=5",
                          lambda b: "new1" in [i["item_id"] for i in b["items"]])  # fmt: skip
        assert body["model_version"] == version  # no new version: the same one ranks it
        assert body["fallback"] is None
        record = await trainer.get("/v1/specs/chain/versions/latest")
        assert record.json()["version"] == version
        # Its page can show similar items: it stands where its first users came from.
        similar = await inference.get("/v1/items/new1/similar", params={"k": 3})
        assert similar.status_code == 200, similar.text
        assert similar.json()["items"][0]["item_id"] == "i5"
        # A user who touched it is never offered it again.
        launched = await recommend(inference, "launch0", k=30)
        assert "new1" not in [i["item_id"] for i in launched["items"]]


async def test_redis_stopped_mid_load_degrades_then_recovers(
    trainer: httpx.AsyncClient,
    kafka_settings: KafkaSettings,
    topic_settings: TopicSettings,
    trainer_process: ServiceServer,
    tmp_path: Path,
    unique: str,
) -> None:
    # A Redis that keeps its data across the restart, as a production one does.
    redis = RedisServer(
        name="redis-own", home=tmp_path / "redis", port=free_port(), persistence=True
    )
    redis.start()
    try:
        settings = inference_settings(
            kafka_settings, topic_settings,
            RedisSettings(url=redis.url, key_prefix="own:"),  # type: ignore[arg-type]
            trainer_process.url, tmp_path, unique,
        )  # fmt: skip
        await produce(kafka_settings, topic_settings.events, chain_events(40, 25, 30))
        version = await publish_batch(trainer, "chain")
        async with serve(create_app(settings)) as inference:
            await poll(inference, "/v1/model", lambda m: m["version"] == version)
            await poll(inference, "/v1/recommendations?user_id=u1", lambda b: b["fallback"] is None)
            statuses: list[int] = []
            paths: list[str | None] = []
            stop = asyncio.Event()

            async def hammer() -> None:
                while not stop.is_set():
                    response = await inference.get("/v1/recommendations", params={"user_id": "u1"})
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        paths.append(response.json()["fallback"])
                    await asyncio.sleep(0.005)

            load = asyncio.create_task(hammer())
            try:
                await asyncio.sleep(0.3)
                redis.stop()
                await asyncio.sleep(1.0)
                ready = await inference.get("/readyz")
                assert ready.status_code == 200, "readiness ignores Redis"
                redis.start()
                await asyncio.sleep(1.5)
            finally:
                stop.set()
                await load
        assert set(statuses) == {200}, "never a 500 for a known failure"
        assert "model_without_features" in paths
        assert paths[0] is None, "personalised before"
        assert paths[-1] is None, "personalised again after"
    finally:
        redis.stop()


async def test_stream_inference_answers_on_the_response_topic(
    trainer: httpx.AsyncClient, settings: InferenceSettings, kafka_settings: KafkaSettings
) -> None:
    topics = settings.topics
    await produce(kafka_settings, topics.events, chain_events(40, 25, 30))
    version = await publish_batch(trainer, "chain")
    async with serve(create_app(settings)) as inference:
        await poll(inference, "/v1/model", lambda m: m["version"] == version)
        producer = ResilientProducer(kafka_settings)
        await producer.start(wait_s=10)
        try:
            for value in (orjson.dumps({"user_id": "u2", "k": 3}), b'{"k": 3}'):
                headers = [("x-request-id", value[:8])]
                await (await producer.send(topics.rec_requests, value, b"u2", headers))
        finally:
            await producer.stop()
        answers = await read_topic(kafka_settings, topics.rec_responses, expected=2, timeout_s=30)
    good, bad = (orjson.loads(a.value) for a in answers)
    assert answers[0].key == b"u2"
    assert dict(answers[0].headers)["x-request-id"] == orjson.dumps({"user_id": "u2", "k": 3})[:8]
    assert good["model_version"] == version
    assert len(good["items"]) == 3
    assert bad["error"]["details"][0]["field"] == "user_id"
