"""The gateway's real upstream client (httpx over aiohttp) against a loopback HTTP server:
answers pass through, a pool too slow is a 504 and a closed port a 502, as with the mocked
transport of the unit tests (``test_gateway_proxy.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from gateway.config import GatewaySettings
from gateway.main import create_app
from streamrec_dev.servers import free_port

from tests.support.apps import serve


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive HTTP/1.1 server for GETs: ``user_id=slow`` waits 5 s before answering."""
    try:
        while request := await reader.readuntil(b"\r\n\r\n"):
            target = request.split(b" ", 2)[1].decode()
            if "user_id=slow" in target:
                await asyncio.sleep(5)
            body = orjson.dumps({"target": target, "model_version": 1, "items": []})
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    except asyncio.CancelledError:
        # The slow answer is still waiting when the test closes the loop: nothing to report.
        return
    finally:
        writer.close()


@asynccontextmanager
async def upstream() -> AsyncIterator[str]:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"
        server.close()


async def test_the_real_upstream_client_proxies_times_out_and_reports_a_closed_pool() -> None:
    async with upstream() as url:
        settings = GatewaySettings(inference_url=url, upstream_timeout_s=0.3)
        async with serve(create_app(settings)) as gateway:
            answers = await asyncio.gather(
                *(
                    gateway.get("/v1/recommendations", params={"user_id": f"u{n}", "k": 5})
                    for n in range(20)
                )
            )
            for n, answer in enumerate(answers):
                assert answer.status_code == 200
                body = answer.json()
                assert body["variant"] == "stable"
                assert body["target"] == f"/v1/recommendations?user_id=u{n}&k=5"
            slow = await gateway.get("/v1/recommendations", params={"user_id": "slow"})
            assert slow.status_code == 504
            assert slow.json()["error"]["code"] == "upstream_timeout"
    closed = GatewaySettings(inference_url=f"http://127.0.0.1:{free_port()}")
    async with serve(create_app(closed)) as gateway:
        down = await gateway.get("/v1/recommendations", params={"user_id": "u1"})
    assert down.status_code == 502
    assert down.json()["error"]["code"] == "upstream_unavailable"
