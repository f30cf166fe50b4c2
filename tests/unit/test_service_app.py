"""The service skeleton's lifespan: the start-up heap is frozen while the app serves."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from streamrec_shared.app import always_ready, service_app
from streamrec_shared.settings import LogSettings


async def test_the_heap_alive_at_start_up_is_frozen_until_shutdown() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append(f"start, frozen {gc.get_freeze_count()}")
        app.state.client = object()
        yield
        events.append("stop")

    app, _ = service_app("test", "a test", LogSettings(), always_ready, lifespan)
    assert gc.get_freeze_count() == 0
    async with app.router.lifespan_context(app):
        # The service's own start-up ran first, then everything alive was frozen.
        assert events == ["start, frozen 0"]
        assert gc.get_freeze_count() > 1000  # the imported modules' objects, at least
    assert events == ["start, frozen 0", "stop"]
    assert gc.get_freeze_count() == 0  # handed back: nothing stays frozen in this process


async def test_an_app_without_a_lifespan_is_frozen_too() -> None:
    app, _ = service_app("test", "a test", LogSettings(), always_ready)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0
