"""Top-K for a user: fresh features + the served model, with a fallback chain that never 500s.

1. model and the user's recent items from Redis → personalised scores (seen items excluded),
   items launched since the version ranked with the catalogue (``inference.new_items``);
2. model and a user with no history → the model's prior (its scores for an empty history,
   ``model_prior``): learned from what users pick first, it beats popularity for them (ML-100K
   through the stack, users' first events: HR@10 0.325 from popularity, 0.580 from the prior),
   and ``trending`` when asked;
3. no model yet → Redis popularity (decayed; from a copy in memory while it is younger than
   ``popularity_cache_s``), trending when asked;
4. Redis down or slower than ``feature_timeout_s`` → the model's prior without fresh features,
   else the popularity list kept in memory.

Every answer says which path it took (``fallback``), and a metric counts them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError
from streamrec_shared.models.item_pooling import FoldedItems
from streamrec_shared.ranking import top_k
from streamrec_shared.tasks import BackgroundTask

from inference.catalog import ItemCatalog
from inference.models import ModelHolder, ServedModel

log = logging.getLogger(__name__)

MIRROR_SIZE = 1000  # popular items kept in memory
MIRROR_REFRESH_S = 5.0  # how often the copy is refreshed when it never answers the popularity path


class UserFeaturesLike(Protocol):
    recent: list[str]
    seen: list[str]


class FeatureSource(Protocol):
    async def user_features(self, user_id: str) -> UserFeaturesLike:
        """The serving read: recent and seen items (``CoalescedUserReads``)."""

    async def popular(self, k: int, exclude: set[str]) -> list[tuple[str, float]]: ...

    async def trending(self, k: int, exclude: set[str]) -> list[tuple[str, float]]: ...


class NewItemSource(Protocol):
    def for_model(self, model: ServedModel) -> FoldedItems | None:
        """Items ``model`` does not know, placed against it (``NewItemVectors``)."""


@dataclass(frozen=True)
class Recommendation:
    items: list[tuple[str, float]]
    model_version: int | None
    fallback: str | None
    rec_id: str


class Recommender:
    def __init__(
        self,
        holder: ModelHolder,
        features: FeatureSource,
        catalog: ItemCatalog,
        feature_timeout_s: float,
        registry: CollectorRegistry,
        popularity_cache_s: float = 0.0,
        new_items: NewItemSource | None = None,
    ) -> None:
        self.holder = holder
        self.new_items = new_items
        self.features = features
        self.catalog = catalog
        self.feature_timeout_s = feature_timeout_s
        # The popularity path answers from the copy in memory while it is this young (0: always
        # from Redis).
        self.popularity_cache_s = popularity_cache_s
        self.answers = Counter(
            "inference_recommendations_total",
            "Recommendations by path taken (personalised or which fallback).",
            ["path"],
            registry=registry,
        )
        self._answer_counters: dict[str | None, Counter] = {}
        # Popularity kept in memory, for when Redis is gone, and when fresh for the popularity path.
        self._memory_popular: list[tuple[str, float]] = []
        self._memory_popular_at = -math.inf  # loop time of its last refresh
        self._mirror = BackgroundTask("popularity-mirror", self._refresh_memory)

    async def start(self) -> None:
        self._mirror.start()

    async def stop(self) -> None:
        await self._mirror.stop()

    def mirror_refresh_s(self) -> float:
        """Twice per ``popularity_cache_s`` while the copy can answer the popularity path:
        before the first model. With one, nothing reads it (users without history get the
        prior, a Redis outage too), so it is kept only loosely fresh."""
        if self.popularity_cache_s > 0 and self.holder.current is None:
            return self.popularity_cache_s / 2
        return MIRROR_REFRESH_S

    async def _refresh_memory(self) -> None:
        while True:
            await self._refresh_memory_once()
            await asyncio.sleep(self.mirror_refresh_s())

    async def _refresh_memory_once(self) -> None:
        try:
            started = asyncio.get_running_loop().time()
            self._memory_popular = await self.features.popular(MIRROR_SIZE, set())
            self._memory_popular_at = started
        except (RedisError, OSError, TimeoutError) as error:
            log.debug("popularity mirror not refreshed: %s", error)

    # --- the chain -----------------------------------------------------------------------

    async def recommend(
        self,
        user_id: str,
        k: int,
        exclude_seen: bool = True,
        exclude: Collection[str] = (),
        tag: str | None = None,
        trending: bool = False,
    ) -> Recommendation:
        model = self.holder.current  # this request's model, whatever swaps meanwhile
        rec_id = uuid.uuid4().hex
        version = model.version if model else None
        try:
            # asyncio.timeout, not wait_for: no extra task per request on the hot path.
            async with asyncio.timeout(self.feature_timeout_s):
                features = await self.features.user_features(user_id)
        except (RedisError, OSError, TimeoutError):
            features = None
        if features is None:
            if model is not None:
                items = self._score(model, [], exclude, tag, k)
                return self._answer(items, version, "model_without_features", rec_id)
            items = self._filter(self._memory_popular, set(exclude), tag, k)
            return self._answer(items, None, "memory_popularity", rec_id)
        if model is not None and (features.recent or not trending):
            # Personalised, or the prior for a user with no history. The exclusions go to the
            # scores as rows, so no set is built.
            excluded = [*exclude, *features.seen] if exclude_seen else exclude
            items = self._score(model, features.recent, excluded, tag, k)
            return self._answer(items, version, None if features.recent else "model_prior", rec_id)
        excluded_set = set(exclude)
        if exclude_seen:
            excluded_set.update(features.seen)
        path = "trending" if trending else "popularity"
        if not trending and self.popularity_cache_s > 0:
            # Before the first model, a user with no history costs no second Redis call:
            # popularity decays over hours, a second-old copy ranks the same.
            age = asyncio.get_running_loop().time() - self._memory_popular_at
            if age <= self.popularity_cache_s:
                ranked = self._memory_popular
                items = self._filter(ranked, excluded_set, tag, k)
                if len(items) == k or len(ranked) < MIRROR_SIZE:  # else: not deep enough
                    return self._answer(items, version, path, rec_id)
        try:
            source = self.features.trending if trending else self.features.popular
            async with asyncio.timeout(self.feature_timeout_s):
                ranked = await source(k * 4 + len(excluded_set), excluded_set)
        except (RedisError, OSError, TimeoutError):
            ranked, path = self._memory_popular, "memory_popularity"
        return self._answer(self._filter(ranked, excluded_set, tag, k), version, path, rec_id)

    def _answer(
        self, items: list[tuple[str, float]], version: int | None, path: str | None, rec_id: str
    ) -> Recommendation:
        counter = self._answer_counters.get(path)
        if counter is None:  # labels() takes a lock and builds a key: once per path
            counter = self._answer_counters[path] = self.answers.labels(path or "model")
        counter.inc()
        return Recommendation(items, version, path, rec_id)

    def _filter(
        self, ranked: list[tuple[str, float]], excluded: set[str], tag: str | None, k: int
    ) -> list[tuple[str, float]]:
        out = []
        for item, score in ranked:
            if item not in excluded and self.catalog.allowed(item, tag):
                out.append((item, score))
                if len(out) == k:
                    break
        return out

    def _score(
        self,
        model: ServedModel,
        recent: list[str],
        excluded: Collection[str],
        tag: str | None,
        k: int,
    ) -> list[tuple[str, float]]:
        user = model.user_scores(recent)
        scores = user.scores
        new = self.new_items.for_model(model) if self.new_items is not None else None
        if new is not None:
            new.young_term.add(scores, user.rows)  # young items' live pairs
        ids = model.scorer.weights.item_ids
        self._filter_out(scores, ids, model.scorer.rows, excluded, tag)
        known = len(ids)
        new_ids: list[str] = []
        if new is not None and new.item_ids:
            # Items launched since the version, ranked with the catalogue as rows after it.
            new_scores = new.scores(user.vector, user.rows)
            self._filter_out(new_scores, new.item_ids, new.rows, excluded, tag)
            scores = np.concatenate([scores, new_scores])
            new_ids = new.item_ids
        top = top_k(scores, k)
        return [
            (ids[row] if row < known else new_ids[row - known], score)
            for row, score in zip(top.tolist(), scores[top].tolist(), strict=True)
            if math.isfinite(score)
        ]

    def _filter_out(
        self,
        scores: npt.NDArray[np.float32],
        items: list[str],
        rows: dict[str, int],
        excluded: Collection[str],
        tag: str | None,
    ) -> None:
        """Set to -inf, in place, the scores of ``items`` (``rows``: item → row) that the
        catalogue filters out for ``tag`` and those in ``excluded``."""
        filtered = self.catalog.filtered_rows(items, tag)
        if len(filtered):
            scores[filtered] = -np.inf
        if excluded:
            # A seen set has hundreds of items: fromiter over map runs the lookups in C (-1 for
            # an item not in ``rows``), a Python loop over them cost ~5 % of a request.
            lookup = map(rows.get, excluded, itertools.repeat(-1))
            found = np.fromiter(lookup, dtype=np.intp, count=len(excluded))
            scores[found[found >= 0]] = -np.inf

    def similar(self, model: ServedModel, item_id: str, k: int) -> list[tuple[str, float]] | None:
        """The items nearest ``item_id`` (cosine of output embeddings), items launched since
        the version included, at their placed vectors; such an item answers from its own. None:
        an item neither knows."""
        new = self.new_items.for_model(model) if self.new_items is not None else None
        row = model.scorer.rows.get(item_id)
        new_row = new.rows.get(item_id) if new is not None else None
        if row is not None:
            vector = model.normalized[row]
        elif new is not None and new_row is not None:
            vector = new.normalized[new_row]
        else:
            return None
        similarity = model.normalized @ vector
        ids = model.scorer.weights.item_ids
        self._filter_out(similarity, ids, model.scorer.rows, [item_id], None)
        known = len(ids)
        new_ids: list[str] = []
        if new is not None and new.item_ids:
            new_similarity = new.normalized @ vector
            self._filter_out(new_similarity, new.item_ids, new.rows, [item_id], None)
            similarity = np.concatenate([similarity, new_similarity])
            new_ids = new.item_ids
        k = min(k, int(np.isfinite(similarity).sum()))
        if k <= 0:
            return []
        top = top_k(similarity, k)
        return [
            (ids[r] if r < known else new_ids[r - known], float(similarity[r]))
            for r in top.tolist()
            if np.isfinite(similarity[r])
        ]
