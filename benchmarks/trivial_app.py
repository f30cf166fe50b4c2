"""The baseline: the cheapest FastAPI endpoint, served the same way as the services."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import Response


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/events")
    async def accept() -> Response:
        return Response(b'{"status":"ok"}', status_code=202, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app
