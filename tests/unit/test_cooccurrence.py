"""The counted item-to-item term: pair counts, neighbor lists, and what the learner feeds them."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import math
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import pytest
from streamrec_shared.schemas.control import BoundedStream, FollowStream, OffsetRange
from trainer import cooccurrence
from trainer.cooccurrence import Cooccurrence
from trainer.learner import Learner
from trainer.runs import reading_of

from tests.unit.test_learner import feed, hyperparameters, stream

WINDOW = 2


def brute_force(
    events: list[tuple[str, str]], rows: dict[str, int], window: int
) -> dict[int, dict[int, float]]:
    """The cosine of every co-occurring pair, the evaluation peer's way: each event pairs with
    the user's ``window`` events before it (repeats included, the item itself not)."""
    pairs: dict[tuple[int, int], int] = defaultdict(int)
    events_of: dict[int, int] = defaultdict(int)
    recent: dict[str, deque[int]] = defaultdict(lambda: deque(maxlen=window))
    for user, item in events:
        row = rows[item]
        for other in recent[user]:
            if other != row:
                pairs[row, other] += 1
                pairs[other, row] += 1
        recent[user].append(row)
        events_of[row] += 1
    cosines: dict[int, dict[int, float]] = defaultdict(dict)
    for (a, b), count in pairs.items():
        cosines[a][b] = count / math.sqrt(events_of[a] * events_of[b])
    return cosines


def as_dict(
    indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray
) -> dict[int, dict[int, float]]:
    out: dict[int, dict[int, float]] = {}
    for a in range(len(indptr) - 1):
        start, end = indptr[a], indptr[a + 1]
        if end > start:
            out[a] = dict(zip(rows[start:end].tolist(), weights[start:end].tolist(), strict=True))
    return out


def learner_with(weight: float = 2.0, **overrides: object) -> Learner:
    return Learner(
        hyperparameters(
            cooccurrence_weight=weight,
            cooccurrence_window=WINDOW,
            **overrides,  # type: ignore[arg-type]
        )
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbors_are_the_cosines_of_a_brute_force_count(seed: int) -> None:
    learner = learner_with(cooccurrence_neighbors=1000)
    events = stream(users=6, events=300, items=12, seed=seed)
    # Observed in several fetches, so folding merges into an existing table.
    for start in range(0, len(events), 70):
        feed(learner, events[start : start + 70])
        learner.candidate()
    weights = learner.candidate()
    expected = brute_force(events, learner.item_rows, WINDOW)
    actual = as_dict(weights.neighbor_indptr, weights.neighbor_rows, weights.neighbor_weights)
    assert actual.keys() == expected.keys()
    for a, neighbors in expected.items():
        assert actual[a].keys() == neighbors.keys()
        for b, cosine in neighbors.items():
            assert actual[a][b] == pytest.approx(cosine, rel=1e-6)
    assert (weights.cooccurrence_weight, weights.cooccurrence_window) == (2.0, WINDOW)
    # The event counts behind the cosines travel too (items the version does not know use them).
    events_of = [sum(item == item_id for _, item in events) for item_id in learner.item_ids]
    np.testing.assert_array_equal(weights.item_events, events_of)


def test_each_row_keeps_its_strongest_neighbors() -> None:
    learner = learner_with(cooccurrence_neighbors=3)
    events = stream(users=5, events=400, items=10, seed=4)
    feed(learner, events)
    weights = learner.candidate()
    expected = brute_force(events, learner.item_rows, WINDOW)
    indptr = weights.neighbor_indptr
    assert len(indptr) == len(learner.item_ids) + 1
    for a in range(len(learner.item_ids)):
        kept = np.sort(weights.neighbor_weights[indptr[a] : indptr[a + 1]])[::-1]
        strongest = sorted(expected.get(a, {}).values(), reverse=True)[:3]
        np.testing.assert_allclose(kept, strongest, rtol=1e-6)
        assert np.all(np.diff(weights.neighbor_rows[indptr[a] : indptr[a + 1]]) > 0)


@pytest.mark.parametrize("padded_max_factor", [1_000_000, 0])  # padded rows, and one sort
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_keep_their_top_values_and_the_first_of_ties_at_the_cut(
    seed: int, padded_max_factor: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cooccurrence, "PADDED_MAX_FACTOR", padded_max_factor)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 30, size=40)
    lengths[:3] = [0, 5, 29]
    values = rng.integers(0, 6, size=int(lengths.sum())).astype(np.float64)  # many ties
    top = 5
    keep = cooccurrence.top_per_row(values, lengths, top)
    start = 0
    for length in lengths.tolist():
        row = values[start : start + length]
        # A stable sort by descending value: ties in row order.
        chosen = np.argsort(-row, kind="stable")[:top]
        expected = np.zeros(length, dtype=bool)
        expected[chosen] = True
        np.testing.assert_array_equal(keep[start : start + length], expected)
        start += length


def test_held_out_events_count_only_once_released() -> None:
    learner = learner_with()
    feed(learner, [("u", "a"), ("u", "b")])
    feed(learner, [("u", "c")], hold_out=True)
    weights = learner.candidate()
    rows = learner.item_rows
    neighbors = as_dict(weights.neighbor_indptr, weights.neighbor_rows, weights.neighbor_weights)
    assert rows["c"] not in neighbors  # the gate judges c: its pairs must not be counted yet
    learner.release_heldout()
    weights = learner.candidate()
    neighbors = as_dict(weights.neighbor_indptr, weights.neighbor_rows, weights.neighbor_weights)
    assert set(neighbors[rows["c"]]) == {rows["a"], rows["b"]}


def test_weight_zero_counts_nothing_and_publishes_no_term() -> None:
    learner = learner_with(weight=0.0)
    feed(learner, stream(users=3, events=50, items=5, seed=0))
    assert learner.cooccurrence is None
    assert not learner.candidate().has_neighbors


def test_save_load_keeps_the_counts(tmp_path: Path) -> None:
    original = learner_with()
    events = stream(users=4, events=120, items=8, seed=5)
    feed(original, events[:60])
    original.save(tmp_path, {})
    loaded, _ = Learner.load(tmp_path, original.hp)
    for learner in (original, loaded):
        feed(learner, events[60:])
    a, b = original.candidate(), loaded.candidate()
    for name in ("neighbor_indptr", "neighbor_rows", "neighbor_weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_rows_beyond_the_exported_items_are_left_out() -> None:
    counts = Cooccurrence(window=3, max_pairs=1000)
    history = np.array([[1, 0, -1], [2, 1, 0]], dtype=np.int32)
    counts.add(history, np.array([2, 3], dtype=np.int32))
    indptr, rows, _ = counts.neighbors(items=3, top=10)
    assert len(indptr) == 4
    assert set(rows.tolist()) <= {0, 1, 2}


def test_the_bound_halves_counts_keeping_the_cosines_of_the_pairs_it_keeps() -> None:
    events = stream(users=8, events=600, items=30, seed=6)
    unbounded, bounded = (
        learner_with(cooccurrence_neighbors=1000),
        learner_with(cooccurrence_neighbors=1000, cooccurrence_max_pairs=150),
    )
    for learner in (unbounded, bounded):
        feed(learner, events)
    full, kept = unbounded.candidate(), bounded.candidate()
    assert bounded.cooccurrence is not None
    assert unbounded.cooccurrence is not None
    assert len(bounded.cooccurrence.codes) <= 150 < len(unbounded.cooccurrence.codes)
    # Halved: only the bound lowers an item's event count.
    assert bounded.cooccurrence.item_events.sum() < unbounded.cooccurrence.item_events.sum()
    before = as_dict(full.neighbor_indptr, full.neighbor_rows, full.neighbor_weights)
    after = as_dict(kept.neighbor_indptr, kept.neighbor_rows, kept.neighbor_weights)
    assert after, "the bound kept nothing"
    for a, neighbors in after.items():
        for b, cosine in neighbors.items():
            assert cosine == pytest.approx(before[a][b], rel=1e-6)


def neighbor_lists(learner: Learner) -> dict[int, dict[int, float]]:
    weights = learner.candidate()
    return as_dict(weights.neighbor_indptr, weights.neighbor_rows, weights.neighbor_weights)


def counts_of(learner: Learner) -> dict[str, np.ndarray]:
    assert learner.cooccurrence is not None
    return learner.cooccurrence.state()


def learner_with_counts(events: list[tuple[str, str]]) -> Learner:
    learner = learner_with()
    feed(learner, events)
    return learner


def test_a_warm_start_continues_the_versions_counts() -> None:
    publisher = learner_with_counts(stream(users=5, events=120, items=10, seed=7))
    weights = publisher.candidate()
    state = publisher.training_state(len(weights.item_ids))
    follower = learner_with()
    follower.warm_start(weights, state)
    for name, array in counts_of(publisher).items():
        np.testing.assert_array_equal(counts_of(follower)[name], array)
    assert neighbor_lists(follower) == neighbor_lists(publisher)


def test_a_warm_start_that_reads_the_events_again_counts_them_once() -> None:
    events = stream(users=5, events=200, items=10, seed=8)
    publisher = learner_with_counts(events)
    weights = publisher.candidate()
    rereading = learner_with()
    state = publisher.training_state(len(weights.item_ids))
    assert (
        rereading.warm_start(weights, state, dict(publisher.position), reading_of(follow()))
        == "all"
    )
    feed(rereading, events)
    # Raw counts: doubling every count would leave the cosines as they are.
    for name, array in counts_of(publisher).items():
        np.testing.assert_array_equal(counts_of(rereading)[name], array)


def follow(start: str = "earliest", **offsets: int) -> FollowStream:
    return FollowStream(
        topic="events", start=start, offsets={int(p[1:]): o for p, o in offsets.items()}
    )


def batch(**starts: int) -> BoundedStream:
    return BoundedStream(
        topic="events",
        partitions={int(p[1:]): OffsetRange(start=s, end=s + 100) for p, s in starts.items()},
    )


@pytest.mark.parametrize(
    ("stream_read", "read", "unread"),
    [
        (follow(), [(0, 0), (5, 10**9)], []),
        (follow("latest"), [], [(0, 0), (1, 99)]),  # the events already in the topic
        (follow("latest", p1=50), [(1, 50), (1, 999)], [(1, 49), (0, 60)]),
        (follow(p0=40), [(0, 40), (2, 0)], [(0, 39)]),
        (batch(p0=40), [(0, 40), (0, 139)], [(0, 39), (0, 140), (1, 50)]),  # end exclusive
    ],
)
def test_a_run_knows_which_events_already_in_the_topic_it_reads(
    stream_read: BoundedStream | FollowStream,
    read: list[tuple[int, int]],
    unread: list[tuple[int, int]],
) -> None:
    reading = reading_of(stream_read)
    assert all(reading.reads(*event) for event in read)
    assert not any(reading.reads(*event) for event in unread)


@pytest.mark.parametrize(
    ("stream_read", "expected"),
    [
        (follow(), "all"),  # the evaluation's arm 5: a follow from the earliest offsets
        (follow(p0=0, p1=0), "all"),
        (batch(p0=0, p1=0), "all"),  # a retrain of the same range
        (follow("latest"), "none"),
        (follow(p0=40, p1=60), "none"),  # exactly where the version stopped
        (follow("latest", p0=90), "none"),
        (batch(p0=40, p1=60), "none"),
        (batch(p0=0), "part"),  # p0 again, but p1's counts would be lost by a recount
        (follow(p0=10), "part"),  # p0 from 10, p1 from the beginning
        (follow("latest", p1=59), "part"),  # one event of p1 again
        # Ranges that end before the version's offsets: the rest is not read again.
        (
            BoundedStream(
                topic="events",
                partitions={0: OffsetRange(start=0, end=20), 1: OffsetRange(start=0, end=60)},
            ),
            "part",
        ),
        (BoundedStream(topic="events", partitions={0: OffsetRange(start=20, end=20)}), "none"),
    ],
)
def test_a_warm_start_knows_how_much_of_the_versions_events_it_reads_again(
    stream_read: BoundedStream | FollowStream, expected: str
) -> None:
    # The version trained p0 through offset 40 and p1 through 60; p2 has nothing counted.
    trained_through = {0: 40, 1: 60, 2: 0}
    assert reading_of(stream_read).again(trained_through) == expected


def test_a_warm_start_that_reads_part_of_the_events_again_counts_them_once() -> None:
    # The version read p0 (200 events) and p1 (100); the new run reads p0 again from offset 120.
    p0, p1 = stream(users=6, events=200, items=12, seed=9), stream(6, 100, 12, seed=10)
    publisher = learner_with()
    feed(publisher, p0, partition=0)
    feed(publisher, p1, partition=1)
    weights = publisher.candidate()
    state = publisher.training_state(len(weights.item_ids))
    rereading = learner_with()
    reading = reading_of(follow(p0=120, p1=100))
    assert rereading.warm_start(weights, state, dict(publisher.position), reading) == "part"
    rereading.position[0] = 120
    feed(rereading, p0[120:], partition=0, hold_out=True)

    for name, array in counts_of(publisher).items():  # raw counts, exactly as they were
        np.testing.assert_array_equal(counts_of(rereading)[name], array)
    assert len(rereading.heldout) == 0  # the version trained them: no fair sample
    assert len(rereading.pending) == 80  # but they are trained again
    assert rereading.counted_through == {1: 100}  # p0 is past the version's counts now

    feed(rereading, [("u1", "i1"), ("u1", "i2")], partition=0)
    events = counts_of(rereading)["cooccurrence.item_events"]
    assert events.sum() == counts_of(publisher)["cooccurrence.item_events"].sum() + 2


@pytest.mark.parametrize("where", ["before", "inside", "after"])
def test_a_partial_reread_counts_the_versions_sample_and_trains_what_it_will_not_read(
    where: str,
) -> None:
    """The version's held-out sample (among offsets 100-119 of p0) is in no count and trained
    by no one. A run that reads p0 again from before, inside or after it (and p1 from where
    the version stopped) counts all of it at once, trains the sample events below where it
    starts at once, and leaves the rest to its reading."""
    events = stream(users=5, events=120, items=10, seed=11)
    publisher = learner_with()
    feed(publisher, events[:100])
    feed(publisher, events[100:], hold_out=True)
    feed(publisher, stream(users=5, events=10, items=10, seed=12), partition=1)
    weights = publisher.candidate()
    state = publisher.training_state(len(weights.item_ids))
    sample = publisher.heldout
    assert len(sample) > 1
    start = {"before": 90, "inside": sample.sources[len(sample) // 2][1], "after": 120}[where]
    unread = [index for index, (_, offset) in enumerate(sample.sources) if offset < start]
    targets, histories = sample.target, sample.history  # copies, before the release below
    rereading = learner_with()
    rereading.warm_start(weights, state, {0: 120, 1: 10}, reading_of(follow(p0=start, p1=10)))

    publisher.release_heldout()  # now the publisher's counts hold its sample too
    for name, array in counts_of(publisher).items():
        np.testing.assert_array_equal(counts_of(rereading)[name], array)
    assert rereading.pending.target == [targets[index] for index in unread]
    assert rereading.pending.history == [histories[index] for index in unread]
    assert len(unread) == {"before": 0, "inside": len(targets) // 2, "after": len(targets)}[where]


def test_a_partial_reread_leaves_a_sample_of_unknown_offsets_to_its_reading() -> None:
    """Versions published before session 13 stored no offsets with their sample."""
    publisher = learner_with()
    feed(publisher, stream(users=5, events=100, items=10, seed=11))
    feed(publisher, stream(users=5, events=20, items=10, seed=13), hold_out=True)
    weights = publisher.candidate()
    state = publisher.training_state(len(weights.item_ids))
    del state["heldout.source"]
    rereading = learner_with()
    assert rereading.warm_start(weights, state, {0: 120}, reading_of(follow(p0=110))) == "part"
    assert len(rereading.pending) == 0


def test_events_below_counted_through_need_their_source() -> None:
    learner = learner_with()
    learner.counted_through = {0: 5}
    with pytest.raises(ValueError, match="partition, offset"):
        learner.observe_many(["u"], ["i"], [1.0], None, {0: 1})
