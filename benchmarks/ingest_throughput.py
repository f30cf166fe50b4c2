"""Ingest throughput against the raw aiokafka producer, on one real broker, in one run.

Starts its own Kafka (KRaft) and Redis in a temporary folder, an ingest server process (uvicorn,
one worker, as in a pod) and a trivial FastAPI endpoint served the same way, then measures:

1. the raw aiokafka producer (acks=all, idempotent) writing the same records: the ceiling;
2. the trivial endpoint under wrk: the ceiling of one uvicorn process;
3. ingest, one event per POST (wrk), with unique client event_ids (every event takes the
   idempotency path and is really written) and without (server-generated ids skip Redis);
4. ingest, 100-event batches.

Prints events/s, latency percentiles and the ratios; writes JSON to benchmarks/results/.
Run: ``make bench-ingest`` (or ``.venv/bin/python benchmarks/ingest_throughput.py --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamrec_dev.servers import (  # noqa: E402
    KafkaServer,
    RedisServer,
    ServiceServer,
    ensure_debian_package,
    free_port,
)
from streamrec_shared.kafka import build_producer, ensure_topics  # noqa: E402
from streamrec_shared.schemas.events import EventIn  # noqa: E402
from streamrec_shared.settings import KafkaSettings, TopicSettings  # noqa: E402

from benchmarks.wrk import SCRIPTS, run_wrk  # noqa: E402


def sample_record(n: int) -> bytes:
    """The same bytes ingest would write for the event the wrk scripts post."""
    event = EventIn(user_id=f"u{n % 943}", item_id=f"i{n % 1682}", type="click",
                    context={"page": "home"})  # type: ignore[arg-type]  # fmt: skip
    return event.record_value(f"raw-{n}", datetime.now(UTC))


async def raw_producer(kafka: KafkaSettings, topic: str, count: int) -> dict[str, float]:
    """The ceiling: the same producer settings ingest uses, fed as fast as it accepts."""
    payloads = [(sample_record(n), f"u{n % 943}".encode()) for n in range(count)]
    producer = build_producer(kafka)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, value=v, key=k) for v, k in payloads]
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return {"events_per_s": count / elapsed, "events": count, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per measurement")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (single)")
    parser.add_argument("--batch-connections", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--raw-events", type=int, default=200_000)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "ingest_throughput.json"
    )
    options = parser.parse_args()
    ensure_debian_package("wrk", "wrk")

    with tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp:
        home = Path(tmp)
        kafka_server = KafkaServer(
            name="kafka", home=home / "kafka", port=free_port(), controller_port=free_port()
        )
        redis_server = RedisServer(name="redis", home=home / "redis", port=free_port())
        servers: list[ServiceServer | KafkaServer | RedisServer] = [kafka_server, redis_server]
        try:
            kafka_server.start(timeout=90)
            redis_server.start()
            kafka = KafkaSettings(bootstrap_servers=kafka_server.bootstrap)
            topics = TopicSettings(events="bench-events", events_partitions=6)
            raw_topics = TopicSettings(events="bench-raw", events_partitions=6)
            asyncio.run(ensure_topics(kafka, topics))
            asyncio.run(ensure_topics(kafka, raw_topics))
            env = {
                "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": kafka_server.bootstrap,
                "STREAMREC_REDIS_URL": redis_server.url,
                "STREAMREC_TOPIC_EVENTS": topics.events,
                "STREAMREC_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(REPO),
            }
            ingest = ServiceServer(name="ingest", home=home / "svc", port=free_port(),
                                   app_factory="ingest.main:create_app", env=env)  # fmt: skip
            trivial = ServiceServer(name="trivial", home=home / "svc", port=free_port(),
                                    app_factory="benchmarks.trivial_app:create_app",
                                    env=env)  # fmt: skip
            servers += [ingest, trivial]
            ingest.start()
            trivial.start()

            print("raw aiokafka producer ...", flush=True)
            raw = asyncio.run(raw_producer(kafka, raw_topics.events, options.raw_events))
            run = uuid.uuid4().hex[:8]
            print("trivial endpoint ...", flush=True)
            single_lua, batch_lua = SCRIPTS / "single.lua", SCRIPTS / "batch.lua"
            base = run_wrk(
                trivial.url, options.connections, options.seconds, single_lua, [f"t{run}"]
            )
            print("ingest single events ...", flush=True)
            single = run_wrk(
                ingest.url, options.connections, options.seconds, single_lua, [f"s{run}"]
            )
            print("ingest single events without event_id ...", flush=True)
            noid = run_wrk(
                ingest.url, options.connections, options.seconds, single_lua, [f"n{run}", "noid"]
            )
            print("ingest batches ...", flush=True)
            batch = run_wrk(ingest.url, options.batch_connections, options.seconds, batch_lua,
                            [f"b{run}", str(options.batch_size)])  # fmt: skip
        finally:
            for server in reversed(servers):
                server.stop()

    batch_events = batch["requests_per_s"] * options.batch_size
    results = {
        "measured_at": datetime.now(UTC).isoformat(),
        "raw_producer": raw,
        "trivial_endpoint": base,
        "ingest_single": {**single, "events_per_s": single["requests_per_s"]},
        "ingest_single_without_event_id": {**noid, "events_per_s": noid["requests_per_s"]},
        "ingest_batch": {**batch, "events_per_s": batch_events, "batch_size": options.batch_size},
        "ratios": {
            "single_vs_trivial_endpoint": single["requests_per_s"] / base["requests_per_s"],
            "single_without_id_vs_trivial": noid["requests_per_s"] / base["requests_per_s"],
            "batch_vs_raw_producer": batch_events / raw["events_per_s"],
        },
        "settings": vars(options) | {"out": str(options.out.relative_to(REPO))},
    }
    print()
    print(f"{'measurement':<34}{'events/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    print(f"{'raw aiokafka producer (acks=all)':<34}{raw['events_per_s']:>12,.0f}")
    for label, row, eps in (
        ("trivial FastAPI endpoint (req/s)", base, base["requests_per_s"]),
        ("ingest, 1 event/POST, event_id", single, single["requests_per_s"]),
        ("ingest, 1 event/POST, no event_id", noid, noid["requests_per_s"]),
        (f"ingest, {options.batch_size}-event batches", batch, batch_events),
    ):
        print(
            f"{label:<34}{eps:>12,.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['non_2xx']:>9.0f}"
        )
    print()
    for name, value in results["ratios"].items():  # type: ignore[attr-defined]
        print(f"{name:<34}{value:>12.2f}")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {options.out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
