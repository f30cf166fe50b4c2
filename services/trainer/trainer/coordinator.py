"""The control-topic loop: turns ``train_requested`` / ``stop_requested`` into runs.

The REST API never starts a run itself: it puts a ``train_requested`` on the control topic and
this loop acts on it, so a request from the API, from an operator's script or from another
service goes the same way, and the control topic is the log of every request ever made.
Messages are acted on at least once (offsets are committed after handling): a repeated request
is harmless because runs are idempotent by ``run_id`` and finished runs are never restarted.

At start-up, runs the registry shows as requested or running are resumed (from their
checkpoints), whether or not their control message is read again.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from streamrec_shared.kafka import build_consumer, consume_forever
from streamrec_shared.kafka import dead_letter as park
from streamrec_shared.schemas.control import (
    ControlDecodeError,
    StopRequested,
    TrainingFailed,
    TrainRequested,
    decode_control,
)
from streamrec_shared.tasks import BackgroundTask

from trainer.registry import InvalidTransition, RunConflict, RunStatus, UnknownSpec
from trainer.runs import RunServices, TrainingRun, register_run

log = logging.getLogger(__name__)
UNFINISHED = (RunStatus.REQUESTED, RunStatus.RUNNING)


class Coordinator:
    def __init__(self, services: RunServices) -> None:
        self.services = services
        self.runs: dict[str, TrainingRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._control_loop = BackgroundTask("control-loop", self._consume_forever)
        self.consumer_connected = False

    async def start(self) -> None:
        for record in await asyncio.to_thread(self.services.registry.runs_in_status, UNFINISHED):
            try:
                request = TrainRequested.model_validate(record.request)
            except ValueError:
                log.exception("run %s has an unreadable request; marking it failed", record.id)
                await asyncio.to_thread(
                    self.services.registry.finish_run,
                    record.id,
                    RunStatus.FAILED,
                    "unreadable request",
                )
                continue
            if request.runner == "service":
                self._launch(request)
        self._control_loop.start()

    async def stop(self) -> None:
        """Shutdown: runs checkpoint and stay resumable; nothing is marked stopped."""
        await self._control_loop.stop()
        for run in self.runs.values():
            run.request_stop(final=False)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=60)

    # --- the loop ------------------------------------------------------------------------

    async def _consume_forever(self) -> None:
        settings = self.services.settings
        await consume_forever(
            "control consumer",
            lambda: build_consumer(
                settings.kafka, settings.topics.control, group_id=settings.control_group
            ),
            self._consume,
        )

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer_connected = True
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=100)
                for records in batches.values():
                    for r in records:
                        await self._handle(r.topic, r.partition, r.offset, r.key, r.value)
                if batches:
                    await consumer.commit()
        finally:
            self.consumer_connected = False

    async def _handle(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        try:
            message = decode_control(value)
        except ControlDecodeError as error:
            log.warning("control %s/%d/%d dead-lettered: %s", topic, partition, offset, error)
            await park(
                self.services.producer,
                self.services.settings.topics.events_dlq,
                (topic, partition, offset),
                key,
                value,
                str(error),
            )
            self.services.metrics.dead_lettered.labels(topic).inc()
            return
        if isinstance(message, TrainRequested):
            if message.runner == "service":  # a job's run is its own process's
                await self.submit(message)
        elif isinstance(message, StopRequested):
            run = self.runs.get(message.run_id)
            if run is not None:
                run.request_stop(final=True)
        # Everything else (our own announcements, deployments, unknown types) is not ours.

    async def submit(self, request: TrainRequested) -> None:
        registry = self.services.registry
        try:
            record = await asyncio.to_thread(register_run, registry, request)
        except (UnknownSpec, RunConflict) as error:
            await self._refuse(request, str(error))
            return
        if record.status not in UNFINISHED or request.run_id in self.runs:
            return  # a repeat of a request already handled or in hand
        active = sum(1 for task in self._tasks.values() if not task.done())
        if active >= self.services.settings.max_active_runs:
            await asyncio.to_thread(
                registry.finish_run, request.run_id, RunStatus.FAILED, "too many active runs"
            )
            await self._refuse(request, "too many active runs")
            return
        self._launch(request)

    async def _refuse(self, request: TrainRequested, reason: str) -> None:
        log.warning("train request %s refused: %s", request.run_id, reason)
        message = TrainingFailed(run_id=request.run_id, spec_id=request.spec_id, error=reason)
        future = await self.services.producer.send(
            self.services.settings.topics.control, message.encode(), key=message.subject_key()
        )
        await future

    def _launch(self, request: TrainRequested) -> None:
        run = TrainingRun(self.services, request)
        self.runs[request.run_id] = run
        self.services.metrics.active_runs.inc()

        async def supervise() -> None:
            try:
                await run.run()
            except InvalidTransition:
                log.info("run %s had already finished", request.run_id)
            finally:
                self.services.metrics.active_runs.dec()
                self._tasks.pop(request.run_id, None)

        self._tasks[request.run_id] = asyncio.create_task(supervise(), name=f"run-{request.run_id}")

    def stop_run(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        if run is None:
            return False
        run.request_stop(final=True)
        return True
