"""The inference app factory: ``uvicorn --factory inference.main:create_app``.

The lifespan owns Redis, the HTTP client to the registry, the served model (and its follower
on the control topic), the vectors of items it does not know yet, the item catalogue, the
feature updater (unless it runs in its own process), and stream inference. Readiness never
depends on Redis: without it the service still answers from its fallbacks, and pulling pods
then would turn a degraded answer into none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from streamrec_shared.app import service_app
from streamrec_shared.http import Probe
from streamrec_shared.kafka import ResilientProducer
from streamrec_shared.redis import build_redis

from inference.api import hot, router
from inference.catalog import ItemCatalog
from inference.config import InferenceSettings
from inference.features import CoalescedUserReads, FeatureStore
from inference.models import ModelHolder, ModelMetrics
from inference.new_items import NewItemVectors
from inference.recommender import Recommender
from inference.state import InferenceState
from inference.stream import StreamInference
from inference.updater import FeatureUpdater


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = build_redis(settings.redis)
        producer = ResilientProducer(settings.kafka)
        await producer.start(wait_s=2)
        http = httpx.AsyncClient(base_url=settings.trainer_url, timeout=10)
        holder = ModelHolder(settings, http, ModelMetrics(registry))
        store = FeatureStore(redis, settings)
        features = CoalescedUserReads(store, registry, settings.feature_timeout_s)
        new_items = NewItemVectors(
            store,
            holder,
            registry,
            settings.new_items_max,
            settings.new_items_refresh_s,
            settings.young_item_events,
            settings.young_items_max,
        )
        catalog = ItemCatalog(redis, settings.redis.key_prefix)
        recommender = Recommender(
            holder,
            features,
            catalog,
            settings.feature_timeout_s,
            registry,
            popularity_cache_s=settings.popularity_cache_s,
            new_items=new_items if settings.rank_new_items else None,
        )
        updater = FeatureUpdater(settings, redis, producer, registry)
        stream = StreamInference(settings, recommender, producer)
        await catalog.start()
        await holder.start()
        await recommender.start()
        if settings.rank_new_items:
            new_items.start()
        if settings.run_feature_updater:
            await updater.start()
        await stream.start()
        app.state.inference = InferenceState(settings, holder, catalog, recommender)
        try:
            yield
        finally:
            await stream.stop()
            if settings.run_feature_updater:
                await updater.stop()
            await recommender.stop()
            await new_items.stop()
            await features.stop()
            await holder.stop()
            await catalog.stop()
            await http.aclose()
            await producer.stop()
            await redis.aclose()

    def readiness(app: FastAPI) -> Probe:
        async def ready() -> dict[str, bool]:
            # The process answers (from fallbacks if need be); Redis and the model are reported
            # on /v1/model and in metrics, never made a reason to take the pod out.
            return {"process": True}

        return ready

    app, http_metrics = service_app(
        "inference",
        "Top-K recommendations from Redis features and the newest model.",
        settings.log,
        readiness,
        lifespan,
    )
    registry = http_metrics.registry
    app.include_hot_router(hot)  # also served past the middleware stack (ServiceApp)
    app.include_router(router)
    return app
