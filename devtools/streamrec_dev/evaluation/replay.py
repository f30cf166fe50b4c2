"""The running stack over HTTP as a feed and a ranker: the same protocol scores it as the peers.

``HttpFeed`` is the write path, once per stream:
- ``fit_history``: the history goes through the real ingest path, ``POST /v1/events/batch``
  (≤ 1,000 events a request, retried with the same ``event_id``s, so a retry never duplicates),
  then the caller's ``ready`` hook runs with what was posted (counts, the highest Kafka offset per
  partition) and returns when the stack has learned the history: this is where an arm starts its
  training run and waits for the model it serves (``wait_for_new_model`` is a simple default).
- ``observe``: ``POST /v1/events`` (``rating`` with its value for rating datasets, else
  ``click``; the event time from the file), paced at ``rate`` events/s when given; then the
  caller's ``observed`` hook runs with the number of events observed so far (where an arm
  retrains periodically, for instance).
- ``wait_for_user``: with ``features`` (the feature updater's positions, ``AppliedPositions``),
  until the updater has applied that user's last posted event: see ``_await_features``.

``HttpRanker`` is one inference service: ``recommend`` is ``GET /v1/recommendations?user_id=u&
k=…&exclude_seen=true``. It asks for ``overfetch`` more than K: the protocol drops items the user
touched (the service's seen set may lag the event just posted) and scores the first K that
remain. Several rankers can share one feed (``protocol.evaluate_shared``); ``HttpRecommender``
is one feed and one ranker, a ``Recommender`` (``streamrec replay`` against ``make up``'s stack).

Ids can be namespaced (``id_prefix``) so several runs share a stack without mixing users and
items; event ids carry a per-run id, since ingest deduplicates ids for 24 h.
"""

from __future__ import annotations

import http.client
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np
import orjson
import redis
from inference.features import offsets_field, offsets_key

from streamrec_dev.evaluation.data import Interaction

RETRY_STATUSES = {409, 429, 502, 503, 504}
# How often the replay reads the feature updater's positions while it waits (one HGET a read).
FEATURES_POLL_S = 0.001


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


class Reply(Protocol):
    """What ``KeepAliveClient`` uses of ``http.client.HTTPResponse``."""

    status: int
    will_close: bool

    def read(self) -> bytes: ...

    def getheader(self, name: str) -> str | None: ...


class Connection(Protocol):
    """What ``KeepAliveClient`` uses of ``http.client.HTTPConnection`` (tests give a fake)."""

    def request(
        self, method: str, url: str, body: bytes | None = ..., headers: dict[str, str] = ...
    ) -> None: ...

    def getresponse(self) -> Reply: ...

    def close(self) -> None: ...


Connector = Callable[[str, int, float], Connection]  # host, port, timeout -> a connection


@dataclass(frozen=True)
class Request:
    """One request of the replay, as ``KeepAliveClient.send`` puts it on the wire (``path`` under
    the client's base URL, ``params`` as the query string, ``json`` as the body)."""

    method: str
    path: str
    params: dict[str, str | int] | None = None
    json: Any = None


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    retry_after: str | None

    def json(self) -> Any:
        return orjson.loads(self.body)


class KeepAliveClient:
    """One service over one HTTP/1.1 keep-alive connection (the standard library's
    ``http.client``), reopened after any error. The replay sends every request of the
    evaluation from one process that shares the two cores with the stack it measures: httpx
    cost ~430 µs of CPU per request here, ``http.client`` ~125 µs. One caller at a time: each
    feed and ranker has its own client."""

    def __init__(self, base_url: str, timeout_s: float, connect: Connector | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.path = parts.path.rstrip("/")
        self._address = (parts.hostname, parts.port or 80, timeout_s)
        self._connect: Connector = connect or (
            lambda host, port, timeout: http.client.HTTPConnection(host, port, timeout=timeout)
        )
        self._connection: Connection | None = None  # idle, kept alive
        self._sent: Connection | None = None  # waiting for the answer to ``send``

    def send(self, request: Request) -> None:
        """The request goes out; ``receive`` reads its answer (one at a time). Raises
        ``OSError`` or ``http.client.HTTPException`` when it could not be sent."""
        query = f"?{urlencode(request.params)}" if request.params else ""
        url = self.path + request.path + query
        body = None if request.json is None else orjson.dumps(request.json)
        headers = {} if body is None else {"content-type": "application/json"}
        connection = self._connection or self._connect(*self._address)
        self._connection = None
        try:
            connection.request(request.method, url, body=body, headers=headers)
        except (OSError, http.client.HTTPException):
            connection.close()
            raise
        self._sent = connection

    def receive(self) -> Answer:
        """The answer to what ``send`` sent. Raises ``OSError`` or
        ``http.client.HTTPException`` when none came."""
        connection, self._sent = self._sent, None
        if connection is None:
            raise RuntimeError("receive() without send()")
        try:
            response = connection.getresponse()
            answer = Answer(response.status, response.read(), response.getheader("retry-after"))
        except (OSError, http.client.HTTPException):
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            self._connection = connection
        return answer

    def fileno(self) -> int:
        """The socket the answer to ``send`` comes in on (readable once it has), or -1."""
        sock = getattr(self._sent, "sock", None)
        return sock.fileno() if sock is not None else -1

    def close(self) -> None:
        for connection in (self._connection, self._sent):
            if connection is not None:
                connection.close()
        self._connection = self._sent = None


class RetryingClient:
    """One service's client for the replay's own requests: retried on 409/429/5xx
    (Retry-After honoured) and on transport errors, and the retries are counted."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        retries: int,
        max_retry_wait_s: float,
        connect: Connector | None,
    ) -> None:
        self.client = KeepAliveClient(base_url, timeout_s, connect)
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self.retried = 0
        self._started: Request | None = None
        self._in_flight = False  # ``start``'s request went out

    def send(self, request: Request) -> Any:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            try:
                self.client.send(request)
                answer = self.client.receive()
            except (OSError, http.client.HTTPException) as error:
                last = f"{type(error).__name__}: {error}"
                time.sleep(min(self.max_retry_wait_s, 0.1 * 2**attempt))
                continue
            if answer.status < 300:
                return answer.json()
            last = f"{answer.status} {answer.body[:300].decode(errors='replace')}"
            if answer.status not in RETRY_STATUSES:
                break
            wait = _retry_after(answer.retry_after, 0.1 * 2**attempt)
            time.sleep(min(self.max_retry_wait_s, wait))
        raise ReplayError(f"{request.method} {self.client.base_url}{request.path}: {last}")

    def start(self, request: Request) -> None:
        """``send`` in two halves: the first attempt goes out now, ``finish`` returns its answer
        (or, when it failed, retries as ``send`` does; the failed attempt counts as a retry)."""
        self._started = request
        try:
            self.client.send(request)
            self._in_flight = True
        except (OSError, http.client.HTTPException):
            self._in_flight = False

    def fileno(self) -> int:
        """Readable once the answer to ``start`` is in; -1 when ``finish`` will not wait."""
        return self.client.fileno() if self._in_flight else -1

    def finish(self) -> Any:
        if self._started is None:
            raise RuntimeError("finish() without start()")
        request, self._started = self._started, None
        if self._in_flight:
            self._in_flight = False
            try:
                answer = self.client.receive()
                if answer.status < 300:
                    return answer.json()
            except (OSError, http.client.HTTPException):
                pass
        self.retried += 1
        return self.send(request)

    def close(self) -> None:
        self.client.close()


class PositionSource(Protocol):
    """How far a feature updater has applied the events topic."""

    def next_offset(self, partition: int) -> int:
        """The next offset it will apply on ``partition`` (0 before its first batch there)."""
        ...


class AppliedPositions:
    """A feature updater's positions, read where it keeps them: in Redis, written in the
    transaction that applies each batch (``inference.features.offsets_key``), so a position
    read means those events' features are readable. One HGET per read and nothing asked of the
    updater (polling its ``/metrics`` instead cost it a thread per poll, GIL included)."""

    def __init__(self, redis_url: str, key_prefix: str, topic: str, timeout_s: float = 10.0):
        self.client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s)
        self.key = offsets_key(key_prefix)
        self.topic = topic

    def next_offset(self, partition: int) -> int:
        value = self.client.hget(self.key, offsets_field(self.topic, partition))
        return int(value) if isinstance(value, bytes | str) else 0

    def close(self) -> None:
        self.client.close()


def await_positions(
    source: PositionSource,
    end_offsets: Mapping[int, int],
    timeout_s: float,
    poll_s: float,
    known: dict[int, int] | None = None,
) -> bool:
    """Until ``source`` has applied every partition up to its ``end_offsets`` (exclusive);
    False when ``timeout_s`` passes first. ``known`` (partition -> next offset, as last read) is
    trusted before any read, and kept up to date: positions only move forward."""
    known = {} if known is None else known
    deadline = time.monotonic() + timeout_s
    while not all(known.get(p, 0) >= end for p, end in end_offsets.items()):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)  # the updater needs a few milliseconds: don't ask at once
        for partition in end_offsets:
            known[partition] = source.next_offset(partition)
    return True


class HttpFeed:
    """The stream into a running stack: ingest, and the feature updater's barrier."""

    def __init__(
        self,
        ingest_url: str,
        *,
        ready: ReadyHook | None = None,
        observed: Callable[[int], None] | None = None,
        rate: float | None = None,
        batch_size: int = 1000,
        id_prefix: str = "",
        run_id: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 8,
        max_retry_wait_s: float = 5.0,
        connect: Connector | None = None,
        history_progress: Callable[[int], None] | None = None,
        features: PositionSource | None = None,
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
        self.history_progress = history_progress
        self.ingest = RetryingClient(
            ingest_url,
            timeout_s=timeout_s,
            retries=retries,
            max_retry_wait_s=max_retry_wait_s,
            connect=connect,
        )
        # The feature updater's positions, when the replay waits for it (``_await_features``);
        # the caller's to close.
        self.features = features
        self.features_timeout_s = features_wait_s  # per question
        self.features_next: dict[int, int] = {}  # partition -> its next offset, last read
        # user -> (partition, offset + 1) of their last event posted
        self.last_posted: dict[str, tuple[int, int]] = {}
        self.sequence = 0  # stream position: part of each event_id
        self.evaluated = 0  # events posted by ``observe``
        self.next_at: float | None = None
        self.posted = 0
        self.duplicates = 0
        self.history_s = 0.0
        self.ready_s = 0.0
        self.events_post_s = 0.0  # in ``observe``'s POSTs
        self.features_waited_s = 0.0  # waiting for the feature updater (``_await_features``)
        self.features_timeouts = 0

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        started = time.perf_counter()
        end_offsets: dict[int, int] = {}
        for begin in range(0, len(interactions), self.batch_size):
            chunk = interactions[begin : begin + self.batch_size]
            body = {"events": [self.event_body(row) for row in chunk]}
            results = self.ingest.send(Request("POST", "/v1/events/batch", json=body))["results"]
            for result in results:
                if result.get("status") == "duplicate":
                    self.duplicates += 1
                if "partition" in result:
                    partition, offset = int(result["partition"]), int(result["offset"])
                    end_offsets[partition] = max(end_offsets.get(partition, 0), offset + 1)
            self.posted += len(chunk)
            if self.history_progress:
                self.history_progress(len(chunk))
        self.history_s = time.perf_counter() - started
        self._await_features(end_offsets, timeout_s=600.0)
        if self.ready:
            waited = time.perf_counter()
            self.ready(
                HistoryPosted(
                    run_id=self.run_id,
                    events=len(interactions),
                    seconds=self.history_s,
                    end_offsets=end_offsets,
                    last_timestamp=interactions[-1].timestamp if interactions else None,
                )
            )
            self.ready_s = time.perf_counter() - waited

    def observe(self, interaction: Interaction) -> None:
        if self.interval:
            now = time.monotonic()
            self.next_at = now if self.next_at is None else self.next_at + self.interval
            if self.next_at > now:
                time.sleep(self.next_at - now)
        posting = time.perf_counter()
        answer = self.ingest.send(Request("POST", "/v1/events", json=self.event_body(interaction)))
        self.events_post_s += time.perf_counter() - posting
        if answer.get("status") == "duplicate":
            self.duplicates += 1
        self.posted += 1
        if answer.get("offset") is not None:  # a duplicate's first copy was posted before
            self.last_posted[interaction.user] = (
                int(answer["partition"]),
                int(answer["offset"]) + 1,
            )
        self.evaluated += 1
        if self.observed:
            self.observed(self.evaluated)

    def wait_for_user(self, user: str) -> None:
        """Until the feature updater has applied ``user``'s last posted event (when watched)."""
        position = self.last_posted.get(user)
        if position is not None:
            self._await_features(dict([position]))

    def _await_features(
        self, end_offsets: Mapping[int, int], timeout_s: float | None = None
    ) -> None:
        """Until the feature updater has applied every partition up to ``end_offsets``
        (exclusive), when it is watched.

        A person's next click comes seconds after the last one, long after its features are in
        Redis (p99 ~20 ms); a replay asks within a millisecond, and in MovieLens 90 % of
        consecutive interactions are the same user's. Without this barrier the replay would
        measure how far it outruns the updater, not what fresh features are worth.
        """
        if self.features is None:
            return
        waited = time.perf_counter()
        timeout_s = timeout_s or self.features_timeout_s
        known = self.features_next  # kept up to date by the wait
        if not await_positions(self.features, end_offsets, timeout_s, FEATURES_POLL_S, known):
            self.features_timeouts += 1
        self.features_waited_s += time.perf_counter() - waited

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

    def stats(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "id_prefix": self.prefix,
            "posted": self.posted,
            "duplicates": self.duplicates,
            "retries": self.ingest.retried,
            "history_post_s": self.history_s,
            "ready_wait_s": self.ready_s,
            "events_post_s": self.events_post_s,
            "features_wait_s": self.features_waited_s,
            "features_timeouts": self.features_timeouts,
        }

    def close(self) -> None:
        self.ingest.close()


@dataclass
class RankerStats:
    requests: int = 0
    failures: int = 0
    latencies_s: list[float] = field(default_factory=list)
    fallbacks: Counter[str] = field(default_factory=Counter)
    model_versions: Counter[str] = field(default_factory=Counter)
    # Per answer path (``fallback``), items answered that the protocol says the user already
    # touched: the service's seen set (its features) lacked them, and the protocol dropped them.
    touched_returned: Counter[str] = field(default_factory=Counter)


class HttpRanker:
    """One inference service's answers: ``GET /v1/recommendations``."""

    def __init__(
        self,
        inference_url: str,
        *,
        id_prefix: str = "",
        overfetch: int = 20,
        max_k: int = 100,
        timeout_s: float = 10.0,
        retries: int = 8,
        max_retry_wait_s: float = 5.0,
        connect: Connector | None = None,
    ) -> None:
        self.prefix = id_prefix
        self.overfetch = overfetch
        self.max_k = max_k
        self.inference = RetryingClient(
            inference_url,
            timeout_s=timeout_s,
            retries=retries,
            max_retry_wait_s=max_retry_wait_s,
            connect=connect,
        )
        self.counters = RankerStats()
        self._asked: tuple[set[str], float] | None = None

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        self.ask(user, k, exclude)
        return self.answer()

    def ask(self, user: str, k: int, exclude: set[str]) -> None:
        """The first half of ``recommend``: the question goes out, ``answer`` reads what came
        back. One thread asks every arm at once this way (``protocol.SplitRanker``)."""
        params: dict[str, str | int] = {
            "user_id": self.prefix + user,
            "k": min(self.max_k, k + self.overfetch),
            "exclude_seen": "true",
        }
        self._asked = (exclude, time.perf_counter())
        self.counters.requests += 1
        self.inference.start(Request("GET", "/v1/recommendations", params))

    def fileno(self) -> int:
        """Readable once the answer to ``ask`` is in; -1 when ``answer`` will not wait for it."""
        return self.inference.fileno()

    def answer(self) -> list[str]:
        if self._asked is None:
            raise RuntimeError("answer() without ask()")
        (exclude, started), self._asked = self._asked, None
        try:
            body = self.inference.finish()
        except ReplayError:
            self.counters.failures += 1  # scored as a miss, like an empty list
            return []
        self.counters.latencies_s.append(time.perf_counter() - started)
        path = str(body.get("fallback"))
        self.counters.fallbacks[path] += 1
        self.counters.model_versions[str(body.get("model_version"))] += 1
        cut = len(self.prefix)
        items = [str(entry["item_id"]) for entry in body.get("items", [])]
        ours = [item[cut:] for item in items if item.startswith(self.prefix)]
        touched = sum(item in exclude for item in ours)
        if touched:
            self.counters.touched_returned[path] += touched
        return ours

    def stats(self) -> dict[str, Any]:
        counters = self.counters
        latencies = np.asarray(counters.latencies_s) * 1000.0
        return {
            "recommend_requests": counters.requests,
            "recommend_failures": counters.failures,
            "recommend_retries": self.inference.retried,
            "recommend_p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "recommend_p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
            "fallbacks": dict(counters.fallbacks),
            "model_versions": dict(counters.model_versions),
            "touched_returned": dict(counters.touched_returned),
        }

    def close(self) -> None:
        self.inference.close()


class HttpRecommender:
    """One feed and one ranker: prequential replay against a running stack, a ``Recommender``."""

    def __init__(self, feed: HttpFeed, ranker: HttpRanker) -> None:
        self.feed = feed
        self.ranker = ranker

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        self.feed.fit_history(interactions)

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        self.feed.wait_for_user(user)
        return self.ranker.recommend(user, k, exclude)

    def observe(self, interaction: Interaction) -> None:
        self.feed.observe(interaction)

    def stats(self) -> dict[str, Any]:
        return {**self.feed.stats(), **self.ranker.stats()}

    def close(self) -> None:
        self.feed.close()
        self.ranker.close()


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
