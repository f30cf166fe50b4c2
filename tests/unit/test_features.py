"""The Redis feature store (on fakeredis with Lua): schema, decay, rescaling, atomic positions."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import fakeredis
import orjson
import pytest
from inference.config import InferenceSettings
from inference.features import (
    RESCALE_AFTER_HALF_LIVES,
    SCHEMA_VERSION,
    CoalescedUserReads,
    FeatureBatch,
    FeatureEvent,
    FeatureStore,
    PositionConflict,
    UserFeatures,
    decode_event,
)
from inference.updater import FeatureUpdater
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from streamrec_shared.kafka import ResilientProducer
from streamrec_shared.models.item_pooling import ItemContext
from streamrec_shared.schemas.events import INTERACTION_WEIGHTS, EventIn, EventType
from streamrec_shared.settings import KafkaSettings, RedisSettings

T0 = 1_767_225_600_000  # 2026-01-01, ms
HOUR_MS = 3_600_000
TOPIC = "events"


def settings(**overrides: object) -> InferenceSettings:
    values: dict[str, object] = {
        "redis": RedisSettings(key_prefix="t:"),
        "recent_items": 3,
        "max_seen_items": 3,
        "popularity_half_life_s": 3600.0,
        "trending_half_life_s": 600.0,
        **overrides,
    }
    return InferenceSettings.model_validate(values)


async def contexts_of(store: FeatureStore, items: Sequence[str]) -> dict[str, ItemContext]:
    """The contexts of ``items`` as read from nothing held; items without one are left out."""
    read = await store.changed_contexts(dict.fromkeys(items, -1))
    return {item: context for item, context in read.items() if context is not None}


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
async def redis(server: fakeredis.FakeServer) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis(server=server)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: fakeredis.FakeAsyncRedis) -> FeatureStore:
    return FeatureStore(redis, settings())


def ev(item: str, ms: int, type_: str = "click", user: str = "u") -> FeatureEvent:
    return FeatureEvent(user, item, type_, INTERACTION_WEIGHTS.get(type_, 0.0), ms, ms / 1000)


class Stream:
    """Batches with consecutive offsets on one partition, as the updater builds them."""

    def __init__(self, partition: int = 0) -> None:
        self.partition, self.offset = partition, 0

    def batch(self, *events: FeatureEvent) -> FeatureBatch:
        first, self.offset = self.offset, self.offset + len(events)
        return FeatureBatch(TOPIC, events, {self.partition: first}, {self.partition: self.offset})


async def test_recent_is_newest_first_and_trimmed(store: FeatureStore) -> None:
    stream = Stream()
    await store.apply(stream.batch(ev("a", T0), ev("b", T0 + 1)))
    assert (await store.user_features("u")).recent == ["b", "a"]
    await store.apply(stream.batch(ev("c", T0 + 2), ev("d", T0 + 3), ev("b", T0 + 4)))
    features = await store.user_features("u")
    assert features.recent == ["b", "d", "c"]  # a repeat is kept, as in training; 3 at most
    # A batch longer than the list keeps only its newest items.
    await store.apply(stream.batch(*(ev(f"x{i}", T0 + 10 + i) for i in range(5))))
    assert (await store.user_features("u")).recent == ["x4", "x3", "x2"]


async def test_the_serving_string_follows_the_lists_it_is_read_instead_of(
    redis: fakeredis.FakeAsyncRedis, store: FeatureStore
) -> None:
    stream = Stream()
    rng = random.Random(3)
    for step in range(30):
        events = [
            ev(f"i{rng.randrange(8)}", T0 + step * 10 + n, rng.choice(["click", "view", "dislike"]),
               user=rng.choice(["u", "v"]))
            for n in range(rng.randrange(1, 6))
        ]  # fmt: skip
        await store.apply(stream.batch(*events))
        for user in ("u", "v"):
            read = (await store.users_features([user]))[0]
            recent = await redis.lrange(store.user_key(user, "recent"), 0, -1)
            seen = await redis.zrevrange(store.user_key(user, "seen"), 0, -1)
            assert read.recent == [item.decode() for item in recent]
            assert read.seen == [item.decode() for item in seen]


async def test_a_store_of_the_previous_schema_is_migrated_once(
    redis: fakeredis.FakeAsyncRedis, store: FeatureStore
) -> None:
    # What version 1 wrote: the lists, no serving strings, no schema key.
    await redis.rpush(store.user_key("old", "recent"), "b", "a")
    await redis.zadd(store.user_key("old", "seen"), {"a": 1, "b": 2})
    assert (await store.users_features(["old"]))[0] == UserFeatures()
    assert await store.migrate() == 1
    assert (await store.users_features(["old"]))[0] == UserFeatures(["b", "a"], ["b", "a"])
    assert int(await redis.get(store.schema_key)) == SCHEMA_VERSION
    assert await store.migrate() == 0  # marked: not again
    # An empty store (the updater migrates before its first write) is only marked.
    fresh = FeatureStore(redis, settings(redis=RedisSettings(key_prefix="fresh:")))
    assert await fresh.migrate() == 0
    await fresh.apply(Stream().batch(ev("x", T0)))
    assert await fresh.migrate() == 0
    assert int(await redis.get(fresh.schema_key)) == SCHEMA_VERSION


async def test_seen_keeps_the_most_recently_seen(store: FeatureStore) -> None:
    stream = Stream()
    await store.apply(stream.batch(ev("a", T0), ev("b", T0 + 1), ev("c", T0 + 2)))
    await store.apply(stream.batch(ev("a", T0 + 3)))  # seen again: now the newest
    await store.apply(stream.batch(ev("b", T0 - 50)))  # an older repeat moves nothing back
    await store.apply(stream.batch(ev("d", T0 + 4)))  # over the limit: the oldest (b) goes
    assert (await store.user_features("u")).seen == ["d", "a", "c"]


async def test_counts_every_type_and_negatives_touch_nothing_else(store: FeatureStore) -> None:
    stream = Stream()
    await store.apply(
        stream.batch(
            ev("a", T0),
            ev("a", T0 + 1, "purchase"),
            ev("b", T0 + 2, "dislike"),
            ev("c", T0 + 3, "remove_from_cart"),
            ev("a", T0 + 4),
        )
    )
    features = await store.user_features("u")
    assert features.counts == {"click": 2, "purchase": 1, "dislike": 1, "remove_from_cart": 1}
    assert features.recent == ["a", "a", "a"]
    assert features.seen == ["a"]
    assert [item for item, _ in await store.popular(10, set())] == ["a"]
    assert (await store.user_features("nobody")).empty
    assert not features.empty
    assert UserFeatures().empty


async def test_newer_events_outweigh_older_ones_by_the_half_life(store: FeatureStore) -> None:
    stream = Stream()
    # Equal weights one half-life apart: the newer counts twice as much.
    await store.apply(stream.batch(ev("old", T0, user="u1"), ev("new", T0 + HOUR_MS, user="u2")))
    popular = dict(await store.popular(10, set()))
    assert [i for i, _ in await store.popular(10, set())] == ["new", "old"]
    assert popular["new"] == pytest.approx(1.0)  # decayed to the newest event: one fresh click
    assert popular["old"] == pytest.approx(0.5)
    # Weights count: one purchase now beats two clicks an hour ago (3 > 1 + 2 × 0.5).
    await store.apply(stream.batch(ev("old", T0 + HOUR_MS), ev("bought", T0 + HOUR_MS, "purchase")))
    popular = dict(await store.popular(10, set()))
    assert popular == pytest.approx({"bought": 3.0, "old": 1.5, "new": 1.0})


async def test_rescaling_keeps_order_and_ratios(redis: fakeredis.FakeAsyncRedis) -> None:
    store = FeatureStore(redis, settings(popularity_half_life_s=36_000.0))
    stream = Stream()
    short_ms, long_ms = 600_000, 36_000_000
    await store.apply(stream.batch(ev("a", T0), ev("a", T0 + 1000), ev("b", T0 + 60_000)))
    before = dict(await store.popular(10, set()))
    ratio = before["a"] / before["b"]
    landmark = int(await redis.get(store.landmark_key))
    # Far enough for a rescale of the short half-life's exponent, with events on both sides.
    later = landmark + int((RESCALE_AFTER_HALF_LIVES + 10) * short_ms)
    await store.apply(stream.batch(ev("c", later)))
    assert int(await redis.get(store.landmark_key)) == later
    after = dict(await store.popular(10, set()))
    assert after["a"] / after["b"] == pytest.approx(ratio, rel=1e-9)
    assert after["b"] == pytest.approx(math.exp2(-(later - T0 - 60_000) / long_ms), rel=1e-9)
    assert after["c"] == pytest.approx(1.0)
    # Stored scores were brought back near the landmark: no huge exponents left.
    raw = await redis.zrange(store.trending_key, 0, -1, withscores=True)
    assert all(score <= 1.0 for _, score in raw)
    # The short-term scores of a and b decayed below the pruning threshold and are gone.
    assert [item for item, _ in raw] == [b"c"]


async def test_a_jump_of_a_million_half_lives_does_not_overflow(store: FeatureStore) -> None:
    stream = Stream()
    await store.apply(stream.batch(ev("a", T0)))
    await store.apply(stream.batch(ev("b", T0 + 1_000_000 * HOUR_MS)))
    assert await store.popular(10, set()) == [("b", 1.0)]  # a has decayed away entirely
    # An event far older than the landmark adds nothing rather than failing.
    await store.apply(stream.batch(ev("ancient", T0)))
    assert [i for i, _ in await store.popular(10, set())] == ["b"]


async def test_apply_is_atomic_with_its_position(
    server: fakeredis.FakeServer, store: FeatureStore
) -> None:
    stream = Stream()
    await store.apply(stream.batch(ev("a", T0)))
    failing = stream.batch(ev("b", T0 + 1), ev("c", T0 + 2))
    server.connected = False
    with pytest.raises(RedisConnectionError):
        await store.apply(failing)
    server.connected = True
    assert await store.positions(TOPIC) == {0: 1}
    assert (await store.user_features("u")).recent == ["a"]
    # Retrying the same batch applies it once; applying it again (a lost EXEC reply) is refused.
    await store.apply(failing)
    with pytest.raises(PositionConflict) as conflict:
        await store.apply(failing)
    assert conflict.value.stored == {0: 3}
    features = await store.user_features("u")
    assert features.recent == ["c", "b", "a"]
    assert features.counts == {"click": 3}
    # New items' contexts too: counted once, though the batch was sent three times.
    assert await contexts_of(store, ["b", "c"]) == {
        "b": ItemContext(1, {"a": 1}),
        "c": ItemContext(1, {"b": 1, "a": 1}),
    }
    assert await store.positions(TOPIC) == {0: 3}
    assert await store.positions("another-topic") == {}


async def test_a_new_items_context_counts_its_users_newest_items_in_its_first_events(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    store = FeatureStore(
        redis, settings(recent_items=5, new_item_context_items=2, new_item_context_events=2)
    )
    stream = Stream()
    # One batch: u1's items in order, so x's context is u1's newest two before it.
    await store.apply(stream.batch(*(ev(i, T0 + n, user="u1") for n, i in enumerate("abcx"))))
    assert await contexts_of(store, ["a", "b", "c", "x"]) == {
        "b": ItemContext(1, {"a": 1}),
        "c": ItemContext(1, {"b": 1, "a": 1}),
        "x": ItemContext(1, {"c": 1, "b": 1}),
    }  # a: u1's first event, nothing before it
    await store.apply(stream.batch(ev("b", T0 + 10, user="u2"), ev("x", T0 + 11, user="u2")))
    assert (await contexts_of(store, ["x"]))["x"] == ItemContext(2, {"c": 1, "b": 2})
    changed = await store.context_changes()
    assert changed[0] > 0  # contexts opened (a, b, c, x)
    assert changed[1] > 0  # and added to
    # x's third event is past its first two: not counted; nor is a non-positive event.
    await store.apply(stream.batch(ev("a", T0 + 20, user="u3"), ev("x", T0 + 21, user="u3")))
    await store.apply(stream.batch(ev("x", T0 + 30, "dislike", user="u4")))
    # Its events as counted in the context: the first two, though x had three.
    assert (await contexts_of(store, ["x"]))["x"] == ItemContext(2, {"c": 1, "b": 2})
    assert await store.context_changes() == changed  # nothing changed: no signal
    assert await store.newest_items(3) == ["x", "c", "b"]
    assert 0 < await redis.ttl(store.context_key("x")) <= 86_400
    # Only an item's first event opens its context: once expired, it is not reopened.
    await redis.delete(store.context_key("x"))
    await store.apply(stream.batch(ev("c", T0 + 40, user="u5"), ev("x", T0 + 41, user="u5")))
    assert await contexts_of(store, ["x", "unknown"]) == {}


async def test_no_contexts_when_turned_off(redis: fakeredis.FakeAsyncRedis) -> None:
    store = FeatureStore(redis, settings(new_item_context_items=0))
    await store.apply(Stream().batch(ev("a", T0), ev("b", T0 + 1)))
    assert await contexts_of(store, ["a", "b"]) == {}
    assert await redis.keys("t:i:*") == []
    assert await store.context_changes() == (0, 0)
    assert await store.newest_items(10) == ["b", "a"]


async def test_first_seen_keeps_the_newest_items_only(redis: fakeredis.FakeAsyncRedis) -> None:
    store = FeatureStore(redis, settings(first_seen_max=3, new_items_max=2))
    stream = Stream()
    await store.apply(stream.batch(*(ev(i, T0 + n) for n, i in enumerate("abcd"))))
    assert await store.newest_items(10) == ["d", "c", "b"]  # a: the oldest, dropped
    await store.apply(stream.batch(ev("e", T0 + 10, user="v")))
    assert await store.newest_items(10) == ["e", "d", "c"]
    # An item dropped and seen again is taken for new: first seen now, its context reopened.
    await store.apply(stream.batch(ev("a", T0 + 20, user="v")))
    assert await store.newest_items(10) == ["a", "e", "d"]
    assert await contexts_of(store, ["a"]) == {"a": ItemContext(1, {"e": 1})}


def test_first_seen_must_hold_the_new_items_read() -> None:
    with pytest.raises(ValueError, match="first_seen_max"):
        settings(first_seen_max=10, new_items_max=11)


async def test_a_concurrent_writer_is_detected(store: FeatureStore) -> None:
    # Two writers read the same partition: the batch is applied by one of them only.
    stream = Stream()
    batch = stream.batch(ev("a", T0), ev("b", T0 + 1))
    outcomes = await asyncio.gather(store.apply(batch), store.apply(batch), return_exceptions=True)
    assert sum(isinstance(o, PositionConflict) for o in outcomes) == 1
    assert (await store.user_features("u")).counts == {"click": 2}


async def test_a_writer_with_a_stale_landmark_scores_against_the_stored_one(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    # Two stores on one Redis (a restarted updater, or two of them): each computes item scores
    # against the landmark it last saw, and the script refuses a stale one.
    first, second = FeatureStore(redis, settings()), FeatureStore(redis, settings())
    stream = Stream()
    await first.apply(stream.batch(ev("a", T0)))
    await second.apply(stream.batch(ev("b", T0 + HOUR_MS)))  # second has never seen T0
    assert int(await redis.get(first.landmark_key)) == T0
    assert dict(await first.popular(10, set())) == pytest.approx({"a": 0.5, "b": 1.0})
    # first moves the landmark (a rescale); second, still on T0, is corrected again.
    later = T0 + int((RESCALE_AFTER_HALF_LIVES + 10) * 600_000)
    await first.apply(stream.batch(ev("c", later)))
    await second.apply(stream.batch(ev("d", later + HOUR_MS)))
    assert int(await redis.get(first.landmark_key)) == later
    scores = dict(await first.popular(10, set()))
    assert scores["d"] == pytest.approx(1.0)
    assert scores["c"] == pytest.approx(0.5)


async def test_popular_and_trending_exclude(store: FeatureStore) -> None:
    stream = Stream()
    # "steady" has been popular for a day; "rising" only in the last minutes, a bit less often.
    steady = [
        ev("steady", T0 + h * HOUR_MS + m * 60_000) for h in range(24) for m in range(0, 60, 10)
    ]
    rising = [ev("rising", T0 + 24 * HOUR_MS + m * 60_000) for m in range(5)]
    await store.apply(stream.batch(*steady, *rising, ev("one", T0 + 24 * HOUR_MS - 2 * HOUR_MS)))
    popular = await store.popular(2, set())
    assert [i for i, _ in popular] == ["steady", "rising"]
    assert [i for i, _ in await store.popular(2, {"steady"})] == ["rising", "one"]
    trending = await store.trending(3, set())
    assert [i for i, _ in trending] == ["rising", "steady", "one"]
    assert all(0 < score < 1 for _, score in trending)
    assert [i for i, _ in await store.trending(5, {"rising", "one"})] == ["steady"]
    assert await store.trending(0, set()) == []


async def test_reads_of_an_empty_store(store: FeatureStore) -> None:
    assert await store.popular(5, set()) == []
    assert await store.trending(5, {"x"}) == []
    assert await store.positions(TOPIC) == {}
    assert (await store.user_features("u")).empty


async def test_clear_deletes_only_feature_keys(
    redis: fakeredis.FakeAsyncRedis, store: FeatureStore
) -> None:
    stream = Stream()
    await store.apply(stream.batch(*(ev("a", T0 + i, user=f"user{i}") for i in range(1500))))
    others = [
        "t:items:meta",
        "t:items:meta:version",
        "t:dedup:e1",
        "other:u:x:recent",
        "other:i:a:context",
    ]
    for key in others:
        await redis.set(key, "1")
    # Per user recent, seen, counts, serving; a's context; 7 store-wide keys.
    assert await store.clear() == 1500 * 4 + 1 + 7
    assert sorted(k.decode() for k in await redis.keys("*")) == sorted(others)
    assert await store.positions(TOPIC) == {}
    # A prefix with glob characters matches only itself.
    glob = FeatureStore(redis, settings(redis=RedisSettings(key_prefix="t*")))
    assert await glob.clear() == 0


def record(type_: str = "click", **fields: object) -> bytes:
    value = 4.0 if type_ == "rating" else None
    event = EventIn.model_validate(
        {"user_id": "u1", "item_id": "i1", "type": type_, "value": value, **fields}
    )
    return event.record_value("e-1", datetime(2026, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC))


def test_decode_event() -> None:
    stamp = datetime(1998, 3, 1, tzinfo=UTC)
    event = decode_event(record("purchase", timestamp=stamp))
    assert event == FeatureEvent(
        "u1",
        "i1",
        "purchase",
        INTERACTION_WEIGHTS["purchase"],
        int(stamp.timestamp() * 1000),
        datetime(2026, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC).timestamp(),
    )
    dislike = decode_event(record(EventType.DISLIKE))
    assert dislike is not None
    assert dislike.weight == 0.0
    newer = orjson.loads(record())
    newer["type"] = "hover"  # a type this version does not know: skipped, not dead-lettered
    assert decode_event(orjson.dumps(newer)) is None
    naive = orjson.loads(record())
    naive["timestamp"] = "2026-01-01T00:00:00"
    decoded = decode_event(orjson.dumps(naive))
    assert decoded is not None
    assert decoded.event_ms == T0  # no zone: UTC
    for garbage in (b"", b"not json", b"[1]", b'{"type": "click"}'):
        with pytest.raises(ValueError, match="not an event record"):
            decode_event(garbage)
    for field, value in (("user_id", 7), ("timestamp", "yesterday"), ("received_at", None)):
        broken = orjson.loads(record())
        broken[field] = value
        with pytest.raises(ValueError, match="not an event record"):
            decode_event(orjson.dumps(broken))


async def test_updater_retries_the_same_batch_while_redis_is_down(
    server: fakeredis.FakeServer, redis: fakeredis.FakeAsyncRedis
) -> None:
    registry = CollectorRegistry()
    producer = ResilientProducer(KafkaSettings())  # never started: no dead letters here
    updater = FeatureUpdater(settings(), redis, producer, registry)
    batch = Stream().batch(ev("a", T0), ev("b", T0 + 1))
    server.connected = False
    asyncio.get_running_loop().call_later(0.3, setattr, server, "connected", True)
    started = asyncio.get_running_loop().time()
    await updater._retry_redis(lambda: updater.store.apply(batch))
    assert asyncio.get_running_loop().time() - started >= 0.3
    assert (await updater.store.user_features("u")).recent == ["b", "a"]
    retries = registry.get_sample_value("inference_feature_retries_total", {"cause": "redis"})
    assert retries is not None
    assert retries >= 2
    updater._observe(batch.events, 0.001)
    assert registry.get_sample_value("inference_feature_events_applied_total") == 2
    assert registry.get_sample_value("inference_feature_freshness_seconds_count") == 2


async def test_a_replay_of_old_data_decays_by_event_time(store: FeatureStore) -> None:
    # The decay clock is the events' own time: a 1998 replay is not "decades old".
    start = decode_event(record(timestamp=datetime(1998, 1, 1, tzinfo=UTC)))
    later = decode_event(record(timestamp=datetime(1998, 1, 1, 1, tzinfo=UTC), item_id="i2"))
    assert start is not None
    assert later is not None
    await store.apply(Stream().batch(start, later))
    popular = await store.popular(5, set())
    assert [item for item, _ in popular] == ["i2", "i1"]
    assert dict(popular) == pytest.approx({"i2": 1.0, "i1": 0.5})


# ------------------------------------------------------------------- coalesced serving reads


class CountingStore:
    """A FeatureStore's batch read, counted, optionally failing or slow."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.calls: list[list[str]] = []
        self.error: Exception | None = None
        self.delay_s = 0.0

    async def users_features(self, user_ids: list[str]) -> list[UserFeatures]:
        self.calls.append(list(user_ids))
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return await self.store.users_features(user_ids)


async def test_reads_waiting_together_share_one_redis_call(store: FeatureStore) -> None:
    stream = Stream()
    await store.apply(stream.batch(*(ev(f"i{n}", T0 + n, user=f"u{n}") for n in range(5))))
    counting = CountingStore(store)
    registry = CollectorRegistry()
    reads = CoalescedUserReads(counting, registry, 1.0, max_batch=3)  # type: ignore[arg-type]
    users = [f"u{n}" for n in range(5)] + ["nobody"]
    got = await asyncio.gather(*(reads.user_features(user) for user in users))
    # Six waiters in one turn: batches of at most three, every user answered with their own.
    assert counting.calls == [users[:3], users[3:]]
    assert [f.recent for f in got] == [[f"i{n}"] for n in range(5)] + [[]]
    assert all(f.counts == {} for f in got)  # the serving read leaves the counts out
    # The batch read gives what the one-user read gives.
    assert [await store.user_features(user, counts=False) for user in users] == got
    # A later turn is a new batch.
    assert (await reads.user_features("u1")).recent == ["i1"]
    assert counting.calls[-1] == ["u1"]
    sizes = "inference_feature_read_batch_size"
    assert registry.get_sample_value(f"{sizes}_count") == 3
    assert registry.get_sample_value(f"{sizes}_sum") == 7


async def test_a_failed_batch_fails_each_waiter_and_a_timed_out_waiter_leaves_the_rest(
    store: FeatureStore,
) -> None:
    counting = CountingStore(store)
    reads = CoalescedUserReads(counting, CollectorRegistry(), 1.0)  # type: ignore[arg-type]
    counting.error = RedisConnectionError("down")
    results = await asyncio.gather(
        reads.user_features("a"), reads.user_features("b"), return_exceptions=True
    )
    assert [type(r) for r in results] == [RedisConnectionError, RedisConnectionError]
    assert counting.calls == [["a", "b"]]

    counting.error, counting.delay_s = None, 0.05

    async def impatient() -> UserFeatures:
        async with asyncio.timeout(0.01):
            return await reads.user_features("a")

    late, patient = await asyncio.gather(
        impatient(), reads.user_features("b"), return_exceptions=True
    )
    assert isinstance(late, TimeoutError)
    assert isinstance(patient, UserFeatures)
    assert counting.calls[-1] == ["a", "b"]
    await reads.stop()


async def test_requests_arriving_while_a_read_is_out_go_together_in_the_next(
    store: FeatureStore,
) -> None:
    counting = CountingStore(store)
    counting.delay_s = 0.02
    reads = CoalescedUserReads(counting, CollectorRegistry(), 1.0)  # type: ignore[arg-type]
    first = asyncio.create_task(reads.user_features("a"))
    await asyncio.sleep(0.005)  # "a" is out
    later = [asyncio.create_task(reads.user_features(u)) for u in ("b", "c", "d")]
    await asyncio.sleep(0)
    assert counting.calls == [["a"]]  # one call at a time: b, c and d wait for it
    await asyncio.gather(first, *later)
    assert counting.calls == [["a"], ["b", "c", "d"]]


async def test_a_hung_read_is_abandoned_after_its_timeout_and_frees_the_slot(
    store: FeatureStore,
) -> None:
    counting = CountingStore(store)
    counting.delay_s = 10.0  # a connection that never answers
    reads = CoalescedUserReads(counting, CollectorRegistry(), 0.05)  # type: ignore[arg-type]
    hung = asyncio.create_task(reads.user_features("a"))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(reads.user_features("b"))
    with pytest.raises(TimeoutError):
        await hung
    counting.delay_s = 0.0
    assert isinstance(await waiting, UserFeatures)  # the next call went once the slot was free
    assert counting.calls == [["a"], ["b"]]
