"""CPU of the ingest pipeline alone: what 1,000 events/s cost ingest, the feature updater, Redis
and Kafka, with no recommendation traffic (the background load of ``make bench-inference``).

Kafka, Redis, ingest and the updater (its own process) run locally; the baseline is the same
processes idle, measured first in the same run. Then the load posts ``--batch`` events per
request at ``--rate`` events/s and each window records every process's CPU (``/proc``) and the
updater's applied batches and events per second (its ``/metrics``).

Run: ``make bench-pipeline-cpu`` (about a minute and a half); JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from streamrec_dev.servers import ManagedProcess, ModuleServer  # noqa: E402

from benchmarks.inference_latency import (  # noqa: E402
    Background,
    CpuSample,
    Stack,
    cpu_between,
    start_stack,
)
from benchmarks.report import write_results  # noqa: E402

COUNTERS = ("inference_feature_apply_seconds_count", "inference_feature_events_applied_total")


async def counters(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    text = (await client.get(f"{url}/metrics")).text
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(COUNTERS)
    }


async def window(
    pids: dict[str, int | None], seconds: float, client: httpx.AsyncClient, url: str
) -> dict[str, Any]:
    """Cores used per process (and the updater's rates) over one window."""
    first, before = await counters(client, url), CpuSample.take(pids)
    await asyncio.sleep(seconds)
    after, last = CpuSample.take(pids), await counters(client, url)
    used = cpu_between(before, after, 1, None)["cpu_s_by_process"]
    return {
        "cores": {name: round(s / seconds, 3) for name, s in sorted(used.items())},
        "per_s": {name: round((last[name] - first[name]) / seconds, 1) for name in last},
    }


async def run(
    options: argparse.Namespace, stack: Stack, updater: ModuleServer, load: Background
) -> dict[str, Any]:
    pids = stack.pids(load) | {"features": updater.pid()}
    async with httpx.AsyncClient() as client:
        await asyncio.sleep(5)  # start-up work done
        idle = await window(pids, options.seconds, client, updater.url)
        users = [f"u{n}" for n in range(5000)]
        items = [str(n) for n in range(1, 1683)]
        await load.start(users, items, seed=7)
        await asyncio.sleep(5)
        pids = stack.pids(load) | {"features": updater.pid()}
        loaded = [
            await window(pids, options.seconds, client, updater.url) for _ in range(options.windows)
        ]
    return {"rate": options.rate, "batch": options.batch, "idle": idle, "loaded": loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s")
    parser.add_argument("--batch", type=int, default=20, help="events per request")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="per window")
    options = parser.parse_args()
    servers: list[ManagedProcess] = []
    load: Background | None = None
    with tempfile.TemporaryDirectory(prefix="streamrec-pipeline-") as tmp:
        try:
            stack = start_stack(Path(tmp), servers)
            updater = stack.updater()
            stack.ingest.start(120)
            updater.start(60)
            load = Background(stack.ingest.url, options.rate, options.batch)
            results = asyncio.run(run(options, stack, updater, load))
        finally:
            if load is not None:
                load.stop()
            for server in reversed(servers):
                server.stop()
    print(f"{options.rate:,.0f} events/s in requests of {options.batch}; cores per process")
    print(f"{'idle':>8}", results["idle"]["cores"])
    for number, loaded in enumerate(results["loaded"], 1):
        print(f"{'window ' + str(number):>8}", loaded["cores"], loaded["per_s"])
    out = write_results("pipeline_cpu", results)
    print(f"written {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
