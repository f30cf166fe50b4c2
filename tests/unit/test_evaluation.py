"""Evaluation suite (issue 5): readers, the prequential protocol, peers, replay adapter, report."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from streamrec_dev.evaluation.data import (
    Interaction,
    detect_format,
    load_dataset,
    read_csv,
    read_movielens_csv,
    read_movielens_udata,
    synthetic,
)
from streamrec_dev.evaluation.peers import (
    PEERS,
    ALSPeer,
    CooccurrencePeer,
    PopularityHistory,
    PopularityOnline,
    RiverMFPeer,
    top_k,
)
from streamrec_dev.evaluation.protocol import (
    EvaluationResult,
    ProtocolConfig,
    Recommender,
    SplitRanker,
    ask_at_once,
    clean_top_k,
    evaluate,
    evaluate_shared,
)
from streamrec_dev.evaluation.replay import (
    Answer,
    Connector,
    HistoryPosted,
    HttpFeed,
    HttpRanker,
    HttpRecommender,
    KeepAliveClient,
    Request,
)
from streamrec_dev.evaluation.report import write_report
from streamrec_dev.synthetic import DriftingClickstream


def rows(*triples: tuple[str, str, float]) -> list[Interaction]:
    return [Interaction(user, item, stamp) for user, item, stamp in triples]


# --- readers -----------------------------------------------------------------------------


def test_udata_is_sorted_by_time_stably(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t300\n2\t20\t3\t100\n3\t30\t4\t300\n1\t40\t1\t100\n\n")
    got = read_movielens_udata(path)
    # Ties (100, 300) keep file order.
    assert [(r.user, r.item, r.timestamp, r.value) for r in got] == [
        ("2", "20", 100.0, 3.0),
        ("1", "40", 100.0, 1.0),
        ("1", "10", 300.0, 5.0),
        ("3", "30", 300.0, 4.0),
    ]


def test_udata_rejects_short_lines(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\n")
    with pytest.raises(ValueError, match="4 tab-separated"):
        read_movielens_udata(path)


def test_movielens_ratings_csv(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759100\n")
    got = read_movielens_csv(path)
    assert [(r.item, r.value) for r in got] == [("1029", 3.0), ("31", 2.5)]
    assert detect_format(path) == "movielens-csv"
    loaded = load_dataset(str(path))
    assert loaded.name == tmp_path.name
    assert len(loaded.interactions) == 2


def test_generic_csv_with_named_columns_and_iso_times(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    path.write_text(
        "who;what;when;extra\n"
        "a;x;2024-01-01T00:00:10Z;1\n"
        "b;y;2024-01-01T00:00:00;2\n"
        "c;z;1704067205;3\n"
    )
    got = read_csv(path, user="who", item="what", timestamp="when", delimiter=";")
    assert [r.user for r in got] == ["b", "c", "a"]
    assert got[0].timestamp == 1704067200.0
    assert got[0].value is None
    with pytest.raises(ValueError, match="no column"):
        read_csv(path, user="user", item="what", timestamp="when", delimiter=";")
    loaded = load_dataset(
        str(path),
        "csv",
        user_column="who",
        item_column="what",
        timestamp_column="when",
        delimiter=";",
    )
    assert loaded.name == "clicks"
    assert loaded.users == 3


def test_ml_100k_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_DATASETS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ML-100K not found"):
        load_dataset("ml-100k")
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("1\t2\t3\t4\n")
    assert load_dataset("ml-100k").interactions == [Interaction("1", "2", 4.0, 3.0)]


def test_synthetic_dataset_is_deterministic_and_ordered() -> None:
    stream = DriftingClickstream(users=20, events=300, initial_items=50, launched_items=10)
    first, second = synthetic(stream), synthetic(stream)
    assert first.interactions == second.interactions
    stamps = [r.timestamp for r in first.interactions]
    assert stamps == sorted(stamps)
    assert len(stamps) == 300
    assert first.marks == {"taste shift": 0.5}
    assert all(r.value is None for r in first.interactions)


# --- protocol ----------------------------------------------------------------------------


class Scripted:
    """Returns scripted lists in order and records every call."""

    def __init__(self, answers: Sequence[list[str]]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[Any, ...]] = []

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        self.calls.append(("fit", len(interactions)))

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        self.calls.append(("recommend", user, k, frozenset(exclude)))
        return self.answers.pop(0)

    def observe(self, interaction: Interaction) -> None:
        self.calls.append(("observe", interaction.user, interaction.item))


def test_protocol_is_test_then_train_with_hand_computed_metrics() -> None:
    data = rows(
        ("u1", "a", 1),
        ("u1", "b", 2),
        ("u2", "a", 3),
        ("u3", "c", 4),
        # evaluated:
        ("u1", "c", 5),  # rank 0
        ("u1", "a", 6),  # repeat of a history item: observed, not scored
        ("u4", "d", 7),  # rank 3 (d is in position 3 after cleaning)
        ("u2", "e", 8),  # rank 15: hit at 20 only; e is new (unknown target)
    )
    filler = [f"f{n}" for n in range(30)]
    answers = [
        ["c", *filler],
        # a (touched by u4? no) duplicates and excluded items are dropped before scoring:
        ["x", "x", "y", "z", "d", *filler],
        [*filler[:15], "e", *filler[15:]],
    ]
    recommender = Scripted(answers)
    result = evaluate("scripted", recommender, data, dataset="tiny", config=ProtocolConfig())
    assert recommender.calls[0] == ("fit", 4)
    assert recommender.calls[1] == ("recommend", "u1", 20, frozenset({"a", "b"}))
    assert recommender.calls[2] == ("observe", "u1", "c")
    assert recommender.calls[3] == ("observe", "u1", "a")  # the repeat: no recommend first
    assert recommender.calls[4] == ("recommend", "u4", 20, frozenset())
    assert (result.history, result.evaluated, result.scored, result.repeats) == (4, 4, 3, 1)
    assert result.cold_scored == 1
    assert result.unknown_targets == 2
    m = result.metrics
    assert m["events"] == 3
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["hr@20"] == pytest.approx(1.0)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(17)) / 3)
    assert result.cold_metrics["hr@10"] == 1.0
    assert result.cold_metrics["events"] == 1
    assert result.warm_metrics["events"] == 2
    # u4 had touched nothing (hit); u1 two items (hit), u2 one (miss at 10): empty buckets left out
    by_touched = [(b.label, b.scored, b.metrics["hr@10"]) for b in result.by_touched]
    assert by_touched == [("0", 1, 1.0), ("1-4", 2, 0.5)]


def test_windows_split_the_evaluated_part_evenly() -> None:
    data = [Interaction(f"u{n}", f"i{n}", float(n)) for n in range(60)]
    # Evaluated: positions 30..59; recommend the target itself for even items only.

    class Oracle:
        def fit_history(self, interactions: Sequence[Interaction]) -> None:
            self.next = 30

        def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
            n = self.next
            return [f"i{n}"] if n % 2 == 0 or n >= 54 else []

        def observe(self, interaction: Interaction) -> None:
            self.next += 1

    result = evaluate("oracle", Oracle(), data, config=ProtocolConfig(windows=5))
    assert [(w.start, w.end) for w in result.windows] == [
        (30, 36),
        (36, 42),
        (42, 48),
        (48, 54),
        (54, 60),
    ]
    assert [w.metrics["hr@10"] for w in result.windows] == [0.5, 0.5, 0.5, 0.5, 1.0]
    assert result.windows[0].first_timestamp == 30.0
    assert result.windows[-1].last_timestamp == 59
    assert result.metrics["hr@10"] == pytest.approx(18 / 30)
    assert len(evaluate("oracle", Oracle(), data).windows) == 20  # 5 % windows by default


def test_protocol_config_is_checked() -> None:
    with pytest.raises(ValueError, match="cutoff"):
        ProtocolConfig(k=5)
    with pytest.raises(ValueError, match="history_fraction"):
        ProtocolConfig(history_fraction=1.0)


def test_clean_top_k() -> None:
    assert clean_top_k(["a", "b", "a", "c", "d"], {"b"}, 2) == ["a", "c"]


def test_result_round_trips_through_json() -> None:
    data = synthetic(DriftingClickstream(users=10, events=200, initial_items=30)).interactions
    result = evaluate("pop", PopularityOnline(), data, dataset="s")
    again = EvaluationResult.from_dict(orjson.loads(result.to_json()))
    assert again == result
    assert orjson.loads(result.to_json())["runtime_s"] == pytest.approx(result.runtime_s)


# --- one feed, several rankers ------------------------------------------------------------


class FanOut:
    """One stream into several in-process peers: the feed of arms that share it."""

    def __init__(self, *peers: Recommender) -> None:
        self.peers = peers
        self.calls: list[str] = []

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        self.calls.append("fit")
        for peer in self.peers:
            peer.fit_history(interactions)

    def observe(self, interaction: Interaction) -> None:
        self.calls.append("observe")
        for peer in self.peers:
            peer.observe(interaction)

    def stats(self) -> dict[str, Any]:
        return {"observed": self.calls.count("observe")}


def scored_figures(result: EvaluationResult) -> dict[str, Any]:
    """What the protocol scored: a result without its timings and ``extra``."""
    figures = result.to_dict()
    for key in ("fit_s", "evaluate_s", "recommend_s", "runtime_s", "extra"):
        del figures[key]
    return figures


@pytest.mark.parametrize("concurrent", [False, True])
def test_shared_protocol_scores_each_ranker_as_if_it_ran_alone(concurrent: bool) -> None:
    data = synthetic(DriftingClickstream(users=30, events=1500, initial_items=80)).interactions
    names = ("popularity-history", "popularity-online", "cooccurrence-last10")
    peers = {name: PEERS[name]() for name in names}
    feed = FanOut(*peers.values())
    asked: list[str] = []
    shared = evaluate_shared(
        feed, peers, data, dataset="s", before_asking=asked.append, concurrent=concurrent
    )
    assert [result.arm for result in shared] == list(names)
    for together in shared:
        alone = evaluate(together.arm, PEERS[together.arm](), data, dataset="s")
        assert scored_figures(together) == scored_figures(alone)
        assert together.extra == {"observed": 750}  # the feed's stats, in every result
    assert len({result.metrics["hr@10"] for result in shared}) == 3  # the arms do differ
    # The stream went in once; the hook ran with the user of each question (repeats are none).
    assert feed.calls == ["fit"] + ["observe"] * 750
    touched = {(row.user, row.item) for row in data[:750]}
    questions = []
    for row in data[750:]:
        if (row.user, row.item) not in touched:
            questions.append(row.user)
        touched.add((row.user, row.item))
    assert asked == questions


def test_evaluate_is_the_one_ranker_case_of_the_shared_protocol() -> None:
    data = synthetic(DriftingClickstream(users=30, events=1500, initial_items=80)).interactions
    peer = CooccurrencePeer()
    [shared] = evaluate_shared(peer, {"c": peer}, data, dataset="s")
    assert scored_figures(shared) == scored_figures(
        evaluate("c", CooccurrencePeer(), data, dataset="s")
    )


# --- peers -------------------------------------------------------------------------------


def test_top_k_orders_breaks_ties_by_row_and_skips_excluded() -> None:
    scores = np.array([1.0, 3.0, 3.0, 2.0, 5.0])
    assert top_k(scores, 3, np.array([4], dtype=np.int64)) == [1, 2, 3]
    assert top_k(scores, 10, np.array([0, 1, 2, 3, 4], dtype=np.int64)) == []
    assert scores[4] == 5.0  # not modified
    # Ties at the cut go to the lower rows, whatever k is.
    ties = np.array([1.0] * 50 + [2.0])
    assert top_k(ties, 3, np.array([], dtype=np.int64)) == [50, 0, 1]
    assert top_k(ties, 10, np.array([], dtype=np.int64))[:3] == [50, 0, 1]


def test_popularity_history_is_frozen_and_online_is_not() -> None:
    history = rows(("u1", "a", 1), ("u2", "a", 2), ("u1", "b", 3))
    frozen, online = PopularityHistory(), PopularityOnline()
    for peer in (frozen, online):
        peer.fit_history(history)
        assert peer.recommend("x", 5, set()) == ["a", "b"]
        for n in range(3):
            peer.observe(Interaction(f"v{n}", "c", 10 + n))
    assert frozen.recommend("x", 5, {"a"}) == ["b"]
    assert online.recommend("x", 5, {"a"}) == ["c", "b"]


def _matrix_factor_data() -> list[Interaction]:
    stream = DriftingClickstream(users=40, events=1200, initial_items=60, launched_items=10)
    return synthetic(stream).interactions


def test_als_frozen_serves_history_users_and_popularity_to_others() -> None:
    data = _matrix_factor_data()
    peer = ALSPeer(factors=8, iterations=5)
    peer.fit_history(data[:600])
    history_user = data[0].user
    known = peer.recommend(history_user, 10, set())
    assert len(known) == 10
    assert set(known) <= set(peer.catalogue.ids)
    assert peer.recommend("stranger", 3, set()) == peer.popular.recommend("stranger", 3, set())
    peer.observe(Interaction("stranger", data[0].item, 1e10))  # frozen: nothing changes
    assert peer.user_vector("stranger") is None


def test_als_fold_in_matches_implicit_and_updates_incrementally() -> None:
    from scipy.sparse import csr_matrix  # type: ignore[import-untyped]
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    data = _matrix_factor_data()
    peer = ALSPeer(fold_in=True, factors=8, iterations=5, alpha=3.0)
    peer.fit_history(data[:600])
    user = data[0].user
    before = peer.user_vector(user)
    assert before is not None
    # Two more interactions (one repeat, one new item) through observe: rank-one updates ...
    items = list(peer.catalogue.ids)
    peer.observe(Interaction(user, data[0].item, 1e10))
    peer.observe(Interaction(user, items[-1], 1e10 + 1))
    updated = peer.user_vector(user)
    assert updated is not None
    # ... equal to solving from scratch, and to implicit's own recalculate_user.
    counts = peer.user_items[user]
    np.testing.assert_allclose(updated, peer.solve(counts), rtol=1e-6, atol=1e-9)
    from implicit.cpu.als import AlternatingLeastSquares  # type: ignore[import-untyped]

    with threadpool_limits(1, "blas"):
        reference = AlternatingLeastSquares(factors=8, regularization=0.05, alpha=3.0)
    reference.item_factors = peer.item_factors.astype(np.float32)
    row = csr_matrix(
        (list(counts.values()), ([0] * len(counts), list(counts))),
        shape=(1, len(peer.catalogue)),
        dtype=np.float32,
    )
    np.testing.assert_allclose(reference.recalculate_user(0, row), updated, rtol=2e-3, atol=1e-4)
    # A user unknown to the history is served from their first interaction on.
    assert peer.user_vector("newcomer") is None
    peer.observe(Interaction("newcomer", items[0], 1e10 + 2))
    assert peer.user_vector("newcomer") is not None
    # An item that appeared after the history has no factors: ignored.
    peer.observe(Interaction("newcomer", "brand-new", 1e10 + 3))
    assert "brand-new" not in peer.catalogue.rows


def test_cooccurrence_counts_pairs_within_the_window() -> None:
    peer = CooccurrencePeer(window=2)
    peer.fit_history(rows(("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "d", 4)))
    # u1's window at "c" held a, b: pairs (a,b), (a,c), (b,c); the window is now b, c.
    rows_of = peer.catalogue.rows
    assert peer.pairs[rows_of["a"], rows_of["c"]] == 1
    assert peer.pairs[rows_of["c"], rows_of["b"]]
    peer.observe(Interaction("u3", "b", 5))
    # u3's recent = [b]: b co-occurs with a and c (counts 1 each), popularity breaks the tie:
    # b was seen twice, a/c once each -> a (earlier row) then c; d fills.
    assert peer.recommend("u3", 3, {"b"}) == ["a", "c", "d"]
    # No history: popularity.
    assert peer.recommend("nobody", 2, set())[0] == "b"
    cosine = CooccurrencePeer(window=2, normalize="cosine")
    cosine.fit_history(rows(("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3), ("u2", "c", 4)))
    assert cosine.recommend("u2", 1, {"a", "c"}) == ["b"]
    with pytest.raises(ValueError, match="normalize"):
        CooccurrencePeer(normalize="lift")


def test_river_mirror_ranks_like_predict_one() -> None:
    data = _matrix_factor_data()[:400]
    peer = RiverMFPeer(factors=4, negatives=2)
    peer.fit_history(data)
    user = data[-1].user
    scores = peer.scores(user)
    assert scores is not None
    direct = np.array([peer.model.predict_one(user, item) for item in peer.catalogue.ids])
    # predict_one adds the global mean and the user's bias: constants for one user.
    np.testing.assert_allclose(scores - scores.mean(), direct - direct.mean(), atol=1e-9)
    assert peer.scores("stranger") is None
    assert "stranger" not in peer.model.u_latents
    assert peer.recommend("stranger", 3, set()) == peer.popular.recommend("stranger", 3, set())


@pytest.mark.parametrize("name", list(PEERS))
def test_every_peer_runs_the_protocol_with_sane_figures(name: str) -> None:
    stream = DriftingClickstream(users=30, events=1500, initial_items=80, launched_items=20)
    data = synthetic(stream).interactions
    peer = PEERS[name]()
    assert isinstance(peer, Recommender)
    result = evaluate(name, peer, data, dataset="small")
    assert result.scored > 100
    for key in ("hr@10", "hr@20", "ndcg@10", "ndcg@20"):
        assert 0.0 <= result.metrics[key] <= 1.0
    assert result.metrics["hr@10"] <= result.metrics["hr@20"]
    assert result.metrics["ndcg@10"] <= result.metrics["hr@10"]


def test_online_learners_beat_frozen_popularity_on_the_drifting_stream() -> None:
    data = synthetic(DriftingClickstream(users=50, events=4000)).interactions
    frozen = evaluate("p", PopularityHistory(), data).metrics["hr@10"]
    assert evaluate("c", CooccurrencePeer(), data).metrics["hr@10"] > 3 * max(frozen, 0.01)


# --- replay over HTTP (a fake stack) -------------------------------------------------------


Handler = Callable[[httpx.Request], httpx.Response]


class FakeConnection:
    """An ``http.client.HTTPConnection`` whose requests a handler answers (as httpx objects, so
    that the fake services read like ``httpx.MockTransport`` handlers)."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler = handler
        self.origin = f"http://{host}" if port == 80 else f"http://{host}:{port}"
        self.response: httpx.Response | None = None

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: Any = None
    ) -> None:
        request = httpx.Request(method, self.origin + url, content=body, headers=headers)
        self.response = self.handler(request)

    def getresponse(self) -> FakeConnection:
        return self

    @property
    def status(self) -> int:
        assert self.response is not None
        return self.response.status_code

    will_close = False

    def read(self) -> bytes:
        assert self.response is not None
        return self.response.content

    def getheader(self, name: str) -> str | None:
        assert self.response is not None
        return self.response.headers.get(name)

    def close(self) -> None:
        pass


def mock_connector(handler: Handler) -> Connector:
    return lambda host, port, _timeout: FakeConnection(handler, host, port)


class FakeStack:
    """Ingest + inference answering a fake connection, backed by the online popularity peer."""

    def __init__(self, fail_first: int = 0, first_offset: int = 0) -> None:
        self.model = PopularityOnline()
        self.first_offset = first_offset  # where the events topic was when the replay began
        self.seen: dict[str, set[str]] = {}
        self.bodies: list[dict[str, Any]] = []
        self.batches: list[int] = []
        self.asked: list[str] = []  # the inference host of each recommendation request
        self.fail_first = fail_first

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.fail_first:
            self.fail_first -= 1
            return httpx.Response(503, headers={"retry-after": "0"}, json={"error": {}})
        if request.url.path == "/v1/events/batch":
            events = orjson.loads(request.content)["events"]
            self.batches.append(len(events))
            results = [self._store(event) for event in events]
            return httpx.Response(202, json={"results": results})
        if request.url.path == "/v1/events":
            return httpx.Response(202, json=self._store(orjson.loads(request.content)))
        if request.url.path == "/v1/recommendations":
            self.asked.append(request.url.host)
            user = request.url.params["user_id"]
            k = int(request.url.params["k"])
            items = self.model.recommend(user, k, self.seen.get(user, set()))
            return httpx.Response(
                200,
                json={
                    "items": [{"item_id": item, "score": 1.0} for item in items],
                    "fallback": "popularity",
                    "model_version": None,
                },
            )
        return httpx.Response(404)

    def _store(self, event: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(event)
        self.model.observe(Interaction(event["user_id"], event["item_id"], event["timestamp"]))
        self.seen.setdefault(event["user_id"], set()).add(event["item_id"])
        offset = self.first_offset + len(self.bodies) - 1
        return {"event_id": event["event_id"], "status": "stored", "partition": 0, "offset": offset}


def test_replay_adapter_scores_the_stack_like_the_same_model_in_process() -> None:
    data = synthetic(DriftingClickstream(users=30, events=2500, initial_items=80)).interactions
    stack = FakeStack(fail_first=1)
    ready: list[HistoryPosted] = []
    connect = mock_connector(stack.handler)
    remote = HttpRecommender(
        HttpFeed(
            "http://ingest", ready=ready.append, connect=connect, run_id="run1", max_retry_wait_s=0
        ),
        HttpRanker("http://inference", connect=connect, max_retry_wait_s=0),
    )
    over_http = evaluate("stack", remote, data)
    in_process = evaluate("peer", PopularityOnline(), data)
    assert over_http.metrics == in_process.metrics
    assert stack.batches == [1000, 250]  # history in batches of at most 1,000
    assert ready == [HistoryPosted("run1", 1250, ready[0].seconds, {0: 1250}, data[1249].timestamp)]
    assert len(stack.bodies) == 2500
    assert stack.bodies[0] == {
        "event_id": "run1-0",
        "user_id": data[0].user,
        "item_id": data[0].item,
        "type": "click",
        "timestamp": data[0].timestamp,
    }
    stats = over_http.extra
    assert stats["retries"] == 1
    assert stats["recommend_failures"] == 0
    assert stats["recommend_requests"] == over_http.scored
    assert stats["fallbacks"] == {"popularity": over_http.scored}


class LaggingUpdater(FakeStack):
    """A feature updater that applies one more event each time its position is read; the topic
    held 7 events of someone else's before the replay began (applied already)."""

    def __init__(self) -> None:
        super().__init__(first_offset=7)
        self.applied = 0  # of the replay's events
        self.lag_violations = 0
        self.polls = 0

    def next_offset(self, partition: int) -> int:
        assert partition == 0
        self.polls += 1
        self.applied = min(self.applied + 1, len(self.bodies))
        return self.first_offset + self.applied

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/recommendations":
            user = request.url.params["user_id"]
            posted = [i + 1 for i, body in enumerate(self.bodies) if body["user_id"] == user]
            last = max(posted, default=0)
            self.lag_violations += self.applied < last
        return super().handler(request)


# Two history events, then three to test-then-train on (two of user a in a row).
LAGGING = rows(("a", "1", 1), ("b", "2", 2), ("a", "3", 3), ("a", "4", 4), ("c", "5", 5))


def replay_lagging(watched: bool) -> tuple[LaggingUpdater, HttpRecommender]:
    stack = LaggingUpdater()
    connect = mock_connector(stack.handler)
    remote = HttpRecommender(
        HttpFeed("http://ingest", connect=connect, features=stack if watched else None),
        HttpRanker("http://inference", connect=connect),
    )
    remote.fit_history(LAGGING[:2])
    for row in LAGGING[2:]:
        remote.recommend(row.user, 10, set())
        remote.observe(row)
    return stack, remote


def test_replay_waits_for_the_feature_updater_before_asking_for_a_user() -> None:
    stack, remote = replay_lagging(watched=True)
    assert stack.lag_violations == 0
    stats = remote.stats()
    assert stats["features_timeouts"] == 0
    assert stats["features_wait_s"] > 0
    # Without the barrier the same replay asks before the updater caught up.
    unwatched, _ = replay_lagging(watched=False)
    assert unwatched.lag_violations > 0


def test_replay_adapter_prefixes_ids_and_posts_ratings() -> None:
    stack = FakeStack()
    connect = mock_connector(stack.handler)
    remote = HttpRecommender(
        HttpFeed("http://ingest", connect=connect, id_prefix="ml:", run_id="r"),
        HttpRanker("http://inference", connect=connect, id_prefix="ml:"),
    )
    remote.fit_history([Interaction("1", "10", 880000000.0, 4.0)])
    remote.observe(Interaction("2", "20", 880000001.0, 5.0))
    assert stack.bodies[1] == {
        "event_id": "r-1",
        "user_id": "ml:2",
        "item_id": "ml:20",
        "type": "rating",
        "value": 5.0,
        "timestamp": 880000001.0,
    }
    assert remote.recommend("3", 20, set()) == ["10", "20"]  # prefix stripped
    with pytest.raises(ValueError, match="batch_size"):
        HttpFeed("http://i", batch_size=1001)


def test_one_http_feed_posts_each_event_once_for_several_rankers() -> None:
    data = synthetic(DriftingClickstream(users=30, events=2500, initial_items=80)).interactions
    stack = FakeStack()
    connect = mock_connector(stack.handler)
    feed = HttpFeed("http://ingest", connect=connect, run_id="run1")
    rankers = {name: HttpRanker(f"http://{name}", connect=connect) for name in ("a", "b")}
    shared = evaluate_shared(feed, rankers, data, concurrent=True)
    assert len(stack.bodies) == 2500  # one POST per interaction, not one per arm
    assert sorted(stack.asked) == sorted(["a", "b"] * shared[0].scored)
    twin = FakeStack()  # the same service, replayed by one HttpRecommender
    twin_connect = mock_connector(twin.handler)
    one = HttpRecommender(
        HttpFeed("http://i", connect=twin_connect), HttpRanker("http://j", connect=twin_connect)
    )
    alone = evaluate("stack", one, data)
    for result in shared:
        assert result.metrics == alone.metrics
        assert result.extra["posted"] == 2500
        assert result.extra["run_id"] == "run1"
        assert result.extra["recommend_requests"] == result.scored


def test_a_shared_feed_waits_once_per_question_whatever_the_rankers() -> None:
    alone, _ = replay_lagging(watched=True)
    stack = LaggingUpdater()
    connect = mock_connector(stack.handler)
    feed = HttpFeed("http://ingest", connect=connect, features=stack)
    rankers = {name: HttpRanker(f"http://{name}", connect=connect) for name in "abc"}
    evaluate_shared(feed, rankers, LAGGING, before_asking=feed.wait_for_user, concurrent=True)
    assert stack.lag_violations == 0
    assert stack.polls == alone.polls  # the barrier's reads: as many as for one ranker
    assert feed.stats()["features_timeouts"] == 0


def test_ranker_counts_its_retries_and_the_touched_items_it_returned() -> None:
    stack = FakeStack(fail_first=1)
    stack.model.fit_history(rows(("u", "a", 1), ("v", "b", 2), ("v", "a", 3)))
    ranker = HttpRanker(
        "http://inference", connect=mock_connector(stack.handler), max_retry_wait_s=0.0
    )
    # The service has not seen x touch a; the protocol has: a is counted, and still returned
    # (the protocol drops it).
    assert ranker.recommend("x", 2, {"a"}) == ["a", "b"]
    stats = ranker.stats()
    assert stats["recommend_retries"] == 1
    assert stats["fallbacks"] == {"popularity": 1}
    assert stats["touched_returned"] == {"popularity": 1}


# --- report ------------------------------------------------------------------------------


def test_report_writes_table_json_and_plots(tmp_path: Path) -> None:
    dataset = synthetic(DriftingClickstream(users=20, events=600, initial_items=40))
    results = [
        evaluate(name, PEERS[name](), dataset.interactions, dataset="synthetic")
        for name in ("popularity-history", "cooccurrence-last10")
    ]
    folder = write_report(results, "synthetic", dataset.source, tmp_path / "out", marks={"x": 0.75})
    names = sorted(path.name for path in folder.iterdir())
    assert names == [
        "cooccurrence-last10.json",
        "final.png",
        "hr10_over_time.png",
        "popularity-history.json",
        "results.json",
        "results.md",
    ]
    table = (folder / "results.md").read_text()
    assert "| cooccurrence-last10 |" in table
    assert "HR@10" in table
    # The second table: one column per "items touched before" bucket, one row per arm.
    touched_rows = [line for line in table.splitlines() if line.startswith("| arm | ")]
    assert len(touched_rows) == 2
    buckets = results[0].by_touched
    assert touched_rows[1].count("|") == len(buckets) + 2
    hr_cells = [f"{b.metrics['hr@10']:.3f}" for b in results[1].by_touched]
    assert f"| cooccurrence-last10 | {' | '.join(hr_cells)} |" in table
    run = orjson.loads((folder / "results.json").read_bytes())
    assert [r["arm"] for r in run["results"]] == ["popularity-history", "cooccurrence-last10"]
    assert (folder / "final.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class SlowInference:
    """A real HTTP/1.1 server on loopback (the standard library's) that answers
    ``/v1/recommendations`` after ``delay_s`` with one item named after it; it drops the
    connection of the first ``drop_first`` requests without an answer."""

    def __init__(self, name: str, delay_s: float, drop_first: int = 0) -> None:
        import http.server
        import threading

        outer = self
        self.drop_first = drop_first

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # the standard library names it so
                if outer.drop_first:
                    outer.drop_first -= 1
                    self.close_connection = True
                    return
                time.sleep(delay_s)
                body = orjson.dumps({"items": [{"item_id": name}], "fallback": None})
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_asking_at_once_reads_each_answer_as_it_comes_in() -> None:
    servers = [
        SlowInference("slow", 0.3),
        SlowInference("slower", 0.3),
        SlowInference("fast", 0.0, drop_first=1),
    ]
    rankers = {server.url: HttpRanker(server.url, max_retry_wait_s=0.0) for server in servers}
    try:
        assert all(isinstance(ranker, SplitRanker) for ranker in rankers.values())
        started = time.perf_counter()
        answers = ask_at_once(rankers, "u", 10, set())
        elapsed = time.perf_counter() - started
        slow, slower, fast = (answers[server.url] for server in servers)
        assert (slow[0], slower[0], fast[0]) == (["slow"], ["slower"], ["fast"])
        # All asked before any answer is read: the round takes one slow answer's time, not two.
        assert min(slow[1], slower[1]) >= 0.3
        assert elapsed < 0.55
        # The fast answer (asked again after its dropped connection) was read as it came, not
        # after the slow ones asked before it.
        assert fast[1] < 0.2
        fast_stats = rankers[servers[2].url].stats()
        assert fast_stats["recommend_retries"] == 1
        assert fast_stats["recommend_failures"] == 0
        # Kept alive: a second round reuses the connections.
        assert ask_at_once(rankers, "u", 10, set())[servers[2].url][0] == ["fast"]
    finally:
        for ranker in rankers.values():
            ranker.close()
        for server in servers:
            server.close()


def test_keep_alive_client_reuses_its_connection_and_reopens_a_closed_one() -> None:
    """Against a real HTTP/1.1 server on loopback (the standard library's)."""
    import http.server
    import threading

    connections: list[object] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            connections.append(self.connection)

        def do_GET(self) -> None:  # the standard library names it so
            body = orjson.dumps({"path": self.path})
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            if self.path.endswith("/close"):
                self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = KeepAliveClient(f"http://127.0.0.1:{server.server_address[1]}/base", 5.0)

        def get(path: str, params: dict[str, str | int] | None = None) -> Answer:
            client.send(Request("GET", path, params))
            return client.receive()

        assert get("/a", {"x": 1, "name[]": "m"}).json() == {"path": "/base/a?x=1&name%5B%5D=m"}
        assert get("/b").status == 200
        assert len(connections) == 1  # kept alive
        assert get("/close").status == 200
        assert get("/c").json() == {"path": "/base/c"}
        assert len(connections) == 2  # the server closed the first: a new one
        client.close()
    finally:
        server.shutdown()
        server.server_close()
