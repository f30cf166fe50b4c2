"""The learner's bookkeeping: histories, held-out sample, mini-batches, replay, snapshots."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from streamrec_shared.models.item_pooling import ItemPoolingScorer, ItemPoolingWeights
from streamrec_shared.ranking import rank_metrics, target_ranks
from streamrec_shared.schemas.events import Interaction
from streamrec_shared.schemas.models import ItemPoolingHyperparameters
from trainer.learner import Learner, Reading, Reservoir, decode_records
from trainer.model.item_pooling import Batch, load_training_state, save_training_state

LENGTH = 3
PAD = -1


def hyperparameters(**overrides: Any) -> ItemPoolingHyperparameters:
    fields: dict[str, Any] = {
        "embedding_dim": 4,
        "history_length": LENGTH,
        "batch_size": 16,
        "sampled_negatives": 64,  # more than any catalogue here: exact, deterministic softmax
        "initial_capacity": 16,
        "replay_buffer": 50,
        "replay_fraction": 0.25,
        **overrides,
    }
    return ItemPoolingHyperparameters(**fields)


def event(user: str, item: str, weight: float = 1.0) -> Interaction:
    return Interaction(user_id=user, item_id=item, weight=weight, timestamp="2026-06-01T00:00:00Z")


def feed(
    learner: Learner, events: list[tuple[str, str]], partition: int = 0, hold_out: bool = False
) -> None:
    """Observe ``(user, item)`` pairs at consecutive offsets of ``partition``."""
    start = learner.position.get(partition, 0)
    for offset, (user, item) in enumerate(events, start=start):
        learner.observe(event(user, item), partition, offset, hold_out=hold_out)


def stream(users: int, events: int, items: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [(f"u{rng.integers(users)}", f"i{rng.integers(items)}") for _ in range(events)]


@pytest.fixture
def learner() -> Learner:
    return Learner(hyperparameters())


# --- observing -----------------------------------------------------------------------------


def test_histories_are_newest_first_padded_and_truncated(learner: Learner) -> None:
    feed(learner, [("u", "a"), ("u", "b"), ("u", "c"), ("u", "d"), ("u", "e")])
    a, b, c, d, e = (learner.item_rows[item] for item in "abcde")
    assert (a, b, c, d, e) == (0, 1, 2, 3, 4)
    assert learner.pending.history == [
        [PAD, PAD, PAD],
        [a, PAD, PAD],
        [b, a, PAD],
        [c, b, a],
        [d, c, b],
    ]
    assert learner.pending.target == [a, b, c, d, e]
    assert list(learner.users["u"].recent) == [c, d, e]  # oldest first; the model reverses it


def test_users_have_their_own_histories(learner: Learner) -> None:
    feed(learner, [("u1", "a"), ("u2", "b"), ("u1", "c"), ("u2", "a")])
    assert learner.pending.history == [[PAD] * 3, [PAD] * 3, [0, PAD, PAD], [1, PAD, PAD]]
    assert learner.item_ids == ["a", "b", "c"]


def test_weights_positions_and_counters(learner: Learner) -> None:
    learner.observe(event("u", "a", 3.0), partition=2, offset=40)
    learner.observe(event("u", "b", 1.5), partition=0, offset=7)
    learner.skip(2, 41)
    learner.skip(5, 0)
    assert learner.pending.weight == [3.0, 1.5]
    assert learner.position == {2: 42, 0: 8, 5: 1}
    assert learner.events_observed == 2


def test_repeats_are_trained_but_never_held_out(learner: Learner) -> None:
    feed(learner, [("u", "a"), ("u", "b")])
    feed(learner, [("u", "a"), ("u", "c")], hold_out=True)
    assert learner.heldout.target == [learner.item_rows["c"]]
    assert learner.pending.target == [0, 1, 0]  # the repeat of "a" stays trainable
    assert learner.users["u"].seen == dict.fromkeys([0, 1, 2])  # a repeat is not re-added


def test_held_out_rows_keep_the_seen_set_of_their_time(learner: Learner) -> None:
    feed(learner, [("u", "a"), ("u", "b")])
    feed(learner, [("u", "c")], hold_out=True)
    feed(learner, [("u", "d")])
    feed(learner, [("u", "e")], hold_out=True)
    a, b, c, d, e = range(5)
    assert learner.heldout.target == [c, e]
    assert learner.heldout.history == [[b, a, PAD], [d, c, b]]
    assert learner.heldout.seen == [[a, b], [a, b, c, d]]
    assert learner.heldout.weight == [1.0, 1.0]
    # A held-out item enters the user's history like any other: the next example sees it.
    assert learner.pending.history[-1] == [c, b, a]


def test_a_mask_that_reaches_further_widens_the_examples() -> None:
    learner = Learner(hyperparameters(mask_history=True, mask_length=5))
    feed(learner, [("u", item) for item in "abcdefg"])
    a, b, c, d, e, f, g = range(7)
    # Each example carries the 5 newest items; the model pools the first 3 of them.
    assert learner.pending.history[-1] == [f, e, d, c, b]
    assert learner.pending.target[-1] == g
    assert list(learner.users["u"].recent) == [c, d, e, f, g]
    learner.train_pending(flush=True)
    assert learner.candidate().history_length == LENGTH
    # Without the mask, the reach is only what is pooled.
    plain = Learner(hyperparameters(mask_length=5))
    feed(plain, [("u", item) for item in "abcd"])
    assert plain.pending.history[-1] == [c, b, a]


def test_evaluate_pools_as_many_items_as_the_scorer_does() -> None:
    """Held-out examples that carry more items than the scorer pools (the mask's reach) are
    scored on the scorer's own newest items, as serving scores them."""
    learner = Learner(hyperparameters(mask_history=True, mask_length=5))
    feed(learner, stream(users=6, events=60, items=12, seed=1))
    learner.train_pending(flush=True)
    feed(learner, stream(users=6, events=30, items=12, seed=2), hold_out=True)
    scorer = ItemPoolingScorer(learner.candidate())
    held = learner.heldout
    history = np.asarray(held.history, dtype=np.int64)
    assert history.shape[1] == 5
    history = history[:, :LENGTH]
    ranks = target_ranks(
        scorer.scores(scorer.user_vectors(history), history),
        np.asarray(held.target),
        [np.asarray(rows, dtype=np.int64) for rows in held.seen],
    )
    assert learner.evaluate(scorer, limit=1000) == rank_metrics(ranks)


def test_seen_is_capped_and_forgets_the_oldest() -> None:
    learner = Learner(hyperparameters(), max_seen=2)
    feed(learner, [("u", "a"), ("u", "b"), ("u", "c")])
    assert list(learner.users["u"].seen) == [1, 2]
    feed(learner, [("u", "a")], hold_out=True)  # forgotten: no longer a repeat
    assert learner.heldout.target == [0]
    assert learner.heldout.seen == [[1, 2]]


# --- training ------------------------------------------------------------------------------


def record_steps(learner: Learner, monkeypatch: pytest.MonkeyPatch) -> list[Batch]:
    """Replace the model step with a recorder (the bookkeeping is what is tested here)."""
    steps: list[Batch] = []

    def train(batch: Batch, items: int) -> float:
        assert items == len(learner.item_ids)
        steps.append(batch)
        return 1.0 / len(steps)

    monkeypatch.setattr(learner.model, "train", train)
    return steps


def test_train_pending_consumes_only_full_batches(
    learner: Learner, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = record_steps(learner, monkeypatch)
    feed(learner, stream(users=5, events=30, items=10, seed=0))
    fresh_per_step = 12  # batch 16, a quarter of it from replay
    assert learner.train_pending() == 2
    assert len(learner.pending) == 30 - 2 * fresh_per_step
    assert learner.events_trained == 24
    assert [len(batch) for batch in steps] == [12, 16]  # no replay yet, then 12 + 4 replayed
    assert learner.last_loss == 0.5
    assert learner.train_pending() == 0
    assert learner.train_pending(flush=True) == 1
    assert len(steps[-1]) == 10  # the 6 left over plus the usual 4 from replay
    assert len(learner.pending) == 0
    assert learner.events_trained == 30
    assert learner.train_pending(flush=True) == 0


def test_steps_train_the_oldest_examples_first(
    learner: Learner, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = record_steps(learner, monkeypatch)
    feed(learner, [(f"u{index}", f"i{index}") for index in range(13)])
    learner.train_pending()
    assert steps[0].target.tolist() == list(range(12))
    assert steps[0].history.shape == (12, LENGTH)
    assert steps[0].history.dtype == np.int32
    assert learner.pending.target == [12]


def test_replayed_examples_were_trained_before(
    learner: Learner, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = record_steps(learner, monkeypatch)
    feed(learner, [(f"u{index}", f"i{index}") for index in range(36)])
    learner.train_pending()
    assert len(steps) == 3
    assert learner.replay.offered == 36
    for step, batch in enumerate(steps):
        replayed = batch.target[12:]
        assert set(replayed.tolist()) <= set(range(12 * step))


def test_replay_fraction_zero_never_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    learner = Learner(hyperparameters(replay_fraction=0.0))
    steps = record_steps(learner, monkeypatch)
    feed(learner, [(f"u{index}", f"i{index}") for index in range(20)])
    learner.train_pending(flush=True)
    assert [len(batch) for batch in steps] == [16, 4]


def test_train_epochs_passes_over_every_trained_example(
    learner: Learner, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed(learner, [(f"u{index}", f"i{index}") for index in range(30)])
    learner.train_pending(flush=True)
    steps = record_steps(learner, monkeypatch)
    learner.train_epochs(2, seed=0)
    assert [len(batch) for batch in steps] == [16, 14, 16, 14]
    for epoch in (steps[:2], steps[2:]):
        assert sorted(np.concatenate([b.target for b in epoch]).tolist()) == list(range(30))
    assert steps[0].target.tolist() != steps[2].target.tolist()  # reshuffled each epoch
    for batch in steps:  # examples stay whole: the history that led to each target
        np.testing.assert_array_equal(
            batch.history, np.full((len(batch), LENGTH), PAD, dtype=np.int32)
        )


def test_train_pending_grows_the_model_for_new_items(learner: Learner) -> None:
    feed(learner, [(f"u{index % 3}", f"i{index}") for index in range(40)])
    learner.train_pending(flush=True)
    assert learner.model.capacity >= 40
    assert learner.last_loss is not None
    assert np.isfinite(learner.last_loss)


def test_release_heldout_makes_it_training_data(
    learner: Learner, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = record_steps(learner, monkeypatch)
    feed(learner, [("u", "a")])
    feed(learner, [("u", "b"), ("u", "c")], hold_out=True)
    learner.release_heldout()
    assert len(learner.heldout) == 0
    assert learner.heldout.seen == []
    assert learner.pending.target == [0, 1, 2]
    assert learner.pending.history == [[PAD] * 3, [0, PAD, PAD], [1, 0, PAD]]
    learner.train_pending(flush=True)
    assert steps[0].target.tolist() == [0, 1, 2]


# --- the reservoir -------------------------------------------------------------------------


def numbered(start: int, count: int, length: int = 2) -> Batch:
    target = np.arange(start, start + count, dtype=np.int32)
    return Batch(
        history=np.repeat(target[:, None], length, axis=1),
        target=target,
        weight=np.ones(count, dtype=np.float32),
    )


def offer(reservoir: Reservoir, total: int, chunk: int) -> None:
    for start in range(0, total, chunk):
        reservoir.add(numbered(start, min(chunk, total - start)))


def test_reservoir_fills_in_order_then_stays_bounded() -> None:
    reservoir = Reservoir(capacity=10, length=2, seed=0)
    assert reservoir.sample(5) is None
    reservoir.add(numbered(0, 4))
    assert reservoir.size == 4
    assert reservoir.target[:4].tolist() == [0, 1, 2, 3]
    offer(reservoir, 0, 1)
    reservoir.add(numbered(4, 100))
    assert reservoir.size == 10
    assert reservoir.offered == 104
    # Rows stay whole: each kept history belongs to its target.
    np.testing.assert_array_equal(reservoir.history[:, 0], reservoir.target)


def test_reservoir_sample_draws_kept_examples() -> None:
    reservoir = Reservoir(capacity=8, length=2, seed=0)
    reservoir.add(numbered(0, 5))
    sample = reservoir.sample(50)
    assert sample is not None
    assert len(sample) == 50
    assert set(sample.target.tolist()) == {0, 1, 2, 3, 4}
    assert reservoir.sample(0) is None


def test_reservoir_of_capacity_zero_keeps_nothing() -> None:
    reservoir = Reservoir(capacity=0, length=2, seed=0)
    reservoir.add(numbered(0, 10))
    assert reservoir.size == 0
    assert reservoir.sample(3) is None


def test_reservoir_is_a_uniform_sample_of_everything_offered() -> None:
    trials, capacity, total = 400, 10, 100
    kept = np.zeros(total)
    for seed in range(trials):
        reservoir = Reservoir(capacity=capacity, length=2, seed=seed)
        offer(reservoir, total, chunk=7)  # chunks straddle the moment the reservoir fills
        assert reservoir.size == capacity
        assert len(set(reservoir.target.tolist())) == capacity
        kept[reservoir.target] += 1
    inclusion = kept / trials  # every example: capacity / total = 0.1
    by_decile = inclusion.reshape(10, 10).mean(axis=1)
    assert np.all(np.abs(by_decile - 0.1) < 0.03), by_decile
    assert inclusion[:capacity].mean() == pytest.approx(0.1, abs=0.03)  # the first fill too


# --- evaluating ----------------------------------------------------------------------------


def bias_only_weights(item_ids: list[str], bias: list[float]) -> ItemPoolingWeights:
    """A scorer that ranks every user's items by ``bias`` alone (item_out is zero)."""
    count, dim = len(item_ids), 2
    return ItemPoolingWeights(
        item_ids=item_ids,
        item_in=np.ones((count, dim), np.float32),
        item_out=np.zeros((count, dim), np.float32),
        item_bias=np.asarray(bias, np.float32),
        position_logits=np.zeros(LENGTH, np.float32),
        projection=np.eye(dim, dtype=np.float32),
        projection_bias=np.zeros(dim, np.float32),
    )


def test_evaluate_with_another_vocabulary_maps_items_by_id(learner: Learner) -> None:
    feed(learner, [("u1", "a"), ("u1", "b"), ("u2", "c")])
    feed(learner, [("u1", "c"), ("u2", "d"), ("u3", "a"), ("u2", "a")], hold_out=True)
    assert len(learner.heldout) == 4
    # The baseline knows "c", "a", "b", "x", "y" (other order, no "d", items the learner lacks)
    # and 20 low-scoring fillers, so that a miss (rank >= item count) is beyond both cutoffs.
    fillers = [f"f{index}" for index in range(20)]
    baseline = ItemPoolingScorer(
        bias_only_weights(
            ["c", "x", "a", "y", "b", *fillers], [5.0, 4.0, 3.0, 2.0, 1.0] + [-1.0] * 20
        )
    )
    metrics = learner.evaluate(baseline, limit=100)
    # u1 → c, seen {a, b}: c is the best item: rank 0.
    # u2 → d: unknown to the baseline: a miss.
    # u3 → a, nothing seen: c and x score higher: rank 2.
    # u2 → a, seen {c} (d is unknown): x scores higher: rank 1.
    ranks = [0.0, 2.0, 1.0]
    gains = [1 / np.log2(rank + 2) for rank in ranks]
    assert metrics == pytest.approx(
        {
            "events": 4.0,
            "hr@10": 3 / 4,
            "ndcg@10": sum(gains) / 4,
            "hr@20": 3 / 4,
            "ndcg@20": sum(gains) / 4,
        }
    )


def test_unknown_targets_are_misses_even_in_a_small_catalogue(learner: Learner) -> None:
    feed(learner, [("u", "unknown-to-baseline")], hold_out=True)
    baseline = ItemPoolingScorer(bias_only_weights(["a", "b", "c"], [3.0, 2.0, 1.0]))
    metrics = learner.evaluate(baseline, limit=10)
    assert metrics["events"] == 1.0
    assert metrics["hr@10"] == 0.0
    assert metrics["ndcg@10"] == 0.0


def test_evaluate_limit_takes_the_newest_held_out_events(learner: Learner) -> None:
    feed(learner, [("u1", "a"), ("u2", "b"), ("u3", "c")], hold_out=True)
    baseline = ItemPoolingScorer(bias_only_weights(["a", "b", "c"], [3.0, 2.0, 1.0]))
    assert learner.evaluate(baseline, limit=1)["ndcg@10"] == pytest.approx(1 / np.log2(4))
    assert learner.evaluate(baseline, limit=2)["events"] == 2.0
    assert learner.evaluate(baseline, limit=2)["ndcg@10"] == pytest.approx(
        (1 / np.log2(4) + 1 / np.log2(3)) / 2
    )


def test_evaluate_without_held_out_events(learner: Learner) -> None:
    feed(learner, [("u", "a")])
    metrics = learner.evaluate(ItemPoolingScorer(learner.candidate()), limit=10)
    assert metrics == rank_metrics(np.zeros(0))
    assert metrics["events"] == 0.0


def test_evaluate_the_candidate_like_a_serving_scorer(learner: Learner) -> None:
    feed(learner, stream(users=6, events=60, items=12, seed=1))
    learner.train_pending(flush=True)
    feed(learner, stream(users=6, events=30, items=12, seed=2), hold_out=True)
    scorer = ItemPoolingScorer(learner.candidate())
    assert scorer.weights.has_neighbors  # the item-to-item term is on by default
    held = learner.heldout
    history = np.asarray(held.history, dtype=np.int64)
    ranks = target_ranks(
        scorer.scores(scorer.user_vectors(history), history),
        np.asarray(held.target),
        [np.asarray(rows, dtype=np.int64) for rows in held.seen],
    )
    assert learner.evaluate(scorer, limit=1000) == rank_metrics(ranks)
    assert 0 < len(held) < 30  # some repeats were kept out of the sample


def test_evaluate_sees_histories_the_way_serving_does(learner: Learner) -> None:
    feed(learner, [("u", "b"), ("u", "a"), ("u", "c")])  # newest first: c, a, b
    feed(learner, [("u", "t1")], hold_out=True)
    dim = 2
    # Position 1 dominates the pooling. The baseline lacks "a": serving pools [c, b] and the
    # user looks like b (→ t1 first); a hole at position 1 would make them look like c (→ t2).
    weights = ItemPoolingWeights(
        item_ids=["b", "c", "t1", "t2"],
        item_in=np.array([[1, 0], [0, 1], [0, 0], [0, 0]], np.float32),
        item_out=np.array([[0, 0], [0, 0], [5, 0], [0, 5]], np.float32),
        item_bias=np.zeros(4, np.float32),
        position_logits=np.array([0.0, 10.0, -10.0], np.float32),
        projection=np.eye(dim, dtype=np.float32),
        projection_bias=np.zeros(dim, np.float32),
    )
    baseline = ItemPoolingScorer(weights)
    served = baseline.scores(baseline.user_vectors(baseline.history_rows([["c", "a", "b"]])))
    assert served[0, 2] > served[0, 3]  # how the baseline ranks this user in production
    assert learner.evaluate(baseline, limit=10)["ndcg@10"] == 1.0


# --- snapshots -----------------------------------------------------------------------------


def busy_learner(**overrides: Any) -> Learner:
    """A learner with some of everything: users, replay, pending and held-out examples."""
    learner = Learner(hyperparameters(**overrides), max_seen=5)
    feed(learner, stream(users=7, events=70, items=20, seed=3), partition=0)
    feed(learner, stream(users=7, events=20, items=20, seed=4), partition=3)
    learner.train_pending()
    feed(learner, stream(users=7, events=25, items=22, seed=5), partition=1, hold_out=True)
    feed(learner, stream(users=7, events=5, items=22, seed=6), partition=0)
    learner.skip(4, 9)
    assert len(learner.pending) > 0
    assert len(learner.heldout) > 0
    assert learner.replay.size == min(learner.events_trained, learner.hp.replay_buffer)
    return learner


def saved_and_loaded(original: Learner, folder: Path) -> tuple[Learner, dict[str, Any]]:
    original.save(folder, {"run_id": "run-1"})
    return Learner.load(folder, original.hp, max_seen=5)


def test_save_load_restores_every_piece_of_state(tmp_path: Path) -> None:
    original = busy_learner()
    loaded, meta = saved_and_loaded(original, tmp_path)

    assert meta["run_id"] == "run-1"
    assert loaded.item_ids == original.item_ids
    assert loaded.item_rows == original.item_rows
    assert loaded.users.keys() == original.users.keys()
    for user, state in original.users.items():
        assert list(loaded.users[user].recent) == list(state.recent)
        assert loaded.users[user].recent.maxlen == LENGTH
        assert list(loaded.users[user].seen) == list(state.seen)  # order: oldest dropped first
    for name in ("pending", "heldout"):
        for column in ("history", "target", "weight", "seen", "sources"):
            assert getattr(getattr(loaded, name), column) == getattr(
                getattr(original, name), column
            ), f"{name}.{column}"
    size = original.replay.size
    assert size > 0
    assert loaded.replay.offered == original.replay.offered
    assert loaded.replay.size == size
    for column in ("history", "target", "weight"):
        np.testing.assert_array_equal(
            getattr(loaded.replay, column)[:size], getattr(original.replay, column)[:size]
        )
    assert loaded.position == original.position == {0: 75, 3: 20, 1: 25, 4: 10}
    # The held-out events came from partition 1, offsets 0-24 (repeats are never held out).
    sources = original.heldout.sources
    assert len(sources) == len(original.heldout) > 0
    assert {partition for partition, _ in sources} == {1}
    assert [offset for _, offset in sources] == sorted({offset for _, offset in sources})
    assert loaded.events_observed == original.events_observed == 120
    assert loaded.events_trained == original.events_trained > 0
    assert loaded.model.steps == original.model.steps > 0

    candidate = ItemPoolingScorer(original.candidate())
    metrics = original.evaluate(candidate, 1000)
    assert metrics["events"] > 0
    assert loaded.evaluate(ItemPoolingScorer(loaded.candidate()), 1000) == metrics
    assert loaded.evaluate(candidate, 1000) == metrics


def test_load_continues_into_the_same_observations(tmp_path: Path) -> None:
    original = busy_learner()
    loaded, _ = saved_and_loaded(original, tmp_path)
    for learner in (original, loaded):
        feed(learner, [("u0", "i3"), ("new-user", "new-item")], partition=0, hold_out=True)
    assert loaded.heldout.history[-2:] == original.heldout.history[-2:]
    assert loaded.heldout.seen[-2:] == original.heldout.seen[-2:]
    assert loaded.item_rows["new-item"] == original.item_rows["new-item"]


def test_save_load_continues_training_exactly_without_replay(tmp_path: Path) -> None:
    original = busy_learner(replay_buffer=0)
    loaded, _ = saved_and_loaded(original, tmp_path)
    for learner in (original, loaded):
        feed(learner, stream(users=9, events=30, items=25, seed=7), partition=3)  # new items too
    assert loaded.train_pending(flush=True) == original.train_pending(flush=True) > 1
    assert loaded.last_loss == original.last_loss
    after, expected = loaded.candidate(), original.candidate()
    for name in ("item_in", "item_out", "item_bias", "position_logits", "projection"):
        np.testing.assert_array_equal(getattr(after, name), getattr(expected, name), name)


def test_save_load_continues_training_exactly_with_replay(tmp_path: Path) -> None:
    original = busy_learner()
    loaded, _ = saved_and_loaded(original, tmp_path)
    assert loaded.train_pending(flush=True) == original.train_pending(flush=True) > 0
    assert loaded.last_loss == original.last_loss


# --- warm start ----------------------------------------------------------------------------


def test_warm_start_with_the_training_state_takes_the_publishers_next_step(
    tmp_path: Path,
) -> None:
    """A version's weights + training state continue exactly where its learner was; its
    weights alone start with fresh optimizer slots, so the same step lands elsewhere."""
    published = busy_learner()
    published.train_pending(flush=True)
    weights = published.candidate()
    save_training_state(tmp_path, published.model.state(len(weights.item_ids)))

    continued = Learner(hyperparameters(seed=7))  # another init: all must come from the version
    continued.warm_start(weights, load_training_state(tmp_path))
    restarted = Learner(hyperparameters(seed=7))
    restarted.warm_start(weights)
    assert continued.item_ids == restarted.item_ids == published.item_ids

    items = len(weights.item_ids)
    rng = np.random.default_rng(12)
    history = rng.integers(-1, items, size=(16, LENGTH)).astype(np.int32)
    batch = Batch(history, rng.integers(0, items, 16).astype(np.int32), np.ones(16, np.float32))
    losses = [learner.model.train(batch, items) for learner in (published, continued, restarted)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    expected = published.model.state(items)
    for name, array in continued.model.state(items).items():
        np.testing.assert_allclose(array, expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
    fresh = restarted.model.state(items)
    assert not np.allclose(fresh["acc_in"], expected["acc_in"])
    assert not np.allclose(fresh["item_in"], expected["item_in"])


def test_release_heldout_keeps_the_newest_for_the_next_decision(
    learner: Learner, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = record_steps(learner, monkeypatch)
    feed(learner, [("u", "a")])
    feed(learner, [("u", "b"), ("v", "c"), ("u", "d")], hold_out=True)
    learner.release_heldout(keep=2)
    # The oldest held-out event is training data now; the two newest stay held out, with the
    # seen sets they were judged with.
    assert learner.heldout.target == [2, 3]
    assert learner.heldout.seen == [[], [0, 1]]
    assert learner.pending.target == [0, 1]
    learner.train_pending(flush=True)
    assert steps[0].target.tolist() == [0, 1]
    learner.release_heldout(keep=5)  # fewer than asked to keep: nothing released
    assert learner.heldout.target == [2, 3]
    assert len(learner.pending) == 0
    learner.release_heldout()
    assert len(learner.heldout) == 0
    assert learner.pending.target == [2, 3]


def test_warm_start_adopts_the_versions_sample_only_past_its_events(tmp_path: Path) -> None:
    """The held-out events of a version's last decision are below its ``trained_through`` but
    untrained: a run that starts past them trains (and counts) them from the training state."""
    published = Learner(hyperparameters())
    feed(published, [("u", "a"), ("u", "b")])
    feed(published, [("u", "c"), ("v", "a")], hold_out=True)
    published.train_pending(flush=True)
    weights = published.candidate()
    save_training_state(tmp_path, published.training_state(len(weights.item_ids)))
    state = load_training_state(tmp_path)

    continued = Learner(hyperparameters())
    continued.warm_start(weights, state)  # a run that starts past the version's events
    assert continued.pending.target == published.heldout.target == [2, 0]
    assert continued.pending.history == published.heldout.history
    # Counted too: the version counted a and b; adopting adds c (after b, a) and a (no pair).
    assert continued.cooccurrence is not None
    counts = continued.cooccurrence.state()
    np.testing.assert_array_equal(counts["cooccurrence.item_events"], [2, 1, 1])
    assert len(counts["cooccurrence.codes"]) == 6  # (a, b), (c, b), (c, a), both ways
    rereading = Learner(hyperparameters())  # a run that reads all of the version's events
    reading = Reading({}, unnamed=0)  # a follow from the earliest offsets
    assert rereading.warm_start(weights, state, dict(published.position), reading) == "all"
    assert len(rereading.pending) == 0
    assert rereading.cooccurrence is not None
    assert len(rereading.cooccurrence.state()["cooccurrence.item_events"]) == 0


def test_warm_start_fits_a_sample_of_another_reach_to_its_own(tmp_path: Path) -> None:
    """A version of a spec whose mask reached further (or less far) stores wider (or narrower)
    held-out histories: the run keeps the newest items that fit, or pads."""
    published = Learner(hyperparameters(mask_history=True, mask_length=5))
    feed(published, [("u", item) for item in "abcde"])
    feed(published, [("u", "f")], hold_out=True)
    published.train_pending(flush=True)
    weights = published.candidate()
    save_training_state(tmp_path, published.training_state(len(weights.item_ids)))
    state = load_training_state(tmp_path)
    a, b, c, d, e, f = range(6)
    assert published.heldout.history == [[e, d, c, b, a]]
    narrower = Learner(hyperparameters())
    narrower.warm_start(weights, state)
    assert narrower.pending.history == [[e, d, c]]
    wider = Learner(hyperparameters(mask_history=True, mask_length=7))
    wider.warm_start(weights, state)
    assert wider.pending.history == [[e, d, c, b, a, PAD, PAD]]
    assert wider.pending.target == narrower.pending.target == [f]
    wider.train_pending(flush=True)  # the adopted examples train at the run's width


def test_decoded_records_say_which_record_each_interaction_came_from() -> None:
    def value(type_: str, item: str) -> bytes:
        fields = {
            "type": type_,
            "user_id": "u",
            "item_id": item,
            "timestamp": "2026-06-01T00:00:00Z",
        }
        return orjson.dumps(fields)

    decoded = decode_records([value("click", "a"), b"not json", value("dislike", "b"),
                              value("purchase", "c")])  # fmt: skip
    assert decoded.items == ["a", "c"]
    assert decoded.indices == [0, 3]  # the garbage is rejected, the dislike is no interaction
    assert [index for index, _ in decoded.rejected] == [1]


def test_a_checkpoint_keeps_what_is_already_counted(tmp_path: Path) -> None:
    original = Learner(hyperparameters(cooccurrence_weight=2.0))
    original.counted_through = {0: 50, 3: 7}
    feed(original, [("u", "a"), ("u", "b")], partition=1)
    original.save(tmp_path, {})
    loaded, _ = Learner.load(tmp_path, original.hp)
    assert loaded.counted_through == {0: 50, 3: 7}
