"""``python -m trainer.batch``: one batch run in this process, then exit (Kubernetes Jobs).

Trains the spec ``STREAMREC_TRAINER_BATCH_SPEC_ID`` (or ``--spec``) on the whole ``events``
topic as it is at start (a bounded, reproducible range), judges it against the current version,
publishes or records the rejection, and announces either on the control topic, exactly as a run
inside the trainer service would: it is the same ``TrainingRun``. The request is also put on
the control topic first, so the log of every run ever made stays complete; the service's
coordinator sees the run already exists in the registry and leaves it to this process.

Exit status: 0 succeeded (published or rejected by the gate), 1 failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from prometheus_client import CollectorRegistry
from streamrec_shared.kafka import ResilientProducer, partition_bounds
from streamrec_shared.observability import configure_logging
from streamrec_shared.schemas.control import (
    BoundedStream,
    OffsetRange,
    TrainingMode,
    TrainRequested,
)
from streamrec_shared.schemas.models import ModelSpec

from trainer.config import TrainerSettings, tune_process
from trainer.metrics import TrainerMetrics
from trainer.registry import Registry, RunStatus
from trainer.runs import RunServices, TrainingRun, register_run

log = logging.getLogger("trainer.batch")


async def run_batch(settings: TrainerSettings, spec_id: str, epochs: int) -> RunStatus:
    registry = Registry(settings.database_url.get_secret_value())
    await asyncio.to_thread(registry.migrate)
    producer = ResilientProducer(settings.kafka)
    await producer.start(wait_s=settings.kafka_connect_wait_s)
    try:
        record = await asyncio.to_thread(registry.get_spec, spec_id)
        if record is None:
            raise SystemExit(f"unknown spec {spec_id!r}: create it with POST /v1/specs first")
        spec = ModelSpec.model_validate(
            {"family": record.family, "hyperparameters": record.hyperparameters}
        )
        topic = settings.topics.events
        bounds = await partition_bounds(settings.kafka, topic)
        request = TrainRequested(
            spec_id=spec_id,
            spec=spec,
            mode=TrainingMode.BATCH,
            stream=BoundedStream(
                topic=topic,
                partitions={p: OffsetRange(start=b, end=e) for p, (b, e) in bounds.items()},
            ),
            epochs=epochs,
            runner="job",
        )
        # Registered before it is announced, so the service's coordinator leaves it to us.
        await asyncio.to_thread(register_run, registry, request)
        future = await producer.send(
            settings.topics.control, request.encode(), key=request.subject_key()
        )
        await future
        metrics = TrainerMetrics.on(CollectorRegistry())
        services = RunServices.build(settings, registry, producer, metrics)
        status = await TrainingRun(services, request).run()
        log.info("batch run %s finished: %s", request.run_id, status)
        return status or RunStatus.FAILED
    finally:
        await producer.stop()
        registry.close()


def main(argv: list[str] | None = None) -> int:
    settings = TrainerSettings()
    parser = argparse.ArgumentParser(prog="python -m trainer.batch", description=__doc__)
    parser.add_argument("--spec", default=settings.batch_spec_id, help="spec id to train")
    parser.add_argument("--epochs", type=int, default=settings.batch_epochs)
    args = parser.parse_args(argv)
    configure_logging(settings.log, "trainer-batch")
    tune_process(settings)
    status = asyncio.run(run_batch(settings, args.spec, args.epochs))
    return 0 if status is RunStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
