"""The gateway app factory: ``uvicorn --factory gateway.main:create_app``.

What the gateway does so far: ``GET /v1/recommendations`` proxied to the stable or the canary
inference pool (sticky by user, ``routing.Split``), behind an API key when keys are configured,
and a console page with the state of the services and pools.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

import aiohttp
import httpx
import orjson
from fastapi import APIRouter, FastAPI
from httpx_aiohttp import AiohttpTransport
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from streamrec_shared.app import always_ready, service_app
from streamrec_shared.http import ApiError, RawRoute, json_response
from streamrec_shared.openapi import query_parameters
from streamrec_shared.schemas.errors import validation_details
from streamrec_shared.schemas.events import EntityId

from gateway.config import GatewaySettings
from gateway.routing import Pool, Split, key_accepted

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"


class GatewayQuery(BaseModel):
    """What the gateway itself reads of the query string; the rest is inference's to validate."""

    model_config = ConfigDict(extra="allow")

    user_id: EntityId = Field(description="Also picks the pool (sticky).")


_RECOMMENDATIONS_OPENAPI = query_parameters(GatewayQuery)
_RECOMMENDATIONS_OPENAPI["parameters"].append(
    {
        "name": API_KEY_HEADER,
        "in": "header",
        "required": False,
        "description": "Required when the gateway has API keys (STREAMREC_GATEWAY_API_KEY_HASHES).",
        "schema": {"type": "string"},
    }
)


def create_app(
    settings: GatewaySettings | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """The app; ``transport`` replaces the network under its client of the upstreams (tests)."""
    settings = settings or GatewaySettings()
    split = Split(settings.inference_url, settings.inference_canary_url, settings.canary_weight)
    upstreams = [
        ("ingest", "events", settings.ingest_url),
        ("trainer", "registry and training runs", settings.trainer_url),
    ]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The httpx API over aiohttp's connection pool: with httpx's own async transport the
        # gateway saturated near 470 req/s (~2 ms of CPU per proxied request) in front of an
        # inference serving 1,500; with this one it carried 1,000 (benchmarks/
        # inference_latency.py).
        upstream = transport or _UpstreamTransport()
        async with httpx.AsyncClient(
            timeout=settings.upstream_timeout_s, transport=upstream
        ) as client:
            app.state.http = client
            yield

    app, _ = service_app(
        "gateway", "Routing, auth, canary split and the web console.", settings.log,
        always_ready, lifespan,
    )  # fmt: skip

    # The proxied route is a hot raw route (``RawRoute``, ``ServiceApp.include_hot_router``):
    # it checks the key and reads user_id itself, past FastAPI's dependency solving and the
    # middleware stack, which were ~30 % of the gateway's CPU per request (py-spy, wrk).
    hot = APIRouter(prefix="/v1", route_class=RawRoute)

    @hot.get(
        "/recommendations",
        tags=["recommendations"],
        summary="Top-K for a user, from the stable or the canary inference pool",
        openapi_extra=_RECOMMENDATIONS_OPENAPI,
        responses={
            200: {"description": "Inference's answer, plus `variant`: the pool that served it."},
            401: {"description": "API keys are configured and the request has none of them."},
            422: {"description": "Invalid query parameters (inference's own validation)."},
            502: {"description": "The pool is unreachable or failed."},
            504: {"description": "The pool did not answer in time."},
        },
    )
    async def recommendations(request: Request) -> Response:
        """Inference's ``GET /v1/recommendations``: the query string is passed on as it came
        (`k`, `exclude_seen`, `exclude`, `tag`, `trending` are validated there)."""
        # The key first: without one, a caller learns nothing about the route beyond the 401.
        if settings.api_key_hashes and not key_accepted(
            request.headers.get(API_KEY_HEADER), settings.api_key_hashes
        ):
            raise ApiError(
                401, "unauthorized", f"missing or unknown API key (header {API_KEY_HEADER})"
            )
        query: bytes = request.scope["query_string"]
        pool = split.pool_for(_user_id(query))
        client: httpx.AsyncClient = request.app.state.http
        return await _proxy(client, pool, "/v1/recommendations", query, settings)

    app.include_hot_router(hot)

    async def readiness_of(client: httpx.AsyncClient, url: str) -> str:
        try:
            response = await client.get(f"{url}/readyz")
        except httpx.HTTPError as error:
            return f"unreachable ({type(error).__name__})"
        return "ready" if response.status_code == 200 else f"not ready ({response.status_code})"

    @app.get("/", response_class=HTMLResponse, tags=["console"], summary="Console: platform status")
    async def console(request: Request) -> HTMLResponse:
        client: httpx.AsyncClient = request.app.state.http
        rows = list(upstreams)
        weight = split.canary_weight
        rows.append(("inference", f"stable pool, {1 - weight:.1%} of users", split.stable.url))
        if split.canary is not None:
            rows.append(("inference", f"canary pool, {weight:.1%} of users", split.canary.url))
        states = await asyncio.gather(*(readiness_of(client, url) for _, _, url in rows))
        cells = [
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(role)}</td>"
            f"<td><a href='{html.escape(url)}/docs'>{html.escape(url)}</a></td>"
            f"<td class='{state.split()[0]}'>{html.escape(state)}</td></tr>"
            for (name, role, url), state in zip(rows, states, strict=True)
        ]
        if split.canary is None:
            cells.append(
                "<tr><td>inference</td><td>canary pool</td><td>none</td>"
                "<td class='off'>off (no STREAMREC_GATEWAY_INFERENCE_CANARY_URL)</td></tr>"
            )
        if settings.api_key_hashes:
            accepted = len(settings.api_key_hashes)
            auth = f"API key required (header {API_KEY_HEADER}; {accepted} accepted)."
        else:
            auth = (
                "<strong>No API key required</strong>: STREAMREC_GATEWAY_API_KEY_HASHES is empty "
                "(local development only)."
            )
        return HTMLResponse(_PAGE.format(rows="".join(cells), auth=auth))

    return app


class _UpstreamTransport(AiohttpTransport):
    """httpx-aiohttp's transport, with a refused connection reported as one.

    Its exception map turns every ``aiohttp.ClientConnectionError`` into ``httpx.ConnectTimeout``,
    a refused connection (``ClientConnectorError``) included; the gateway answers a timeout
    with 504 and an unreachable pool with 502, so the difference matters here.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as error:
            if isinstance(error.__cause__, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(error), request=request) from error.__cause__
            raise


def _user_id(query: bytes) -> str:
    """``user_id`` of a raw query string (the last one, as Starlette reads it), validated."""
    values = [v for k, v in parse_qsl(query.decode("latin-1"), True) if k == "user_id"]
    try:
        return GatewayQuery.model_validate({"user_id": values[-1]} if values else {}).user_id
    except ValidationError as error:
        details = validation_details(error)
        raise ApiError(422, "validation_error", "invalid request", details) from error


async def _proxy(
    client: httpx.AsyncClient, pool: Pool, path: str, query: bytes, settings: GatewaySettings
) -> Response:
    """GET ``path`` on the pool with the request's query; its JSON object plus ``variant``.

    The pool's own 4xx answers (an invalid query) are the caller's to fix and pass through; its
    failures, an answer that is not a JSON object, and no answer at all are the gateway's 502 and
    504, in the platform's error shape, naming the pool.
    """
    extra: dict[str, object] = {"variant": pool.variant}
    try:
        # The query string as the caller sent it (already percent-encoded): no re-encoding.
        upstream = await client.get(f"{pool.url}{path}?{query.decode('latin-1')}")
    except httpx.TimeoutException as error:
        log.warning("%s inference pool timed out: %r", pool.variant, error)
        raise ApiError(
            504,
            "upstream_timeout",
            f"the {pool.variant} inference pool did not answer within "
            f"{settings.upstream_timeout_s} s",
            extra=extra,
        ) from error
    except httpx.HTTPError as error:
        log.warning("%s inference pool unreachable: %r", pool.variant, error)
        raise ApiError(
            502,
            "upstream_unavailable",
            f"the {pool.variant} inference pool is unreachable ({type(error).__name__})",
            extra=extra,
        ) from error
    if upstream.status_code >= 500:
        log.warning("%s inference pool answered %d", pool.variant, upstream.status_code)
        raise ApiError(
            502,
            "upstream_error",
            f"the {pool.variant} inference pool failed ({upstream.status_code})",
            extra=extra,
        )
    try:
        body = orjson.loads(upstream.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(
            502,
            "upstream_error",
            f"the {pool.variant} inference pool answered {upstream.status_code} without a "
            "JSON object",
            extra=extra,
        )
    body["variant"] = pool.variant
    return json_response(body, upstream.status_code)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamrec console</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}
td,th{{padding:.3rem 1rem;text-align:left}}
.ready{{color:#080}}.unreachable,.not{{color:#b00}}.off{{color:#777}}</style></head>
<body><h1>streamrec</h1><p>Services of this deployment:</p>
<table><tr><th>service</th><th>role</th><th>address (API docs)</th><th>state</th></tr>{rows}</table>
<p>{auth}</p>
</body></html>
"""
