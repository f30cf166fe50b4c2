"""The inference app factory: ``uvicorn --factory inference.main:create_app``.

A skeleton so far: Top-K recommendations from Redis features and the newest model (issue 4).
It has the probes and metrics every service has, so the local stack and the manifests
already treat it like the others.
"""

from __future__ import annotations

from fastapi import FastAPI
from streamrec_shared.app import always_ready, service_app

from inference.config import InferenceSettings


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()
    app, _ = service_app(
        "inference",
        "Top-K recommendations from Redis features and the newest model (issue 4).",
        settings.log,
        always_ready,
    )
    return app
