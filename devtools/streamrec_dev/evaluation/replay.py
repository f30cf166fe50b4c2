"""The running stack as a ``Recommender``: the same protocol scores it as the in-process peers.

- ``fit_history``: the history goes through the real ingest path, ``POST /v1/events/batch``
  (≤ 1,000 events a request, retried with the same ``event_id``s, so a retry never duplicates),
  then the caller's ``ready`` hook runs with what was posted (counts, the highest Kafka offset per
  partition) and returns when the stack has learned the history: this is where an arm starts its
  training run and waits for the model it serves (``wait_for_new_model`` is a simple default).
- ``recommend``: ``GET /v1/recommendations?user_id=u&k=…&exclude_seen=true`` on inference. It
  asks for ``overfetch`` more than K: the protocol drops items the user touched (the service's
  seen set may lag the event just posted) and scores the first K that remain.
- ``observe``: ``POST /v1/events`` (``rating`` with its value for rating datasets, else
  ``click``; the event time from the file), paced at ``rate`` events/s when given; then the
  caller's ``observed`` hook runs with the number of events observed so far (where an arm
  retrains periodically, for instance).
- With ``features_metrics_url`` (the feature updater's ``/metrics``), a recommendation for a user
  waits until the updater has applied that user's last posted event: see ``_await_features``.

Ids can be namespaced (``id_prefix``) so several arms or runs share a stack without mixing users
and items; event ids carry a per-run id, since ingest deduplicates ids for 24 h.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from streamrec_dev.evaluation.data import Interaction

RETRY_STATUSES = {409, 429, 502, 503, 504}


class ReplayError(RuntimeError):
    """The stack refused or kept failing a request the replay cannot do without."""


@dataclass(frozen=True)
class HistoryPosted:
    run_id: str
    events: int
    seconds: float
    end_offsets: dict[int, int]  # partition -> highest stored offset + 1 (what to train through)
    last_timestamp: float | None


ReadyHook = Callable[[HistoryPosted], None]


@dataclass
class ReplayStats:
    posted: int = 0
    duplicates: int = 0
    retries: int = 0
    recommend_requests: int = 0
    recommend_failures: int = 0
    latencies_s: list[float] = field(default_factory=list)
    fallbacks: Counter[str] = field(default_factory=Counter)
    model_versions: Counter[str] = field(default_factory=Counter)
    history_s: float = 0.0
    ready_s: float = 0.0
    features_wait_s: float = 0.0  # waiting for the feature updater (see ``_await_features``)
    features_timeouts: int = 0

    def as_dict(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies_s) * 1000.0
        return {
            "posted": self.posted,
            "duplicates": self.duplicates,
            "retries": self.retries,
            "recommend_requests": self.recommend_requests,
            "recommend_failures": self.recommend_failures,
            "recommend_p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "recommend_p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
            "fallbacks": dict(self.fallbacks),
            "model_versions": dict(self.model_versions),
            "history_post_s": self.history_s,
            "ready_wait_s": self.ready_s,
            "features_wait_s": self.features_wait_s,
            "features_timeouts": self.features_timeouts,
        }


class HttpRecommender:
    """Prequential replay against a running stack over its public HTTP APIs."""

    def __init__(
        self,
        ingest_url: str,
        inference_url: str,
        *,
        ready: ReadyHook | None = None,
        observed: Callable[[int], None] | None = None,
        rate: float | None = None,
        batch_size: int = 1000,
        id_prefix: str = "",
        run_id: str | None = None,
        overfetch: int = 20,
        max_k: int = 100,
        timeout_s: float = 10.0,
        retries: int = 8,
        max_retry_wait_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        history_progress: Callable[[int], None] | None = None,
        features_metrics_url: str | None = None,
        features_wait_s: float = 5.0,
    ) -> None:
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be 1..1000 (ingest's limit)")
        self.ready = ready
        self.observed = observed
        self.interval = 1.0 / rate if rate else 0.0
        self.batch_size = batch_size
        self.prefix = id_prefix
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.overfetch = overfetch
        self.max_k = max_k
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self.history_progress = history_progress
        self.ingest = httpx.Client(base_url=ingest_url, timeout=timeout_s, transport=transport)
        self.inference = httpx.Client(
            base_url=inference_url, timeout=timeout_s, transport=transport
        )
        self.counters = ReplayStats()
        # The feature updater's /metrics, when the replay waits for it (``_await_features``).
        self.features = (
            httpx.Client(timeout=timeout_s, transport=transport) if features_metrics_url else None
        )
        self.features_metrics_url = features_metrics_url or ""
        self.features_wait_s = features_wait_s
        self.features_base = 0  # the updater's applied counter when the replay began
        self.features_applied = 0  # how many of the replay's events it has applied, last read
        self.last_posted: dict[str, int] = {}  # user -> 1-based count of events posted then
        self.sequence = 0  # stream position: part of each event_id
        self.evaluated = 0  # events posted by ``observe``
        self.next_at: float | None = None

    # --- the Recommender protocol ------------------------------------------------------

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        started = time.perf_counter()
        if self.features is not None:  # what the updater had applied before this replay
            self.features_base = self._read_applied()
        end_offsets: dict[int, int] = {}
        for begin in range(0, len(interactions), self.batch_size):
            chunk = interactions[begin : begin + self.batch_size]
            body = {"events": [self.event_body(row) for row in chunk]}
            results = self._send(self.ingest, "POST", "/v1/events/batch", json=body)["results"]
            for result in results:
                if result.get("status") == "duplicate":
                    self.counters.duplicates += 1
                if "partition" in result:
                    partition, offset = int(result["partition"]), int(result["offset"])
                    end_offsets[partition] = max(end_offsets.get(partition, 0), offset + 1)
            self.counters.posted += len(chunk)
            if self.history_progress:
                self.history_progress(len(chunk))
        self.counters.history_s = time.perf_counter() - started
        self._await_features(self.counters.posted, timeout_s=600.0)
        if self.ready:
            waited = time.perf_counter()
            self.ready(
                HistoryPosted(
                    run_id=self.run_id,
                    events=len(interactions),
                    seconds=self.counters.history_s,
                    end_offsets=end_offsets,
                    last_timestamp=interactions[-1].timestamp if interactions else None,
                )
            )
            self.counters.ready_s = time.perf_counter() - waited

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        self._await_features(self.last_posted.get(user, 0))
        params: dict[str, str | int] = {
            "user_id": self.prefix + user,
            "k": min(self.max_k, k + self.overfetch),
            "exclude_seen": "true",
        }
        self.counters.recommend_requests += 1
        started = time.perf_counter()
        try:
            answer = self._send(self.inference, "GET", "/v1/recommendations", params=params)
        except ReplayError:
            self.counters.recommend_failures += 1  # scored as a miss, like an empty list
            return []
        self.counters.latencies_s.append(time.perf_counter() - started)
        self.counters.fallbacks[str(answer.get("fallback"))] += 1
        self.counters.model_versions[str(answer.get("model_version"))] += 1
        cut = len(self.prefix)
        items = [str(entry["item_id"]) for entry in answer.get("items", [])]
        return [item[cut:] for item in items if item.startswith(self.prefix)]

    def observe(self, interaction: Interaction) -> None:
        if self.interval:
            now = time.monotonic()
            self.next_at = now if self.next_at is None else self.next_at + self.interval
            if self.next_at > now:
                time.sleep(self.next_at - now)
        answer = self._send(self.ingest, "POST", "/v1/events", json=self.event_body(interaction))
        if answer.get("status") == "duplicate":
            self.counters.duplicates += 1
        self.counters.posted += 1
        self.last_posted[interaction.user] = self.counters.posted
        self.evaluated += 1
        if self.observed:
            self.observed(self.evaluated)

    def _await_features(self, posted: int, timeout_s: float | None = None) -> None:
        """Until the feature updater has applied the first ``posted`` events (when it is watched).

        A person's next click comes seconds after the last one, long after its features are in
        Redis (p99 ~20 ms); a replay asks within a millisecond, and in MovieLens 90 % of
        consecutive interactions are the same user's. Without this barrier the replay would
        measure how far it outruns the updater, not what fresh features are worth.
        """
        if self.features is None or self.features_applied >= posted:
            return
        waited = time.perf_counter()
        deadline = time.monotonic() + (timeout_s or self.features_wait_s)
        while time.monotonic() < deadline:
            time.sleep(0.002)  # the updater needs a few milliseconds: don't ask at once
            self.features_applied = self._read_applied() - self.features_base
            if self.features_applied >= posted:
                break
        else:
            self.counters.features_timeouts += 1
        self.counters.features_wait_s += time.perf_counter() - waited

    def _read_applied(self) -> int:
        assert self.features is not None
        return read_features_applied(self.features, self.features_metrics_url)

    def stats(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "id_prefix": self.prefix, **self.counters.as_dict()}

    def close(self) -> None:
        self.ingest.close()
        self.inference.close()
        if self.features is not None:
            self.features.close()

    # --- HTTP ---------------------------------------------------------------------------

    def event_body(self, row: Interaction) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": f"{self.run_id}-{self.sequence}",
            "user_id": self.prefix + row.user,
            "item_id": self.prefix + row.item,
            "type": "click" if row.value is None else "rating",
            "timestamp": row.timestamp,
        }
        if row.value is not None:
            body["value"] = row.value
        self.sequence += 1
        return body

    def _send(self, client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
        """One request, retried on 409/429/5xx (Retry-After honoured) and transport errors."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.counters.retries += 1
            try:
                response = client.request(method, path, **kwargs)
            except httpx.TransportError as error:
                last = f"{type(error).__name__}: {error}"
                time.sleep(min(self.max_retry_wait_s, 0.1 * 2**attempt))
                continue
            if response.status_code < 300:
                return response.json()
            last = f"{response.status_code} {response.text[:300]}"
            if response.status_code not in RETRY_STATUSES:
                break
            wait = _retry_after(response.headers.get("retry-after"), 0.1 * 2**attempt)
            time.sleep(min(self.max_retry_wait_s, wait))
        raise ReplayError(f"{method} {client.base_url}{path}: {last}")


APPLIED_METRIC = "inference_feature_events_applied_total"
_APPLIED = re.compile(rf"^{APPLIED_METRIC} (\S+)$", re.MULTILINE)


def read_features_applied(client: httpx.Client, metrics_url: str) -> int:
    """The feature updater's applied-events counter (0 before its first batch).

    Only that counter is asked for (prometheus_client's ``name[]`` filter): rendering every
    metric for each poll cost the updater more CPU than applying the events.
    """
    text = client.get(metrics_url, params={"name[]": APPLIED_METRIC}).text
    match = _APPLIED.search(text)
    return int(float(match.group(1))) if match else 0


def _retry_after(header: str | None, default: float) -> float:
    try:
        return float(header) if header else default
    except ValueError:
        return default


def wait_for_new_model(
    inference_url: str,
    timeout_s: float = 600.0,
    poll_s: float = 1.0,
    transport: httpx.BaseTransport | None = None,
) -> ReadyHook:
    """A ready hook: wait until inference serves a model version other than the one it serves now.

    Call it *before* ``fit_history`` (it records the current version). Arms that need more (a
    batch run over exactly the history's offsets, a frozen version, ...) pass their own hook.
    """
    with httpx.Client(base_url=inference_url, timeout=10, transport=transport) as client:
        before = client.get("/v1/model").json().get("version")

    def hook(posted: HistoryPosted) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=inference_url, timeout=10, transport=transport) as client:
            while time.monotonic() < deadline:
                try:
                    version = client.get("/v1/model").json().get("version")
                except httpx.HTTPError:
                    version = before
                if version is not None and version != before:
                    return
                time.sleep(poll_s)
        raise ReplayError(
            f"no new model version within {timeout_s:.0f} s after posting {posted.events} events"
        )

    return hook
