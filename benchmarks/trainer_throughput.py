"""Training throughput of the incremental loop from Kafka, against in-memory tensors, in one run.

Starts its own Kafka (KRaft) in a temporary folder, produces a synthetic clickstream (the
drifting one from the demo: users with topical tastes, Zipf-popular items, new items launching)
and measures, with the same model spec (the defaults: item pooling, dim 64, 20 recent items,
batch 1024 with 25 % replay, sampled softmax over up to 4096 candidates):

1. **tensors**: the model's sparse training step fed from NumPy arrays prepared in advance
   (same examples, same replay mix): the ceiling of the TensorFlow step itself;
2. **learner, in memory**: the same records, already fetched, through the learner (JSON decode,
   vocabulary, user histories, example building, steps): the ceiling without Kafka;
3. **from Kafka**: a real incremental ``TrainingRun`` following the topic (aiokafka fetches, the
   prep thread decodes and builds examples, the training thread trains), counted in events
   trained: from its first step until every event is read and every full mini-batch trained
   (the held-out share is read but not trained here: no publish decision comes).

Then, on the learner of (2), what each published version costs besides training: the candidate
(tables exported, the item-to-item neighbors from the counts), the version's training state
stored, and its serving artifact stored (both as ``runs`` stores them: written, fsynced,
sha256), against the serving artifact alone.

Prints events/s and the ratios to (1); writes ``benchmarks/results/trainer_throughput.json``.
Run: ``make bench-trainer`` (or ``.venv/bin/python benchmarks/trainer_throughput.py --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's own thread pools (one thread per core): the trainer alone on the machine, as a
# trainer pod is given its CPUs (the local stack gives each of its processes one thread).
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from streamrec_dev.evaluation.data import display_path  # noqa: E402
from streamrec_dev.servers import KafkaServer, free_port  # noqa: E402
from streamrec_dev.synthetic import DriftingClickstream  # noqa: E402
from streamrec_shared.artifacts import DirectoryArtifactStore  # noqa: E402
from streamrec_shared.kafka import ResilientProducer, build_producer, ensure_topics  # noqa: E402
from streamrec_shared.schemas.control import FollowStream, TrainRequested  # noqa: E402
from streamrec_shared.schemas.events import EventIn  # noqa: E402
from streamrec_shared.schemas.models import ItemPoolingHyperparameters  # noqa: E402
from streamrec_shared.settings import KafkaSettings, TopicSettings  # noqa: E402
from trainer.config import TrainerSettings, tune_process  # noqa: E402
from trainer.learner import Learner, Reservoir, _concat, decode_records  # noqa: E402
from trainer.metrics import TrainerMetrics  # noqa: E402
from trainer.model.item_pooling import (  # noqa: E402
    Batch,
    ItemPoolingModel,
    save_training_state,
)
from trainer.registry import Registry  # noqa: E402
from trainer.runs import RunServices, TrainingRun, register_run  # noqa: E402


def records(count: int) -> list[tuple[bytes, bytes]]:
    stream = DriftingClickstream(users=5000, initial_items=1500, launched_items=182, events=count)
    received = datetime.now(UTC)
    out = []
    for n, event in enumerate(stream):
        value = EventIn(
            user_id=event.user_id,
            item_id=event.item_id,
            type=event.type,  # type: ignore[arg-type]
            timestamp=datetime.fromtimestamp(event.timestamp, UTC),
        ).record_value(f"bench-{n}", received)
        out.append((event.user_id.encode(), value))
    return out


def from_tensors(hp: ItemPoolingHyperparameters, values: list[bytes]) -> dict[str, float]:
    """The TF step alone: examples prepared as arrays beforehand, same replay mix."""
    prepare = Learner(hp)
    decoded = decode_records(values)
    prepare.observe_many(decoded.users, decoded.items, decoded.weights, None, {0: len(values)})
    items = len(prepare.item_ids)
    examples = prepare.pending.arrays()
    history, target, weight = examples.history, examples.target, examples.weight
    model = ItemPoolingModel(hp)
    model.ensure_capacity(items)
    replay = Reservoir(hp.replay_buffer, hp.example_length, 0)
    fresh_per_step = round(hp.batch_size * (1 - hp.replay_fraction))
    warm = Batch(history[:fresh_per_step], target[:fresh_per_step], weight[:fresh_per_step])
    model.train(warm, items)  # trace the step outside the timing
    started = time.perf_counter()
    for start in range(0, len(target), fresh_per_step):
        fresh = Batch(
            history[start : start + fresh_per_step],
            target[start : start + fresh_per_step],
            weight[start : start + fresh_per_step],
        )
        model.train(_concat(fresh, replay.sample(hp.batch_size - len(fresh))), items)
        replay.add(fresh)
    elapsed = time.perf_counter() - started
    return {"events_per_s": len(target) / elapsed, "events": len(target), "seconds": elapsed}


def learner_in_memory(
    hp: ItemPoolingHyperparameters, values: list[bytes]
) -> tuple[dict[str, float], Learner]:
    learner = Learner(hp)
    learner.model.ensure_capacity(2048)
    warm = Learner(hp)  # trace TF's step once, outside the timing
    warm.model.train(Batch(np.full((8, hp.example_length), -1, np.int32),
                           np.zeros(8, np.int32), np.ones(8, np.float32)), 1)  # fmt: skip
    started = time.perf_counter()
    chunk = 16_384
    for begin in range(0, len(values), chunk):
        # What the run's prep thread does with a fetch, then what its training thread does.
        decoded = decode_records(values[begin : begin + chunk])
        learner.observe_many(
            decoded.users,
            decoded.items,
            decoded.weights,
            None,
            {0: min(begin + chunk, len(values))},
        )
        learner.train_pending()
    learner.train_pending(flush=True)
    elapsed = time.perf_counter() - started
    return {"events_per_s": learner.events_trained / elapsed, "seconds": elapsed}, learner


def publish_costs(learner: Learner, folder: Path, repeats: int = 10) -> dict[str, float]:
    """Median milliseconds over ``repeats`` of each part of a publish that is not training, on
    a learner that has seen the whole stream (its vocabulary, tables and item-pair counts)."""
    store = DirectoryArtifactStore(folder)

    def median_ms(action: Callable[[], object]) -> float:
        spent = []
        for _ in range(repeats):
            started = time.perf_counter()
            action()
            spent.append(time.perf_counter() - started)
        return float(np.median(spent)) * 1000

    def stored(key: str, build: Callable[[Path], None]) -> None:
        store.delete(store.write(key, build).uri)  # the run keeps only the newest few

    weights = learner.candidate()
    items = len(weights.item_ids)

    def store_training_state() -> None:  # gathered from the learner, then stored
        state = learner.training_state(items)
        stored("training/bench", lambda path: save_training_state(path, state))

    costs = {
        "candidate_ms": median_ms(learner.candidate),
        "training_state_ms": median_ms(store_training_state),
        "artifact_ms": median_ms(lambda: stored("models/bench", lambda p: weights.save(p, {}))),
        "training_state_mb": sum(a.nbytes for a in learner.training_state(items).values()) / 1e6,
        "items": float(items),
    }
    costs["state_vs_artifact"] = costs["training_state_ms"] / costs["artifact_ms"]
    return costs


async def from_kafka(
    kafka: KafkaSettings,
    topics: TopicSettings,
    home: Path,
    count: int,
    hp: ItemPoolingHyperparameters,
) -> dict[str, float]:
    settings = TrainerSettings(
        database_url=f"sqlite:///{home / 'registry.db'}",  # type: ignore[arg-type]
        artifacts_dir=home / "artifacts",
        kafka=kafka,
        topics=topics,
    )
    registry = Registry(settings.database_url.get_secret_value())
    registry.migrate()
    registry.create_spec("bench", "item_pooling", hp.model_dump())
    producer = ResilientProducer(kafka)
    await producer.start(wait_s=10)
    services = RunServices.build(
        settings, registry, producer, TrainerMetrics.on(CollectorRegistry())
    )
    request = TrainRequested.model_validate(
        {"spec_id": "bench", "spec": {"family": "item_pooling", "hyperparameters": hp.model_dump()},
         "mode": "incremental",
         "stream": FollowStream(topic=topics.events).model_dump(),
         # No publish during the measurement: this is the learning loop's own speed.
         "publish": {"every_s": 86_400, "every_events": 1_000_000_000}}
    )  # fmt: skip
    register_run(registry, request)
    run = TrainingRun(services, request)
    task = asyncio.create_task(run.run())
    fresh_per_step = round(hp.batch_size * (1 - hp.replay_fraction))
    first: tuple[float, int] | None = None
    try:
        # From the first trained step until every event is read and every full mini-batch of
        # them trained (the held-out share waits for a publish decision, which never comes here).
        while True:
            if task.done():
                raise RuntimeError(f"run ended early: {task.result()}")
            learner = run.learner
            if learner is not None:
                observed, trained = learner.events_observed, learner.events_trained
                if first is None and trained > 0:
                    first = (time.perf_counter(), trained)
                untrained = observed - trained - len(learner.heldout)
                if observed >= count and untrained < fresh_per_step:
                    break
            await asyncio.sleep(0.002)
        done = time.perf_counter()
        heldout = len(learner.heldout)
    finally:
        run.request_stop(final=False)
        await task
        await producer.stop()
        registry.close()
    assert first is not None
    seconds = done - first[0]
    return {"events_per_s": (trained - first[1]) / seconds,
            "seconds": seconds, "events_trained_at_end": trained,
            "heldout_at_end": heldout}  # fmt: skip


async def produce_all(
    kafka: KafkaSettings, topic: str, payloads: list[tuple[bytes, bytes]]
) -> None:
    producer = build_producer(kafka)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in payloads]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# The default spec, and a lighter one (half the width, half the history, bigger batches) that
# shows what the loop itself sustains when the TensorFlow step costs less.
SPECS = {
    "default": ItemPoolingHyperparameters(),
    "light": ItemPoolingHyperparameters(embedding_dim=32, history_length=10, batch_size=2048),
}


def measure_spec(
    name: str, hp: ItemPoolingHyperparameters, kafka: KafkaSettings, home: Path,
    payloads: list[tuple[bytes, bytes]], rounds: int,
) -> dict[str, Any]:  # fmt: skip
    """``rounds`` rounds of the three measurements, back to back: each is a few seconds, so one
    round is at the mercy of whatever else the machine does; a ratio is taken within a round
    (same moment, same conditions) and the median over rounds is the figure."""
    values = [v for _, v in payloads]
    topics = TopicSettings(events=f"bench-events-{name}")
    asyncio.run(ensure_topics(kafka, topics))
    asyncio.run(produce_all(kafka, topics.events, payloads))
    print(f"[{name}] produced {len(payloads):,} events to {topics.events}")
    measured: list[dict[str, Any]] = []
    for round_index in range(rounds):
        tensors = from_tensors(hp, values)
        memory, learner = learner_in_memory(hp, values)
        folder = home / f"{name}-{round_index}"
        folder.mkdir()
        publish = publish_costs(learner, folder / "store")
        del learner
        kafka_run = asyncio.run(from_kafka(kafka, topics, folder, len(payloads), hp))
        ratios = {
            "kafka_vs_tensors": kafka_run["events_per_s"] / tensors["events_per_s"],
            "kafka_vs_learner_in_memory": kafka_run["events_per_s"] / memory["events_per_s"],
            "learner_in_memory_vs_tensors": memory["events_per_s"] / tensors["events_per_s"],
        }
        print(
            f"[{name}] round {round_index + 1}: tensors {tensors['events_per_s']:,.0f},"
            f" learner in memory {memory['events_per_s']:,.0f},"
            f" from Kafka {kafka_run['events_per_s']:,.0f} events/s trained"
            f" (ratio to tensors {ratios['kafka_vs_tensors']:.2f});"
            f" per version: candidate {publish['candidate_ms']:.1f} ms, training state"
            f" {publish['training_state_ms']:.1f} ms ({publish['training_state_mb']:.1f} MB),"
            f" serving artifact {publish['artifact_ms']:.1f} ms"
        )
        measured.append(
            {"tensors": tensors, "learner_in_memory": memory, "from_kafka": kafka_run,
             "ratios": ratios, "publish": publish}
        )  # fmt: skip

    def median(part: str, key: str) -> float:
        return float(np.median([one[part][key] for one in measured]))

    summary = {
        "tensors_events_per_s": median("tensors", "events_per_s"),
        "learner_in_memory_events_per_s": median("learner_in_memory", "events_per_s"),
        "kafka_events_per_s": median("from_kafka", "events_per_s"),
        **{label: median("ratios", label) for label in measured[0]["ratios"]},
    }
    publish = {label: median("publish", label) for label in measured[0]["publish"]}
    print(
        f"[{name}] median of {rounds}: tensors {summary['tensors_events_per_s']:,.0f},"
        f" learner in memory {summary['learner_in_memory_events_per_s']:,.0f},"
        f" from Kafka {summary['kafka_events_per_s']:,.0f} events/s;"
        f" kafka_vs_tensors {summary['kafka_vs_tensors']:.2f},"
        f" kafka_vs_learner_in_memory {summary['kafka_vs_learner_in_memory']:.2f};"
        f" training state {publish['state_vs_artifact']:.2f}× the serving artifact"
    )
    return {
        "hyperparameters": hp.model_dump(),
        "median": {**summary, "publish": publish},
        "rounds": measured,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 200,000 since session 20 (300,000 before): the same ratios (default spec 0.84, light 0.64
    # against 0.80 / 0.65 at 300,000 in session 18), a minute less of `make bench`.
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--specs", nargs="+", choices=sorted(SPECS), default=list(SPECS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds per spec (median kept)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "trainer_throughput.json"
    )
    parser.add_argument(
        "--gil-switch-interval-ms",
        type=float,
        default=TrainerSettings.model_fields["gil_switch_interval_ms"].default,
        help="the trainer's STREAMREC_TRAINER_GIL_SWITCH_INTERVAL_MS (applied to all three)",
    )
    options = parser.parse_args()
    # As a trainer process does at start; the three measurements share it.
    tune_process(TrainerSettings(gil_switch_interval_ms=options.gil_switch_interval_ms))
    payloads = records(options.events)
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp:
        home = Path(tmp)
        kafka_server = KafkaServer(
            name="kafka", home=home / "kafka", port=free_port(), controller_port=free_port()
        )
        kafka_server.start(timeout=90)
        try:
            kafka = KafkaSettings(bootstrap_servers=kafka_server.bootstrap)
            specs = {
                name: measure_spec(name, SPECS[name], kafka, home, payloads, options.rounds)
                for name in options.specs
            }
        finally:
            kafka_server.stop()
    results = {
        "measured_at": datetime.now(UTC).isoformat(),
        "events": len(payloads),
        "specs": specs,
        "gil_switch_interval_ms": options.gil_switch_interval_ms,
        "targets": {"kafka_events_per_s": 50_000, "kafka_vs_tensors": 0.7},
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {display_path(options.out)}")


if __name__ == "__main__":
    main()
