"""The TensorFlow item-pooling model, at tiny sizes: learning, parity with NumPy, sparse steps."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tensorflow as tf
from streamrec_shared.models.item_pooling import ItemPoolingScorer
from streamrec_shared.schemas.models import ItemPoolingHyperparameters
from trainer.model.item_pooling import (
    ADAGRAD_INITIAL_ACCUMULATOR,
    TRAINING_STATE,
    Batch,
    ItemPoolingModel,
    load_training_state,
    save_training_state,
)

DIM = 8
LENGTH = 4
ITEMS = 12  # at most ``sampled_negatives`` (16): exact softmax, deterministic steps
IDS = [f"i{row}" for row in range(ITEMS)]


def hyperparameters(**overrides: Any) -> ItemPoolingHyperparameters:
    fields: dict[str, Any] = {
        "embedding_dim": DIM,
        "history_length": LENGTH,
        "batch_size": 16,
        "sampled_negatives": 16,
        "initial_capacity": 16,
        "learning_rate": 0.5,
        **overrides,
    }
    return ItemPoolingHyperparameters(**fields)


def model(**overrides: Any) -> ItemPoolingModel:
    return ItemPoolingModel(hyperparameters(**overrides))


def random_batch(rng: np.random.Generator, size: int, items: int = ITEMS) -> Batch:
    """Newest-first histories of 0..LENGTH items (-1 padded) and a random target each."""
    history = np.full((size, LENGTH), -1, dtype=np.int32)
    for row, length in enumerate(rng.integers(0, LENGTH + 1, size=size)):
        history[row, :length] = rng.integers(0, items, size=length)
    return Batch(
        history=history,
        target=rng.integers(0, items, size=size).astype(np.int32),
        weight=rng.uniform(0.5, 3.0, size=size).astype(np.float32),
    )


def successor_batch(rng: np.random.Generator, size: int) -> Batch:
    """Users whose newest item is k always pick (k + 1) mod ITEMS next."""
    batch = random_batch(rng, size)
    history = batch.history.copy()
    history[:, 0] = rng.integers(0, ITEMS, size=size)
    target = ((history[:, 0] + 1) % ITEMS).astype(np.int32)
    return Batch(history=history, target=target, weight=np.ones(size, dtype=np.float32))


def tf_scores(m: ItemPoolingModel, history: npt.NDArray[np.int32], items: int) -> np.ndarray:
    """Logits straight from the TF variables, the way the training step computes them."""
    embedded = tf.gather(m.item_in, np.maximum(history, 0))
    users = m._user_vectors(tf.constant(history), embedded)
    logits = tf.matmul(users, m.item_out[:items], transpose_b=True) + m.item_bias[:items]
    return logits.numpy()  # type: ignore[no-any-return]


def numpy_scores(m: ItemPoolingModel, history: npt.NDArray[np.int32], items: int) -> np.ndarray:
    scorer = ItemPoolingScorer(m.export(IDS[:items]))
    return scorer.scores(scorer.user_vectors(history.astype(np.int64)))


def test_training_learns_a_successor_pattern() -> None:
    m = model()
    rng = np.random.default_rng(1)
    first = m.train(successor_batch(rng, 64), ITEMS)
    assert first == pytest.approx(math.log(ITEMS), abs=0.1)  # small init: near uniform
    losses = [m.train(successor_batch(rng, 64), ITEMS) for _ in range(200)]
    assert np.mean(losses[-10:]) < 0.1 * math.log(ITEMS)
    assert m.steps == 201
    history = np.array([[k, -1, -1, -1] for k in range(ITEMS)], dtype=np.int32)
    predicted = numpy_scores(m, history, ITEMS).argmax(axis=1)
    assert predicted.tolist() == [(k + 1) % ITEMS for k in range(ITEMS)]


def test_tf_forward_pass_equals_the_numpy_scorer() -> None:
    m = model()
    rng = np.random.default_rng(2)
    for _ in range(5):
        m.train(random_batch(rng, 32), ITEMS)
    history = random_batch(rng, 20).history
    history[0] = -1  # no history at all
    history[1] = [3, -1, 5, -1]  # a hole in the middle
    expected = tf_scores(m, history, ITEMS)
    np.testing.assert_allclose(numpy_scores(m, history, ITEMS), expected, atol=1e-4)
    assert np.ptp(expected) > 1e-3  # trained: not all scores alike


def test_loss_is_the_weighted_mean_of_example_losses() -> None:
    batch = random_batch(np.random.default_rng(3), 6)
    zero_last = Batch(batch.history, batch.target, np.array([1, 2, 1, 1, 3, 0], np.float32))
    without_last = Batch(batch.history[:5], batch.target[:5], zero_last.weight[:5])
    # Same seed, same initial tables: the loss is computed before the update.
    assert model().train(zero_last, ITEMS) == pytest.approx(
        model().train(without_last, ITEMS), rel=1e-5
    )


def test_growth_keeps_rows_and_never_retraces() -> None:
    m = model()
    rng = np.random.default_rng(4)
    m.train(random_batch(rng, 16), ITEMS)
    before = {name: getattr(m, name).numpy() for name in ("item_in", "item_out", "item_bias")}
    accumulators = m.acc_in.numpy()

    m.ensure_capacity(16)  # fits: nothing happens
    assert m.capacity == 16
    m.ensure_capacity(17)
    assert m.capacity == 32  # doubled
    m.ensure_capacity(100)
    assert m.capacity == 100  # more than double: exactly what was asked
    for name, rows in before.items():
        grown = getattr(m, name).numpy()
        assert grown.shape[0] == 100
        np.testing.assert_array_equal(grown[:16], rows)
    np.testing.assert_array_equal(m.acc_in.numpy()[:16], accumulators)
    new_rows = m.item_in.numpy()[16:]
    assert 0.01 < new_rows.std() < 0.1  # random init, not zeros
    assert not np.array_equal(new_rows, m.item_out.numpy()[16:])
    np.testing.assert_array_equal(m.item_bias.numpy()[16:], 0.0)
    np.testing.assert_array_equal(m.acc_out.numpy()[16:], np.float32(ADAGRAD_INITIAL_ACCUMULATOR))

    for size, items in ((16, 17), (33, 60), (7, 100)):  # sampled negatives once items > 16
        loss = m.train(random_batch(rng, size, items), items)
        assert math.isfinite(loss)
    assert m._step.experimental_get_tracing_count() == 1


def test_a_step_only_touches_the_rows_it_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    items = 32
    m = model(initial_capacity=items)
    negatives = np.array([10, 11, 12, 4], dtype=np.int32)  # overlaps a target on purpose
    monkeypatch.setattr(m, "negatives", lambda count: negatives)
    history = np.array([[1, 2, -1, -1], [3, -1, -1, -1], [2, 1, 3, -1]], dtype=np.int32)
    batch = Batch(history, np.array([4, 5, 4], np.int32), np.ones(3, np.float32))
    tables = ("item_in", "item_out", "item_bias", "acc_in", "acc_out", "acc_bias")
    before = {name: getattr(m, name).numpy() for name in tables}
    m.train(batch, items)
    after = {name: getattr(m, name).numpy() for name in tables}

    used_in = {1, 2, 3}
    used_out = {4, 5, 10, 11, 12}
    for name in tables:
        used = used_in if name.endswith("_in") else used_out
        changed = {
            row for row in range(items) if not np.array_equal(before[name][row], after[name][row])
        }
        assert changed == used, name  # every used row moved, no other row did (row 0 included)


def test_l2_only_touches_the_rows_it_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    m = model(l2=0.1)
    monkeypatch.setattr(m, "negatives", lambda count: np.array([10, 11], np.int32))
    before = m.item_in.numpy()
    m.train(
        Batch(
            np.array([[1, 2, -1, -1]], np.int32), np.array([4], np.int32), np.ones(1, np.float32)
        ),
        ITEMS,
    )
    np.testing.assert_array_equal(m.item_in.numpy()[0], before[0])


def test_state_restore_continues_exactly() -> None:
    rng = np.random.default_rng(5)
    original = model()
    for _ in range(4):
        original.train(random_batch(rng, 16), ITEMS)
    state = original.state(ITEMS)
    assert set(state) == {
        "item_in", "item_out", "item_bias", "acc_in", "acc_out", "acc_bias",
        "dense_0", "dense_1", "dense_2", "dense_acc_0", "dense_acc_1", "dense_acc_2",
    }  # fmt: skip
    assert state["item_in"].shape == (ITEMS, DIM)
    restored = model(seed=99)  # other random init: everything must come from the state
    restored.restore(state)
    for name, array in restored.state(ITEMS).items():
        np.testing.assert_array_equal(array, state[name], err_msg=name)
    batch = random_batch(rng, 16)
    assert restored.train(batch, ITEMS) == original.train(batch, ITEMS)
    assert restored.train(batch, ITEMS) == original.train(batch, ITEMS)


def test_restore_grows_a_smaller_model() -> None:
    big = model(initial_capacity=40)
    big.train(random_batch(np.random.default_rng(6), 16, 40), 40)
    small = model()
    small.restore(big.state(40))
    assert small.capacity >= 40
    np.testing.assert_array_equal(small.item_out.numpy()[:40], big.item_out.numpy()[:40])


def test_state_restore_continues_exactly_with_sampled_negatives() -> None:
    items = 40
    rng = np.random.default_rng(7)
    original = model(initial_capacity=items)
    for _ in range(3):
        original.train(random_batch(rng, 16, items), items)
    restored = model(initial_capacity=items)
    restored.restore(original.state(items))
    # The sampler's state travels separately (the learner's checkpoint keeps it in its meta).
    restored.set_rng_state(original.rng_state())
    batch = random_batch(rng, 16, items)
    assert restored.train(batch, items) == original.train(batch, items)


def test_warm_start_reproduces_the_published_scores() -> None:
    rng = np.random.default_rng(8)
    published = model()
    for _ in range(5):
        published.train(random_batch(rng, 16), ITEMS)
    weights = published.export(IDS)
    fresh = model(seed=3, initial_capacity=16)
    fresh.warm_start(weights)
    history = random_batch(rng, 10).history
    np.testing.assert_allclose(
        numpy_scores(fresh, history, ITEMS), numpy_scores(published, history, ITEMS), atol=1e-6
    )
    np.testing.assert_allclose(
        tf_scores(fresh, history, ITEMS), tf_scores(published, history, ITEMS), atol=1e-6
    )
    # Fresh optimizer slots: the warm-started model did not inherit the accumulators.
    np.testing.assert_array_equal(fresh.acc_in.numpy(), np.float32(ADAGRAD_INITIAL_ACCUMULATOR))


def test_training_state_file_round_trip(tmp_path: Path) -> None:
    trained = model()
    trained.train(random_batch(np.random.default_rng(9), 16), ITEMS)
    state = trained.state(ITEMS)
    save_training_state(tmp_path, state)
    assert [p.name for p in tmp_path.iterdir()] == [TRAINING_STATE]
    loaded = load_training_state(tmp_path)  # allow_pickle=False: plain arrays only
    assert loaded.keys() == state.keys()
    for name, array in state.items():
        assert loaded[name].dtype == np.float32, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


@pytest.mark.parametrize("tied", [False, True], ids=["separate", "tied"])
def test_warm_start_with_the_training_state_continues_exactly(tied: bool) -> None:
    rng = np.random.default_rng(10)
    published = model(tie_embeddings=tied)
    for _ in range(5):
        published.train(random_batch(rng, 16), ITEMS)
    continued = model(tie_embeddings=tied, seed=3)
    continued.warm_start(published.export(IDS), published.state(ITEMS))
    np.testing.assert_array_equal(continued.acc_in.numpy()[:ITEMS], published.acc_in[:ITEMS])
    batch = random_batch(rng, 16)
    assert continued.train(batch, ITEMS) == published.train(batch, ITEMS)
    for name, array in continued.state(ITEMS).items():
        np.testing.assert_allclose(array, published.state(ITEMS)[name], rtol=1e-6, err_msg=name)


def test_warm_start_grows_capacity_for_a_large_vocabulary() -> None:
    weights = model(initial_capacity=40).export([f"i{row}" for row in range(40)])
    fresh = model()
    fresh.warm_start(weights)
    assert fresh.capacity >= 40
    np.testing.assert_array_equal(fresh.item_in.numpy()[:40], weights.item_in)


@pytest.mark.parametrize("change", [{"history_length": 5}, {"embedding_dim": 4}], ids=str)
def test_warm_start_rejects_another_shape(change: dict[str, int]) -> None:
    weights = model(**change).export(IDS)
    with pytest.raises(ValueError, match="different shape"):
        model().warm_start(weights)


def test_negatives_are_every_item_or_a_uniform_sample() -> None:
    m = model()
    np.testing.assert_array_equal(m.negatives(16), np.arange(16))
    sample = m.negatives(1000)
    assert sample.shape == (16,)
    assert sample.dtype == np.int32
    assert sample.min() >= 0
    assert sample.max() < 1000
    assert len(set(sample.tolist())) > 1


def test_export_never_returns_fewer_rows_than_item_ids() -> None:
    m = model()  # capacity 16
    ids = [f"i{row}" for row in range(20)]
    try:
        weights = m.export(ids)
    except ValueError:
        return
    assert weights.item_in.shape[0] == len(ids)


def test_tied_embeddings_are_one_table_through_training_growth_export_and_restore() -> None:
    rng = np.random.default_rng(11)
    tied = model(tie_embeddings=True, initial_capacity=16)
    assert tied.item_out is tied.item_in
    for _ in range(5):
        tied.train(random_batch(rng, 16, 12), 12)
    tied.ensure_capacity(40)  # one growth, not two: both roles see the same rows
    assert tied.capacity == tied.item_in.numpy().shape[0] == 40
    for _ in range(3):
        tied.train(random_batch(rng, 16, 40), 40)
    weights = tied.export([f"i{n}" for n in range(40)])
    np.testing.assert_array_equal(weights.item_in, weights.item_out)

    restored = model(tie_embeddings=True, initial_capacity=16)
    restored.restore(tied.state(40))
    restored.set_rng_state(tied.rng_state())
    batch = random_batch(rng, 16, 40)
    assert restored.train(batch, 40) == tied.train(batch, 40)
    np.testing.assert_array_equal(restored.item_out.numpy(), restored.item_in.numpy())
