"""The gateway app factory: ``uvicorn --factory gateway.main:create_app``.

So far the gateway serves the start of the console: a status page of the platform's services.
Routing, auth, the canary split and the full console come with the gateway issue.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse
from streamrec_shared.app import always_ready, service_app

from gateway.config import GatewaySettings


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    upstreams = {
        "ingest": settings.ingest_url,
        "trainer": settings.trainer_url,
        "inference": settings.inference_url,
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=settings.upstream_timeout_s) as client:
            app.state.http = client
            yield

    app, _ = service_app(
        "gateway", "Routing, auth, canary split and the web console.", settings.log,
        always_ready, lifespan,
    )  # fmt: skip

    async def readiness_of(client: httpx.AsyncClient, url: str) -> str:
        try:
            response = await client.get(f"{url}/readyz")
        except httpx.HTTPError as error:
            return f"unreachable ({type(error).__name__})"
        return "ready" if response.status_code == 200 else f"not ready ({response.status_code})"

    @app.get("/", response_class=HTMLResponse, tags=["console"], summary="Console: platform status")
    async def console(request: Request) -> HTMLResponse:
        client: httpx.AsyncClient = request.app.state.http
        states = await asyncio.gather(*(readiness_of(client, url) for url in upstreams.values()))
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td><a href='{html.escape(url)}/docs'>"
            f"{html.escape(url)}</a></td>"
            f"<td class='{state.split()[0]}'>{html.escape(state)}</td></tr>"
            for (name, url), state in zip(upstreams.items(), states, strict=True)
        )
        return HTMLResponse(_PAGE.format(rows=rows))

    return app


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamrec console</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}
td,th{{padding:.3rem 1rem;text-align:left}}
.ready{{color:#080}}.unreachable,.not{{color:#b00}}</style></head>
<body><h1>streamrec</h1><p>Services of this deployment:</p>
<table><tr><th>service</th><th>address (API docs)</th><th>state</th></tr>{rows}</table>
</body></html>
"""
