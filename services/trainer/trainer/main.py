"""The trainer app factory: ``uvicorn --factory trainer.main:create_app``.

The lifespan owns the registry (migrated on start), the artifact store, the control-topic
producer and the coordinator that runs training. On shutdown every run writes a checkpoint and
stays resumable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from streamrec_shared.app import service_app
from streamrec_shared.http import Probe
from streamrec_shared.kafka import ResilientProducer

from trainer.api import router
from trainer.config import TrainerSettings, tune_process
from trainer.coordinator import Coordinator
from trainer.metrics import TrainerMetrics
from trainer.registry import Registry
from trainer.runs import RunServices
from trainer.state import TrainerState


def create_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or TrainerSettings()
    tune_process(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = Registry(settings.database_url.get_secret_value())
        await asyncio.to_thread(registry.migrate)
        producer = ResilientProducer(settings.kafka)
        await producer.start(wait_s=settings.kafka_connect_wait_s)
        services = RunServices.build(settings, registry, producer, metrics)
        coordinator = Coordinator(services)
        await coordinator.start()
        app.state.trainer = TrainerState(settings, services, coordinator)
        try:
            yield
        finally:
            await coordinator.stop()
            await producer.stop()
            registry.close()

    def readiness(app: FastAPI) -> Probe:
        async def ready() -> dict[str, bool]:
            state: TrainerState = app.state.trainer
            return {
                "kafka": await state.services.producer.reachable(),
                "control_consumer": state.coordinator.consumer_connected,
            }

        return ready

    app, http_metrics = service_app(
        "trainer",
        "Control-topic coordinated streaming trainer and model registry.",
        settings.log,
        readiness,
        lifespan,
    )
    metrics = TrainerMetrics.on(http_metrics.registry)
    app.include_router(router)
    return app
