"""Item metadata (title, tags, availability), stored in Redis and mirrored in memory.

Every replica keeps the whole catalogue in memory (a few hundred bytes per item), so filtering
a request costs no round trip. Writers bump a version counter; replicas poll it and reload only
when it moved. The rows to filter out of an item list (the served model's, its new items') are
computed once per (list, catalogue version, tag) and reused by every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from redis.asyncio import Redis
from redis.exceptions import RedisError
from streamrec_shared.schemas.events import EntityId
from streamrec_shared.tasks import BackgroundTask

log = logging.getLogger(__name__)
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\s,]+$")]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: EntityId
    title: str | None = Field(default=None, max_length=500)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    available: bool = True


class ItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1, max_length=10_000)


# Item lists whose filters are kept: the served model's and its new items' (a third when a
# version is swapped in).
KEPT_FILTERS = 4


@dataclass
class _Filters:
    """The rows of one item list never to recommend, per tag, at one catalogue version."""

    items: Sequence[str]  # compared by identity: a model's or a new-item table's list
    version: int
    by_tag: dict[str | None, npt.NDArray[np.intp]] = field(default_factory=dict)


class ItemCatalog:
    def __init__(self, redis: Redis, prefix: str, refresh_s: float = 2.0) -> None:
        self.redis = redis
        self._meta_key = f"{prefix}items:meta"
        self._version_key = f"{prefix}items:meta:version"
        self.refresh_s = refresh_s
        self.items: dict[str, ItemIn] = {}
        self.version = 0
        self._filters: list[_Filters] = []
        self._refresher = BackgroundTask("catalog-refresh", self._poll)

    async def start(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.refresh()
        self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except (RedisError, OSError) as error:
                log.debug("catalogue refresh skipped: %s", error)

    async def refresh(self) -> bool:
        raw_version = await self.redis.get(self._version_key)
        version = int(raw_version or 0)
        if version == self.version:
            return False
        stored = await self.redis.hgetall(self._meta_key)
        self.items = {
            (key.decode() if isinstance(key, bytes) else key): ItemIn.model_validate_json(value)
            for key, value in stored.items()
        }
        self.version = version
        return True

    async def upsert(self, items: list[ItemIn]) -> int:
        """Write items (whole records replace), then reload here; returns the new version."""
        mapping = {item.item_id: orjson.dumps(item.model_dump()) for item in items}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._meta_key, mapping=mapping)  # type: ignore[arg-type]
            pipe.incr(self._version_key)
            results = await pipe.execute()
        version = int(results[-1])
        await self.refresh()
        return version

    def title(self, item_id: str) -> str | None:
        item = self.items.get(item_id)
        return item.title if item else None

    def filtered_rows(self, items: Sequence[str], tag: str | None) -> npt.NDArray[np.intp]:
        """The rows of ``items`` never to recommend: unavailable, or (with ``tag``) without it.

        Kept per list (by identity), catalogue version and tag, so a request pays a lookup,
        not a Python call per item; usually empty, and then callers skip the masking."""
        kept = next((f for f in self._filters if f.items is items), None)
        if kept is None or kept.version != self.version:
            kept = _Filters(items, self.version)
            others = [f for f in self._filters if f.items is not items]
            self._filters = [kept, *others][:KEPT_FILTERS]
        rows = kept.by_tag.get(tag)
        if rows is None:
            allowed = map(self.allowed, items, itertools.repeat(tag))
            mask = np.fromiter(allowed, dtype=np.bool_, count=len(items))
            rows = kept.by_tag[tag] = np.flatnonzero(~mask)
        return rows

    def allowed(self, item_id: str, tag: str | None) -> bool:
        item = self.items.get(item_id)
        if item is not None and not item.available:
            return False
        return tag is None or (item is not None and tag in item.tags)
