"""Stream inference (Kafka-ML parity): requests on ``rec.requests``, answers on ``rec.responses``.

A request is JSON ``{"user_id": ..., "k": 10, "exclude_seen": true, "exclude": [], "tag": null}``;
the answer has the same key, the request's headers copied (so a caller can correlate with its
own ids), and the body of ``GET /v1/recommendations``. A request that does not validate gets an
answer with ``error`` instead of items: the caller learns why, nothing is dropped. Answers of
one fetch are produced together (one batch per partition) and offsets are committed after the
broker acknowledged them (at least once).
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from streamrec_shared.kafka import ResilientProducer, build_consumer, consume_forever
from streamrec_shared.schemas.errors import validation_details
from streamrec_shared.schemas.events import EntityId
from streamrec_shared.tasks import BackgroundTask

from inference.catalog import Tag
from inference.config import InferenceSettings
from inference.recommender import Recommender

log = logging.getLogger(__name__)


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: EntityId
    k: int = Field(default=10, ge=1, le=1000)
    exclude_seen: bool = True
    exclude: list[EntityId] = Field(default_factory=list, max_length=1000)
    tag: Tag | None = None


class StreamInference:
    def __init__(
        self, settings: InferenceSettings, recommender: Recommender, producer: ResilientProducer
    ) -> None:
        self.settings = settings
        self.recommender = recommender
        self.producer = producer
        self._loop = BackgroundTask("stream-inference", self._run_forever)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def answer(self, value: bytes | None) -> bytes:
        try:
            request = StreamRequest.model_validate_json(value or b"")
        except ValidationError as error:
            details = [d.model_dump() for d in validation_details(error)]
            return orjson.dumps({"error": {"code": "invalid_request", "details": details}})
        k = min(request.k, self.settings.max_k)
        result = await self.recommender.recommend(
            request.user_id, k, request.exclude_seen, request.exclude, request.tag
        )
        return orjson.dumps(
            {
                "user_id": request.user_id,
                "rec_id": result.rec_id,
                "spec_id": self.settings.spec_id,
                "model_version": result.model_version,
                "fallback": result.fallback,
                "items": [{"item_id": i, "score": s} for i, s in result.items],
            }
        )

    async def _run_forever(self) -> None:
        settings = self.settings
        await consume_forever(
            "stream inference",
            lambda: build_consumer(
                settings.kafka, settings.topics.rec_requests, group_id="streamrec-inference-stream"
            ),
            self._serve,
        )

    async def _serve(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            answers = [
                (r.key or b"", await self.answer(r.value), list(r.headers or ())) for r in records
            ]
            placed = await self.producer.send_many(self.settings.topics.rec_responses, answers)
            await asyncio.gather(*{id(f): f for f, _ in placed}.values())
            await consumer.commit()
