"""The skeleton every service's app factory builds on: errors, metrics, probes, logging."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from streamrec_shared.http import Probe, add_probes, install_error_handlers
from streamrec_shared.observability import HttpMetrics, MetricsMiddleware, configure_logging
from streamrec_shared.settings import LogSettings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def service_app(
    name: str,
    summary: str,
    log: LogSettings,
    readiness: Callable[[FastAPI], Probe],
    lifespan: Lifespan | None = None,
) -> tuple[FastAPI, HttpMetrics]:
    """A FastAPI app with the platform's error shape, ``/metrics``, ``/healthz`` and ``/readyz``.

    ``readiness(app)`` returns the coroutine function ``/readyz`` awaits; it gets the app so that
    it can reach what the lifespan put on ``app.state``.
    """
    configure_logging(log, name)
    metrics = HttpMetrics(name)
    app = FastAPI(title=f"streamrec {name}", version="0.1.0", summary=summary, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_route("/metrics", metrics.render, include_in_schema=False)
    add_probes(app, readiness(app))
    return app, metrics


def always_ready(_: FastAPI) -> Probe:
    async def ready() -> dict[str, bool]:
        return {"process": True}

    return ready
