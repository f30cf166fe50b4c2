"""The served model: fetched, verified against the registry, warmed, swapped atomically.

Requests read ``ModelHolder.current`` once and keep that object for their whole life, so a swap
(replacing one reference) never changes a model under a request in flight: old requests finish
on the old version, new ones start on the new one, nothing blocks.

Artifacts come from the trainer's store when it is mounted here (``artifacts_dir``), else over
HTTP from the trainer (``/v1/specs/{id}/versions/{v}/files/{name}``) into a local cache. Either
way the files' digest must equal the one the registry recorded, or the version is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from streamrec_shared.artifacts import ArtifactError, DirectoryArtifactStore, directory_digest
from streamrec_shared.kafka import build_consumer, consume_forever, topic_partitions
from streamrec_shared.models.item_pooling import (
    ITEMS,
    MANIFEST,
    WEIGHTS,
    ItemPoolingScorer,
    load_weights,
    unit_length,
)
from streamrec_shared.schemas.control import ModelPublished, decode_control
from streamrec_shared.tasks import BackgroundTask

from inference.config import InferenceSettings

log = logging.getLogger(__name__)
ARTIFACT_FILES = (MANIFEST, ITEMS, WEIGHTS)
CACHED_VERSIONS = 3


class UserScores(NamedTuple):
    scores: npt.NDArray[np.float32]  # over the catalogue
    vector: npt.NDArray[np.float32]  # the user's, in the model's output space
    rows: list[int]  # their known history rows, newest first (for the item-to-item term)


@dataclass(frozen=True)
class ServedModel:
    spec_id: str
    version: int
    digest: str
    scorer: ItemPoolingScorer
    # Unit-norm output embeddings, for similar items (computed once per version).
    normalized: npt.NDArray[np.float32]
    loaded_at: float
    # Row n: the pooling weights of a history of n known items (softmax over the first n
    # position logits, zeros after). They depend on n only, so they are computed once here.
    attention: npt.NDArray[np.float32] = field(init=False, repr=False, compare=False)
    # The scores of a user with no known history (the model's prior): the same for everyone.
    prior: npt.NDArray[np.float32] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weights = self.scorer.weights
        prior = weights.item_out @ weights.projection_bias + weights.item_bias
        object.__setattr__(self, "prior", prior.astype(np.float32))
        logits = weights.position_logits
        table = np.zeros((len(logits) + 1, len(logits)), dtype=np.float32)
        for n in range(1, len(logits) + 1):
            exp = np.exp(logits[:n] - logits[:n].max())
            table[n, :n] = exp / exp.sum()
        object.__setattr__(self, "attention", table)

    @property
    def history_length(self) -> int:
        return self.scorer.weights.history_length

    def scores(self, recent: Sequence[str]) -> npt.NDArray[np.float32]:
        """One user's scores over the catalogue, from their recent items (newest first)."""
        return self.user_scores(recent).scores

    def user_scores(self, recent: Sequence[str]) -> UserScores:
        """One user's scores over the catalogue (a copy, for the caller to mask), their vector
        and known history rows (for items the version does not know), from their recent items
        (newest first).

        The same model as ``ItemPoolingScorer.user_vectors`` + ``scores`` with the history
        (tested against them), specialised for one user: the batch form pads, masks and
        recomputes the softmax per call, a dozen NumPy calls that cost several times the two
        small matmuls left here.
        """
        weights = self.scorer.weights
        get = self.scorer.rows.get
        rows = [row for row in map(get, recent[: self.history_length]) if row is not None]
        if not rows:
            return UserScores(self.prior.copy(), weights.projection_bias, rows)
        pooled = self.attention[len(rows), : len(rows)] @ weights.item_in[rows]
        user = (pooled @ weights.projection + weights.projection_bias).astype(
            np.float32, copy=False
        )
        scores: npt.NDArray[np.float32] = (weights.item_out @ user + weights.item_bias).astype(
            np.float32, copy=False
        )
        self.scorer.add_neighbor_term(scores, rows)
        return UserScores(scores, user, rows)


def _prepare(folder: Path, spec_id: str, version: int, digest: str) -> ServedModel:
    """Load and warm (off the event loop): the first BLAS call of a new array is the slow one."""
    scorer = ItemPoolingScorer(load_weights(folder))
    normalized = unit_length(scorer.weights.item_out)
    served = ServedModel(spec_id, version, digest, scorer, normalized, time.time())
    served.scores(scorer.weights.item_ids[:1])
    return served


class ModelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.version = Gauge("inference_model_version", "Version being served.", registry=registry)
        self.swaps = Counter(
            "inference_model_swaps_total", "Versions swapped in.", registry=registry
        )
        self.refused = Counter(
            "inference_model_refused_total",
            "Versions refused (digest mismatch, missing files, bad record).",
            registry=registry,
        )
        self.load_seconds = Histogram(
            "inference_model_load_seconds",
            "Fetch + verify + load + warm time of a version.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=registry,
        )


class ModelHolder:
    """Owns the served version and the task that follows ``model_published``."""

    def __init__(
        self, settings: InferenceSettings, http: httpx.AsyncClient, metrics: ModelMetrics
    ) -> None:
        self.settings = settings
        self.http = http
        self.metrics = metrics
        self.current: ServedModel | None = None
        self._store = (
            DirectoryArtifactStore(settings.artifacts_dir) if settings.artifacts_dir else None
        )
        self._follower = BackgroundTask("model-follower", self._follow)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    # --- loading -------------------------------------------------------------------------

    async def _record(self, version: int | str) -> dict[str, Any] | None:
        """The registry's record of a version (``latest`` allowed); None when there is none."""
        url = f"/v1/specs/{self.settings.spec_id}/versions/{version}"
        response = await self.http.get(url)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        record: dict[str, Any] = response.json()
        return record

    async def _fetch(self, record: dict[str, Any]) -> Path:
        uri: str = record["artifact_uri"]
        digest: str = record["digest"]
        if self._store is not None:
            try:
                return await asyncio.to_thread(self._store.open, uri, digest)
            except ArtifactError as error:
                log.info("artifact not in the mounted store (%s); fetching over HTTP", error)
        cache = self.settings.artifact_cache_dir / self.settings.spec_id / digest
        if cache.is_dir() and await asyncio.to_thread(directory_digest, cache) == digest:
            return cache
        staging = self.settings.artifact_cache_dir / ".staging" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            base = f"/v1/specs/{record['spec_id']}/versions/{record['version']}/files"
            for name in ARTIFACT_FILES:
                response = await self.http.get(f"{base}/{name}")
                response.raise_for_status()
                (staging / name).write_bytes(response.content)
            actual = await asyncio.to_thread(directory_digest, staging)
            if actual != digest:
                raise ArtifactError(
                    f"downloaded files have digest {actual}, registry says {digest}"
                )
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(cache, ignore_errors=True)
            staging.rename(cache)
            self._prune_cache(keep=cache)
            return cache
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _prune_cache(self, keep: Path) -> None:
        """Keep the newest few downloaded versions: the cache is a bounded volume, and a pod
        that publishes every few seconds would otherwise fill it."""
        folders = sorted(
            (p for p in keep.parent.iterdir() if p.is_dir() and p != keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for stale in folders[CACHED_VERSIONS - 1 :]:
            shutil.rmtree(stale, ignore_errors=True)

    async def load(self, record: dict[str, Any]) -> bool:
        """Fetch, verify, warm and swap in ``record``'s version; False if refused."""
        version = int(record["version"])
        async with self._lock:  # one load at a time; a newer one waits, an older one is dropped
            if self.current is not None and self.current.version >= version:
                return False
            began = time.perf_counter()
            try:
                folder = await self._fetch(record)
                served = await asyncio.to_thread(
                    _prepare, folder, self.settings.spec_id, version, record["digest"]
                )
            except (ArtifactError, httpx.HTTPError, OSError, ValueError, KeyError) as error:
                self.metrics.refused.inc()
                log.error("version %s refused: %s", version, error)
                return False
            self.current = served  # the swap: one reference, atomic for every reader
            self.metrics.swaps.inc()
            self.metrics.version.set(version)
            self.metrics.load_seconds.observe(time.perf_counter() - began)
            log.info("serving %s v%d (%d items)", served.spec_id, version, served.scorer.item_count)
            return True

    async def _load_initial(self) -> None:
        """The pinned version, or the newest one; retried until the registry answers."""
        wanted: int | str = self.settings.model_version or "latest"
        delay = 0.5
        while True:
            try:
                record = await self._record(wanted)
                if record is not None:
                    await self.load(record)
                return
            except httpx.HTTPError as error:
                log.warning("registry unreachable (%s); retrying", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def on_published(self, message: ModelPublished) -> None:
        if message.spec_id != self.settings.spec_id:
            return
        if self.settings.model_version not in (None, message.version):
            return
        # Trust the registry, not the message: the record's digest is what gets verified.
        record = await self._record(message.version)
        if record is None or record["digest"] != message.digest:
            self.metrics.refused.inc()
            log.error("model_published v%d does not match the registry", message.version)
            return
        await self.load(record)

    # --- following the control topic ----------------------------------------------------

    async def _follow(self) -> None:
        """Every replica reads every announcement: a partition-assigned reader from the end,
        not a shared group. Versions published while it was away are covered by loading the
        registry's latest at start (and after every reconnect)."""
        settings = self.settings
        await consume_forever(
            "model follower",
            lambda: build_consumer(
                settings.kafka, group_id=f"streamrec-inference-follow-{uuid.uuid4().hex}"
            ),
            self._read_announcements,
        )

    async def _read_announcements(self, consumer: AIOKafkaConsumer) -> None:
        topic = self.settings.topics.control
        assigned = [
            TopicPartition(topic, p) for p in await topic_partitions(self.settings.kafka, topic)
        ]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve the position now, before loading the latest
            await consumer.position(tp)
        await self._load_initial()
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    with contextlib.suppress(ValueError):
                        message = decode_control(record.value)
                        if isinstance(message, ModelPublished):
                            await self.on_published(message)
