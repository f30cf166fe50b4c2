"""The gateway app factory: ``uvicorn --factory gateway.main:create_app``.

A skeleton so far: Routing, auth, canary split and the web console (next round).
It has the probes and metrics every service has, so the local stack and the manifests
already treat it like the others.
"""

from __future__ import annotations

from fastapi import FastAPI
from streamrec_shared.app import always_ready, service_app

from gateway.config import GatewaySettings


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    app, _ = service_app(
        "gateway",
        "Routing, auth, canary split and the web console (next round).",
        settings.log,
        always_ready,
    )
    return app
