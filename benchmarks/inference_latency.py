"""Recommendation latency under an open-loop load, with the whole stack local and ingest busy.

Starts its own Kafka (KRaft) and Redis in a temporary folder, then the ingest, trainer and
inference services and the trivial FastAPI app (``benchmarks/trivial_app.py``, the baseline), each
one uvicorn process (uvloop + httptools, as in a pod). Then:

1. Catalogue A (1,682 items): MovieLens 100k (``../shared/datasets/ml-100k/u.data`` next to the
   repository, read in place) produced to ``events`` in time order as ``rating`` events, else a
   synthetic stream of 1,682 items x 943 users. Catalogue B (``--b-items``, 100,000): a synthetic
   stream covering every item once plus Zipf-distributed repeats, produced after it. Each gets
   its spec and a batch run over exactly its own offsets; the benchmark waits until both
   versions are published, inference serves A's, the feature updater has applied everything
   and known users are answered by the model (``fallback: null``).
2. A background ingest load (its own process): ``--ingest-batch`` events per POST to
   ``/v1/events/batch`` at fixed times, ``--ingest-rate`` events/s, for the whole measurement.
3. Open-loop latency (asyncio + raw sockets, HTTP/1.1 keep-alive over a pool of
   ``--connections``, responses read by Content-Length): request i is due at
   ``start + i / rate`` whatever came back before, and its latency is measured from that
   scheduled time (no coordinated omission); a request not answered ``--timeout-s`` after it was
   due is a timeout. 90 % known users, 10 % users never seen. The same schedule against the
   trivial endpoint and against a Redis GET (redis-py asyncio) are the baselines.
4. Saturation: rising offered rates for ``--saturation-seconds`` each until one misses
   p99 <= 50 ms with < 0.1 % errors; wrk (closed loop, one thread) for the maximum throughput.
5. Catalogue B: inference restarted on B's spec, measured at ``--rates-100k``.
6. Feature freshness (ingest receive -> features in Redis) from the deltas of inference's
   ``inference_feature_freshness_seconds`` histogram over each measured section: bucket upper
   bounds, not interpolated values.

Prints a table per target, the services' log warnings/errors, and writes JSON to
benchmarks/results/. Run: ``make bench-inference`` (or ``.venv/bin/python
benchmarks/inference_latency.py --help``; ``--skip-100k`` leaves out catalogue B).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from httpx_aiohttp import AiohttpTransport
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.routing import key_digest  # noqa: E402
from streamrec_dev.go_tools import ensure_stamped  # noqa: E402
from streamrec_dev.servers import (  # noqa: E402
    ManagedProcess,
    ModuleServer,
    ServiceServer,
    ensure_debian_package,
    free_port,
)
from streamrec_dev.synthetic import DriftingClickstream  # noqa: E402
from streamrec_shared.kafka import build_producer, partition_bounds  # noqa: E402
from streamrec_shared.schemas.events import EventIn, EventType  # noqa: E402
from streamrec_shared.settings import KafkaSettings, RedisSettings, TopicSettings  # noqa: E402

from benchmarks.infra import start_infrastructure  # noqa: E402
from benchmarks.model_freshness import log_problems, shown  # noqa: E402
from benchmarks.report import cpu_cores  # noqa: E402
from benchmarks.wrk import run_wrk  # noqa: E402

MOVIELENS = REPO.parent / "shared" / "datasets" / "ml-100k" / "u.data"
SPEC_A = "bench-latency-a"
SPEC_B = "bench-latency-b"
GATEWAY_KEY = "bench-latency-key"  # the gateway is given its sha256, as in a deployment
SATURATION_P99_MS = 50.0
VEGETA_VERSION = "v12.13.0"
VEGETA_MODULE = "github.com/tsenart/vegeta/v12"
SATURATION_ERROR_RATE = 0.001
REDIS_KEY = "bench:latency:value"
FRESHNESS = "inference_feature_freshness_seconds"
READ_BATCH = "inference_feature_read_batch_size"
TARGETS = {
    "a_500_p50_ms": 2.0,
    "a_500_p99_ms": 10.0,
    "saturation_rps": 2000.0,
    "b_200_p99_ms": 20.0,
}

# ---------------------------------------------------------------------------- event streams


@dataclass(frozen=True)
class Catalogue:
    source: str
    records: list[tuple[bytes, bytes]]  # (key, value) as ingest writes them
    users: list[str]
    items: list[str]


def _record(
    user: str, item: str, kind: EventType, value: float | None, ts: float, n: int, tag: str
) -> tuple[bytes, bytes]:
    """The bytes ingest would write for this event (``EventIn.record_value``), keyed by user."""
    moment = datetime.fromtimestamp(ts, UTC)
    event = EventIn.model_construct(
        schema_version=1,
        event_id=None,
        user_id=user,
        item_id=item,
        type=kind,
        value=value,
        timestamp=moment,
        rec_id=None,
        context={},
    )
    return user.encode(), event.record_value(f"{tag}-{n}", datetime.now(UTC))


def catalogue_a(seed: int) -> Catalogue:
    """MovieLens 100k in time order if it is next to the repository, else a synthetic one."""
    if MOVIELENS.exists():
        rows = []
        for line in MOVIELENS.read_text().splitlines():
            user, item, rating, ts = line.split("\t")
            rows.append((int(ts), user, item, float(rating)))
        rows.sort(key=lambda row: row[0])  # stable: ties keep the file's order
        records = [
            _record(u, i, EventType.RATING, r, ts, n, "ml") for n, (ts, u, i, r) in enumerate(rows)
        ]
        return Catalogue(
            "ml-100k",
            records,
            sorted({r[1] for r in rows}, key=int),
            sorted({r[2] for r in rows}, key=int),
        )
    stream = DriftingClickstream(
        users=943,
        initial_items=1682,
        launched_items=0,
        events=100_000,
        seed=seed,
        start_time=time.time() - 200_000,
    )
    records, users, items = [], set(), set()
    for n, event in enumerate(stream):
        records.append(
            _record(
                event.user_id, event.item_id, EventType(event.type), None, event.timestamp, n, "syn"
            )
        )
        users.add(event.user_id)
        items.add(event.item_id)
    return Catalogue("synthetic", records, sorted(users), sorted(items))


def catalogue_b(items: int, events: int, users: int, seed: int) -> Catalogue:
    """Every item once plus Zipf(1.1) repeats (ranks through a fixed permutation), shuffled;
    uniform users; one event per second ending now."""
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.1, size=max(0, events - items)), items) - 1
    chosen = np.concatenate([np.arange(items), rng.permutation(items)[ranks]])[:events]
    rng.shuffle(chosen)
    who = rng.integers(0, users, size=chosen.size)
    start = time.time() - chosen.size
    records = [
        _record(f"bu{u}", f"bi{i}", EventType.CLICK, None, start + n, n, "b")
        for n, (u, i) in enumerate(zip(who.tolist(), chosen.tolist(), strict=True))
    ]
    return Catalogue(
        f"synthetic {items:,} items",
        records,
        [f"bu{u}" for u in np.unique(who).tolist()],
        [f"bi{i}" for i in range(items)],
    )


async def produce(kafka: KafkaSettings, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = build_producer(kafka)
    await producer.start()
    try:
        began = time.perf_counter()
        futures = [await producer.send(topic, value=v, key=k) for k, v in records]
        await asyncio.gather(*futures)
        return time.perf_counter() - began
    finally:
        await producer.stop()


# ----------------------------------------------------------------------- the load generator


class Job:
    __slots__ = ("expired", "request", "scheduled", "sent", "tag")

    def __init__(self, request: bytes, tag: str) -> None:
        self.request = request
        self.tag = tag
        self.scheduled = 0.0
        self.sent = 0.0
        self.expired = False  # counted as a timeout; its late answer is discarded


@dataclass
class Window:
    """What one offered rate against one target gave."""

    target: str
    offered_rps: float
    seconds: float
    scheduled: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    latency: list[float] = field(default_factory=list)  # from the scheduled time, s
    service: list[float] = field(default_factory=list)  # from the actual send, s
    lag: list[float] = field(default_factory=list)  # actual send - scheduled, s
    first_due: float = 0.0
    last_done: float = 0.0
    max_backlog: int = 0
    known: int = 0
    known_personalised: int = 0
    wall: tuple[float, float] = (0.0, 0.0)

    def done(self, job: Job, now: float, good: bool) -> None:
        self.last_done = now
        if not good:
            self.errors += 1
            return
        self.ok += 1
        self.latency.append(now - job.scheduled)
        self.service.append(now - job.sent)
        self.lag.append(job.sent - job.scheduled)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latency) * 1e3
        service = np.asarray(self.service) * 1e3
        lag = np.asarray(self.lag) * 1e3
        failed = self.errors + self.timeouts
        span = self.last_done - self.first_due

        def pct(values: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(values, q)), 3) if values.size else None

        out: dict[str, Any] = {
            "target": self.target,
            "offered_rps": self.offered_rps,
            "seconds": self.seconds,
            "scheduled": self.scheduled,
            "ok": self.ok,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "error_rate": failed / self.scheduled if self.scheduled else 0.0,
            "achieved_rps": round(self.ok / span, 1) if span > 0 else 0.0,
            "p50_ms": pct(lat, 50),
            "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99),
            "p999_ms": pct(lat, 99.9),
            "max_ms": round(float(lat.max()), 3) if lat.size else None,
            "mean_ms": round(float(lat.mean()), 3) if lat.size else None,
            "service_p50_ms": pct(service, 50),
            "service_p99_ms": pct(service, 99),
            "send_lag_p50_ms": pct(lag, 50),
            "send_lag_p99_ms": pct(lag, 99),
            "max_client_backlog": self.max_backlog,
        }
        if self.known:
            out["known_users_personalised_share"] = round(self.known_personalised / self.known, 4)
        return out


class _Conn(asyncio.Protocol):
    """One keep-alive connection, one request in flight; the response is read by Content-Length."""

    def __init__(self, pool: HttpLoad) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.job: Job | None = None
        self.body_at = -1
        self.need = -1
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, job: Job) -> None:
        assert self.transport is not None
        self.job = job
        job.sent = time.perf_counter()
        self.transport.write(job.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.job is None:
            return
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            try:
                self.status = int(head[9:12])
                at = head.index(b"\r\ncontent-length:") + 17
                stop = head.find(b"\r\n", at)
                length = int(head[at : stop if stop >= 0 else None])
            except ValueError:
                self.pool.broken(self)
                return
            self.body_at = end + 4
            self.need = end + 4 + length
        if len(buf) < self.need:
            return
        body = bytes(buf[self.body_at : self.need])
        del buf[: self.need]
        self.need = -1
        job, self.job = self.job, None
        self.pool.finished(self, job, self.status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.lost(self)


class HttpLoad:
    """A pool of raw HTTP/1.1 connections fed by the open-loop schedule (FIFO backlog)."""

    def __init__(
        self,
        name: str,
        port: int,
        connections: int,
        timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.connections = connections
        self.timeout_s = timeout_s
        self.idle: collections.deque[_Conn] = collections.deque()
        self.busy: set[_Conn] = set()
        self.backlog: collections.deque[Job] = collections.deque()
        self.window = Window(name, 0, 0)
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self, path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{self.headers}\r\n".encode()

    async def open(self) -> None:
        await asyncio.gather(*(self._connect() for _ in range(self.connections)))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(50):
            if self.closing:
                return
            try:
                _, conn = await loop.create_connection(lambda: _Conn(self), "127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            self.idle.append(conn)
            self._pump()
            return

    def _replace(self) -> None:
        if not self.closing:
            task = asyncio.get_running_loop().create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def fire(self, job: Job) -> None:
        self.window.scheduled += 1
        self.backlog.append(job)
        self._pump()
        if len(self.backlog) > self.window.max_backlog:
            self.window.max_backlog = len(self.backlog)

    def _pump(self) -> None:
        while self.backlog and self.idle:
            conn = self.idle.popleft()
            if conn.transport is None or conn.transport.is_closing():
                continue
            conn.send(self.backlog.popleft())
            self.busy.add(conn)

    def finished(self, conn: _Conn, job: Job, status: int, body: bytes) -> None:
        now = time.perf_counter()
        self.busy.discard(conn)
        self.idle.append(conn)
        window = self.window
        if job.expired:
            self._pump()
            return
        window.done(job, now, status == 200)
        if job.tag == "known":
            window.known += 1
            window.known_personalised += b'"fallback":null' in body
        self._pump()

    def broken(self, conn: _Conn) -> None:
        if conn.transport is not None:
            conn.transport.abort()  # lost() counts the request in flight as an error

    def lost(self, conn: _Conn) -> None:
        if conn.job is not None:  # the request in flight is gone with the connection
            self.busy.discard(conn)
            if not conn.job.expired:
                self.window.done(conn.job, time.perf_counter(), False)
            conn.job = None
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self._replace()

    def reap(self) -> None:
        """Requests past their deadline are timeouts. A connection whose request expired stays
        busy until its late answer arrives (then it is discarded): aborting it and connecting
        again would let orphaned requests pile up in the server, which does not cancel them."""
        deadline = time.perf_counter() - self.timeout_s
        for conn in self.busy:
            job = conn.job
            if job is not None and not job.expired and job.scheduled < deadline:
                job.expired = True
                self.window.timeouts += 1
        while self.backlog and self.backlog[0].scheduled < deadline:
            self.backlog.popleft()
            self.window.timeouts += 1

    def outstanding(self) -> int:
        """Requests still to be answered or expired (expired ones no longer count)."""
        live = sum(1 for c in self.busy if c.job is not None and not c.job.expired)
        return live + len(self.backlog)

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        for conn in [*self.idle, *self.busy]:
            conn.job = None  # a straggler was counted as a timeout already
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0.05)


class RedisLoad:
    """The same schedule against a Redis GET, one task per request, redis-py's own pool."""

    def __init__(self, url: str, connections: int, timeout_s: float) -> None:
        self.name = "redis GET"
        self.url = url
        self.connections = connections
        self.timeout_s = timeout_s
        self.window = Window(self.name, 0, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self.client: Redis | None = None

    async def open(self) -> None:
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=self.connections, timeout=self.timeout_s
        )
        self.client = Redis(connection_pool=pool)
        await asyncio.gather(*(self.client.ping() for _ in range(self.connections)))

    def fire(self, job: Job) -> None:
        self.window.scheduled += 1
        task = asyncio.get_running_loop().create_task(self._one(job, self.window))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, job: Job, window: Window) -> None:
        assert self.client is not None
        job.sent = time.perf_counter()
        try:
            async with asyncio.timeout(max(0.001, job.scheduled + self.timeout_s - job.sent)):
                value = await self.client.get(REDIS_KEY)
        except TimeoutError:
            window.timeouts += 1
            return
        except (RedisError, OSError):
            value = None
        window.done(job, time.perf_counter(), value is not None)

    def reap(self) -> None:
        pass  # each request times itself out

    def outstanding(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


Load = HttpLoad | RedisLoad


async def open_loop(load: Load, rate: float, seconds: float, jobs: list[Job]) -> Window:
    """Fire ``jobs`` at ``start + i / rate``; wait (bounded by the timeout) for the stragglers."""
    window = load.window = Window(load.name, rate, seconds)
    window.wall = (time.time(), 0.0)

    async def reaper() -> None:
        while True:
            await asyncio.sleep(0.01)
            load.reap()

    reaping = asyncio.get_running_loop().create_task(reaper())
    interval = 1.0 / rate
    start = time.perf_counter() + 0.005
    window.first_due = start
    i, n = 0, len(jobs)
    try:
        while i < n:
            now = time.perf_counter()
            due = start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < n and due <= now:
                job = jobs[i]
                job.scheduled = due
                load.fire(job)
                i += 1
                due = start + i * interval
        # Stragglers: answered, or reaped as timeouts, within the timeout (bounded anyway).
        for _ in range(int((load.timeout_s + 1.0) / 0.005)):
            if not load.outstanding():
                break
            await asyncio.sleep(0.005)
    finally:
        reaping.cancel()
    window.timeouts += load.outstanding() if isinstance(load, HttpLoad) else 0
    window.wall = (window.wall[0], time.time())
    return window


def plain_jobs(request: bytes, count: int) -> list[Job]:
    return [Job(request, "") for _ in range(count)]


def recommendation_paths(
    users: list[str], count: int, unknown_share: float, seed: int
) -> list[tuple[str, str]]:
    """``(path, "known" | "unknown")`` per request: known users, and users never seen."""
    rng = random.Random(seed)
    paths = []
    for n in range(count):
        if rng.random() < unknown_share:
            user, tag = f"new-{seed}-{n}", "unknown"
        else:
            user, tag = rng.choice(users), "known"
        paths.append((f"/v1/recommendations?user_id={user}&k=10", tag))
    return paths


def recommendation_jobs(
    load: Load, users: list[str], count: int, unknown_share: float, seed: int
) -> list[Job]:
    return [
        Job(load.request(path) if isinstance(load, HttpLoad) else b"", tag)
        for path, tag in recommendation_paths(users, count, unknown_share, seed)
    ]


GENERATOR = "generator (this process, vegeta)"


def _process_cpu_s(pid: int, ticks: int, children: bool = True) -> float:
    """A process's CPU seconds, and its live children's (uvicorn's workers, when it has some).
    After the command's ")" in ``/proc/<pid>/stat``, state is field 3, so utime (14) and stime
    (15) sit at 11 and 12."""
    live = Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if children else []
    used = 0.0
    for one in (pid, *map(int, live)):
        stat = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        used += (int(stat[11]) + int(stat[12])) / ticks
    return used


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far (Linux ``/proc``): each named process's, the load generator's (this
    process and its finished children: vegeta, wrk) and the whole machine's."""

    processes: dict[str, float]
    machine_busy_s: float
    machine_total_s: float

    @classmethod
    def take(cls, pids: dict[str, int | None]) -> CpuSample:
        ticks = os.sysconf("SC_CLK_TCK")
        processes = {}
        for name, pid in pids.items():
            if pid is not None:
                with contextlib.suppress(OSError, IndexError, ValueError):
                    processes[name] = _process_cpu_s(pid, ticks)
        # Its finished children only: the background load is a live one, counted by its name.
        finished = resource.getrusage(resource.RUSAGE_CHILDREN)
        processes[GENERATOR] = (
            _process_cpu_s(os.getpid(), ticks, children=False)
            + finished.ru_utime
            + finished.ru_stime
        )
        cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = cpu[3] + cpu[4]  # idle + iowait
        return cls(processes, (sum(cpu) - idle) / ticks, sum(cpu) / ticks)


def cpu_between(before: CpuSample, after: CpuSample, ok: int, server: str | None) -> dict[str, Any]:
    """How busy the machine was (0-1 of all its cores), each process's CPU seconds, and the
    measured server's CPU per answered request: whether a window was short of CPU or of
    software, and where the CPU went."""
    total = after.machine_total_s - before.machine_total_s
    used = {
        name: round(after.processes[name] - before.processes[name], 2)
        for name in after.processes
        if name in before.processes
    }
    out: dict[str, Any] = {
        "machine_busy": round((after.machine_busy_s - before.machine_busy_s) / total, 3)
        if total > 0
        else None,
        "machine_cpus": os.cpu_count(),
        "cpu_s_by_process": used,
    }
    if server is not None and server in used:
        out["server_cpu_s"] = used[server]
        out["server_cpu_us_per_ok"] = round(used[server] / ok * 1e6) if ok else None
    return out


async def measure(load: Load, rate: float, seconds: float, jobs: list[Job]) -> dict[str, Any]:
    """A fresh pool for every window (idle keep-alive connections are closed by uvicorn)."""
    await load.open()
    try:
        window = await open_loop(load, rate, seconds, jobs)
    finally:
        await load.close()
    result = window.summary()
    result["wall"] = window.wall
    result["passes"] = bool(  # the saturation criterion
        result["p99_ms"] is not None
        and result["p99_ms"] <= SATURATION_P99_MS
        and result["error_rate"] < SATURATION_ERROR_RATE
    )
    if isinstance(load, HttpLoad):
        result["recovery_s"] = await recover(load.port)
    return result


async def recover(port: int, bound_s: float = 90.0) -> float | None:
    """Until the server answers /healthz again: an overloaded one still works through the
    requests it had accepted (it does not cancel them when the client gives up)."""
    began = time.monotonic()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        while time.monotonic() - began < bound_s:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return round(time.monotonic() - began, 2)
            await asyncio.sleep(0.1)
    return None


# --------------------------------------------------------------------------- wrk (closed)


def wrk_script(folder: Path, users: list[str]) -> Path:
    """Known users in turn (no unknown ones: a closed loop measures the personalised path)."""
    listed = ",".join(f'"{u}"' for u in users)
    path = folder / "recommendations.lua"
    path.write_text(
        f"local users = {{{listed}}}\nlocal n = 0\n"
        "request = function()\n  n = n + 1\n"
        '  return wrk.format("GET", "/v1/recommendations?user_id=" .. users[(n % #users) + 1]'
        ' .. "&k=10")\nend\n'
    )
    return path


# ------------------------------------------------------------------ background ingest load


def background_ingest(
    url: str,
    users: list[str],
    items: list[str],
    rate: float,
    batch: int,
    ready: Any,
    stop: Any,
    out: Any,
    seed: int,
) -> None:
    """In its own process: POST ``batch`` events every ``batch / rate`` s until ``stop``."""
    out.put(asyncio.run(_background_ingest(url, users, items, rate, batch, ready, stop, seed)))


async def _background_ingest(
    url: str,
    users: list[str],
    items: list[str],
    rate: float,
    batch: int,
    ready: Any,
    stop: Any,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    acks: list[tuple[float, int]] = []
    request_s: list[float] = []
    failed = [0, 0]  # requests, events

    async def post(client: httpx.AsyncClient, events: list[dict[str, str]]) -> None:
        sent = time.monotonic()
        try:
            response = await client.post("/v1/events/batch", json={"events": events})
        except httpx.HTTPError:
            failed[0] += 1
            failed[1] += len(events)
            return
        if response.status_code != 202:
            failed[0] += 1
            failed[1] += len(events)
            return
        request_s.append(time.monotonic() - sent)
        stored = sum(r["status"] == "stored" for r in response.json()["results"])
        failed[1] += len(events) - stored
        acks.append((time.time(), stored))

    # aiohttp under the httpx API, as in the gateway: httpx's own async transport cost ~2 ms of
    # CPU per POST, a tenth of a core taken from the services being measured.
    transport = AiohttpTransport()
    async with httpx.AsyncClient(base_url=url, timeout=10, transport=transport) as client:
        ready.set()
        interval = batch / rate
        began = time.monotonic()
        wall_began = time.time()
        pending: set[asyncio.Task[None]] = set()
        lag = 0.0
        k = 0
        while not stop.is_set():
            due = began + k * interval
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                lag = max(lag, now - due)
            events = [
                {
                    "event_id": f"bg{run}-{k}-{j}",
                    "user_id": rng.choice(users),
                    "item_id": rng.choice(items),
                    "type": "click",
                }
                for j in range(batch)
            ]
            task = asyncio.create_task(post(client, events))
            pending.add(task)
            task.add_done_callback(pending.discard)
            k += 1
        wall_ended = time.time()
        await asyncio.gather(*pending)
    latencies = np.asarray(request_s) * 1e3
    return {
        "acks": acks,
        "wall": (wall_began, wall_ended),
        "offered_events_per_s": rate,
        "batch": batch,
        "requests_sent": k,
        "failed_requests": failed[0],
        "failed_events": failed[1],
        "max_schedule_lag_s": lag,
        "request_p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
        "request_p99_ms": float(np.percentile(latencies, 99)) if latencies.size else None,
    }


class Background:
    """The 1,000 events/s ingest load, in a process of its own (so it never delays the
    generator's schedule)."""

    def __init__(self, url: str, rate: float, batch: int) -> None:
        self.url, self.rate, self.batch = url, rate, batch
        self.context = multiprocessing.get_context("spawn")
        self.process: Any = None
        self.stop_event: Any = None
        self.queue: Any = None

    async def start(self, users: list[str], items: list[str], seed: int) -> None:
        """Start it and wait until it posts (the spawned interpreter imports for a while)."""
        ready = self.context.Event()
        self.stop_event = self.context.Event()
        self.queue = self.context.Queue()
        self.process = self.context.Process(
            target=background_ingest,
            daemon=True,
            name="bench-ingest-load",
            args=(
                self.url,
                users,
                items,
                self.rate,
                self.batch,
                ready,
                self.stop_event,
                self.queue,
                seed,
            ),
        )
        self.process.start()
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError("the background ingest load did not start")
        await asyncio.sleep(1.0)  # its first batches in before anything is measured

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.is_alive() else None

    def stop(self) -> dict[str, Any] | None:
        if self.process is None:
            return None
        self.stop_event.set()
        try:
            result: dict[str, Any] | None = self.queue.get(timeout=30)
        except Exception:
            result = None
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.process = None
        return result


def events_per_s(result: dict[str, Any] | None, wall: tuple[float, float]) -> float | None:
    if not result or wall[1] <= wall[0]:
        return None
    stored = sum(n for t, n in result["acks"] if wall[0] <= t <= wall[1])
    return round(float(stored) / (wall[1] - wall[0]), 1)


def summarize_background(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    summary = {k: v for k, v in result.items() if k != "acks"}
    summary["achieved_events_per_s"] = events_per_s(result, result["wall"])
    summary["events_stored"] = sum(n for _, n in result["acks"])
    return summary


# ----------------------------------------------------------------- services and metrics


async def poll(
    what: str,
    check: Callable[[], Coroutine[Any, Any, Any]],
    timeout_s: float,
    interval_s: float = 0.25,
) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if result := await check():
                return result
        except (httpx.HTTPError, RedisError, OSError, KeyError, ValueError) as error:
            last = error
        await asyncio.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s (last error: {last!r})")


async def scrape(*clients: httpx.AsyncClient) -> dict[str, Any]:
    """Freshness buckets (cumulative), sum and count (the feature updater's), and answers by
    path (inference's), from every given ``/metrics``."""
    texts = [(await client.get("/metrics", timeout=30)).text for client in clients]
    out: dict[str, Any] = {
        "buckets": {}, "sum": 0.0, "count": 0.0, "paths": {}, "read_users": 0.0, "reads": 0.0
    }  # fmt: skip
    for family in (f for text in texts for f in text_string_to_metric_families(text)):
        for sample in family.samples:
            if sample.name == f"{FRESHNESS}_bucket":
                out["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name == f"{FRESHNESS}_sum":
                out["sum"] = sample.value
            elif sample.name == f"{FRESHNESS}_count":
                out["count"] = sample.value
            elif sample.name == "inference_recommendations_total":
                out["paths"][sample.labels["path"]] = sample.value
            elif sample.name == f"{READ_BATCH}_sum":
                out["read_users"] = sample.value
            elif sample.name == f"{READ_BATCH}_count":
                out["reads"] = sample.value
    return out


def freshness_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Percentiles from the bucket deltas: the upper bound of the bucket holding the quantile."""
    bounds = sorted(after["buckets"])
    deltas = [after["buckets"][b] - before["buckets"].get(b, 0.0) for b in bounds]
    total = after["count"] - before["count"]
    result: dict[str, Any] = {
        "events": int(total),
        "note": "bucket upper bounds (the quantile lies at or below), from histogram deltas",
        "mean_s": (after["sum"] - before["sum"]) / total if total else None,
    }
    for name, q in (("p50_le_s", 0.5), ("p90_le_s", 0.9), ("p99_le_s", 0.99)):
        result[name] = (
            next((b for b, d in zip(bounds, deltas, strict=True) if d >= q * total), None)
            if total
            else None
        )
    paths = {p: after["paths"].get(p, 0.0) - before["paths"].get(p, 0.0) for p in after["paths"]}
    result["answers_by_path"] = {p: int(v) for p, v in paths.items() if v}
    reads = after["reads"] - before["reads"]
    # Requests per Redis call of the coalesced feature read (inference's own metric).
    result["users_per_feature_read"] = (
        round((after["read_users"] - before["read_users"]) / reads, 2) if reads else None
    )
    return result


@dataclass
class Stack:
    home: Path
    kafka: KafkaSettings
    topics: TopicSettings
    redis_url: str
    ingest: ServiceServer
    trainer: ServiceServer
    trivial: ServiceServer
    env: dict[str, str]
    servers: list[ManagedProcess]

    def pids(self, background: Background) -> dict[str, int | None]:
        """Every process of the stack by name (stopped ones: None), the background load's too."""
        pids = {server.name: server.pid() for server in self.servers}
        return pids | {"background ingest": background.pid}

    def updater(self) -> ModuleServer:
        """The feature updater as its own process (the production layout): it never shares an
        event loop or the GIL with the requests being measured."""
        port = free_port()
        server = ModuleServer(
            name="features",
            home=self.home / "svc",
            port=port,
            module="inference.updater",
            args=("--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
            env=self.env,
        )
        self.servers.append(server)
        return server

    def inference(self, name: str, spec_id: str) -> ServiceServer:
        server = ServiceServer(
            name=name,
            home=self.home / "svc",
            port=free_port(),
            app_factory="inference.main:create_app",
            env=self.env
            | {
                "STREAMREC_INFERENCE_SPEC_ID": spec_id,
                "STREAMREC_INFERENCE_TRAINER_URL": self.trainer.url,
                "STREAMREC_INFERENCE_ARTIFACTS_DIR": str(self.home / "artifacts"),
                "STREAMREC_INFERENCE_ARTIFACT_CACHE_DIR": str(self.home / f"cache-{name}"),
                "STREAMREC_INFERENCE_RUN_FEATURE_UPDATER": "false",
            },
        )
        self.servers.append(server)
        return server

    def gateway(self, inference: ServiceServer) -> ServiceServer:
        """The gateway in front of ``inference`` (its stable pool, no canary), with an API key
        required as in a deployment: its overhead is measured on the same requests."""
        server = ServiceServer(
            name="gateway",
            home=self.home / "svc",
            port=free_port(),
            app_factory="gateway.main:create_app",
            env=self.env
            | {
                "STREAMREC_GATEWAY_INFERENCE_URL": inference.url,
                "STREAMREC_GATEWAY_INGEST_URL": self.ingest.url,
                "STREAMREC_GATEWAY_TRAINER_URL": self.trainer.url,
                "STREAMREC_GATEWAY_API_KEY_HASHES": key_digest(GATEWAY_KEY),
                "STREAMREC_LOG_LEVEL": "WARNING",
            },
        )
        self.servers.append(server)
        return server


async def request_batch(
    trainer: httpx.AsyncClient,
    spec_id: str,
    bounds: dict[int, tuple[int, int]],
    topic: str,
    epochs: int,
) -> str:
    partitions = {str(p): {"start": b, "end": e} for p, (b, e) in bounds.items() if e > b}
    response = await trainer.post(
        f"/v1/specs/{spec_id}/runs",
        json={
            "mode": "batch",
            "epochs": epochs,
            "stream": {"kind": "range", "topic": topic, "partitions": partitions},
            # Publish whatever it learned: this benchmark is about serving, not the gate.
            "validation": {"tolerance": 1.0, "min_events": 1},
        },
    )
    response.raise_for_status()
    return str(response.json()["run_id"])


async def train(
    trainer: httpx.AsyncClient,
    spec_id: str,
    bounds: dict[int, tuple[int, int]],
    topic: str,
    epochs: int,
    failures: list[str],
) -> dict[str, Any]:
    """Create the spec, run a batch over ``bounds`` and wait for its version; a failed run is
    requested again (twice at most) and its error kept for the report."""
    response = await trainer.post(
        "/v1/specs",
        json={
            "id": spec_id,
            "spec": {"family": "item_pooling"},
            "description": "inference latency benchmark",
        },
    )
    response.raise_for_status()
    for attempt in range(3):
        run_id = await request_batch(trainer, spec_id, bounds, topic, epochs)
        try:
            return await wait_version(trainer, spec_id, run_id, 300)
        except RuntimeError as error:
            failures.append(str(error)[:300])
            print(
                f"  {spec_id}: run failed (attempt {attempt + 1}); requesting it again", flush=True
            )
    raise RuntimeError(f"{spec_id}: three batch runs failed: {failures}")


async def wait_version(
    trainer: httpx.AsyncClient, spec_id: str, run_id: str, timeout_s: float
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        latest = await trainer.get(f"/v1/specs/{spec_id}/versions/latest")
        if latest.status_code == 200:
            return dict(latest.json())
        run = (await trainer.get(f"/v1/runs/{run_id}")).json().get("run", {})
        if run.get("status") in ("failed", "stopped"):
            raise RuntimeError(f"run {run_id} of {spec_id} {run['status']}: {run.get('error')}")
        return None

    return dict(await poll(f"a version of {spec_id}", check, timeout_s, 0.5))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def wait_features(stack: Stack, timeout_s: float) -> float:
    """Until the feature updater's positions (stored with the features) reach the topic's end."""
    prefix = RedisSettings().key_prefix
    redis = Redis.from_url(stack.redis_url)
    began = time.monotonic()
    try:
        ends = {
            p: e for p, (_, e) in (await partition_bounds(stack.kafka, stack.topics.events)).items()
        }

        async def check() -> bool:
            stored = await redis.hgetall(f"{prefix}features:offsets")
            at = {
                int(_text(k).rpartition(":")[2]): int(v)
                for k, v in stored.items()
                if _text(k).rpartition(":")[0] == stack.topics.events
            }
            return all(at.get(p, 0) >= e for p, e in ends.items() if e > 0)

        await poll("the feature updater to catch up", check, timeout_s, 0.5)
    finally:
        await redis.aclose()
    return time.monotonic() - began


async def wait_serving(
    client: httpx.AsyncClient, spec_id: str, version: int, users: list[str], timeout_s: float
) -> dict[str, Any]:
    async def model() -> dict[str, Any] | None:
        body = (await client.get("/v1/model")).json()
        return (
            dict(body)
            if body.get("spec_id") == spec_id and body.get("version") == version
            else None
        )

    served = await poll(f"inference serving {spec_id} v{version}", model, timeout_s)

    async def personalised() -> bool:
        for user in users[:5]:
            body = (await client.get("/v1/recommendations", params={"user_id": user})).json()
            if body.get("fallback") is not None or len(body.get("items", [])) != 10:
                return False
        return True

    await poll("model-served answers for known users", personalised, timeout_s)
    return dict(served)


# -------------------------------------------------------------------------- measurements


async def latency_section(
    options: argparse.Namespace,
    http: httpx.AsyncClient,
    updater: httpx.AsyncClient,
    port: int,
    trivial_port: int | None,
    redis_url: str | None,
    users: list[str],
    rates: list[float],
    label: str,
    gateway_port: int | None = None,
    pids: dict[str, int | None] | None = None,
    names: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Each rate: inference, then (if given) the same requests through the gateway (with an
    API key), the trivial endpoint and a Redis GET. Inference's metrics are scraped around
    every window, so each row has the feature freshness of its own window (during a
    baseline's window inference only runs its feature updater)."""
    connections, timeout = options.connections, options.timeout_s
    rows: list[dict[str, Any]] = []
    first = last = await scrape(http, updater)

    async def window(load: Load, rate: float, jobs: list[Job]) -> None:
        nonlocal last
        server = (names or {}).get(load.port) if isinstance(load, HttpLoad) else None
        cpu = CpuSample.take(pids or {})
        row = await measure(load, rate, options.seconds, jobs)
        row |= cpu_between(cpu, CpuSample.take(pids or {}), row["ok"], server)
        now = await scrape(http, updater)
        row["feature_freshness"] = freshness_between(last, now)
        last = now
        rows.append(row)

    for n, rate in enumerate(rates):
        count = int(rate * options.seconds)
        seed = options.seed * 1000 + n + (500 if label == "b" else 0)
        inference = HttpLoad(f"inference {label}", port, connections, timeout)
        print(f"  {label}: inference at {rate:,.0f} req/s ...", flush=True)
        jobs = recommendation_jobs(inference, users, count, options.unknown_share, seed)
        await window(inference, rate, jobs)
        if gateway_port is not None:
            gateway = HttpLoad(
                f"gateway {label}", gateway_port, connections, timeout, {"X-API-Key": GATEWAY_KEY}
            )
            jobs = recommendation_jobs(gateway, users, count, options.unknown_share, seed)
            await window(gateway, rate, jobs)
        if trivial_port is not None:
            trivial = HttpLoad("trivial endpoint", trivial_port, connections, timeout)
            await window(trivial, rate, plain_jobs(trivial.request("/healthz"), count))
        if redis_url is not None:
            await window(RedisLoad(redis_url, connections, timeout), rate, plain_jobs(b"", count))
    return {"rows": rows, "freshness": freshness_between(first, last)}


def saturation_rates(steps: list[float], rows: list[dict[str, Any]], target: str) -> list[float]:
    """The configured steps; when a latency rate below the first step already failed, 1/2 and
    3/4 of it instead (above the highest rate that passed), to narrow the bracket."""
    failing = [r["offered_rps"] for r in rows if r["target"] == target and not r["passes"]]
    passing = [r["offered_rps"] for r in rows if r["target"] == target and r["passes"]]
    low = min(failing, default=None)
    if low is None or not steps or low >= steps[0]:
        return steps
    floor = max((p for p in passing if p < low), default=0.0)
    extra = sorted({round(low * f) for f in (0.5, 0.75)} - {0})
    return [float(e) for e in extra if e > floor]


def vegeta_window(
    options: argparse.Namespace,
    port: int,
    name: str,
    rate: float,
    paths: list[str],
    folder: Path,
) -> dict[str, Any]:
    """One open-loop window from vegeta (Go): constant rate, latency from each request's start,
    at most ``--connections`` connections (a request waiting for one counts the wait)."""
    vegeta = ensure_stamped("vegeta", VEGETA_MODULE, VEGETA_VERSION)
    folder.mkdir(parents=True, exist_ok=True)
    targets, results = folder / "targets.jsonl", folder / "results.bin"
    with targets.open("w") as out:
        for path in paths:
            out.write(json.dumps({"method": "GET", "url": f"http://127.0.0.1:{port}{path}"}))
            out.write("\n")
    wall_start = time.time()
    subprocess.run(
        [str(vegeta), "attack", "-format=json", f"-targets={targets}", f"-rate={rate:.0f}/1s",
         f"-duration={options.saturation_seconds}s", f"-timeout={options.timeout_s}s",
         f"-max-connections={options.connections}", f"-output={results}",
         # Bodies are not kept in the results file: the status and timing are what is read,
         # and encoding every body cost the generator CPU that the server shares.
         "-max-body=0"],
        check=True, capture_output=True,
        # One OS thread, like the asyncio generator: on two cores a second one takes CPU
        # from the server it measures.
        env={**os.environ, "GOMAXPROCS": str(options.vegeta_threads)},
    )  # fmt: skip
    wall = (wall_start, time.time())
    figures = json.loads(
        subprocess.run(
            [str(vegeta), "report", "-type=json", str(results)],
            check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    latencies = {key: value / 1e6 for key, value in figures["latencies"].items()}  # ns -> ms
    requests = int(figures["requests"])
    ok = int(figures["status_codes"].get("200", 0))
    sent_rps = float(figures["rate"])
    row: dict[str, Any] = {
        "target": name,
        "generator": f"vegeta {VEGETA_VERSION}",
        "offered_rps": rate,
        "seconds": options.saturation_seconds,
        "scheduled": requests,
        "ok": ok,
        "errors": requests - ok,
        "timeouts": sum("timeout" in error.lower() for error in figures.get("errors", [])),
        "error_rate": (requests - ok) / requests if requests else 0.0,
        "sent_rps": round(sent_rps, 1),
        "achieved_rps": round(float(figures["throughput"]), 1),
        "p50_ms": round(latencies["50th"], 3),
        "p90_ms": round(latencies["90th"], 3),
        "p99_ms": round(latencies["99th"], 3),
        "max_ms": round(latencies["max"], 3),
        "mean_ms": round(latencies["mean"], 3),
        "wall": wall,
    }
    row["passes"] = bool(
        row["p99_ms"] <= SATURATION_P99_MS
        and row["error_rate"] < SATURATION_ERROR_RATE
        and sent_rps >= 0.99 * rate  # the generator kept the offered rate
    )
    return row


async def saturation(
    options: argparse.Namespace,
    port: int,
    name: str,
    users: list[str] | None,
    rates: list[float],
    folder: Path,
    pids: dict[str, int | None] | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """Rising offered rates until one misses p99 <= 50 ms with < 0.1 % errors."""
    steps: list[dict[str, Any]] = []
    best = 0.0
    if options.saturation_generator == "vegeta":
        # Built (once per checkout) before any window: inside the first one, the Go build's
        # CPU went to the generator's share and its wall time to every process's (session 10:
        # "7.65 of 2 cores" for the generator at 1,500 req/s on a fresh clone).
        await asyncio.to_thread(ensure_stamped, "vegeta", VEGETA_MODULE, VEGETA_VERSION)
    for n, rate in enumerate(rates):
        print(f"  saturation: {name} at {rate:,.0f} req/s ({options.saturation_generator}) ...",
              flush=True)  # fmt: skip
        count = int(rate * options.saturation_seconds)
        seed = options.seed * 1000 + 900 + n
        cpu = CpuSample.take(pids or {})
        if options.saturation_generator == "vegeta":
            paths = (
                ["/healthz"] * count
                if users is None
                else [p for p, _ in recommendation_paths(users, count, options.unknown_share, seed)]
            )
            row = await asyncio.to_thread(
                vegeta_window, options, port, name, rate, paths, folder / f"{port}-{n}"
            )
            row["recovery_s"] = await recover(port)
        else:
            load = HttpLoad(name, port, options.connections, options.timeout_s)
            if users is None:
                jobs = plain_jobs(load.request("/healthz"), count)
            else:
                jobs = recommendation_jobs(load, users, count, options.unknown_share, seed)
            row = await measure(load, rate, options.saturation_seconds, jobs)
            row["generator"] = "python (asyncio, raw sockets)"
        row |= cpu_between(cpu, CpuSample.take(pids or {}), row["ok"], server)  # with recovery
        steps.append(row)
        if not row["passes"]:
            break
        best = rate
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # let a server that fell behind drain before the next measurement
    return {
        "steps": steps,
        "saturation_rps": best,
        "criterion": f"p99 <= {SATURATION_P99_MS:.0f} ms and errors+timeouts < 0.1 %",
        "stopped_after_first_failure": bool(steps and not steps[-1]["passes"]),
    }


async def run_benchmark(
    options: argparse.Namespace,
    stack: Stack,
    inference: ServiceServer,
    gateway: ServiceServer,
    features: ModuleServer,
    background: Background,
    problems_from: list[Path],
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=features.url, timeout=30) as updater:
        return await _run_benchmark(
            options, stack, inference, gateway, updater, background, problems_from
        )


async def _run_benchmark(
    options: argparse.Namespace,
    stack: Stack,
    inference: ServiceServer,
    gateway: ServiceServer,
    updater: httpx.AsyncClient,
    background: Background,
    problems_from: list[Path],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    topic = stack.topics.events
    print("building catalogue A ...", flush=True)
    cat_a = catalogue_a(options.seed)
    seconds = await produce(stack.kafka, topic, cat_a.records)
    bounds_a = await partition_bounds(stack.kafka, topic)
    print(
        f"  {len(cat_a.records):,} events ({cat_a.source}) produced in {seconds:.1f}s", flush=True
    )
    cat_b: Catalogue | None = None
    bounds_b: dict[int, tuple[int, int]] = {}
    if not options.skip_100k:
        print("building catalogue B ...", flush=True)
        cat_b = catalogue_b(options.b_items, options.b_events, options.b_users, options.seed)
        seconds = await produce(stack.kafka, topic, cat_b.records)
        after_b = await partition_bounds(stack.kafka, topic)
        bounds_b = {p: (bounds_a[p][1], e) for p, (_, e) in after_b.items()}
        print(f"  {len(cat_b.records):,} events produced in {seconds:.1f}s", flush=True)

    async with (
        httpx.AsyncClient(base_url=stack.trainer.url, timeout=30) as trainer,
        httpx.AsyncClient(base_url=inference.url, timeout=10) as http,
    ):
        began = time.monotonic()
        failures: list[str] = []
        results["trainer_run_failures"] = failures
        version_a = await train(trainer, SPEC_A, bounds_a, topic, options.epochs, failures)
        print(
            f"  {SPEC_A} v{version_a['version']} after {time.monotonic() - began:.0f}s", flush=True
        )
        version_b: dict[str, Any] | None = None
        if cat_b is not None:
            version_b = await train(trainer, SPEC_B, bounds_b, topic, 1, failures)
            print(
                f"  {SPEC_B} v{version_b['version']} after {time.monotonic() - began:.0f}s",
                flush=True,
            )
        waited = await wait_features(stack, 300)
        print(f"  feature updater caught up ({waited:.0f}s more)", flush=True)
        served_a = await wait_serving(http, SPEC_A, version_a["version"], cat_a.users, 120)
        print(
            f"  inference serves {SPEC_A} v{served_a['version']} ({served_a['items']:,} items)",
            flush=True,
        )
        results["setup_s"] = round(time.monotonic() - began, 1)

        async with Redis.from_url(stack.redis_url) as redis:
            await redis.set(REDIS_KEY, b"x" * 200)

        gc.collect()
        gc.freeze()
        print(f"background ingest: {options.ingest_rate:,.0f} events/s ...", flush=True)
        await background.start(cat_a.users, cat_a.items, options.seed)
        pids = stack.pids(background)
        names = {s.port: s.name for s in (inference, gateway, stack.trivial)}
        section_a = await latency_section(
            options,
            http,
            updater,
            inference.port,
            stack.trivial.port,
            stack.redis_url,
            cat_a.users,
            options.rates,
            "a",
            gateway.port,
            pids,
            names,
        )
        sat_inference = await saturation(
            options, inference.port, "inference a", cat_a.users,
            saturation_rates(options.saturation_rates, section_a["rows"], "inference a"),
            stack.home / "vegeta", pids, inference.name,
        )  # fmt: skip
        sat_trivial = await saturation(
            options, stack.trivial.port, "trivial endpoint", None,
            saturation_rates(options.saturation_rates, section_a["rows"], "trivial endpoint"),
            stack.home / "vegeta", pids, stack.trivial.name,
        )  # fmt: skip
        wrk: dict[str, Any] = {}
        if not options.no_wrk:
            ensure_debian_package("wrk", "wrk")
            script = wrk_script(stack.home, cat_a.users)
            print("  wrk (closed loop): inference, trivial endpoint ...", flush=True)
            wrk["inference"] = await asyncio.to_thread(
                run_wrk, f"{inference.url}/", options.connections, options.wrk_seconds, script,
                (), "2s",
            )  # fmt: skip
            wrk["trivial"] = await asyncio.to_thread(
                run_wrk, f"{stack.trivial.url}/healthz", options.connections, options.wrk_seconds,
                None, (), "2s",
            )  # fmt: skip
        load_a = background.stop()
        for row in section_a["rows"] + sat_inference["steps"] + sat_trivial["steps"]:
            row["ingest_events_per_s"] = events_per_s(load_a, row.pop("wall"))
        results["catalogue_a"] = {
            "source": cat_a.source,
            "events": len(cat_a.records),
            "users": len(cat_a.users),
            "model": served_a,
            "latency": section_a["rows"],
            "feature_freshness": section_a["freshness"],
            "saturation": {"inference": sat_inference, "trivial_endpoint": sat_trivial},
            "wrk_closed_loop": wrk,
            "background_ingest": summarize_background(load_a),
        }

    if cat_b is not None and version_b is not None:
        print("catalogue B: restarting inference on the 100k spec ...", flush=True)
        await asyncio.to_thread(inference.stop)
        inference_b = stack.inference("inference-b", SPEC_B)
        problems_from.append(inference_b.log_file)
        await asyncio.to_thread(inference_b.start, 120)
        async with httpx.AsyncClient(base_url=inference_b.url, timeout=10) as http:
            served_b = await wait_serving(http, SPEC_B, version_b["version"], cat_b.users, 120)
            print(
                f"  inference serves {SPEC_B} v{served_b['version']} ({served_b['items']:,} items)",
                flush=True,
            )
            await background.start(cat_b.users, cat_b.items, options.seed + 1)
            section_b = await latency_section(
                options,
                http,
                updater,
                inference_b.port,
                None,
                None,
                cat_b.users,
                options.rates_100k,
                "b",
                pids=stack.pids(background),
                names={inference_b.port: inference_b.name},
            )
            load_b = background.stop()
        for row in section_b["rows"]:
            row["ingest_events_per_s"] = events_per_s(load_b, row.pop("wall"))
        results["catalogue_b"] = {
            "source": cat_b.source,
            "events": len(cat_b.records),
            "users": len(cat_b.users),
            "model": served_b,
            "latency": section_b["rows"],
            "feature_freshness": section_b["freshness"],
            "background_ingest": summarize_background(load_b),
        }
    return results


# ------------------------------------------------------------------------------ the report


def find_row(rows: list[dict[str, Any]], target: str, rate: float) -> dict[str, Any] | None:
    return next((r for r in rows if r["target"] == target and r["offered_rps"] == rate), None)


def saturation_bracket(catalogue: dict[str, Any], target: str, steps: str) -> dict[str, Any]:
    """Highest passing and lowest failing offered rate of ``target``: every window counts, the
    latency rates as well as the saturation steps (``catalogue["saturation"][steps]``)."""
    windows = [r for r in catalogue["latency"] if r["target"] == target]
    windows += (catalogue["saturation"].get(steps) or {}).get("steps", [])
    passed = [r["offered_rps"] for r in windows if r["passes"]]
    failed = [r["offered_rps"] for r in windows if not r["passes"]]
    highest = max(passed, default=None)
    return {
        "highest_passing_rps": highest,
        "lowest_failing_rps": min((f for f in failed if f > (highest or 0.0)), default=None),
        "criterion": f"p99 <= {SATURATION_P99_MS:.0f} ms and errors+timeouts < 0.1 %",
    }


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    a = results["catalogue_a"]
    at500 = find_row(a["latency"], "inference a", 500.0)
    out: dict[str, Any] = {"targets": TARGETS}
    if at500:
        out["a_500_p50_ms"] = at500["p50_ms"]
        out["a_500_p99_ms"] = at500["p99_ms"]
        out["meets_a_500"] = bool(
            at500["p50_ms"] is not None
            and at500["p99_ms"] is not None
            and at500["p50_ms"] <= TARGETS["a_500_p50_ms"]
            and at500["p99_ms"] <= TARGETS["a_500_p99_ms"]
        )
    out["saturation_bracket"] = saturation_bracket(a, "inference a", "inference")
    sat = out["saturation_rps"] = out["saturation_bracket"]["highest_passing_rps"] or 0.0
    out["meets_saturation"] = sat >= TARGETS["saturation_rps"]
    # The baseline the same way: its saturation steps start where inference's did, so alone
    # they say nothing when the trivial endpoint fails the first one.
    out["trivial_saturation_bracket"] = saturation_bracket(
        a, "trivial endpoint", "trivial_endpoint"
    )
    if "catalogue_b" in results:
        at200 = find_row(results["catalogue_b"]["latency"], "inference b", 200.0)
        if at200:
            out["b_200_p99_ms"] = at200["p99_ms"]
            out["meets_b_200"] = bool(
                at200["p99_ms"] is not None and at200["p99_ms"] <= TARGETS["b_200_p99_ms"]
            )
    return out


def _cell(value: Any, width: int, fmt: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(
        f"{'target':<20}{'rate':>7}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>9}{'err':>6}"
        f"{'t/o':>6}{'achieved':>10}{'lag p99':>9}{'ingest ev/s':>12}{'recover s':>10}"
        f"{'fresh p99<=':>12}{'cpu µs/ok':>10}{'busy':>6}{'users/read':>11}"
    )
    for r in rows:
        print(
            f"{r['target']:<20}{r['offered_rps']:>7,.0f}{_cell(r['p50_ms'], 8, '.2f')}"
            f"{_cell(r['p90_ms'], 8, '.2f')}{_cell(r['p99_ms'], 8, '.2f')}"
            f"{_cell(r['max_ms'], 9, '.1f')}{r['errors']:>6}{r['timeouts']:>6}"
            f"{r['achieved_rps']:>10,.0f}{_cell(r.get('send_lag_p99_ms'), 9, '.2f')}"
            f"{_cell(r.get('ingest_events_per_s'), 12, ',.0f')}"
            f"{_cell(r.get('recovery_s'), 10, '.1f')}"
            f"{_cell((r.get('feature_freshness') or {}).get('p99_le_s'), 12, 'g')}"
            f"{_cell(r.get('server_cpu_us_per_ok'), 10, ',.0f')}"
            f"{_cell(r.get('machine_busy'), 6, '.2f')}"
            f"{_cell((r.get('feature_freshness') or {}).get('users_per_feature_read'), 11, '.2f')}"
        )


def print_cpu(title: str, rows: list[dict[str, Any]]) -> None:
    """Where the CPU went in each window (``benchmarks.report.cpu_cores``)."""
    print(f"\n{title}")
    for r in rows:
        cores = cpu_cores(r, at_least=0.01)
        if cores is not None:
            print(f"  {r['target']} at {r['offered_rps']:,.0f} req/s: {cores}")


def report(results: dict[str, Any]) -> None:
    a = results["catalogue_a"]
    print_table(
        f"catalogue A ({a['source']}, {a['model']['items']:,} items), latency in ms "
        "from the scheduled send",
        a["latency"],
    )
    print_table("saturation (inference)", a["saturation"]["inference"]["steps"])
    print_cpu(
        "CPU by process, cores (inference windows)",
        [r for r in a["latency"] if r["target"] == "inference a"]
        + a["saturation"]["inference"]["steps"],
    )
    print_table(
        "saturation (trivial endpoint, same generator)",
        a["saturation"]["trivial_endpoint"]["steps"],
    )
    for name, w in a["wrk_closed_loop"].items():
        print(
            f"wrk closed loop, {name:<10}{w['requests_per_s']:>10,.0f} req/s  p50 "
            f"{w['p50_ms']:.2f}  p99 {w['p99_ms']:.2f} ms  non-2xx {w['non_2xx']}  "
            f"socket errors {w['socket_errors']}"
        )
    if "catalogue_b" in results:
        b = results["catalogue_b"]
        print_table(f"catalogue B ({b['model']['items']:,} items)", b["latency"])
    print()
    for key in ("catalogue_a", "catalogue_b"):
        if key not in results:
            continue
        f = results[key]["feature_freshness"]
        bg = results[key]["background_ingest"] or {}
        print(
            f"{key}: feature freshness p50 <= {f['p50_le_s']} s, p90 <= {f['p90_le_s']} s, "
            f"p99 <= {f['p99_le_s']} s over {f['events']:,} events (bucket bounds); "
            f"answers {f['answers_by_path']}; background ingest "
            f"{bg.get('achieved_events_per_s')} events/s, failed {bg.get('failed_events')}"
        )
    print(
        "(latency from the scheduled send time; 'lag p99': the generator's own lateness; "
        "'fresh p99<=': feature freshness bucket bound, s, during that window)"
    )
    print(f"verdicts: {json.dumps(results['verdicts'])}")


def start_stack(home: Path, servers: list[ManagedProcess]) -> Stack:
    infra = start_infrastructure(home, servers)
    kafka, topics, env = infra.kafka, infra.topics, infra.env
    svc = home / "svc"
    ingest = ServiceServer(
        name="ingest",
        home=svc,
        port=free_port(),
        app_factory="ingest.main:create_app",
        env=env | {"STREAMREC_LOG_LEVEL": "WARNING"},
    )
    trainer = ServiceServer(
        name="trainer",
        home=svc,
        port=free_port(),
        app_factory="trainer.main:create_app",
        env=env
        | {
            "STREAMREC_TRAINER_DATABASE_URL": f"sqlite:///{home / 'registry.db'}",
            "STREAMREC_TRAINER_ARTIFACTS_DIR": str(home / "artifacts"),
        },
    )
    trivial = ServiceServer(
        name="trivial",
        home=svc,
        port=free_port(),
        app_factory="benchmarks.trivial_app:create_app",
        env=env,
    )
    servers += [ingest, trainer, trivial]
    return Stack(
        home, kafka, topics, infra.redis_server.url, ingest, trainer, trivial, env, servers
    )


def parse_rates(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per offered rate")
    parser.add_argument(
        "--rates",
        type=parse_rates,
        default=[100.0, 500.0, 1000.0],
        help="offered req/s, comma-separated (catalogue A)",
    )
    parser.add_argument("--rates-100k", type=parse_rates, default=[200.0, 500.0])
    parser.add_argument(
        "--saturation-rates", type=parse_rates, default=[1500.0, 2000.0, 3000.0, 4000.0]
    )
    parser.add_argument("--saturation-seconds", type=float, default=5.0)
    parser.add_argument(
        "--saturation-generator",
        choices=["vegeta", "python"],
        default="vegeta",
        help="open-loop load for the saturation steps: vegeta (Go, built from the Go module"
        " proxy once) or this script's asyncio generator (which shares the two cores)",
    )
    parser.add_argument("--vegeta-threads", type=int, default=1, help="vegeta's GOMAXPROCS")
    parser.add_argument("--skip-100k", action="store_true", help="leave out catalogue B")
    parser.add_argument("--no-wrk", action="store_true", help="leave out the wrk closed loop")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout-s", type=float, default=2.0, help="per request, from due")
    parser.add_argument("--unknown-share", type=float, default=0.1)
    parser.add_argument("--ingest-rate", type=float, default=1000.0, help="background events/s")
    parser.add_argument("--ingest-batch", type=int, default=20)
    parser.add_argument("--b-items", type=int, default=100_000)
    parser.add_argument("--b-events", type=int, default=300_000)
    parser.add_argument("--b-users", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2, help="batch-run epochs for catalogue A")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "inference_latency.json"
    )
    options = parser.parse_args()
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - installed with uvicorn[standard]
        loop_factory = None

    began = time.monotonic()
    problems: dict[str, Any] = {}
    servers: list[ManagedProcess] = []
    with tempfile.TemporaryDirectory(prefix="streamrec-latency-") as tmp:
        home = Path(tmp)
        logs = [
            home / "svc" / f"{name}.log"
            for name in ("inference", "trainer", "ingest", "features", "gateway")
        ]
        background: Background | None = None
        try:
            stack = start_stack(home, servers)
            inference = stack.inference("inference", SPEC_A)
            gateway = stack.gateway(inference)
            features = stack.updater()
            # Service start-ups are mostly imports (TF in the trainer): overlap them; inference
            # once the registry (the trainer) answers.
            with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
                services = (stack.ingest, stack.trainer, stack.trivial)
                for started in [pool.submit(s.start, 120) for s in services]:
                    started.result()
            inference.start(timeout=120)
            gateway.start(timeout=60)
            features.start(timeout=60)
            print(f"servers up in {time.monotonic() - began:.0f}s", flush=True)
            background = Background(stack.ingest.url, options.ingest_rate, options.ingest_batch)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                results = runner.run(
                    run_benchmark(options, stack, inference, gateway, features, background, logs)
                )
        except BaseException:
            for log in logs:
                if log.exists():
                    tail = log.read_text(errors="replace").splitlines()[-30:]
                    print(f"--- last lines of {log.name}:", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            if background is not None:
                background.stop()
            for server in reversed(servers):
                server.stop()
            problems = {log.stem: log_problems(log) for log in logs}

    results["verdicts"] = verdicts(results)
    results["service_log_problems"] = problems
    results["settings"] = vars(options) | {"out": shown(options.out)}
    results["timestamp"] = datetime.now(UTC).isoformat()
    results["total_s"] = round(time.monotonic() - began, 1)
    results["machine"] = {
        "note": "Kafka, Redis, ingest, trainer, inference, the trivial app, the background "
        "ingest load and the generator share this machine",
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "event_loop": "uvloop" if loop_factory else "asyncio",
    }
    report(results)
    for name, found in problems.items():
        print(f"{name} log: {found['warnings']} warnings, {found['errors']} errors")
        for sample in found["samples"][:8]:
            print(f"  {sample}")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {shown(options.out)} ({results['total_s']:.0f}s in all)")


if __name__ == "__main__":
    main()
