"""The trainer app factory: ``uvicorn --factory trainer.main:create_app``.

A skeleton so far: Control-topic coordinated streaming trainer and model registry (issue 3).
It has the probes and metrics every service has, so the local stack and the manifests
already treat it like the others.
"""

from __future__ import annotations

from fastapi import FastAPI
from streamrec_shared.app import always_ready, service_app

from trainer.config import TrainerSettings


def create_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or TrainerSettings()
    app, _ = service_app(
        "trainer",
        "Control-topic coordinated streaming trainer and model registry (issue 3).",
        settings.log,
        always_ready,
    )
    return app
