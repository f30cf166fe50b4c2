"""The recommender's fallback chain and scoring rules, with a hand-built model and fake features."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pytest
from inference.catalog import ItemCatalog, ItemIn
from inference.models import ServedModel
from inference.recommender import MIRROR_REFRESH_S, Recommender
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from streamrec_shared.models.item_pooling import (
    FoldedItems,
    ItemContext,
    ItemPoolingScorer,
    ItemPoolingWeights,
    fold_in,
)

ITEMS = [f"i{n}" for n in range(6)]


def served(version: int = 1, term_weight: float = 0.0) -> ServedModel:
    """Item k's output embedding points where item k-1's input embedding does: after i(k-1)
    comes ik. Bias favours i5 for users without history. ``term_weight``: an item-to-item term
    with no neighbor lists (the catalogue's scores stay the same), each item counted 4 times:
    only items the version does not know get it, from their contexts."""
    dim = len(ITEMS)
    item_in = np.eye(dim, dtype=np.float32)
    item_out = np.roll(np.eye(dim, dtype=np.float32), 1, axis=0)
    weights = ItemPoolingWeights(
        item_ids=ITEMS,
        item_in=item_in,
        item_out=item_out,
        item_bias=np.array([0, 0, 0, 0, 0, 0.5], dtype=np.float32),
        position_logits=np.array([2, 0, 0], dtype=np.float32),  # the newest item counts most
        projection=np.eye(dim, dtype=np.float32),
        projection_bias=np.zeros(dim, dtype=np.float32),
    )
    if term_weight:
        weights = dataclasses.replace(
            weights,
            neighbor_indptr=np.zeros(dim + 1, dtype=np.int64),
            cooccurrence_weight=term_weight,
            cooccurrence_window=2,
            cooccurrence_decay=0.5,
            item_events=np.full(dim, 4.0, dtype=np.float32),
        )
    scorer = ItemPoolingScorer(weights)
    return ServedModel("spec", version, "0" * 64, scorer, item_out, 0.0)


@dataclass
class Features:
    recent: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)


class FakeFeatures:
    def __init__(self) -> None:
        self.users: dict[str, Features] = {}
        self.popularity = [("i2", 9.0), ("i4", 5.0), ("i1", 1.0)]
        self.down = False
        self.slow = False

    async def _check(self) -> None:
        if self.down:
            raise RedisConnectionError("down")
        if self.slow:
            await asyncio.sleep(1)

    async def user_features(self, user_id: str, counts: bool = True) -> Features:
        await self._check()
        return self.users.get(user_id, Features())

    async def popular(self, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        await self._check()
        return [p for p in self.popularity if p[0] not in exclude][:k]

    async def trending(self, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        await self._check()
        return [("i3", 2.0)]


class Holder:
    def __init__(self, model: ServedModel | None) -> None:
        self.current = model


class NewItems:
    """Items placed against one model object, as ``NewItemVectors`` keeps them."""

    def __init__(self, model: ServedModel, contexts: dict[str, dict[str, int]]) -> None:
        # Each context over as many events as it counted (one item before each).
        placed = {item: ItemContext(sum(c.values()), c) for item, c in contexts.items()}
        self.model, self.folded = model, fold_in(model.scorer, placed)

    def for_model(self, model: ServedModel) -> FoldedItems | None:
        return self.folded if model is self.model else None


def recommender(
    model: ServedModel | None,
    features: FakeFeatures,
    popularity_cache_s: float = 0.0,
    new_items: NewItems | None = None,
) -> Recommender:
    catalog = ItemCatalog(redis=None, prefix="t:")  # type: ignore[arg-type]
    return Recommender(
        Holder(model),  # type: ignore[arg-type]
        features,
        catalog,
        0.05,
        CollectorRegistry(),
        popularity_cache_s=popularity_cache_s,
        new_items=new_items,
    )


async def test_personalised_scores_follow_the_model_and_exclude_seen() -> None:
    features = FakeFeatures()
    features.users["u"] = Features(recent=["i2", "i1"], seen=["i1", "i2", "i3"])
    result = await recommender(served(), features).recommend("u", 3)
    assert result.fallback is None
    assert result.model_version == 1
    # Seen items never come back, whatever their scores.
    assert {"i1", "i2", "i3"}.isdisjoint(item for item, _ in result.items)
    unfiltered = await recommender(served(), features).recommend("u", 1, exclude_seen=False)
    assert unfiltered.items[0][0] == "i3"


async def test_an_unknown_user_gets_the_models_prior_or_trending() -> None:
    features = FakeFeatures()
    chain = recommender(served(), features)
    prior = await chain.recommend("nobody", 2)
    # The bias favours i5; the other items tie at 0 (popularity would say i2, i4).
    assert (prior.fallback, prior.model_version, prior.items[0]) == ("model_prior", 1, ("i5", 0.5))
    # Exclusions apply to it: asked ones, and the seen set of a user whose recent items expired.
    features.users["expired"] = Features(recent=[], seen=["i5"])
    for answer in (
        await chain.recommend("nobody", 1, exclude=["i5"]),
        await chain.recommend("expired", 1),
    ):
        assert answer.fallback == "model_prior"
        assert answer.items[0][0] != "i5"
        assert answer.items[0][1] == 0.0
    assert (await chain.recommend("nobody", 2, trending=True)).items == [("i3", 2.0)]
    # The prior is the scores of an empty history, computed once per version: a copy each time.
    model = served()
    np.testing.assert_array_equal(model.scores([]), model.prior)
    model.scores([])[:] = -1.0
    assert model.prior[5] == pytest.approx(0.5)


async def test_without_a_model_an_unknown_user_gets_popularity() -> None:
    features = FakeFeatures()
    no_model = await recommender(None, features).recommend("nobody", 5, exclude=["i2"])
    assert no_model.fallback == "popularity"
    assert no_model.model_version is None
    assert [i for i, _ in no_model.items] == ["i4", "i1"]


def test_the_copy_is_refreshed_often_only_while_it_can_answer_the_popularity_path() -> None:
    chain = recommender(None, FakeFeatures(), popularity_cache_s=1.0)
    assert chain.mirror_refresh_s() == 0.5
    chain.holder.current = served()  # users without history now get the model's prior
    assert chain.mirror_refresh_s() == MIRROR_REFRESH_S
    assert recommender(None, FakeFeatures()).mirror_refresh_s() == MIRROR_REFRESH_S  # no cache


async def test_popularity_comes_from_the_copy_in_memory_while_it_is_fresh() -> None:
    features = FakeFeatures()
    chain = recommender(None, features, popularity_cache_s=0.2)
    await chain._refresh_memory_once()
    features.popularity = [("i1", 9.0)]  # Redis moved on; the copy has not yet
    fresh = await chain.recommend("nobody", 2, exclude=["i2"])
    assert (fresh.fallback, [i for i, _ in fresh.items]) == ("popularity", ["i4", "i1"])
    # A copy that cannot fill k (it holds the whole list here) still answers alone.
    assert [i for i, _ in (await chain.recommend("nobody", 5)).items] == ["i2", "i4", "i1"]
    await asyncio.sleep(0.25)  # older than popularity_cache_s: Redis again
    stale = await chain.recommend("nobody", 2)
    assert (stale.fallback, stale.items) == ("popularity", [("i1", 9.0)])
    # Never from the copy when asked not to cache (the default), nor for trending.
    uncached = recommender(None, features)
    uncached._memory_popular = [("i4", 1.0)]
    uncached._memory_popular_at = asyncio.get_running_loop().time()
    assert (await uncached.recommend("nobody", 1)).items == [("i1", 9.0)]
    assert (await chain.recommend("nobody", 1, trending=True)).items == [("i3", 2.0)]


@pytest.mark.parametrize("failure", ["down", "slow"])
async def test_redis_failure_falls_back_to_the_model_prior_then_memory(failure: str) -> None:
    features = FakeFeatures()
    chain = recommender(served(), features)
    await chain._refresh_memory_once()
    setattr(features, failure, True)
    result = await chain.recommend("u", 2)
    assert result.fallback == "model_without_features"
    assert result.items[0][0] == "i5"  # the model's prior: its bias
    without_model = recommender(None, features)
    without_model._memory_popular = [("i4", 1.0)]
    result = await without_model.recommend("u", 2)
    assert result.fallback == "memory_popularity"
    assert result.items == [("i4", 1.0)]


async def test_unavailable_items_and_tags_are_respected() -> None:
    features = FakeFeatures()
    features.users["u"] = Features(recent=["i2"], seen=["i2"])
    chain = recommender(served(), features)
    chain.catalog.items = {
        "i3": ItemIn(item_id="i3", available=False),
        "i0": ItemIn(item_id="i0", tags=["drama"]),
    }
    chain.catalog.version = 1
    assert "i3" not in [i for i, _ in (await chain.recommend("u", 6)).items]
    assert [i for i, _ in (await chain.recommend("u", 6, tag="drama")).items] == ["i0"]
    prior = await chain.recommend("nobody", 6, tag="drama")
    assert [i for i, _ in prior.items] == ["i0"]
    assert "i3" not in [i for i, _ in (await chain.recommend("nobody", 6)).items]
    # Without a model: popularity, filtered the same way (none of i2, i4, i1 is a drama).
    without_model = recommender(None, features)
    without_model.catalog.items, without_model.catalog.version = chain.catalog.items, 1
    assert (await without_model.recommend("nobody", 6, tag="drama")).items == []


async def test_items_the_version_does_not_know_are_ranked_with_the_catalogue() -> None:
    model = served()
    features = FakeFeatures()
    features.users["u"] = Features(recent=["i2"], seen=["i2", "i3"])
    # n's first users came from i3 (i2's successor): it stands where i3 does; m from i0.
    new_items = NewItems(model, {"n": {"i3": 3}, "m": {"i0": 1}})
    chain = recommender(model, features, new_items=new_items)
    result = await chain.recommend("u", 2)
    assert [i for i, _ in result.items] == ["n", "i5"]  # i3 seen; i5 by its bias
    assert result.items[0][1] == pytest.approx(1.0)
    assert ("m", 0.0) in (await chain.recommend("u", 8)).items  # level with i0, i1, i4
    # Exclusions, availability and tags hold for them too.
    features.users["v"] = Features(recent=["i2"], seen=["i2", "i3", "n"])
    assert "n" not in [i for i, _ in (await chain.recommend("v", 8)).items]
    assert "n" not in [i for i, _ in (await chain.recommend("u", 8, exclude=["n"])).items]
    chain.catalog.items = {
        "n": ItemIn(item_id="n", available=False),
        "m": ItemIn(item_id="m", tags=["drama"]),
    }
    chain.catalog.version = 1
    assert "n" not in [i for i, _ in (await chain.recommend("u", 8)).items]
    assert [i for i, _ in (await chain.recommend("u", 8, tag="drama")).items] == ["m"]
    # A new table (the contexts moved: the same items, other vectors) is filtered afresh.
    chain.new_items = NewItems(model, {"n": {"i0": 1}, "m": {"i3": 1}})
    assert [i for i, _ in (await chain.recommend("u", 1, tag="drama")).items] == ["m"]
    # A user without history scores them with the prior's vector: m's bias (i0's, 0).
    prior = await chain.recommend("nobody", 8)
    assert ("m", 0.0) in prior.items
    # A table built against another version is not used with this one.
    other = recommender(served(version=2), features, new_items=new_items)
    assert {"n", "m"}.isdisjoint(i for i, _ in (await other.recommend("u", 8)).items)


@pytest.mark.parametrize(
    ("recent", "term"), [(["i3", "i2"], 1.0), (["i2", "i3"], 0.5), (["i2"], 0)]
)
async def test_a_new_item_gets_the_item_to_item_term_from_its_context(
    recent: list[str], term: float
) -> None:
    model = served(term_weight=2.0)
    features = FakeFeatures()
    features.users["u"] = Features(recent=recent, seen=recent)
    # n's one event came after i3: cosine 1 / √(4 · 1), weighed by i3's place in u's newest.
    chain = recommender(model, features, new_items=NewItems(model, {"n": {"i3": 1}}))
    scores = dict((await chain.recommend("u", 8)).items)
    vector = model.user_scores(recent).vector
    plain = float(model.scorer.weights.item_out[3] @ vector)  # n stands where i3 does
    assert scores["n"] == pytest.approx(plain + 2.0 * np.log1p(term * 0.5), rel=1e-5)


async def test_a_young_item_the_version_knows_gets_the_term_from_its_context() -> None:
    model = served(term_weight=2.0)  # each item counted 4 times
    features = FakeFeatures()
    features.users["u"] = Features(recent=["i3"], seen=["i3"])
    before = dict((await recommender(model, features).recommend("u", 8)).items)
    placed = {"i1": ItemContext(1, {"i3": 1})}  # i1's one event came after i3
    young = NewItems(model, {})
    young.folded = fold_in(model.scorer, placed, young_events=5)
    scores = dict((await recommender(model, features, new_items=young).recommend("u", 8)).items)
    assert scores["i1"] == pytest.approx(before["i1"] + 2.0 * np.log1p(1 / np.sqrt(4)), rel=1e-5)
    assert {item: score for item, score in scores.items() if item != "i1"} == {
        item: pytest.approx(score) for item, score in before.items() if item != "i1"
    }
    # Counted enough (4 events against a threshold of 4): its version's score alone.
    young.folded = fold_in(model.scorer, placed, young_events=4)
    scores = dict((await recommender(model, features, new_items=young).recommend("u", 8)).items)
    assert scores["i1"] == pytest.approx(before["i1"])


def test_similar_items_by_embedding() -> None:
    model = served()
    chain = recommender(model, FakeFeatures())
    assert chain.similar(model, "nope", 3) is None
    similar = chain.similar(model, "i1", 3)
    assert similar is not None
    assert "i1" not in [i for i, _ in similar]
    assert len(similar) == 3


def test_a_new_item_answers_similar_from_its_placed_vector() -> None:
    model = served()
    chain = recommender(model, FakeFeatures(), new_items=NewItems(model, {"n": {"i3": 1}}))
    similar = chain.similar(model, "n", 2)
    assert similar is not None
    assert similar[0] == ("i3", pytest.approx(1.0))  # n stands where i3 does
    assert chain.similar(model, "unknown", 2) is None
    assert chain.similar(served(version=2), "n", 2) is None  # not placed against that version
    # And a known item's similar items include the new ones placed near it.
    assert chain.similar(model, "i3", 1) == [("n", pytest.approx(1.0))]
    chain.catalog.items = {"n": ItemIn(item_id="n", available=False)}
    chain.catalog.version = 1
    similar = chain.similar(model, "i3", 8)
    assert similar is not None
    assert "n" not in [i for i, _ in similar]
