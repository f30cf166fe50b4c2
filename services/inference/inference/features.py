"""The feature store: per-user and per-item features in Redis, written by the feature updater.

Schema (``p`` is ``RedisSettings.key_prefix``):

| key | type | content |
|---|---|---|
| ``{p}u:{user}:recent`` | LIST | positive items, newest first (repeats kept, as in training), |
| | | trimmed to ``recent_items`` |
| ``{p}u:{user}:seen`` | ZSET | item → last event time (ms), the newest ``max_seen_items`` |
| ``{p}u:{user}:counts`` | HASH | event type → count, every known type (negatives too) |
| ``{p}u:{user}:serving`` | STRING | ``recent`` and ``seen`` as the serving read wants them: each |
| | | list joined by NUL, the two joined by SOH (``\\x01``); rewritten with them |
| ``{p}items:first_seen`` | ZSET | item → its first positive event time (ms), the newest |
| | | ``first_seen_max`` items (an older one seen again counts as new) |
| ``{p}i:{item}:context`` | HASH | a new item's context: item → how often it was among a user's |
| | | newest ``new_item_context_items`` before one of the item's first |
| | | ``new_item_context_events`` events; field ``""`` counts those events; |
| | | created at the item's first event, expires ``new_item_context_ttl_s`` later |
| ``{p}features:contexts`` | HASH | ``opened`` / ``counted``: bumped by every batch that opened / |
| | | added to a context (inference rebuilds its new items on a change) |
| ``{p}items:popularity`` | ZSET | forward-decayed weighted count, ``popularity_half_life_s`` |
| ``{p}items:trending`` | ZSET | the same with ``trending_half_life_s`` (short-term activity) |
| ``{p}features:landmark`` | STRING | landmark of the forward decay (event time, ms) |
| ``{p}features:clock`` | STRING | newest event time applied (ms): "now" for decayed values |
| ``{p}features:offsets`` | HASH | ``{topic}:{partition}`` → next offset applied |
| ``{p}features:schema`` | STRING | the schema version written (``SCHEMA_VERSION``) |

**Forward decay** (Cormode et al.): an event of weight ``w`` at time ``t`` adds
``w · 2^((t − L)/h)`` to its item, for a fixed landmark ``L``. The true decayed value at time
``now`` is the stored score times ``2^(−(now − L)/h)``, a factor common to every item, so the
stored order is the decayed order and nothing is rewritten as time passes. The exponent grows
with ``t``; once it passes ``RESCALE_AFTER_HALF_LIVES`` for the shorter half-life, one
transaction multiplies both sets by ``2^(−Δ/h)`` (ZUNIONSTORE with WEIGHTS), drops items decayed
to nothing, and moves the landmark. Time is always the event's own timestamp, never wall time,
so a replay of old data (MovieLens, 1998) decays exactly like live traffic.

**Trending** is short-term activity relative to long-term popularity, read at "now" (the clock):
``short / (long + 1)``, computed at read time over the ``pool`` items most active in the short
window (one Lua call): a steady favourite scores about ``h_short / h_long``, a rising item
approaches 1, and the ``+1`` keeps a single stray event from topping the list.

**Exactly once.** One fetched batch is one Lua call (``_APPLY_BATCH``: atomic in Redis, one
round trip) that writes the batch and the new offsets of its partitions together, so Redis holds
either all of a batch and its position or neither. The script refuses a batch that starts below
the stored position (:class:`PositionConflict`): a batch whose reply was lost, or that another
writer applied first, is never applied twice. The item scores are computed here against the
landmark this process last saw; the script refuses them (and names the stored landmark, for a
second try) if the landmark is not that one. (Redis does not roll back a script that fails
half-way, e.g. on a foreign key of the wrong type under our names; nothing else writes these
keys.)

**New items.** A model version cannot rank an item launched after it; inference places such an
item from its context (``NewItemVectors``, ``fold_in``) until a version trains it. Only an item's
first few events are counted (10 by default: on the synthetic drift stream in process, counting
its first 3, 10 or all events scores the same), and the hash expires, so the keys stay few. The
context is written in the same script as the rest of the batch, so it is exactly-once too.
The keys are additive (no migration): an item first seen by an older version gets its
``first_seen`` at its next event, and a context it does not need.

Non-positive events (``remove_from_cart``, ``dislike``) only bump ``counts``; they never enter
``recent``, ``seen`` or the item scores (as in training). Types this version does not know are
skipped.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError
from streamrec_shared.models.item_pooling import ItemContext
from streamrec_shared.schemas.events import INTERACTION_WEIGHTS, EventType

from inference.config import InferenceSettings

log = logging.getLogger(__name__)

# 2^500 ≈ 3e150: far from the float limit (1.8e308) even summed over millions of events.
# 2: per-user ``serving`` strings (``migrate`` writes them for a store of version 1).
SCHEMA_VERSION = 2
RESCALE_AFTER_HALF_LIVES = 500.0
# After a rescale, scores below this (a single event 64 half-lives old) are dropped.
PRUNE_BELOW = 2.0**-64
TRENDING_SMOOTHING = 1.0
TRENDING_POOL_FACTOR = 4
TRENDING_POOL_MIN = 200
TRENDING_POOL_MAX = 2000
# A batch is tried this often against a landmark another writer keeps moving.
MAX_LANDMARK_ATTEMPTS = 20

_KNOWN_TYPES = frozenset(t.value for t in EventType)

# The pool of the most active items in the short window with their long-term scores, plus the
# landmark and clock: one round trip. ZMSCORE in chunks (Lua's unpack has a stack limit).
_TRENDING_READ = """
local top = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local members = {}
for i = 1, #top, 2 do members[#members + 1] = top[i] end
local long = {}
for start = 1, #members, 1000 do
  local chunk = {}
  for i = start, math.min(start + 999, #members) do chunk[#chunk + 1] = members[i] end
  local scores = redis.call('ZMSCORE', KEYS[2], unpack(chunk))
  for i = 1, #scores do long[#long + 1] = scores[i] end
end
return {top, long, redis.call('MGET', KEYS[3], KEYS[4])}
"""

# Item contexts (KEYS) that changed since they had the event counts in ARGV (-1: never read):
# per key 0 when there is no context, 1 when its count is unchanged, else all its fields. Only
# the changed ones travel: inference rereads the open contexts of a hundred items at every change
# of any context, which as HGETALLs took 0.8 of the CPU that answering 100 requests/s took
# (py-spy profile of `benchmarks/inference_latency.py --skip-100k`, session 17).
_CONTEXTS_READ = """
local out = {}
for i, key in ipairs(KEYS) do
  local events = redis.call('HGET', key, '')
  if not events then
    out[i] = 0
  elseif events == ARGV[i] then
    out[i] = 1
  else
    out[i] = redis.call('HGETALL', key)
  end
end
return out
"""

# A user's serving string from their lists (``base`` is ``{p}u:{user}:``): one definition for the
# writes and for the migration of a store written before the strings existed.
_SERVING_LUA = """
local function write_serving(base)
  redis.call('SET', base .. 'serving',
             table.concat(redis.call('LRANGE', base .. 'recent', 0, -1), '\\0') .. '\\1' ..
             table.concat(redis.call('ZREVRANGE', base .. 'seen', 0, -1), '\\0'))
end
"""

# The writes of a batch, atomically, in one round trip: four (WATCH, two reads, MULTI/EXEC) cost
# the updater and Redis a syscall each way and redis-py's Python per command, far more than the
# writes themselves. The user keys are not declared in KEYS (a standalone Redis, as for ingest's
# dedup keys).
#
# KEYS: offsets, landmark, clock, popularity, trending, first_seen, contexts (change counters).
# ARGV: [1] the landmark the scores were computed against ('' for none yet), [2] the landmark to
# store ('' to keep it), [3] [4] the weights that rescale popularity and trending to the new
# landmark ('' for no rescale), [5] the pruning bound after a rescale, [6] the newest positive
# event time ('' if none); then n, n × (offsets field, first offset, next offset); then prefix,
# recent_items, max_seen_items, new_item_context_items, new_item_context_events (0: no
# contexts), new_item_context_ttl_s, first_seen_max; then m, m × (item, long increment, short
# increment, first event ms); then per user: user, n, n items (oldest first), m,
# m × (item, event ms), c, c × (event type, count).
# Reply: {'ok'}, {'conflict', {field, stored, ...}} or {'landmark', stored landmark}.
_APPLY_BATCH = (
    _SERVING_LUA
    + """
local i = 7
local n = tonumber(ARGV[i])
local partitions = i + 1
local taken = {}
for j = partitions, partitions + 3 * n - 1, 3 do
  local stored = redis.call('HGET', KEYS[1], ARGV[j])
  if stored and tonumber(stored) > tonumber(ARGV[j + 1]) then
    taken[#taken + 1] = ARGV[j]
    taken[#taken + 1] = stored
  end
end
if #taken > 0 then return {'conflict', taken} end
local landmark = redis.call('GET', KEYS[2]) or ''
if landmark ~= ARGV[1] then return {'landmark', landmark} end
if ARGV[3] ~= '' then
  for k = 4, 5 do
    redis.call('ZUNIONSTORE', KEYS[k], 1, KEYS[k], 'WEIGHTS', ARGV[k - 1])
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. ARGV[5])
  end
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2]) end
i = partitions + 3 * n
local prefix, keep_recent, keep_seen = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
local context_items, context_events = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
local context_ttl, first_seen_max = ARGV[i + 5], tonumber(ARGV[i + 6])
local first_seen, opened, counted = false, false, false
i = i + 7
n = tonumber(ARGV[i])
i = i + 1
for j = i, i + 4 * n - 1, 4 do
  for k = 1, 2 do
    if ARGV[j + k] ~= '0.0' then redis.call('ZINCRBY', KEYS[3 + k], ARGV[j + k], ARGV[j]) end
  end
  -- NX: the first time this store sees the item, and only then, opens its context
  if redis.call('ZADD', KEYS[6], 'NX', ARGV[j + 3], ARGV[j]) == 1 then
    first_seen = true
    if context_events > 0 then
      local context = prefix .. 'i:' .. ARGV[j] .. ':context'
      redis.call('HSET', context, '', 0)
      redis.call('EXPIRE', context, context_ttl)
      opened = true
    end
  end
end
-- the newest first_seen_max only: the set would otherwise grow with every item ever seen
if first_seen then redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -first_seen_max - 1) end
i = i + 4 * n
if ARGV[6] ~= '' then
  local clock = redis.call('GET', KEYS[3])
  if not clock or tonumber(ARGV[6]) > tonumber(clock) then redis.call('SET', KEYS[3], ARGV[6]) end
end
while i <= #ARGV do
  local base = prefix .. 'u:' .. ARGV[i] .. ':'
  n = tonumber(ARGV[i + 1])
  i = i + 2
  local changed = n > 0
  if n > 0 then
    local key = base .. 'recent'
    for j = i, i + n - 1 do
      if context_events > 0 then
        -- an open context, within the item's first events: count the user's newest items
        local context = prefix .. 'i:' .. ARGV[j] .. ':context'
        if redis.call('EXISTS', context) == 1
            and redis.call('HINCRBY', context, '', 1) <= context_events then
          for _, before in ipairs(redis.call('LRANGE', key, 0, context_items - 1)) do
            redis.call('HINCRBY', context, before, 1)
            counted = true
          end
        end
      end
      redis.call('LPUSH', key, ARGV[j])
    end
    redis.call('LTRIM', key, 0, keep_recent - 1)
  end
  i = i + n
  n = tonumber(ARGV[i])
  i = i + 1
  changed = changed or n > 0
  if n > 0 then
    local key = base .. 'seen'
    -- GT: an older repeat never moves an item back
    for j = i, i + 2 * n - 1, 2 do redis.call('ZADD', key, 'GT', ARGV[j + 1], ARGV[j]) end
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep_seen + 1))
  end
  i = i + 2 * n
  if changed then write_serving(base) end
  n = tonumber(ARGV[i])
  i = i + 1
  local key = base .. 'counts'
  for j = i, i + 2 * n - 1, 2 do redis.call('HINCRBY', key, ARGV[j], ARGV[j + 1]) end
  i = i + 2 * n
end
for j = partitions, partitions + 3 * tonumber(ARGV[7]) - 1, 3 do
  redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 2])
end
if opened then redis.call('HINCRBY', KEYS[7], 'opened', 1) end
if counted then redis.call('HINCRBY', KEYS[7], 'counted', 1) end
return {'ok'}
"""
)


# KEYS: users' ``seen`` keys; writes each one's serving string.
_MIGRATE_SERVING = (
    _SERVING_LUA
    + """
for _, key in ipairs(KEYS) do write_serving(string.sub(key, 1, -5)) end
return #KEYS
"""
)


def offsets_key(prefix: str) -> str:
    """The HASH of a feature store's positions (``prefix``: its Redis key prefix): the next
    offset applied per ``offsets_field``, written in the same transaction as the features."""
    return f"{prefix}features:offsets"


def offsets_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class PositionConflict(Exception):
    """Redis already holds a position past the start of this batch: it was applied before."""

    def __init__(self, stored: dict[int, int]) -> None:
        super().__init__(f"batch already applied up to {stored}")
        self.stored = stored


@dataclass(frozen=True, slots=True)
class FeatureEvent:
    """What the features need from one ``events`` record."""

    user_id: str
    item_id: str
    type: str
    weight: float  # INTERACTION_WEIGHTS; 0 for non-positive types
    event_ms: int  # the event's own time
    received_at: float  # ingest's receive time, unix seconds (for freshness)


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """One fetched batch: its events in stream order and the offsets it spans per partition."""

    topic: str
    events: Sequence[FeatureEvent]
    first: Mapping[int, int]  # partition → first offset read
    next: Mapping[int, int]  # partition → offset after the last one read


@dataclass(slots=True)
class UserFeatures:
    recent: list[str] = field(default_factory=list)  # newest first
    seen: list[str] = field(default_factory=list)  # most recently seen first
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.recent or self.seen or self.counts)


def _epoch_s(value: Any) -> float:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO time, got {type(value).__name__}")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def decode_event(value: bytes) -> FeatureEvent | None:
    """An ``events`` record, parsed once; ``None`` for types this version does not know.

    Raises ``ValueError`` for bytes that are not an event record (the caller dead-letters them).
    """
    try:
        record = orjson.loads(value)
        kind = record["type"]
        if kind not in _KNOWN_TYPES:
            return None
        user_id, item_id = record["user_id"], record["item_id"]
        if not isinstance(user_id, str) or not isinstance(item_id, str):
            raise TypeError("user_id and item_id must be strings")
        return FeatureEvent(
            user_id,
            item_id,
            kind,
            INTERACTION_WEIGHTS.get(kind, 0.0),
            round(_epoch_s(record["timestamp"]) * 1000),
            _epoch_s(record["received_at"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not an event record: {error}") from error


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _serving(raw: bytes | str | None) -> UserFeatures:
    """A ``serving`` string back to lists. Item ids are printable (``EntityId``), so neither
    separator (NUL, SOH) is ever in one."""
    if raw is None:
        return UserFeatures()
    text = raw.decode() if isinstance(raw, bytes) else raw
    recent, _, seen = text.partition("\x01")
    return UserFeatures(recent.split("\0") if recent else [], seen.split("\0") if seen else [])


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class FeatureStore:
    def __init__(self, redis: Redis, settings: InferenceSettings) -> None:
        self.redis = redis
        self.prefix = p = settings.redis.key_prefix
        self.recent_items = settings.recent_items
        self.max_seen_items = settings.max_seen_items
        self.long_half_life_ms = settings.popularity_half_life_s * 1000.0
        self.short_half_life_ms = settings.trending_half_life_s * 1000.0
        self.popularity_key = f"{p}items:popularity"
        self.trending_key = f"{p}items:trending"
        self.first_seen_key = f"{p}items:first_seen"
        self.contexts_key = f"{p}features:contexts"
        self.context_items = settings.new_item_context_items
        self.context_events = settings.new_item_context_events
        self.context_ttl_s = settings.new_item_context_ttl_s
        self.first_seen_max = settings.first_seen_max
        self.landmark_key = f"{p}features:landmark"
        self.clock_key = f"{p}features:clock"
        self.offsets_key = offsets_key(p)
        self.schema_key = f"{p}features:schema"
        self._trending_read = redis.register_script(_TRENDING_READ)
        self._apply_batch = redis.register_script(_APPLY_BATCH)
        self._migrate_serving = redis.register_script(_MIGRATE_SERVING)
        self._contexts_read = redis.register_script(_CONTEXTS_READ)
        # The decay landmark as this process last saw it (``apply`` checks it in Redis).
        self._landmark: int | None = None

    def user_key(self, user_id: str, kind: str) -> str:
        return f"{self.prefix}u:{user_id}:{kind}"

    def context_key(self, item_id: str) -> str:
        return f"{self.prefix}i:{item_id}:context"

    # --- writes --------------------------------------------------------------------------

    async def apply(self, batch: FeatureBatch) -> None:
        """Apply a batch and store its position, atomically.

        Raises :class:`PositionConflict` if any partition's stored position is past the batch's
        first offset (nothing is written then), ``RedisError`` if Redis fails: then nothing was
        written, or (reply lost) all of it was, and a retry gets the conflict.
        """
        if not batch.first:
            return
        tail: list[str | int] = [len(batch.first)]
        for partition, first in batch.first.items():
            tail += (offsets_field(batch.topic, partition), first, batch.next[partition])
        positives = [e for e in batch.events if e.weight > 0]
        newest = max((e.event_ms for e in positives), default=None)
        user_args = self._user_args(batch.events)
        keys = [
            self.offsets_key,
            self.landmark_key,
            self.clock_key,
            self.popularity_key,
            self.trending_key,
            self.first_seen_key,
            self.contexts_key,
        ]
        settings: list[str | int] = [
            self.prefix,
            self.recent_items,
            self.max_seen_items,
            self.context_items,
            self.context_events if self.context_items > 0 else 0,
            self.context_ttl_s,
            self.first_seen_max,
        ]
        for _ in range(MAX_LANDMARK_ATTEMPTS):
            landmark = self._landmark
            head, moved_to = self._decay_args(landmark, newest)
            item_args = self._item_args(positives, moved_to if moved_to is not None else landmark)
            args = [
                *head,
                "" if newest is None else newest,
                *tail,
                *settings,
                *item_args,
                *user_args,
            ]
            reply = await self._apply_batch(keys=keys, args=args)
            outcome = _text(reply[0])
            if outcome == "ok":
                if moved_to is not None:
                    self._landmark = moved_to
                    if landmark is not None:
                        log.info(
                            "feature decay landmark moved by %.0f s", (moved_to - landmark) / 1000
                        )
                return
            if outcome == "conflict":
                stored = reply[1]
                raise PositionConflict(
                    {
                        int(_text(stored[i]).rpartition(":")[2]): int(stored[i + 1])
                        for i in range(0, len(stored), 2)
                    }
                )
            # Another writer moved the landmark (or this process has not read it yet).
            self._landmark = int(reply[1]) if reply[1] else None
        raise RedisError(f"the decay landmark moved {MAX_LANDMARK_ATTEMPTS} times in a row")

    def _decay_args(self, landmark: int | None, newest: int | None) -> tuple[list[str], int | None]:
        """The script's landmark arguments (expected, new, two rescale weights, pruning bound)
        and the landmark the batch's scores are computed against if it moves (else None)."""
        expected = "" if landmark is None else str(landmark)
        if newest is None:
            return [expected, "", "", "", ""], None
        if landmark is None:
            return [expected, str(newest), "", "", ""], newest
        shortest = min(self.long_half_life_ms, self.short_half_life_ms)
        if (newest - landmark) / shortest <= RESCALE_AFTER_HALF_LIVES:
            return [expected, "", "", "", ""], None
        shift = newest - landmark
        weights = [
            repr(math.exp2(-shift / h)) for h in (self.long_half_life_ms, self.short_half_life_ms)
        ]
        return [expected, str(newest), *weights, repr(PRUNE_BELOW)], newest

    def _item_args(
        self, positives: Sequence[FeatureEvent], landmark: int | None
    ) -> list[str | int]:
        """m, then m × (item, long increment, short increment, first event ms) against
        ``landmark`` (an increment of events far older than the landmark is 0.0: not added)."""
        if landmark is None:
            return [0]
        scores: dict[str, list[float]] = {}
        first: dict[str, int] = {}
        for e in positives:
            age = e.event_ms - landmark
            pair = scores.setdefault(e.item_id, [0.0, 0.0])
            pair[0] += e.weight * math.exp2(age / self.long_half_life_ms)
            pair[1] += e.weight * math.exp2(age / self.short_half_life_ms)
            first[e.item_id] = min(first.get(e.item_id, e.event_ms), e.event_ms)
        args: list[str | int] = [len(scores)]
        for item, (long, short) in scores.items():
            args += (item, repr(long), repr(short), first[item])
        return args

    def _user_args(self, events: Sequence[FeatureEvent]) -> list[str | int]:
        """The per-user updates of a batch: the users part of ``_APPLY_BATCH``'s arguments."""
        args: list[str | int] = []
        recent: dict[str, list[str]] = {}
        seen: dict[str, dict[str, int]] = {}
        counts: dict[str, Counter[str]] = {}
        for event in events:
            counts.setdefault(event.user_id, Counter())[event.type] += 1
            if event.weight > 0:
                recent.setdefault(event.user_id, []).append(event.item_id)
                last = seen.setdefault(event.user_id, {})
                last[event.item_id] = max(last.get(event.item_id, event.event_ms), event.event_ms)
        for user, user_counts in counts.items():
            items = recent.get(user, [])[-self.recent_items :]
            args += (user, len(items), *items)
            user_seen = seen.get(user, {})
            args.append(len(user_seen))
            for item, ms in user_seen.items():
                args += (item, ms)
            args.append(len(user_counts))
            for kind, count in user_counts.items():
                args += (kind, count)
        return args

    async def clear(self) -> int:
        """Delete every feature key of this prefix (not other services' keys under it, such as
        ingest's dedup keys or the catalogue's ``items:meta``). Returns how many were deleted."""
        deleted = 0
        exact = [
            self.popularity_key,
            self.trending_key,
            self.landmark_key,
            self.clock_key,
            self.offsets_key,
            self.schema_key,
            self.first_seen_key,
            self.contexts_key,
        ]
        deleted += int(await self.redis.unlink(*exact))
        for kind in ("u", "i"):  # users' keys, new items' contexts
            batch: list[bytes | str] = []
            pattern = f"{_glob_escape(self.prefix)}{kind}:*"
            async for key in self.redis.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += int(await self.redis.unlink(*batch))
                    batch = []
            if batch:
                deleted += int(await self.redis.unlink(*batch))
        return deleted

    async def migrate(self) -> int:
        """Bring a store written by an older version to ``SCHEMA_VERSION`` (idempotent; the
        updater runs it before it writes). Version 2 adds each user's serving string, which
        the serving read needs: without it a user with history would read as a new one.
        Returns the number of users migrated."""
        stored = await self.redis.get(self.schema_key)
        if stored is not None and int(stored) >= SCHEMA_VERSION:
            return 0
        migrated = 0
        batch: list[bytes | str] = []
        pattern = f"{_glob_escape(self.prefix)}u:*:seen"
        async for key in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                migrated += int(await self._migrate_serving(keys=batch))
                batch = []
        if batch:
            migrated += int(await self._migrate_serving(keys=batch))
        await self.redis.set(self.schema_key, SCHEMA_VERSION)
        if migrated:
            log.info("feature store migrated to schema %d (%d users)", SCHEMA_VERSION, migrated)
        return migrated

    # --- reads ---------------------------------------------------------------------------

    async def positions(self, topic: str) -> dict[int, int]:
        """``{partition: next offset to apply}`` as stored with the features."""
        stored = await self.redis.hgetall(self.offsets_key)
        result: dict[int, int] = {}
        for raw_field, raw_value in stored.items():
            name, _, partition = _text(raw_field).rpartition(":")
            if name == topic:
                result[int(partition)] = int(raw_value)
        return result

    async def user_features(self, user_id: str, counts: bool = True) -> UserFeatures:
        """One user's features; ``counts=False`` leaves the type counts out."""
        features = (await self.users_features([user_id]))[0]
        if counts:
            stored = await self.redis.hgetall(self.user_key(user_id, "counts"))
            features.counts = {_text(kind): int(count) for kind, count in stored.items()}
        return features

    async def users_features(self, user_ids: Sequence[str]) -> list[UserFeatures]:
        """Several users' recent and seen items (in order), in one command: an MGET of their
        ``serving`` strings, which the writes keep ready. `make bench-feature-read`: Redis's
        CPU per user is a fifth to a tenth of a read script's that joins the lists each time."""
        replies = await self.redis.mget([self.user_key(user, "serving") for user in user_ids])
        return [_serving(raw) for raw in replies]

    async def context_changes(self) -> tuple[int, int]:
        """Two counters: one moves when a batch opened a context (an item first seen), the
        other when a batch added to one."""
        opened, counted = await self.redis.hmget(self.contexts_key, ["opened", "counted"])
        return int(opened or 0), int(counted or 0)

    async def newest_items(self, limit: int) -> list[str]:
        """The ``limit`` items first seen last, newest first."""
        items = await self.redis.zrevrange(self.first_seen_key, 0, limit - 1)
        return [_text(item) for item in items]  # type: ignore[arg-type]  # without scores

    async def changed_contexts(self, held: Mapping[str, int]) -> dict[str, ItemContext | None]:
        """The contexts of ``held``'s items whose event count is no longer the one given (-1:
        never read), in one script call, over the events they counted (the item's first
        ``new_item_context_events``): the context, or None where there is none (expired, never
        opened, or no pairs yet). Unchanged ones are left out and not sent."""
        if not held:
            return {}
        items = list(held)
        replies = await self._contexts_read(
            keys=[self.context_key(item) for item in items], args=[held[item] for item in items]
        )
        changed: dict[str, ItemContext | None] = {}
        for item, reply in zip(items, replies, strict=True):
            if reply == 1:  # unchanged
                continue
            if reply == 0:  # none
                changed[item] = None
                continue
            fields = {_text(k): int(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}
            # "" counts all the item's events; pairs were counted over the first ones only.
            events = min(fields.pop("", 0), self.context_events)
            changed[item] = ItemContext(events, fields) if fields else None
        return changed

    async def popular(self, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        """Top ``k`` by decayed popularity (weighted events, decayed to the newest event time)."""
        if k <= 0:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(self.popularity_key, 0, k + len(exclude) - 1, withscores=True)
            pipe.mget(self.landmark_key, self.clock_key)
            top, (landmark_raw, clock_raw) = await pipe.execute()
        factor = self._decay_to_clock(landmark_raw, clock_raw, self.long_half_life_ms)
        items = ((_text(item), float(score) * factor) for item, score in top)
        return [(item, score) for item, score in items if item not in exclude][:k]

    async def trending(self, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        """Top ``k`` by ``short / (long + 1)`` among the items most active in the short window."""
        if k <= 0:
            return []
        wanted = k + len(exclude)
        pool = max(
            wanted, min(max(TRENDING_POOL_FACTOR * wanted, TRENDING_POOL_MIN), TRENDING_POOL_MAX)
        )
        keys = [self.trending_key, self.popularity_key, self.landmark_key, self.clock_key]
        top, long, (landmark_raw, clock_raw) = await self._trending_read(keys=keys, args=[pool])
        short_factor = self._decay_to_clock(landmark_raw, clock_raw, self.short_half_life_ms)
        long_factor = self._decay_to_clock(landmark_raw, clock_raw, self.long_half_life_ms)
        scored: list[tuple[str, float]] = []
        for index, long_raw in enumerate(long):
            item = _text(top[2 * index])
            if item in exclude:
                continue
            short = float(top[2 * index + 1]) * short_factor
            long_value = float(long_raw) * long_factor if long_raw is not None else 0.0
            scored.append((item, short / (long_value + TRENDING_SMOOTHING)))
        scored.sort(key=lambda pair: pair[1], reverse=True)
        return scored[:k]

    @staticmethod
    def _decay_to_clock(
        landmark_raw: bytes | str | None, clock_raw: bytes | str | None, half_life_ms: float
    ) -> float:
        if landmark_raw is None or clock_raw is None:
            return 1.0
        return math.exp2(-(int(clock_raw) - int(landmark_raw)) / half_life_ms)


class CoalescedUserReads:
    """The serving read of user features, coalesced: requests that wait for features at the
    same time share one Redis call (``FeatureStore.users_features``).

    One call is out at a time; requests that arrive meanwhile wait and go together in the next.
    Each call costs, in this process and in Redis, a syscall each way and redis-py's cost per
    command, far more than its content: under load the batches grow by themselves, at low load
    a request goes at once (one loop turn later). A call abandoned after ``timeout_s`` lets the
    next one go (a hung connection never holds the others back); a request that stops waiting
    (its own timeout) leaves the others' answers alone.
    """

    def __init__(
        self,
        store: FeatureStore,
        registry: CollectorRegistry,
        timeout_s: float,
        max_batch: int = 64,
    ) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.batch_sizes = Histogram(
            "inference_feature_read_batch_size",
            "Users per coalesced feature read (one Redis call).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self._waiting: list[tuple[str, asyncio.Future[UserFeatures]]] = []
        self._busy = False  # a call is scheduled or out
        self._reads: set[asyncio.Task[None]] = set()  # a reference until done (asyncio's rule)

    async def user_features(self, user_id: str) -> UserFeatures:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[UserFeatures] = loop.create_future()
        self._waiting.append((user_id, future))
        self._schedule(loop)
        return await future

    async def popular(self, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        return await self.store.popular(k, exclude)

    async def trending(self, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        return await self.store.trending(k, exclude)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._waiting and not self._busy:
            self._busy = True
            loop.call_soon(self._flush)  # after the requests already due in this turn

    def _flush(self) -> None:
        # Those who stopped waiting (their own timeout) are not read.
        waiting = [w for w in self._waiting if not w[1].done()]
        batch, self._waiting = waiting[: self.max_batch], waiting[self.max_batch :]
        if not batch:
            self._busy = False
            return
        self.batch_sizes.observe(len(batch))
        task = asyncio.create_task(self._read(batch))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read(self, batch: list[tuple[str, asyncio.Future[UserFeatures]]]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                found = await self.store.users_features([u for u, _ in batch])
        except BaseException as error:  # every waiter gets the failure (cancelled: cancelled)
            for _, future in batch:
                if not future.done():
                    if isinstance(error, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        finally:
            self._busy = False
            self._schedule(asyncio.get_running_loop())
        for (_, future), features in zip(batch, found, strict=True):
            if not future.done():  # a waiter that timed out has cancelled its future
                future.set_result(features)

    async def stop(self) -> None:
        """Wait for the reads in flight (their waiters are served or fail as they come)."""
        if self._reads:
            await asyncio.gather(*self._reads, return_exceptions=True)
