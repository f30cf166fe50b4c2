"""Idempotency keys in Redis: an ``event_id`` is written to Kafka at most once per window.

A key goes through two states: ``pending`` (claimed, not yet acknowledged by Kafka, short TTL)
and ``p:o`` (stored at partition p, offset o; kept for the dedup window). A claim that is never
confirmed (the process died, Kafka failed) is released or expires, so a retry is accepted: the
check can never swallow an event that Kafka did not store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis
from redis.exceptions import RedisError

PENDING = b"pending"


class ClaimState(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    partition: int | None = None
    offset: int | None = None


class DedupUnavailableError(RuntimeError):
    pass


class DedupStore:
    def __init__(self, redis: Redis, key_prefix: str, window_s: int, pending_ttl_s: int) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}dedup:"
        self._window_s = window_s
        self._pending_ttl_s = pending_ttl_s

    def _key(self, event_id: str) -> str:
        return self._prefix + event_id

    async def claim(self, event_ids: Sequence[str]) -> list[Claim]:
        """Claim every id at once (one round trip): ``SET key pending NX GET`` per id."""
        try:
            if len(event_ids) == 1:
                previous = [
                    await self._redis.set(
                        self._key(event_ids[0]), PENDING, nx=True, get=True, ex=self._pending_ttl_s
                    )
                ]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for event_id in event_ids:
                    pipe.set(
                        self._key(event_id), PENDING, nx=True, get=True, ex=self._pending_ttl_s
                    )
                previous = await pipe.execute()
        except (RedisError, OSError) as error:
            raise DedupUnavailableError(str(error)) from error
        return [_claim_from(value) for value in previous]

    async def confirm(self, stored: Sequence[tuple[str, int, int]]) -> None:
        """Record ``(event_id, partition, offset)`` for the window (only keys still claimed)."""
        if not stored:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for event_id, partition, offset in stored:
                pipe.set(self._key(event_id), f"{partition}:{offset}", xx=True, ex=self._window_s)
            await pipe.execute()
        except (RedisError, OSError) as error:
            raise DedupUnavailableError(str(error)) from error

    async def release(self, event_ids: Sequence[str]) -> None:
        """Forget claims whose events were not stored, so that a retry is accepted."""
        if not event_ids:
            return
        try:
            await self._redis.delete(*(self._key(event_id) for event_id in event_ids))
        except (RedisError, OSError) as error:
            raise DedupUnavailableError(str(error)) from error


def _claim_from(previous: object) -> Claim:
    if previous is None:
        return Claim(ClaimState.NEW)
    if previous == PENDING:
        return Claim(ClaimState.IN_FLIGHT)
    assert isinstance(previous, bytes)  # the client is built without decode_responses
    partition, _, offset = previous.partition(b":")
    return Claim(ClaimState.DUPLICATE, int(partition), int(offset))
