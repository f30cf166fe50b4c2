"""Idempotency keys in Redis: an ``event_id`` is written to Kafka at most once per window.

A key goes through two states: ``pending`` (claimed, not yet acknowledged by Kafka, short TTL)
and ``p:o`` (stored at partition p, offset o; kept for the dedup window). A claim that is never
confirmed (the process died, Kafka failed) is released or expires, so a retry is accepted: the
check can never swallow an event that Kafka did not store.

Throughput: every request needs a claim and a confirmation, and redis-py costs tens of
microseconds per command. So one flusher task coalesces the work of all concurrent requests into
a single pipeline per round trip (confirmations and releases first, then claims, each as one
Lua call over many keys). One flusher also means one ordered stream of commands: a confirmation
always reaches Redis before a later claim of the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PENDING = b"pending"

# SET NX GET: claims the key if free and returns what was there (false when free).
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('SET', key, 'pending', 'NX', 'GET', 'EX', ARGV[1])
end
return out
"""
# Only keys still claimed are confirmed (XX): an expired claim stays forgotten.
_CONFIRM = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'XX', 'EX', ARGV[1])
end
return #KEYS
"""
# Only pending claims are released: a stored key is never deleted by a late failure.
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == 'pending' then redis.call('DEL', key) end
end
return #KEYS
"""


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
        self._claim_script = redis.register_script(_CLAIM)
        self._confirm_script = redis.register_script(_CONFIRM)
        self._release_script = redis.register_script(_RELEASE)
        self._claims: list[tuple[list[str], asyncio.Future[list[Claim]]]] = []
        self._confirms: list[tuple[str, bytes]] = []
        self._releases: list[str] = []
        self._flushing = False
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    def _key(self, event_id: str) -> str:
        return self._prefix + event_id

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="dedup-flusher")

    async def stop(self) -> None:
        """Flush what is queued, then stop."""
        await self.drain()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

    async def claim(self, event_ids: Sequence[str]) -> list[Claim]:
        """Claim every id; each gets NEW, DUPLICATE (with its offset) or IN_FLIGHT."""
        future: asyncio.Future[list[Claim]] = asyncio.get_running_loop().create_future()
        self._claims.append(([self._key(event_id) for event_id in event_ids], future))
        self._wakeup.set()
        return await future

    def confirm(self, stored: Sequence[tuple[str, int, int]]) -> None:
        """Queue ``(event_id, partition, offset)`` records for the window (not awaited: the
        request is answered once Kafka has the event; see the module docstring)."""
        for event_id, partition, offset in stored:
            self._confirms.append((self._key(event_id), f"{partition}:{offset}".encode()))
        if stored:
            self._wakeup.set()

    def release(self, event_ids: Sequence[str]) -> None:
        """Queue forgetting claims whose events were not stored, so a retry is accepted."""
        self._releases.extend(self._key(event_id) for event_id in event_ids)
        if event_ids:
            self._wakeup.set()

    async def drain(self) -> None:
        """Wait until everything queued so far has reached Redis (or failed to)."""
        while self._claims or self._confirms or self._releases or self._flushing:
            await asyncio.sleep(0.001)

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            claims, self._claims = self._claims, []
            confirms, self._confirms = self._confirms, []
            releases, self._releases = self._releases, []
            self._flushing = True
            try:
                await self._flush(claims, confirms, releases)
            except (RedisError, OSError) as error:
                if confirms or releases:
                    log.warning("idempotency outcomes not recorded: %s", error)
                for _, future in claims:
                    if not future.done():
                        future.set_exception(DedupUnavailableError(str(error)))
            except Exception as error:  # never let the flusher die: requests would hang
                log.exception("dedup flusher failed")
                for _, future in claims:
                    if not future.done():
                        future.set_exception(DedupUnavailableError(str(error)))
            finally:
                self._flushing = False

    async def _flush(
        self,
        claims: list[tuple[list[str], asyncio.Future[list[Claim]]]],
        confirms: list[tuple[str, bytes]],
        releases: list[str],
    ) -> None:
        keys = [key for batch, _ in claims for key in batch]
        # As a context manager, the pipeline gives its connection back even when Redis fails.
        async with self._redis.pipeline(transaction=False) as pipe:
            if confirms:
                await self._confirm_script(
                    keys=[key for key, _ in confirms],
                    args=[self._window_s, *(value for _, value in confirms)],
                    client=pipe,
                )
            if releases:
                await self._release_script(keys=releases, client=pipe)
            if keys:
                await self._claim_script(keys=keys, args=[self._pending_ttl_s], client=pipe)
            results = await pipe.execute()
        if not keys:
            return
        previous = results[-1]
        start = 0
        for batch, future in claims:
            if not future.done():
                future.set_result([_claim_from(v) for v in previous[start : start + len(batch)]])
            start += len(batch)


def _claim_from(previous: object) -> Claim:
    if previous is None:
        return Claim(ClaimState.NEW)
    assert isinstance(previous, bytes)  # the client is built without decode_responses
    if previous == PENDING:
        return Claim(ClaimState.IN_FLIGHT)
    partition, _, offset = previous.partition(b":")
    return Claim(ClaimState.DUPLICATE, int(partition), int(offset))
