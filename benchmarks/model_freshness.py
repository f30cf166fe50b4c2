"""Model freshness: how long after ingest acknowledges an event a model version covering it is out.

For every event the load generator posts, freshness is the wall time from its 202 (ingest has it
on every in-sync replica; the response names its partition and offset) to (1) the arrival, on the
control topic, of the first ``model_published`` whose ``trained_through[partition] > offset``, and
(2) the moment the inference service first serves that version or a newer one (its
``/v1/model``, polled every 10 ms: what a frontend gets). Target (trainer issue): p99 <= 10 s
to a served version.

Starts its own Kafka (KRaft) and Redis in a temporary folder and the ingest, trainer and inference
services as uvicorn processes (one each, as in a pod; SQLite registry and directory artifact store
in the same folder). Creates the spec ``fresh`` (item pooling, default hyperparameters), requests
an incremental run publishing every ``--publish-every-s`` seconds, posts a warm-up history and
waits until a version covers it, then drives an open-loop load: batches of ``--batch`` events at
fixed times (``--rate`` events/s for ``--seconds``), from ``DriftingClickstream``, with client
``event_id``s. A consumer on the control topic and a poller of inference's ``/v1/model``, in the
same asyncio loop (so all read the same ``time.monotonic()``), timestamp each announcement and each
swap. The load goes on, unmeasured, after the measured window until two versions cover every
measured event (bounded), so the last events see the same steady stream as the first ones.

Caveat, measured rather than hidden: the run holds out a ``validation.rate`` share of events for
the publish gate; they are scored first and trained after the decision that releases them, while
``trained_through`` already counts them. The conservative figure therefore uses, for a seeded
random ``--validation-rate`` share of events, a later version: without a rolling sample
(``--fixed-sample``) the second covering one; with it (the product's default) the one after the
first version announced ``min_events / (rate × validation.rate)`` seconds after the event, when
that many newer held-out events have replaced it (an estimate from the offered rate).

A quiet stream is where the rolling sample matters (``make bench-freshness-quiet``: 20 events/s,
one held-out event a second, so a fixed sample of 20 takes ~20 s): it runs ``--fixed-sample``
first, then the default with ``--baseline`` pointing at that run, for the ratios.

Prints percentiles, versions published during the load and their spacing, the trainer's own live
figures and any warnings/errors from its log; writes JSON to benchmarks/results/.
Run: ``make bench-freshness`` (or ``.venv/bin/python benchmarks/model_freshness.py --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamrec_dev.servers import ManagedProcess, ServiceServer, free_port  # noqa: E402
from streamrec_dev.synthetic import DriftingClickstream  # noqa: E402
from streamrec_shared.kafka import build_consumer  # noqa: E402
from streamrec_shared.schemas.control import (  # noqa: E402
    CandidateRejected,
    ControlDecodeError,
    ModelPublished,
    decode_control,
)
from streamrec_shared.settings import KafkaSettings, TopicSettings  # noqa: E402

from benchmarks.infra import start_infrastructure  # noqa: E402

SPEC_ID = "fresh"
WARMUP_BATCH = 100


@dataclass
class Announcement:
    arrived: float  # time.monotonic() when the consumer got it
    version: int
    trained_through: dict[int, int]


@dataclass
class ControlWatcher:
    """Timestamps every ``model_published`` / ``candidate_rejected`` for the spec."""

    kafka: KafkaSettings
    topic: str
    published: list[Announcement] = field(default_factory=list)
    rejected: list[tuple[float, str]] = field(default_factory=list)
    rejected_ids: set[str] = field(default_factory=set)
    undecodable: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        # A throwaway group: aiokafka's group-less consumer can raise CancelledError on stop.
        consumer = build_consumer(
            self.kafka, self.topic, group_id=f"bench-freshness-{uuid.uuid4().hex[:8]}"
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100)
                arrived = time.monotonic()
                if consumer.assignment():
                    self.ready.set()
                for records in batches.values():
                    for record in records:
                        self._take(arrived, record.value)
        finally:
            await consumer.stop()

    def _take(self, arrived: float, value: bytes | None) -> None:
        try:
            message = decode_control(value)
        except ControlDecodeError:
            self.undecodable += 1
            return
        if isinstance(message, ModelPublished) and message.spec_id == SPEC_ID:
            if any(a.version == message.version for a in self.published):
                return  # re-read after a group rebalance (the throwaway group commits nothing)
            self.published.append(
                Announcement(arrived, message.version, dict(message.trained_through))
            )
        elif (
            isinstance(message, CandidateRejected)
            and message.spec_id == SPEC_ID
            and message.message_id not in self.rejected_ids
        ):
            self.rejected_ids.add(message.message_id)
            self.rejected.append((arrived, message.reason))

    def versions_covering(self, max_offsets: dict[int, int]) -> int:
        return sum(
            all(a.trained_through.get(p, 0) > o for p, o in max_offsets.items())
            for a in self.published
        )


@dataclass
class Acks:
    """Per event: when its 202 arrived, and where it was stored."""

    times: list[float] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    request_s: list[float] = field(default_factory=list)
    failed_requests: int = 0
    failed_events: int = 0

    def max_offsets(self) -> dict[int, int]:
        top: dict[int, int] = {}
        for p, o in zip(self.partitions, self.offsets, strict=True):
            top[p] = max(top.get(p, -1), o)
        return top


def event_stream(total: int, seed: int) -> Iterator[dict[str, Any]]:
    """~1,000 users, ~1,700 items (new ones launching), taste drift; timestamps = receipt."""
    stream = DriftingClickstream(users=1000, initial_items=1500, launched_items=200,
                                 events=total, seed=seed)  # fmt: skip
    run = uuid.uuid4().hex[:8]
    for n, event in enumerate(stream):
        yield {
            "event_id": f"f{run}-{n}",
            "user_id": event.user_id,
            "item_id": event.item_id,
            "type": event.type,
        }


async def post_batch(client: httpx.AsyncClient, events: list[dict[str, Any]], acks: Acks) -> None:
    sent = time.monotonic()
    try:
        response = await client.post("/v1/events/batch", json={"events": events})
    except httpx.HTTPError:
        acks.failed_requests += 1
        acks.failed_events += len(events)
        return
    now = time.monotonic()
    if response.status_code != 202:
        acks.failed_requests += 1
        acks.failed_events += len(events)
        return
    acks.request_s.append(now - sent)
    for result in response.json()["results"]:
        if result["status"] != "stored":  # a duplicate has no fresh 202 of its own
            acks.failed_events += 1
            continue
        acks.times.append(now)
        acks.partitions.append(result["partition"])
        acks.offsets.append(result["offset"])


async def poll(
    what: str, check: Any, timeout_s: float, interval_s: float = 0.1
) -> float:  # seconds waited
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")
        await asyncio.sleep(interval_s)
    return time.monotonic() - began


def percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"count": 0}
    return {
        "count": int(values.size),
        "mean_s": float(values.mean()),
        "p50_s": float(np.percentile(values, 50)),
        "p90_s": float(np.percentile(values, 90)),
        "p99_s": float(np.percentile(values, 99)),
        "max_s": float(values.max()),
    }


def covering_versions(
    acks: Acks, published: list[Announcement], holdout_rate: float, seed: int, hold_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per event, the index (in arrival order) of the first announced version covering it, and
    the conservative one; -1 if none.

    The first covering version is the first index where the running maximum of
    trained_through[p] exceeds the event's offset. The conservative one is the same for most
    events, but for a seeded ``holdout_rate`` share (the held-out events) the version after the
    first one announced at least ``hold_s`` after the event's 202 and not before its first
    covering version: a held-out event is trained after the decision that releases it, which
    is the next decision without a rolling sample (``hold_s`` 0), and with one the first
    decision after ``min_events`` newer held-out events came (``hold_s``, their expected time).
    """
    partitions = np.asarray(acks.partitions)
    offsets = np.asarray(acks.offsets)
    times = np.asarray(acks.times)
    arrivals = np.asarray([a.arrived for a in published])
    rng = np.random.default_rng(seed)
    second = rng.random(partitions.size) < holdout_rate
    first = np.full(partitions.size, -1)
    conservative = np.full(partitions.size, -1)
    for p in np.unique(partitions):
        mask = partitions == p
        through = np.maximum.accumulate(
            np.asarray([a.trained_through.get(int(p), 0) for a in published])
        )
        index = np.searchsorted(through, offsets[mask], side="right")
        released = np.searchsorted(arrivals, times[mask] + hold_s, side="left")
        index2 = np.where(second[mask], np.maximum(index, released) + 1, index)
        first[mask] = np.where(index < len(published), index, -1)
        conservative[mask] = np.where(index2 < len(published), index2, -1)
    return first, conservative


def freshness(
    acks: Acks, published: list[Announcement], holdout_rate: float, seed: int, hold_s: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """(first covering version, conservative, uncovered count), in seconds per covered event,
    to the version's announcement on the control topic."""
    times = np.asarray(acks.times)
    arrivals = np.asarray([a.arrived for a in published])
    first, conservative = covering_versions(acks, published, holdout_rate, seed, hold_s)
    uncovered = int((first < 0).sum())
    return (
        arrivals[first[first >= 0]] - times[first >= 0],
        arrivals[conservative[conservative >= 0]] - times[conservative >= 0],
        uncovered,
    )


def served_freshness(
    acks: Acks,
    published: list[Announcement],
    served: list[tuple[float, int]],
    holdout_rate: float,
    seed: int,
    hold_s: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The same, to the moment inference first served that version or a newer one."""
    times = np.asarray(acks.times)
    versions = np.asarray([a.version for a in published])
    served_at = np.asarray([t for t, _ in served])
    served_versions = np.maximum.accumulate(np.asarray([v for _, v in served] or [0]))
    out = []
    for index in covering_versions(acks, published, holdout_rate, seed, hold_s):
        ok = index >= 0
        position = np.searchsorted(served_versions, versions[index[ok]], side="left")
        got = position < len(served)
        delays = served_at[position[got]] - times[ok][got]
        out.append(delays)
    uncovered = int(times.size - out[0].size)
    return out[0], out[1], uncovered


@dataclass
class ServedWatcher:
    """Polls inference's ``/v1/model`` and notes when each version was first served."""

    url: str
    served: list[tuple[float, int]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while not stop.is_set():
                try:
                    version = (await client.get("/v1/model")).json()["version"]
                except (httpx.HTTPError, ValueError, KeyError):
                    version = None
                seen = time.monotonic()
                if version is not None and (not self.served or version > self.served[-1][1]):
                    self.served.append((seen, int(version)))
                await asyncio.sleep(0.01)


async def generate(
    client: httpx.AsyncClient,
    events: Iterator[dict[str, Any]],
    rate: float,
    batch: int,
    stop: asyncio.Event,
    measured_until: float,
    measured: Acks,
    tail: Acks,
    tasks: list[asyncio.Task[None]],
    measured_sent: asyncio.Event,
) -> dict[str, float]:
    """Open loop: batch k is sent at start + k * batch / rate, whatever came back before."""
    interval = batch / rate
    start = time.monotonic()
    behind = 0.0
    k = 0
    pending: set[asyncio.Task[None]] = set()
    peak = 0
    while not stop.is_set():
        due = start + k * interval
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            behind = max(behind, now - due)
        chunk = [next(events) for _ in range(batch)]
        target = measured if due < measured_until else tail
        if target is tail:
            measured_sent.set()
        task = asyncio.create_task(post_batch(client, chunk, target))
        if target is measured:
            tasks.append(task)
        pending.add(task)
        task.add_done_callback(pending.discard)
        peak = max(peak, len(pending))
        k += 1
    measured_sent.set()
    await asyncio.gather(*pending)
    return {"batches_sent": k, "max_schedule_lag_s": behind, "peak_in_flight": peak}


# What ``--baseline`` compares, as (label, key in the results, figure): lower is fresher.
COMPARED = (
    ("served p50 s", "served_freshness_first_covering_version", "p50_s"),
    ("served p99 s", "served_freshness_first_covering_version", "p99_s"),
    ("served conservative p99 s", "served_freshness_conservative", "p99_s"),
    ("mean interval between versions s", "mean_version_interval_s", None),
)


def against_baseline(results: dict[str, Any], baseline_path: Path) -> dict[str, Any]:
    """This run's figures next to an earlier run's (same machine, e.g. ``--fixed-sample``
    just before), with the ratio baseline / this (above 1: this run is fresher)."""
    baseline = json.loads(baseline_path.read_text())
    figures: dict[str, dict[str, float]] = {}
    for label, key, figure in COMPARED:
        before = baseline[key] if figure is None else baseline[key].get(figure)
        now = results[key] if figure is None else results[key].get(figure)
        if before is None or now is None or now <= 0:
            continue
        figures[label] = {"baseline": before, "this": now, "ratio": before / now}
    return {
        "file": shown(baseline_path),
        "baseline_settings": baseline.get("settings"),
        "figures": figures,
    }


def held_out_wait_s(options: argparse.Namespace) -> float:
    """With the rolling sample, how long a held-out event is expected to stay out of training:
    until ``min_events`` newer held-out events came, at the offered rate."""
    if options.fixed_sample:
        return 0.0
    return float(options.min_events / (options.rate * options.validation_rate))


async def measure(options: argparse.Namespace, ingest_url: str, trainer_url: str,
                  inference_url: str, kafka: KafkaSettings,
                  topics: TopicSettings) -> dict[str, Any]:  # fmt: skip
    hold_s = held_out_wait_s(options)
    stop_watcher = asyncio.Event()
    watcher = ControlWatcher(kafka, topics.control)
    watcher_task = asyncio.create_task(watcher.run(stop_watcher))
    served_watcher = ServedWatcher(inference_url)
    served_task = asyncio.create_task(served_watcher.run(stop_watcher))
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    total = options.warmup_events + int(options.rate * (options.seconds + options.drain_s + 10))
    events = event_stream(total + 10 * options.batch, options.seed)
    try:
        async with (
            httpx.AsyncClient(base_url=trainer_url, timeout=30) as trainer,
            httpx.AsyncClient(base_url=ingest_url, timeout=30, limits=limits) as ingest,
        ):
            await poll("control consumer assignment", watcher.ready.is_set, 60)
            response = await trainer.post(
                "/v1/specs", json={"id": SPEC_ID, "spec": {"family": "item_pooling"}}
            )
            response.raise_for_status()
            response = await trainer.post(f"/v1/specs/{SPEC_ID}/runs", json={
                "mode": "incremental",
                "publish": {"every_s": options.publish_every_s},
                "validation": {
                    "rate": options.validation_rate,
                    "min_events": options.min_events,
                    "rolling_sample": not options.fixed_sample,
                },
            })  # fmt: skip
            response.raise_for_status()
            run_id = response.json()["run_id"]

            print(f"warm-up: {options.warmup_events} events ...", flush=True)
            warm = Acks()
            for _ in range(0, options.warmup_events, WARMUP_BATCH * 4):
                await asyncio.gather(*(
                    post_batch(ingest, [next(events) for _ in range(WARMUP_BATCH)], warm)
                    for _ in range(4)
                ))  # fmt: skip
            if warm.failed_events:
                raise RuntimeError(f"warm-up: {warm.failed_events} events not stored")
            warm_top = warm.max_offsets()
            try:
                waited = await poll(
                    "a version covering the warm-up",
                    lambda: watcher.versions_covering(warm_top) >= 1,
                    options.drain_s + 60,
                )
            except TimeoutError as error:
                state = (await trainer.get(f"/v1/runs/{run_id}")).text[:2000]
                seen = [(a.version, a.trained_through) for a in watcher.published]
                raise TimeoutError(
                    f"{error}; warm-up {warm_top}; seen {seen}; run {state}"
                ) from None
            print(f"  covered by v{watcher.published[-1].version} after {waited:.1f}s", flush=True)

            print(f"load: {options.rate:,.0f} events/s for {options.seconds:.0f}s ...", flush=True)
            measured, tail = Acks(), Acks()
            tasks: list[asyncio.Task[None]] = []
            stop_load = asyncio.Event()
            load_start = time.monotonic()
            load_end = load_start + options.seconds
            versions_before = len(watcher.published)
            measured_sent = asyncio.Event()
            generator = asyncio.create_task(generate(
                ingest, events, options.rate, options.batch, stop_load, load_end,
                measured, tail, tasks, measured_sent,
            ))  # fmt: skip
            await measured_sent.wait()
            await asyncio.gather(*tasks)
            measured_done = time.monotonic()
            top = measured.max_offsets()
            # The conservative figure needs, for the newest held-out events, the version after
            # the first one announced once their wait (``hold_s``) is over.
            released_by = measured_done + hold_s

            def drained_enough() -> bool:
                later = sum(a.arrived >= released_by for a in watcher.published)
                return watcher.versions_covering(top) >= 2 and later >= 2

            try:
                await poll(
                    "two versions covering every measured event (and its held-out release)",
                    drained_enough,
                    options.drain_s,
                )
                drained = True
            except TimeoutError:
                drained = False
            stop_load.set()
            load_figures = await generator
            run = (await trainer.get(f"/v1/runs/{run_id}")).json()
    finally:
        stop_watcher.set()
        await watcher_task
        await served_task

    first, conservative, uncovered = freshness(
        measured, watcher.published, options.validation_rate, options.seed, hold_s
    )
    served_first, served_conservative, served_uncovered = served_freshness(
        measured,
        watcher.published,
        served_watcher.served,
        options.validation_rate,
        options.seed,
        hold_s,
    )
    during = [a.arrived for a in watcher.published if load_start <= a.arrived <= load_end]
    gaps = np.diff(np.asarray(during)) if len(during) > 1 else np.zeros(0)
    live = run.get("live") or {}
    cycle_s = [s["metrics"].get("cycle_s") for s in run.get("recent_steps", [])]
    request_s = np.asarray(measured.request_s)
    return {
        "freshness_first_covering_version": percentiles(first),
        "freshness_conservative": percentiles(conservative),
        "uncovered_events": uncovered,
        "served_freshness_first_covering_version": percentiles(served_first),
        "served_freshness_conservative": percentiles(served_conservative),
        "served_uncovered_events": served_uncovered,
        "conservative_hold_s": hold_s,
        "versions_served": len(served_watcher.served),
        "all_covered_twice_within_drain": drained,
        "drain_s": time.monotonic() - measured_done,
        "events_measured": len(measured.times),
        "failed_events": measured.failed_events + tail.failed_events,
        "failed_requests": measured.failed_requests + tail.failed_requests,
        "offered_events_per_s": options.rate,
        "acknowledged_events_per_s": len(measured.times) / options.seconds,
        "ingest_batch_request_s": {
            "p50": float(np.percentile(request_s, 50)) if request_s.size else None,
            "p99": float(np.percentile(request_s, 99)) if request_s.size else None,
        },
        "load_generator": load_figures,
        "versions_during_load": len(during),
        "mean_version_interval_s": float(gaps.mean()) if gaps.size else None,
        "max_version_interval_s": float(gaps.max()) if gaps.size else None,
        "versions_total": len(watcher.published),
        "versions_before_load": versions_before,
        "candidates_rejected": len(watcher.rejected),
        "rejection_reasons": sorted({reason for _, reason in watcher.rejected})[:5],
        "undecodable_control_messages": watcher.undecodable,
        "trainer_view": {
            "run_id": run_id,
            "status": run.get("run", {}).get("status"),
            "events_per_s": live.get("events_per_s"),
            "steps": live.get("steps"),
            "events_observed": live.get("events_observed"),
            "events_trained": live.get("events_trained"),
            "heldout": live.get("heldout"),
            "last_cycle_decision": (live.get("last_cycle") or {}).get("decision"),
            "recent_cycle_s": [round(c, 3) for c in cycle_s if c is not None],
        },
    }


def log_problems(path: Path, limit: int = 20) -> dict[str, Any]:
    """WARNING/ERROR/CRITICAL lines of a service log (JSON lines, or anything else verbatim)."""
    if not path.exists():
        return {"lines": 0, "warnings": 0, "errors": 0, "samples": []}
    lines = path.read_text(errors="replace").splitlines()
    warnings = errors = 0
    samples: list[str] = []
    for line in lines:
        try:
            record = json.loads(line)
            level = str(record.get("level", record.get("levelname", ""))).upper()
            text = f"{level} {record.get('logger', '')}: {record.get('msg', record)}"
            if record.get("exc"):
                text += " | " + str(record["exc"]).strip().splitlines()[-1]
        except (ValueError, AttributeError):  # not ours: TF/absl (glog prefixes), tracebacks
            match = re.match(r"(WARNING|ERROR|CRITICAL|FATAL)\b|([WEF])\d{4} ", line)
            level = ""
            if match:
                level = match.group(1) or {"W": "WARNING", "E": "ERROR", "F": "FATAL"}[match[2]]
            text = line
        if level in ("WARNING", "WARN"):
            warnings += 1
        elif level in ("ERROR", "CRITICAL", "FATAL"):
            errors += 1
        else:
            continue
        if len(samples) < limit:
            samples.append(text[:300])
    return {"lines": len(lines), "warnings": warnings, "errors": errors, "samples": samples}


def shown(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


def row(label: str, figures: dict[str, Any]) -> str:
    if not figures.get("count"):
        return f"{label:<40}{'(no events covered)':>40}"
    cells = "".join(f"{figures[k]:>8.2f}" for k in ("p50_s", "p90_s", "p99_s", "max_s"))
    return f"{label:<40}{cells}{figures['count']:>10,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="offered events/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured load duration")
    parser.add_argument("--publish-every-s", type=float, default=2.0, help="publish.every_s")
    parser.add_argument("--validation-rate", type=float, default=0.05, help="validation.rate")
    parser.add_argument("--min-events", type=int, default=20, help="validation.min_events")
    parser.add_argument(
        "--fixed-sample",
        action="store_true",
        help="validation.rolling_sample false: each decision waits for a sample of its own",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="an earlier run's JSON (e.g. --fixed-sample) to print and store ratios against",
    )
    parser.add_argument("--batch", type=int, default=20, help="events per POST")
    parser.add_argument("--warmup-events", type=int, default=5000)
    parser.add_argument("--drain-s", type=float, default=30.0, help="bound on the final wait")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--target-p99-s", type=float, default=10.0)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "model_freshness.json"
    )
    options = parser.parse_args()
    random.seed(options.seed)

    problems: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="streamrec-fresh-") as tmp:
        home = Path(tmp)
        servers: list[ManagedProcess] = []
        trainer_log = home / "svc" / "trainer.log"
        ingest_log = home / "svc" / "ingest.log"
        try:
            began = time.monotonic()
            infra = start_infrastructure(home, servers)
            kafka, topics, env = infra.kafka, infra.topics, infra.env
            ingest = ServiceServer(name="ingest", home=home / "svc", port=free_port(),
                                   app_factory="ingest.main:create_app",
                                   env=env | {"STREAMREC_LOG_LEVEL": "WARNING"})  # fmt: skip
            trainer = ServiceServer(name="trainer", home=home / "svc", port=free_port(),
                                    app_factory="trainer.main:create_app", env=env | {
                "STREAMREC_TRAINER_DATABASE_URL": f"sqlite:///{home / 'registry.db'}",
                "STREAMREC_TRAINER_ARTIFACTS_DIR": str(home / "artifacts"),
                "TF_CPP_MIN_LOG_LEVEL": "2",
            })  # fmt: skip
            inference = ServiceServer(name="inference", home=home / "svc", port=free_port(),
                                      app_factory="inference.main:create_app", env=env | {
                "STREAMREC_INFERENCE_SPEC_ID": SPEC_ID,
                "STREAMREC_INFERENCE_TRAINER_URL": trainer.url,
                "STREAMREC_INFERENCE_ARTIFACTS_DIR": str(home / "artifacts"),
                "STREAMREC_INFERENCE_ARTIFACT_CACHE_DIR": str(home / "model-cache"),
                "STREAMREC_LOG_LEVEL": "WARNING",
            })  # fmt: skip
            servers += [ingest, trainer, inference]
            ingest.start()
            trainer.start(timeout=120)
            inference.start(timeout=60)
            print(f"servers up in {time.monotonic() - began:.0f}s", flush=True)
            results = asyncio.run(
                measure(options, ingest.url, trainer.url, inference.url, kafka, topics)
            )
        except BaseException:
            for log in (trainer_log, ingest_log):
                if log.exists():
                    tail = log.read_text(errors="replace").splitlines()[-40:]
                    print(f"--- last lines of {log.name}:", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            for server in reversed(servers):
                server.stop()
            problems = {"trainer": log_problems(trainer_log), "ingest": log_problems(ingest_log)}

    first = results["freshness_first_covering_version"]
    conservative = results["freshness_conservative"]
    results = {
        **results,
        "target_p99_s": options.target_p99_s,
        "meets_target_first": bool(first.get("p99_s", float("inf")) <= options.target_p99_s),
        "meets_target_conservative": bool(
            conservative.get("p99_s", float("inf")) <= options.target_p99_s
        ),
        "meets_target_served_conservative": bool(
            results["served_freshness_conservative"].get("p99_s", float("inf"))
            <= options.target_p99_s
        ),
        "service_log_problems": problems,
        "settings": vars(options)
        | {"out": shown(options.out), "baseline": options.baseline and shown(options.baseline)},
        "timestamp": datetime.now(UTC).isoformat(),
        "machine": {
            "note": "Kafka, Redis, ingest, trainer and the load generator share this machine",
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    print()
    print(f"{'freshness (202 -> model_published)':<40}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}"
          f"{'events':>10}")  # fmt: skip
    print(row("first covering version", first))
    later = "the one after their release" if not options.fixed_sample else "the 2nd"
    print(row(f"conservative ({options.validation_rate:.0%} use {later})", conservative))
    print(f"{'freshness (202 -> served by inference)':<40}")
    print(row("first covering version", results["served_freshness_first_covering_version"]))
    print(row("conservative", results["served_freshness_conservative"]))
    print()
    view = results["trainer_view"]
    interval = results["mean_version_interval_s"]
    facts = [
        ("target p99", f"{options.target_p99_s:.1f} s"),
        ("meets target (first / conservative)",
         f"{results['meets_target_first']} / {results['meets_target_conservative']}"),
        ("offered / acknowledged events/s",
         f"{options.rate:,.0f} / {results['acknowledged_events_per_s']:,.0f}"),
        ("failed events", str(results["failed_events"])),
        ("ingest batch request p50 / p99 s",
         " / ".join(f"{v:.3f}" if v is not None else "-"
                    for v in results["ingest_batch_request_s"].values())),
        ("max generator schedule lag", f"{results['load_generator']['max_schedule_lag_s']:.3f} s"),
        ("versions published during the load", str(results["versions_during_load"])),
        ("mean / max interval between them",
         f"{interval:.2f} / {results['max_version_interval_s']:.2f} s" if interval else "-"),
        ("candidates rejected", str(results["candidates_rejected"])),
        ("uncovered events after drain", str(results["uncovered_events"])),
        ("trainer events/s (live)", str(view["events_per_s"])),
        ("trainer steps", str(view["steps"])),
        ("trainer recent cycle_s", ", ".join(f"{c:.2f}" for c in view["recent_cycle_s"][:8])),
        ("trainer log warnings / errors",
         f"{problems['trainer']['warnings']} / {problems['trainer']['errors']}"),
        ("ingest log warnings / errors",
         f"{problems['ingest']['warnings']} / {problems['ingest']['errors']}"),
    ]  # fmt: skip
    for label, value in facts:
        print(f"{label:<40}{value}")
    for sample in problems["trainer"]["samples"][:10]:
        print(f"  trainer: {sample}")
    if options.baseline is not None:
        results["against_baseline"] = against_baseline(results, options.baseline)
        print(f"\nagainst {shown(options.baseline)} (baseline / this run):")
        for label, figures in results["against_baseline"]["figures"].items():
            print(f"  {label:<38}{figures['baseline']:>8.2f}{figures['this']:>8.2f}"
                  f"{figures['ratio']:>8.1f}×")  # fmt: skip
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {shown(options.out)}")


if __name__ == "__main__":
    main()
