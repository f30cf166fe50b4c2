"""The shortcuts of inference's hot path give what the general code gives.

Single-user scoring against the batch scorer, the item lists the read script joins split back,
and ``ServiceApp``'s direct dispatch against what Starlette's stack does for the same route.
"""

from __future__ import annotations

import dataclasses

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from fastapi import APIRouter, Request
from inference.features import UserFeatures, _serving
from inference.models import ServedModel
from starlette.responses import Response
from streamrec_shared.app import always_ready, service_app
from streamrec_shared.http import ApiError, RawRoute, json_response
from streamrec_shared.models.item_pooling import ItemPoolingScorer, ItemPoolingWeights
from streamrec_shared.schemas.errors import ErrorDetail
from streamrec_shared.settings import LogSettings

ITEMS = [f"i{n}" for n in range(40)]


def model(seed: int, length: int = 6, dim: int = 5, neighbors: bool = False) -> ServedModel:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> npt.NDArray[np.float32]:
        return rng.normal(size=shape).astype(np.float32)

    weights = ItemPoolingWeights(
        item_ids=ITEMS,
        item_in=normal(len(ITEMS), dim),
        item_out=normal(len(ITEMS), dim),
        item_bias=normal(len(ITEMS)),
        position_logits=normal(length),
        projection=normal(dim, dim),
        projection_bias=normal(dim),
    )
    if neighbors:  # up to 8 random neighbors per item, with random cosines
        counts = rng.integers(0, 9, size=len(ITEMS))
        weights = dataclasses.replace(
            weights,
            neighbor_indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            neighbor_rows=rng.integers(0, len(ITEMS), size=int(counts.sum())).astype(np.int64),
            neighbor_weights=rng.random(int(counts.sum())).astype(np.float32),
            cooccurrence_weight=3.0,
            cooccurrence_window=4,
        )
    scorer = ItemPoolingScorer(weights)
    return ServedModel("spec", 1, "0" * 64, scorer, weights.item_out, 0.0)


@pytest.mark.parametrize("neighbors", [False, True], ids=["embeddings", "with-neighbors"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "recent",
    [
        [],
        ["i3"],
        ["i3", "i7", "i3"],
        ["unknown", "i1", "i2", "also-unknown"],
        [f"i{n}" for n in range(20)],  # longer than the history: the newest ones count
    ],
)
def test_single_user_scores_equal_the_batch_scorer(
    seed: int, recent: list[str], neighbors: bool
) -> None:
    served = model(seed, neighbors=neighbors)
    scorer = served.scorer
    rows = scorer.history_rows([recent[: served.history_length]])
    expected = scorer.scores(scorer.user_vectors(rows), rows)[0]
    actual = served.scores(recent)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_serving_strings_are_split_back() -> None:
    joined = "\0".join(["i1", "é", "a:b c"]) + "\x01" + "\0".join(["s", "t"])
    assert _serving(joined.encode()) == UserFeatures(["i1", "é", "a:b c"], ["s", "t"])
    assert _serving(b"\x01") == UserFeatures()  # empty lists: no member, not one empty one
    assert _serving(b"single\x01") == UserFeatures(["single"], [])
    assert _serving("\x01already\0text") == UserFeatures([], ["already", "text"])
    assert _serving(None) == UserFeatures()  # a user never seen


def hot_app() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    """The same endpoint served directly (hot) and only through the stack (plain)."""

    async def endpoint(request: Request) -> Response:
        if "boom" in request.query_params:
            raise RuntimeError("boom")
        if "bad" in request.query_params:
            raise ApiError(422, "invalid_query", "bad", [ErrorDetail(field="x", reason="no")])
        return json_response({"q": request.query_params.get("q"), "app": request.app.title})

    clients = []
    for hot in (True, False):
        router = APIRouter(prefix="/v1", route_class=RawRoute)
        router.add_api_route("/thing", endpoint, methods=["GET"])
        app, _ = service_app("svc", "a service", LogSettings(), always_ready)
        if hot:
            app.include_hot_router(router)
        else:
            app.include_router(router)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://svc.test"))
    return clients[0], clients[1]


def request_series(metrics: str) -> list[str]:
    return sorted(
        line.rsplit(" ", 1)[0]
        for line in metrics.splitlines()
        if line.startswith(("http_requests_total{", "http_request_duration_seconds_count{"))
        and "/metrics" not in line
    )


async def test_hot_dispatch_answers_and_counts_as_the_stack_does() -> None:
    hot, plain = hot_app()
    async with hot, plain:
        for path in ("/v1/thing?q=1", "/v1/thing?bad=1", "/v1/thing?boom=1", "/v1/thing/"):
            a, b = await hot.get(path), await plain.get(path)
            assert (a.status_code, a.headers.get("content-type"), a.content) == (
                b.status_code,
                b.headers.get("content-type"),
                b.content,
            ), path
        assert (await hot.post("/v1/thing")).status_code == 405  # not hot: through the stack
        assert (await plain.post("/v1/thing")).status_code == 405
        assert (await hot.get("/v1/thing?q=1")).json() == {"q": "1", "app": "streamrec svc"}
        series = request_series((await hot.get("/metrics")).text)
        assert series == request_series((await plain.get("/metrics")).text)
        assert 'http_requests_total{method="GET",route="/v1/thing",service="svc",status="500"}' in (
            series
        )
        hot_schema = (await hot.get("/openapi.json")).json()
        assert hot_schema == (await plain.get("/openapi.json")).json()
        assert "/v1/thing" in hot_schema["paths"]


async def test_hot_dispatch_reraises_an_unexpected_error_for_the_server_log() -> None:
    router = APIRouter(route_class=RawRoute)

    async def endpoint(_: Request) -> Response:
        raise RuntimeError("boom")

    router.add_api_route("/thing", endpoint, methods=["GET"])
    app, _ = service_app("svc", "a service", LogSettings(), always_ready)
    app.include_hot_router(router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc.test"
    ) as client:
        with pytest.raises(RuntimeError, match="boom"):
            await client.get("/thing")


def test_a_hot_route_needs_a_fixed_path() -> None:
    router = APIRouter(route_class=RawRoute)

    async def endpoint(_: Request) -> Response:
        return json_response({})

    router.add_api_route("/things/{thing_id}", endpoint, methods=["GET"])
    app, _ = service_app("svc", "a service", LogSettings(), always_ready)
    with pytest.raises(TypeError, match="path parameters"):
        app.include_hot_router(router)
