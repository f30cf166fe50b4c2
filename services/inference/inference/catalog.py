"""Item metadata (title, tags, availability), stored in Redis and mirrored in memory.

Every replica keeps the whole catalogue in memory (a few hundred bytes per item), so filtering
a request costs no round trip. Writers bump a version counter; replicas poll it and reload only
when it moved. Masks over a model's rows are computed once per (model version, catalogue
version) and reused by every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

from inference.models import ServedModel

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


@dataclass
class _Masks:
    key: tuple[int, int] = (-1, -1)
    unavailable: npt.NDArray[np.bool_] | None = None
    # The same as row numbers: usually empty, and then a request skips the masking altogether.
    unavailable_rows: npt.NDArray[np.intp] | None = None
    by_tag: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)


class ItemCatalog:
    def __init__(self, redis: Redis, prefix: str, refresh_s: float = 2.0) -> None:
        self.redis = redis
        self._meta_key = f"{prefix}items:meta"
        self._version_key = f"{prefix}items:meta:version"
        self.refresh_s = refresh_s
        self.items: dict[str, ItemIn] = {}
        self.version = 0
        self._masks = _Masks()
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

    def _current_masks(self, model: ServedModel) -> _Masks:
        key = (model.version, self.version)
        if self._masks.key != key:
            ids = model.scorer.weights.item_ids
            unavailable = np.fromiter(
                (not self.items[i].available if i in self.items else False for i in ids),
                dtype=np.bool_,
                count=len(ids),
            )
            self._masks = _Masks(
                key=key, unavailable=unavailable, unavailable_rows=np.flatnonzero(unavailable)
            )
        return self._masks

    def unavailable_mask(self, model: ServedModel) -> npt.NDArray[np.bool_]:
        masks = self._current_masks(model)
        assert masks.unavailable is not None
        return masks.unavailable

    def unavailable_rows(self, model: ServedModel) -> npt.NDArray[np.intp]:
        masks = self._current_masks(model)
        assert masks.unavailable_rows is not None
        return masks.unavailable_rows

    def tag_mask(self, model: ServedModel, tag: str) -> npt.NDArray[np.bool_]:
        """True where the item does NOT carry ``tag`` (so it is filtered out)."""
        masks = self._current_masks(model)
        mask = masks.by_tag.get(tag)
        if mask is None:
            ids = model.scorer.weights.item_ids
            mask = np.fromiter(
                (tag not in self.items[i].tags if i in self.items else True for i in ids),
                dtype=np.bool_,
                count=len(ids),
            )
            masks.by_tag[tag] = mask
        return mask

    def allowed(self, item_id: str, tag: str | None) -> bool:
        item = self.items.get(item_id)
        if item is not None and not item.available:
            return False
        return tag is None or (item is not None and tag in item.tags)
