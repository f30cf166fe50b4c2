"""Items a version does not know yet, in process (``benchmarks.model_arms.NewItems``)."""

from __future__ import annotations

import numpy as np
import pytest
from streamrec_shared.models.item_pooling import ItemPoolingScorer

from benchmarks.model_arms import NewItems
from tests.unit.test_item_pooling_scorer import make_weights


@pytest.fixture
def scorer() -> ItemPoolingScorer:
    return ItemPoolingScorer(make_weights())  # knows a, b, c, d, e


def test_an_unknown_item_stands_where_its_users_came_from(scorer: ItemPoolingScorer) -> None:
    new_items = NewItems(window=2)
    new_items.observe("x", ["e", "a", "b"], scorer)  # window 2: a and b
    new_items.observe("x", ["a", "z"], scorer)  # z is unknown too: only a counts
    folded = new_items.folded(scorer)
    ids, vectors, biases = folded.item_ids, folded.vectors, folded.biases
    weights = scorer.weights
    a, b = scorer.rows["a"], scorer.rows["b"]
    assert ids == ["x"]
    np.testing.assert_allclose(
        vectors[0], (2 * weights.item_out[a] + weights.item_out[b]) / 3, rtol=1e-6
    )
    assert biases[0] == pytest.approx((2 * weights.item_bias[a] + weights.item_bias[b]) / 3)


def test_known_items_and_contexts_without_known_items_are_left_out(
    scorer: ItemPoolingScorer,
) -> None:
    new_items = NewItems(window=3)
    new_items.observe("a", ["b"], scorer)  # the version knows a
    new_items.observe("y", ["z"], scorer)  # nothing known before y
    new_items.observe("x", [], scorer)  # a user's first event
    folded = new_items.folded(scorer)
    ids, vectors, biases = folded.item_ids, folded.vectors, folded.biases
    assert ids == []
    assert vectors.shape == (0, 3)
    assert biases.shape == (0,)


def test_a_version_that_knows_the_item_replaces_the_fold_in(scorer: ItemPoolingScorer) -> None:
    new_items = NewItems(window=1)
    new_items.observe("x", ["a"], scorer)
    new_items.observe("y", ["b"], scorer)
    assert new_items.folded(scorer).item_ids == ["x", "y"]
    newer = ItemPoolingScorer(make_weights(items=["a", "b", "c", "d", "e", "x"]))
    assert new_items.folded(newer).item_ids == ["y"]


def test_a_user_scores_the_unknown_items_and_never_those_they_touched(
    scorer: ItemPoolingScorer,
) -> None:
    new_items = NewItems(window=1)
    new_items.observe("x", ["a"], scorer)
    new_items.observe("y", ["b"], scorer)
    user = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    ids, scores = new_items.scores(scorer, user, np.array([0]), exclude={"y"})
    weights = scorer.weights
    a = scorer.rows["a"]
    assert ids == ["x", "y"]
    assert scores[0] == pytest.approx(float(weights.item_out[a] @ user + weights.item_bias[a]))
    assert scores[1] == -np.inf
