"""Idempotency keys in Redis: an ``event_id`` is written to Kafka at most once per window.

A key goes through two states: ``pending`` (claimed, not yet acknowledged by Kafka, short TTL)
and ``p:o`` (stored at partition p, offset o; kept for the dedup window). A claim that is never
confirmed (the process died, Kafka failed) is released or expires, so a retry is accepted: the
check can never swallow an event that Kafka did not store.

Throughput: every request needs a claim and a confirmation, and redis-py costs tens of
microseconds per command. So one flusher task coalesces the work of all concurrent requests into
a single Lua call per round trip (confirmations and releases first, then claims, over many
keys). One flusher also means one ordered stream of commands: a confirmation
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

# The scripts take many ids as ONE newline-joined argument and answer with one joined string:
# redis-py packs and parses each argument and reply element in Python, which for a 100-event batch
# cost more than the Redis work itself. (Event ids cannot contain newlines: see the schema.) The
# keys are therefore not declared in KEYS: the store needs a standalone Redis, not a cluster.
#
# One script per flush, so a flush is one round trip (EVALSHA; a pipeline of scripts costs
# redis-py a SCRIPT EXISTS round trip first on every execute). In order: confirmations ("id value"
# lines; only keys still claimed are confirmed (XX), so an expired claim stays forgotten), then
# releases (only pending claims are deleted: a stored key is never removed by a late failure),
# then claims (SET NX GET per id); the reply has per claimed id the previous value, "" when the
# id was free.
# ARGV: prefix, window s, pending TTL s, confirmations, releases, claims.
_FLUSH = """
local prefix = ARGV[1]
for id, value in string.gmatch(ARGV[4], "([^ \\n]+) ([^\\n]+)") do
  redis.call('SET', prefix .. id, value, 'XX', 'EX', ARGV[2])
end
for id in string.gmatch(ARGV[5], "[^\\n]+") do
  local key = prefix .. id
  if redis.call('GET', key) == 'pending' then redis.call('DEL', key) end
end
local out = {}
local n = 0
for id in string.gmatch(ARGV[6], "[^\\n]+") do
  n = n + 1
  out[n] = redis.call('SET', prefix .. id, 'pending', 'NX', 'GET', 'EX', ARGV[3]) or ''
end
return table.concat(out, "\\n")
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
        self._flush_script = redis.register_script(_FLUSH)
        self._claims: list[tuple[Sequence[str], asyncio.Future[list[Claim]]]] = []
        self._confirms: list[str] = []
        self._releases: list[str] = []
        self._flushing = False
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

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
        self._claims.append((event_ids, future))
        self._wakeup.set()
        return await future

    def confirm(self, stored: Sequence[tuple[str, int, int]]) -> None:
        """Queue ``(event_id, partition, offset)`` records for the window (not awaited: the
        request is answered once Kafka has the event; see the module docstring)."""
        self._confirms.extend(
            f"{event_id} {partition}:{offset}" for event_id, partition, offset in stored
        )
        if stored:
            self._wakeup.set()

    def release(self, event_ids: Sequence[str]) -> None:
        """Queue forgetting claims whose events were not stored, so a retry is accepted."""
        self._releases.extend(event_ids)
        if event_ids:
            self._wakeup.set()

    async def drain(self) -> None:
        """Wait until everything queued so far has reached Redis (or failed to)."""
        # Polling is fine here: drain runs at shutdown and in tests, never per request.
        while self._claims or self._confirms or self._releases or self._flushing:  # noqa: ASYNC110
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
            except Exception as error:  # never let the flusher die: requests would hang
                if not isinstance(error, RedisError | OSError):
                    log.exception("dedup flusher failed")
                elif confirms or releases:
                    log.warning("idempotency outcomes not recorded: %s", error)
                for _, future in claims:
                    if not future.done():
                        future.set_exception(DedupUnavailableError(str(error)))
            finally:
                self._flushing = False

    async def _flush(
        self,
        claims: list[tuple[Sequence[str], asyncio.Future[list[Claim]]]],
        confirms: list[str],
        releases: list[str],
    ) -> None:
        ids = [event_id for batch, _ in claims for event_id in batch]
        reply = await self._flush_script(
            args=[
                self._prefix,
                self._window_s,
                self._pending_ttl_s,
                "\n".join(confirms),
                "\n".join(releases),
                "\n".join(ids),
            ]
        )
        if not ids:
            return
        previous = reply.split(b"\n")
        start = 0
        for batch, future in claims:
            if not future.done():
                future.set_result([_claim_from(v) for v in previous[start : start + len(batch)]])
            start += len(batch)


def _claim_from(previous: bytes) -> Claim:
    if not previous:
        return Claim(ClaimState.NEW)
    if previous == PENDING:
        return Claim(ClaimState.IN_FLIGHT)
    partition, _, offset = previous.partition(b":")
    return Claim(ClaimState.DUPLICATE, int(partition), int(offset))
