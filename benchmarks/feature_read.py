"""The serving read of user features against a real redis-server: CPU per user, in Redis and here.

Inference reads each request's recent and seen items as one string per user that the feature
writes keep ready (``FeatureStore.users_features``: an MGET of ``u:{user}:serving``), and batches
the users of concurrent requests into one call (``CoalescedUserReads``). The baselines, measured
in the same run on the same data, are the read scripts it replaced: one that joined each list
into one string at every read, and before it one that answered a reply member per item.
Each variant is read for batches of 1 and 4 users (sequential calls, one connection);
the figures are Redis's CPU (``/proc``) and this process's CPU per user read.

Run: ``make bench-feature-read`` (about 20 seconds); JSON to benchmarks/results/.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference.config import InferenceSettings  # noqa: E402
from inference.features import FeatureBatch, FeatureEvent, FeatureStore  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from streamrec_dev.servers import RedisServer, free_port  # noqa: E402
from streamrec_shared.settings import RedisSettings  # noqa: E402

from benchmarks.report import write_results  # noqa: E402

USERS, SEEN, RECENT, CALLS = 200, 300, 50, 4000

# The first read script: a reply member per item, joined here instead.
PER_MEMBER_READ = """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = {redis.call('LRANGE', KEYS[i], 0, -1),
                   redis.call('ZREVRANGE', KEYS[i + 1], 0, -1)}
end
return out
"""


# The read script before the serving strings: each list joined into one string at every read.
JOINED_READ = """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = {table.concat(redis.call('LRANGE', KEYS[i], 0, -1), '\\0'),
                   table.concat(redis.call('ZREVRANGE', KEYS[i + 1], 0, -1), '\\0')}
end
return out
"""


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    read: Callable[[list[str]], Awaitable[object]], batch: int, redis_pid: int
) -> dict[str, float]:
    users = [f"u{n}" for n in range(USERS)]
    for start in range(0, 50 * batch, batch):  # warm-up
        await read(users[start % USERS : start % USERS + batch])
    redis_before, here_before = cpu_s(redis_pid), time.process_time()
    for call in range(CALLS // batch):
        first = (call * batch) % (USERS - batch)
        await read(users[first : first + batch])
    reads = (CALLS // batch) * batch
    return {
        "redis_us_per_user": round((cpu_s(redis_pid) - redis_before) / reads * 1e6, 1),
        "client_us_per_user": round((time.process_time() - here_before) / reads * 1e6, 1),
    }


async def run(server: RedisServer) -> dict[str, dict[str, float]]:
    settings = InferenceSettings(
        redis=RedisSettings(url=server.url, key_prefix="bench:"),
        recent_items=RECENT,
        max_seen_items=SEEN,
    )
    redis = Redis.from_url(server.url)
    store = FeatureStore(redis, settings)
    # The lists written through the store itself, so the serving strings are as in production.
    batch = FeatureBatch(
        "events",
        [
            FeatureEvent(f"u{n}", f"i{i}", "click", 1.0, 1_000 + i, 0.0)
            for n in range(USERS)
            for i in range(SEEN)
        ],
        {0: 0},
        {0: USERS * SEEN},
    )
    await store.apply(batch)
    per_member = redis.register_script(PER_MEMBER_READ)
    joined_script = redis.register_script(JOINED_READ)

    def keys(users: list[str]) -> list[str]:
        return [store.user_key(u, kind) for u in users for kind in ("recent", "seen", "counts")]

    async def per_member_read(users: list[str]) -> object:
        return [[b"\0".join(r[0]).decode().split("\0"), b"\0".join(r[1]).decode().split("\0")]
                for r in await per_member(keys=keys(users))]  # fmt: skip

    async def joined_read(users: list[str]) -> object:
        return [[r[0].decode().split("\0"), r[1].decode().split("\0")]
                for r in await joined_script(keys=keys(users))]  # fmt: skip

    async def serving_read(users: list[str]) -> object:
        return await store.users_features(users)

    pid = server.pid()
    assert pid is not None
    results = {}
    for batch in (1, 4):
        for name, read in (
            ("per_member", per_member_read),
            ("joined", joined_read),
            ("serving", serving_read),
        ):
            results[f"{name}_batch_{batch}"] = await measure(read, batch, pid)
    await redis.aclose()
    return results


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="streamrec-feature-read-") as tmp:
        server = RedisServer(name="redis", home=Path(tmp), port=free_port())
        server.start()
        try:
            results = asyncio.run(run(server))
        finally:
            server.stop()
    print(f"{SEEN} seen + {RECENT} recent items per user, {CALLS} users read per variant")
    print(f"{'variant':>22} {'Redis µs/user':>14} {'client µs/user':>15}")
    for name, figures in results.items():
        print(
            f"{name:>22} {figures['redis_us_per_user']:>14.1f} "
            f"{figures['client_us_per_user']:>15.1f}"
        )
    out = write_results("feature_read", results)
    print(f"written {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
