"""Inference's vectors for items the served version does not know (on fakeredis with Lua)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import fakeredis
import numpy as np
import pytest
from inference.features import FeatureStore
from inference.models import ServedModel
from inference.new_items import NewItemVectors
from prometheus_client import CollectorRegistry
from streamrec_shared.models.item_pooling import ItemContext, ItemPoolingScorer

from tests.unit.test_features import T0, Stream, ev, settings
from tests.unit.test_recommender import Holder, served


@pytest.fixture
async def store() -> AsyncIterator[FeatureStore]:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield FeatureStore(redis, settings(recent_items=5))
    await redis.aclose()


def knowing(model: ServedModel, *items: str) -> ServedModel:
    """The same model as a newer version that also knows ``items``."""
    weights = model.scorer.weights
    extra = len(items)
    grown = type(weights)(
        item_ids=[*weights.item_ids, *items],
        item_in=np.vstack([weights.item_in, np.zeros((extra, weights.item_in.shape[1]))]),
        item_out=np.vstack([weights.item_out, np.zeros((extra, weights.item_out.shape[1]))]),
        item_bias=np.concatenate([weights.item_bias, np.zeros(extra)]).astype(np.float32),
        position_logits=weights.position_logits,
        projection=weights.projection,
        projection_bias=weights.projection_bias,
    )
    return ServedModel(
        "spec", model.version + 1, "1" * 64, ItemPoolingScorer(grown), grown.item_out, 0.0
    )


async def test_the_table_follows_the_contexts_and_the_served_version(store: FeatureStore) -> None:
    model = served()
    holder = Holder(model)
    registry = CollectorRegistry()
    vectors = NewItemVectors(store, holder, registry, max_items=10, refresh_s=1.0)
    assert await vectors.refresh()
    assert vectors.for_model(model).item_ids == []  # type: ignore[union-attr]
    stream = Stream()
    await store.apply(stream.batch(ev("i2", T0, user="a"), ev("n", T0 + 1, user="a")))
    assert await vectors.refresh()
    folded = vectors.for_model(model)
    assert folded is not None
    assert folded.item_ids == ["n"]
    np.testing.assert_array_equal(folded.vectors[0], model.scorer.weights.item_out[2])
    assert registry.get_sample_value("inference_new_items_ranked") == 1
    assert not await vectors.refresh()  # nothing moved: nothing rebuilt
    # Another user arrives at n from i3: n moves half way there.
    await store.apply(stream.batch(ev("i3", T0 + 2, user="b"), ev("n", T0 + 3, user="b")))
    assert await vectors.refresh()
    folded = vectors.for_model(model)
    assert folded is not None
    out = model.scorer.weights.item_out
    np.testing.assert_allclose(folded.vectors[0], (out[2] + out[3]) / 2)
    # Only a context added to (no item first seen): n is reread.
    await store.apply(stream.batch(ev("i3", T0 + 2, user="e"), ev("n", T0 + 3, user="e")))
    assert await vectors.refresh()
    folded = vectors.for_model(model)
    assert folded is not None
    np.testing.assert_allclose(folded.vectors[0], (out[2] + 2 * out[3]) / 3)
    # A version that knows n: the old table is not used with it, the new one leaves n out.
    holder.current = newer = knowing(model, "n")
    assert vectors.for_model(newer) is None
    assert await vectors.refresh()
    assert vectors.for_model(model) is None
    assert vectors.for_model(newer).item_ids == []  # type: ignore[union-attr]
    # Contexts of items this version knows move: nothing to rebuild.
    await store.apply(stream.batch(ev("i2", T0 + 4, user="c"), ev("i3", T0 + 5, user="c")))
    assert not await vectors.refresh()
    # An item first seen now: the newest items are read again.
    await store.apply(stream.batch(ev("i3", T0 + 6, user="d"), ev("o", T0 + 7, user="d")))
    assert await vectors.refresh()
    assert vectors.for_model(newer).item_ids == ["o"]  # type: ignore[union-attr]
    holder.current = None
    assert await vectors.refresh()
    assert vectors.for_model(newer) is None


async def test_only_the_newest_items_are_considered(store: FeatureStore) -> None:
    model = served()
    vectors = NewItemVectors(store, Holder(model), CollectorRegistry(), max_items=2, refresh_s=1.0)
    stream = Stream()
    events = [ev("i1", T0, user="a")]
    events += [ev(f"n{k}", T0 + 1 + k, user="a") for k in range(3)]
    await store.apply(stream.batch(*events))
    await vectors.refresh()
    folded = vectors.for_model(model)
    assert folded is not None
    assert sorted(folded.item_ids) == ["n1", "n2"]


def young_vectors(store: FeatureStore, model: ServedModel, young_events: int) -> NewItemVectors:
    return NewItemVectors(
        store,
        Holder(model),
        CollectorRegistry(),
        max_items=10,
        refresh_s=1.0,
        young_events=young_events,
        young_items=2,
    )


async def test_young_items_the_version_knows_are_read_with_the_new_ones(
    store: FeatureStore,
) -> None:
    model = served(term_weight=2.0)  # each item counted 4 times
    vectors = young_vectors(store, model, young_events=5)
    stream = Stream()
    await store.apply(stream.batch(ev("i3", T0, user="a"), ev("i1", T0 + 1, user="a")))
    assert await vectors.refresh()
    folded = vectors.for_model(model)
    assert folded is not None
    assert folded.item_ids == []  # both known
    assert list(folded.young_term.targets) == [1]  # i1, from its context: i3 before it
    # Its context grows: it is reread, though no item was first seen.
    await store.apply(stream.batch(ev("i2", T0 + 2, user="b"), ev("i1", T0 + 3, user="b")))
    assert await vectors.refresh()
    folded = vectors.for_model(model)
    assert folded is not None
    assert sorted(folded.young_term.rows.tolist()) == [2, 3]
    # Young only among the newest items (2 here): i5 and i4 now, no longer i1.
    await store.apply(stream.batch(ev("i4", T0 + 4, user="c"), ev("i5", T0 + 5, user="c")))
    assert await vectors.refresh()
    folded = vectors.for_model(model)
    assert folded is not None
    assert list(folded.young_term.targets) == [5]  # i5, from i4 before it
    # Young only below the threshold: not at all with 4 (the version counted 4 of each).
    counted = young_vectors(store, model, young_events=4)
    assert await counted.refresh()
    assert len(counted.for_model(model).young_term) == 0  # type: ignore[union-attr]


async def test_closed_contexts_are_not_read_again() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    store = FeatureStore(redis, settings(recent_items=5, new_item_context_events=2))
    reads: list[list[str]] = []
    read_contexts = store.changed_contexts

    async def counting_reads(held: Mapping[str, int]) -> dict[str, ItemContext | None]:
        reads.append(list(held))
        return await read_contexts(held)

    store.changed_contexts = counting_reads  # type: ignore[method-assign]
    model = served()
    vectors = NewItemVectors(store, Holder(model), CollectorRegistry(), max_items=10, refresh_s=1)
    stream = Stream()
    out = model.scorer.weights.item_out
    await store.apply(stream.batch(ev("i2", T0, user="a"), ev("n", T0 + 1, user="a")))
    assert await vectors.refresh()
    await store.apply(stream.batch(ev("i3", T0 + 2, user="b"), ev("n", T0 + 3, user="b")))
    assert await vectors.refresh()  # n's second event: its context is closed now
    np.testing.assert_allclose(vectors.for_model(model).vectors[0], (out[2] + out[3]) / 2)  # type: ignore[union-attr]
    assert reads[-1] == ["n"]
    # A third user: the updater counts no more pairs for n, and n is not read again.
    await store.apply(stream.batch(ev("i1", T0 + 4, user="c"), ev("n", T0 + 5, user="c")))
    # Another context moves (o is new and open): only o is read, and the table is rebuilt.
    await store.apply(stream.batch(ev("i1", T0 + 6, user="d"), ev("o", T0 + 7, user="d")))
    assert await vectors.refresh()
    assert reads[-1] == ["o"]
    folded = vectors.for_model(model)
    assert folded is not None
    assert sorted(folded.item_ids) == ["n", "o"]
    np.testing.assert_allclose(folded.vectors[folded.rows["n"]], (out[2] + out[3]) / 2)
    # o's context moves: o alone is read again.
    await store.apply(stream.batch(ev("i3", T0 + 8, user="e"), ev("o", T0 + 9, user="e")))
    assert await vectors.refresh()
    assert reads[-1] == ["o"]
    np.testing.assert_allclose(folded.vectors[folded.rows["o"]], out[1])
    np.testing.assert_allclose(
        vectors.for_model(model).vectors[folded.rows["o"]],  # type: ignore[union-attr]
        (out[1] + out[3]) / 2,
    )
    await redis.aclose()


async def test_only_contexts_that_changed_are_sent(store: FeatureStore) -> None:
    stream = Stream()
    await store.apply(stream.batch(ev("i2", T0, user="a"), ev("n", T0 + 1, user="a")))
    await store.apply(stream.batch(ev("i3", T0 + 2, user="b"), ev("o", T0 + 3, user="b")))
    first = await store.changed_contexts({"n": -1, "o": -1, "never-seen": -1})
    assert first == {
        "n": ItemContext(1, {"i2": 1}),
        "o": ItemContext(1, {"i3": 1}),
        "never-seen": None,
    }
    assert await store.changed_contexts({"n": 1, "o": 1}) == {}
    await store.apply(stream.batch(ev("i1", T0 + 4, user="c"), ev("o", T0 + 5, user="c")))
    assert await store.changed_contexts({"n": 1, "o": 1}) == {
        "o": ItemContext(2, {"i3": 1, "i1": 1})
    }
