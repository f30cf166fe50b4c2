"""The gateway's proxied recommendations, API keys and console, with fake upstreams.

The inference pools are ``httpx.MockTransport`` handlers under the gateway's own client (the
app's lifespan owns it); the gateway itself runs in-process behind ``ASGITransport``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import parse_qs

import httpx
import pytest
from gateway.config import GatewaySettings
from gateway.main import create_app
from gateway.routing import key_digest

from tests.support.apps import serve

STABLE_URL, CANARY_URL = "http://inference.test:8003", "http://inference-canary.test:8003"
KEY = "dev-key-for-tests"

Handler = Callable[[httpx.Request], httpx.Response]


class Upstreams:
    """Fake inference pools: answer like inference does and remember what they were asked."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answer: Handler | None = None  # replaces the normal answer when set

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(200, json={"status": "ready"})
        self.requests.append(request)
        if self.answer is not None:
            return self.answer(request)
        query = parse_qs(request.url.query.decode())
        return httpx.Response(
            200,
            json={
                "user_id": query["user_id"][0],
                "model_version": 2 if request.url.host.startswith("inference-canary") else 1,
                "items": [{"item_id": "i1", "score": 1.0}],
            },
        )


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


@asynccontextmanager
async def gateway(upstreams: Upstreams, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    config = GatewaySettings(inference_url=STABLE_URL, **settings)  # type: ignore[arg-type]
    async with serve(create_app(config, transport=httpx.MockTransport(upstreams))) as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    error: dict[str, object] = body["error"]
    assert set(error) == {"code", "message", "details"}, body
    return error


# ----------------------------------------------------------------------------------- the split


async def test_without_a_canary_the_stable_pool_answers_with_its_variant(
    upstreams: Upstreams,
) -> None:
    async with gateway(upstreams, canary_weight=0.5) as client:
        response = await client.get("/v1/recommendations", params={"user_id": "u1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["variant"] == "stable"
    assert body["user_id"] == "u1"
    assert body["items"] == [{"item_id": "i1", "score": 1.0}]
    (request,) = upstreams.requests
    assert str(request.url).startswith(f"{STABLE_URL}/v1/recommendations?")


async def test_weight_one_sends_to_the_canary_and_zero_to_stable(upstreams: Upstreams) -> None:
    async with gateway(upstreams, inference_canary_url=CANARY_URL, canary_weight=1.0) as client:
        response = await client.get("/v1/recommendations", params={"user_id": "u1"})
    assert response.json()["variant"] == "canary"
    assert response.json()["model_version"] == 2
    assert upstreams.requests[-1].url.host == "inference-canary.test"
    async with gateway(upstreams, inference_canary_url=CANARY_URL, canary_weight=0.0) as client:
        response = await client.get("/v1/recommendations", params={"user_id": "u1"})
    assert response.json()["variant"] == "stable"
    assert upstreams.requests[-1].url.host == "inference.test"


async def test_users_are_split_and_each_one_sticks_to_a_pool(upstreams: Upstreams) -> None:
    users = [f"user-{i}" for i in range(200)]
    async with gateway(upstreams, inference_canary_url=CANARY_URL, canary_weight=0.5) as client:
        first = {}
        for user in users:
            response = await client.get("/v1/recommendations", params={"user_id": user})
            first[user] = response.json()["variant"]
        for user in users[:50]:
            response = await client.get("/v1/recommendations", params={"user_id": user})
            assert response.json()["variant"] == first[user], user
    assert set(first.values()) == {"stable", "canary"}
    for request in upstreams.requests:
        user = parse_qs(request.url.query.decode())["user_id"][0]
        expected_host = "inference-canary.test" if first[user] == "canary" else "inference.test"
        assert request.url.host == expected_host


async def test_every_query_parameter_is_passed_on(upstreams: Upstreams) -> None:
    async with gateway(upstreams) as client:
        await client.get(
            "/v1/recommendations?user_id=u%201&k=5&exclude=a&exclude=b&tag=x&trending=true"
        )
    query = parse_qs(upstreams.requests[0].url.query.decode())
    assert query == {
        "user_id": ["u 1"],
        "k": ["5"],
        "exclude": ["a", "b"],
        "tag": ["x"],
        "trending": ["true"],
    }


async def test_a_missing_user_id_is_refused_before_any_upstream_call(
    upstreams: Upstreams,
) -> None:
    async with gateway(upstreams) as client:
        response = await client.get("/v1/recommendations", params={"k": "3"})
    assert response.status_code == 422
    assert error_of(response)["code"] == "validation_error"
    assert upstreams.requests == []


# -------------------------------------------------------------------------------- upstream errors


async def test_the_pools_own_4xx_passes_through(upstreams: Upstreams) -> None:
    upstreams.answer = lambda _: httpx.Response(
        422,
        json={"error": {"code": "invalid_query", "message": "k is at most 100", "details": []}},
    )
    async with gateway(upstreams) as client:
        response = await client.get("/v1/recommendations", params={"user_id": "u", "k": "500"})
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_query"
    assert response.json()["variant"] == "stable"


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (lambda _: httpx.Response(500, text="Internal Server Error"), 502, "upstream_error"),
        (lambda _: httpx.Response(503, json={"error": {"code": "x"}}), 502, "upstream_error"),
        (lambda _: httpx.Response(200, text="<html>"), 502, "upstream_error"),
        (lambda _: httpx.Response(200, json=[1, 2]), 502, "upstream_error"),
    ],
)
async def test_a_failing_pool_is_a_502_naming_it(
    upstreams: Upstreams, answer: Handler, status: int, code: str
) -> None:
    upstreams.answer = answer
    async with gateway(upstreams, inference_canary_url=CANARY_URL, canary_weight=1.0) as client:
        response = await client.get("/v1/recommendations", params={"user_id": "u"})
    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert "canary" in str(error_of(response)["message"])
    assert response.json()["variant"] == "canary"


async def test_an_unreachable_pool_is_a_502(upstreams: Upstreams) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    upstreams.answer = refuse
    async with gateway(upstreams) as client:
        response = await client.get("/v1/recommendations", params={"user_id": "u"})
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_unavailable"
    assert "stable" in str(error_of(response)["message"])


async def test_a_pool_that_does_not_answer_in_time_is_a_504(upstreams: Upstreams) -> None:
    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    upstreams.answer = time_out
    async with gateway(upstreams, upstream_timeout_s=0.25) as client:
        response = await client.get("/v1/recommendations", params={"user_id": "u"})
    assert response.status_code == 504
    error = error_of(response)
    assert error["code"] == "upstream_timeout"
    assert "0.25 s" in str(error["message"])


# ------------------------------------------------------------------------------------- API keys


async def test_with_keys_configured_the_route_needs_one(upstreams: Upstreams) -> None:
    digests = f"{key_digest('another-key')},{key_digest(KEY)}"
    async with gateway(upstreams, api_key_hashes=digests) as client:
        missing = await client.get("/v1/recommendations", params={"user_id": "u"})
        wrong = await client.get(
            "/v1/recommendations", params={"user_id": "u"}, headers={"X-API-Key": "guess"}
        )
        digest_as_key = await client.get(
            "/v1/recommendations", params={"user_id": "u"}, headers={"X-API-Key": key_digest(KEY)}
        )
        # The key comes first: without one, even an invalid query is a 401.
        invalid = await client.get("/v1/recommendations")
        assert upstreams.requests == []
        good = await client.get(
            "/v1/recommendations", params={"user_id": "u"}, headers={"X-API-Key": KEY}
        )
        probes = [await client.get(path) for path in ("/healthz", "/readyz", "/metrics")]
    for refused in (missing, wrong, digest_as_key, invalid):
        assert refused.status_code == 401, refused.text
        assert error_of(refused)["code"] == "unauthorized"
    assert good.status_code == 200
    assert good.json()["variant"] == "stable"
    assert [p.status_code for p in probes] == [200, 200, 200]


async def test_without_keys_no_key_is_needed(upstreams: Upstreams) -> None:
    async with gateway(upstreams, api_key_hashes="") as client:
        response = await client.get("/v1/recommendations", params={"user_id": "u"})
    assert response.status_code == 200


# -------------------------------------------------------------------------------------- console


async def test_the_console_lists_both_pools_and_the_auth_mode(upstreams: Upstreams) -> None:
    async with gateway(
        upstreams,
        inference_canary_url=CANARY_URL,
        canary_weight=0.1,
        api_key_hashes=key_digest(KEY),
    ) as client:
        page = (await client.get("/")).text
    assert "stable pool, 90.0% of users" in page
    assert "canary pool, 10.0% of users" in page
    assert STABLE_URL in page
    assert CANARY_URL in page
    assert page.count("<td class='ready'>ready</td>") == 4  # ingest, trainer, both pools
    assert "API key required" in page
    assert KEY not in page
    assert key_digest(KEY) not in page


async def test_the_console_says_when_there_is_no_canary_and_no_auth(upstreams: Upstreams) -> None:
    async with gateway(upstreams) as client:
        page = (await client.get("/")).text
    assert "stable pool, 100.0% of users" in page
    assert "off (no STREAMREC_GATEWAY_INFERENCE_CANARY_URL)" in page
    assert "No API key required" in page
