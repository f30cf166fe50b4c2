"""The serving read of user features against a real redis-server: CPU per user, in Redis and here.

Inference reads each request's recent and seen items with one Lua script
(``inference.features._USERS_READ``), which joins each list into one string, and batches the
users of concurrent requests into one call (``CoalescedUserReads``). The baseline, measured in
the same run on the same keys, is the script as it was before: one reply member per item.
Each variant is read for batches of 1 and 4 users (sequential calls, one connection);
the figures are Redis's CPU (``/proc``) and this process's CPU per user read.

Run: ``make bench-feature-read`` (about 20 seconds); JSON to benchmarks/results/.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference.config import InferenceSettings  # noqa: E402
from inference.features import FeatureStore  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from streamrec_dev.servers import RedisServer, free_port  # noqa: E402
from streamrec_shared.settings import RedisSettings  # noqa: E402

USERS, SEEN, RECENT, CALLS = 200, 300, 50, 4000

# The read before the lists were joined: a reply member per item, joined here instead.
PER_MEMBER_READ = """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = {redis.call('LRANGE', KEYS[i], 0, -1),
                   redis.call('ZREVRANGE', KEYS[i + 1], 0, -1)}
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
    settings = InferenceSettings(redis=RedisSettings(url=server.url, key_prefix="bench:"))
    redis = Redis.from_url(server.url)
    store = FeatureStore(redis, settings)
    for n in range(USERS):
        user = f"u{n}"
        await redis.rpush(store.user_key(user, "recent"), *[f"i{i}" for i in range(RECENT)])
        await redis.zadd(store.user_key(user, "seen"), {f"i{i}": i for i in range(SEEN)})
    per_member = redis.register_script(PER_MEMBER_READ)

    async def baseline(users: list[str]) -> object:
        keys = [store.user_key(u, kind) for u in users for kind in ("recent", "seen", "counts")]
        replies = await per_member(keys=keys)
        return [[b"\0".join(r[0]).decode().split("\0"), b"\0".join(r[1]).decode().split("\0")]
                for r in replies]  # fmt: skip

    async def joined(users: list[str]) -> object:
        return await store.users_features(users, counts=False)

    pid = server.pid()
    assert pid is not None
    results = {}
    for batch in (1, 4):
        for name, read in (("per_member", baseline), ("joined", joined)):
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
    out = REPO / "benchmarks" / "results" / "feature_read.json"
    out.write_text(
        json.dumps({"measured_at": datetime.now(UTC).isoformat(), "results": results}, indent=2)
        + "\n"
    )
    print(f"written {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
