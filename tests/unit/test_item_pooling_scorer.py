"""The NumPy side of the item-pooling model: artifact files and the scorer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import pytest
from streamrec_shared.models import item_pooling
from streamrec_shared.models.item_pooling import (
    FAMILY,
    MANIFEST,
    ItemContext,
    ItemPoolingScorer,
    ItemPoolingWeights,
    fold_in,
    load_weights,
    read_manifest,
)

ITEMS = ["a", "b", "c", "d", "e"]
DIM = 3
LENGTH = 4


def make_weights(seed: int = 0, items: list[str] = ITEMS) -> ItemPoolingWeights:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> npt.NDArray[np.float32]:
        return rng.normal(size=shape).astype(np.float32)

    return ItemPoolingWeights(
        item_ids=list(items),
        item_in=normal(len(items), DIM),
        item_out=normal(len(items), DIM),
        item_bias=normal(len(items)),
        position_logits=normal(LENGTH),
        projection=normal(DIM, DIM),
        projection_bias=normal(DIM),
    )


def rows(*histories: list[int]) -> npt.NDArray[np.int64]:
    return np.asarray(histories, dtype=np.int64)


@pytest.fixture
def weights() -> ItemPoolingWeights:
    return make_weights()


@pytest.fixture
def scorer(weights: ItemPoolingWeights) -> ItemPoolingScorer:
    return ItemPoolingScorer(weights)


# --- artifact files ------------------------------------------------------------------------


def test_save_then_load_round_trips(tmp_path: Path, weights: ItemPoolingWeights) -> None:
    weights.save(tmp_path, {"spec_id": "movies", "version": 3})
    loaded = load_weights(tmp_path)
    assert loaded.item_ids == ITEMS
    for name in (
        "item_in",
        "item_out",
        "item_bias",
        "position_logits",
        "projection",
        "projection_bias",
    ):
        array = getattr(loaded, name)
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, getattr(weights, name))
    assert loaded.history_length == LENGTH


def test_manifest_has_the_callers_fields_and_the_format(
    tmp_path: Path, weights: ItemPoolingWeights
) -> None:
    weights.save(tmp_path, {"spec_id": "movies", "family": "overridden?"})
    manifest = read_manifest(tmp_path)
    assert manifest == {
        "spec_id": "movies",
        "format": 4,
        "family": FAMILY,
        "item_count": 5,
        "embedding_dim": DIM,
        "history_length": LENGTH,
        "cooccurrence_weight": 0.0,
        "cooccurrence_window": 0,
        "cooccurrence_decay": 1.0,
    }


@pytest.mark.parametrize(
    "change", [{"family": "two_tower"}, {"format": 5}, {"family": None}], ids=str
)
def test_read_manifest_rejects_other_artifacts(
    tmp_path: Path, weights: ItemPoolingWeights, change: dict[str, object]
) -> None:
    weights.save(tmp_path, {})
    manifest = orjson.loads((tmp_path / MANIFEST).read_bytes())
    (tmp_path / MANIFEST).write_bytes(orjson.dumps({**manifest, **change}))
    with pytest.raises(ValueError, match=FAMILY):
        read_manifest(tmp_path)
    with pytest.raises(ValueError, match=FAMILY):
        load_weights(tmp_path)


def test_unicode_item_ids_survive(tmp_path: Path) -> None:
    items = ["ü", "🙂", "a b", 'x"y', "5"]
    make_weights(items=items).save(tmp_path, {})
    assert load_weights(tmp_path).item_ids == items


# --- history_rows --------------------------------------------------------------------------


def test_history_rows_maps_ids_keeping_order(scorer: ItemPoolingScorer) -> None:
    matrix = scorer.history_rows([["c", "a"], ["e", "d", "c", "b"], []])
    assert matrix.dtype == np.int64
    assert matrix.tolist() == [[2, 0, -1, -1], [4, 3, 2, 1], [-1, -1, -1, -1]]


def test_history_rows_skips_unknown_items_and_compacts(scorer: ItemPoolingScorer) -> None:
    assert scorer.history_rows([["zz", "b", "yy", "a"]]).tolist() == [[1, 0, -1, -1]]


def test_history_rows_keeps_the_newest_items(scorer: ItemPoolingScorer) -> None:
    matrix = scorer.history_rows([["a", "b", "zz", "c", "d", "e"]])
    assert matrix.tolist() == [[0, 1, 2, 3]]


def test_history_rows_of_no_users(scorer: ItemPoolingScorer) -> None:
    assert scorer.history_rows([]).shape == (0, LENGTH)


# --- user_vectors and scores ------------------------------------------------------------


def test_empty_history_is_the_projection_bias(
    scorer: ItemPoolingScorer, weights: ItemPoolingWeights
) -> None:
    vectors = scorer.user_vectors(rows([-1, -1, -1, -1]))
    np.testing.assert_allclose(vectors, weights.projection_bias[None, :], rtol=1e-6)


def test_a_single_item_is_its_projected_embedding(
    scorer: ItemPoolingScorer, weights: ItemPoolingWeights
) -> None:
    vectors = scorer.user_vectors(rows([3, -1, -1, -1]))
    expected = weights.item_in[3] @ weights.projection + weights.projection_bias
    np.testing.assert_allclose(vectors[0], expected, rtol=1e-5)


def expected_vector(weights: ItemPoolingWeights, history: list[int]) -> npt.NDArray[np.float32]:
    """The user vector by the formula: softmax over the unmasked positions' logits."""
    positions = [p for p, row in enumerate(history) if row >= 0]
    attention = np.exp(weights.position_logits[positions])
    attention /= attention.sum()
    pooled = sum(a * weights.item_in[history[p]] for a, p in zip(attention, positions, strict=True))
    return pooled @ weights.projection + weights.projection_bias  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "history", [[1, 2, -1, -1], [1, -1, 2, -1], [-1, -1, -1, 4]], ids=["tail", "hole", "last"]
)
def test_masked_positions_are_ignored(weights: ItemPoolingWeights, history: list[int]) -> None:
    vectors = ItemPoolingScorer(weights).user_vectors(rows(history))
    np.testing.assert_allclose(vectors[0], expected_vector(weights, history), rtol=1e-5)


def test_pooling_is_a_softmax_over_positions_by_hand(weights: ItemPoolingWeights) -> None:
    scorer = ItemPoolingScorer(weights)
    history = [4, 0, 2, -1]
    attention = np.exp(weights.position_logits[:3])
    attention /= attention.sum()
    pooled = sum(a * weights.item_in[r] for a, r in zip(attention, history[:3], strict=True))
    expected = pooled @ weights.projection + weights.projection_bias
    np.testing.assert_allclose(scorer.user_vectors(rows(history))[0], expected, rtol=1e-5)


def test_masking_does_not_depend_on_row_zero(weights: ItemPoolingWeights) -> None:
    changed = dataclasses.replace(weights, item_in=weights.item_in.copy())
    changed.item_in[0] += 100.0  # the row a masked slot would gather
    history = rows([3, 1, -1, -1])
    np.testing.assert_allclose(
        ItemPoolingScorer(changed).user_vectors(history),
        ItemPoolingScorer(weights).user_vectors(history),
        rtol=1e-6,
    )


def test_equal_position_logits_average_the_items(weights: ItemPoolingWeights) -> None:
    flat = dataclasses.replace(weights, position_logits=np.zeros(LENGTH, np.float32))
    vectors = ItemPoolingScorer(flat).user_vectors(rows([0, 1, -1, -1]))
    pooled = (weights.item_in[0] + weights.item_in[1]) / 2
    np.testing.assert_allclose(
        vectors[0], pooled @ weights.projection + weights.projection_bias, rtol=1e-5
    )


def test_large_position_logits_do_not_overflow(weights: ItemPoolingWeights) -> None:
    logits = np.array([1000, 0, -1000, 5], np.float32)
    extreme = dataclasses.replace(weights, position_logits=logits)
    vectors = ItemPoolingScorer(extreme).user_vectors(rows([2, 1, 0, 3]))
    expected = weights.item_in[2] @ weights.projection + weights.projection_bias
    np.testing.assert_allclose(vectors[0], expected, rtol=1e-5)


def test_scores_shape_and_values_by_hand(
    scorer: ItemPoolingScorer, weights: ItemPoolingWeights
) -> None:
    history = scorer.history_rows([["b"], [], ["e", "a"]])
    vectors = scorer.user_vectors(history)
    scores = scorer.scores(vectors)
    assert vectors.shape == (3, DIM)
    assert scores.shape == (3, len(ITEMS))
    assert scores.dtype == np.float32
    for user in range(3):
        for item in range(len(ITEMS)):
            expected = float(vectors[user] @ weights.item_out[item] + weights.item_bias[item])
            assert scores[user, item] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # The user with no history gets the model's prior: projection_bias against every item.
    prior = weights.item_out @ weights.projection_bias + weights.item_bias
    np.testing.assert_allclose(scores[1], prior, rtol=1e-5)


def test_item_count(scorer: ItemPoolingScorer) -> None:
    assert scorer.item_count == len(ITEMS)
    assert scorer.rows == {item: row for row, item in enumerate(ITEMS)}


# --- the item-to-item term (format 2) --------------------------------------------------------

# a: b 0.5, c 0.25 | b: a 0.5 | c: a 0.25, b 0.1 | d, e: none
NEIGHBORS = {0: [(1, 0.5), (2, 0.25)], 1: [(0, 0.5)], 2: [(0, 0.25), (1, 0.1)], 3: [], 4: []}


def with_neighbors(
    weights: ItemPoolingWeights,
    weight: float = 2.0,
    window: int = 2,
    decay: float = 1.0,
    item_events: list[float] | None = None,
) -> ItemPoolingWeights:
    indptr = np.cumsum([0] + [len(NEIGHBORS[row]) for row in range(5)])
    flat = [pair for row in range(5) for pair in NEIGHBORS[row]]
    return dataclasses.replace(
        weights,
        neighbor_indptr=indptr.astype(np.int64),
        neighbor_rows=np.asarray([row for row, _ in flat], dtype=np.int64),
        neighbor_weights=np.asarray([cosine for _, cosine in flat], dtype=np.float32),
        cooccurrence_weight=weight,
        cooccurrence_window=window,
        cooccurrence_decay=decay,
        item_events=np.asarray(item_events or [], dtype=np.float32),
    )


@pytest.mark.parametrize("dense_factor", [0, 1000], ids=["sorted-sum", "dense-sum"])
@pytest.mark.parametrize(
    ("decay", "added"),
    [
        # c raises a 0.25 and b 0.1; a raises b 0.5 and c 0.25.
        (1.0, {0: np.log1p(0.25), 1: np.log1p(0.6), 2: np.log1p(0.25)}),
        # a, the second newest, counts half.
        (0.5, {0: np.log1p(0.25), 1: np.log1p(0.35), 2: np.log1p(0.125)}),
    ],
)
def test_the_neighbor_term_by_hand(
    weights: ItemPoolingWeights,
    dense_factor: int,
    decay: float,
    added: dict[int, float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(item_pooling, "DENSE_SUM_FACTOR", dense_factor)
    scorer = ItemPoolingScorer(with_neighbors(weights, decay=decay))
    assert (scorer._padded is not None) == (dense_factor > 0)  # the path under test
    history = rows([2, 0, 1, -1])  # c, a, then b: outside the window of 2
    plain = scorer.scores(scorer.user_vectors(history))[0]
    scores = scorer.scores(scorer.user_vectors(history), history)[0]
    expected = plain.copy()
    for row, value in added.items():
        expected[row] += 2.0 * value  # the term's weight
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


@pytest.mark.parametrize("dense_factor", [0, 1000], ids=["sorted-sum", "dense-sum"])
def test_one_history_item_takes_its_row_alone(
    weights: ItemPoolingWeights, dense_factor: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(item_pooling, "DENSE_SUM_FACTOR", dense_factor)
    scorer = ItemPoolingScorer(with_neighbors(weights))
    scores = np.zeros(len(ITEMS), dtype=np.float32)
    scorer.add_neighbor_term(scores, [1])
    np.testing.assert_allclose(scores, [2.0 * np.log1p(0.5), 0, 0, 0, 0], rtol=1e-6)


def test_no_term_without_history_weight_or_neighbors(weights: ItemPoolingWeights) -> None:
    for scorer, history in [
        (ItemPoolingScorer(with_neighbors(weights)), []),
        (ItemPoolingScorer(with_neighbors(weights, weight=0.0)), [0]),
        (ItemPoolingScorer(weights), [0]),
    ]:
        scores = np.zeros(len(ITEMS), dtype=np.float32)
        scorer.add_neighbor_term(scores, history)
        assert not scores.any()
    history = rows([0, 1, -1, -1])
    scorer = ItemPoolingScorer(weights)
    np.testing.assert_array_equal(
        scorer.scores(scorer.user_vectors(history), history),
        scorer.scores(scorer.user_vectors(history)),
    )


def test_the_padded_lists_stay_within_their_memory_bound(
    weights: ItemPoolingWeights, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(item_pooling, "DENSE_SUM_FACTOR", 1000)
    assert ItemPoolingScorer(with_neighbors(weights))._padded is not None
    monkeypatch.setattr(item_pooling, "PADDED_MAX_CELLS", 9)  # 5 items × 2 neighbors
    assert ItemPoolingScorer(with_neighbors(weights))._padded is None


def test_neighbors_round_trip(tmp_path: Path, weights: ItemPoolingWeights) -> None:
    original = with_neighbors(
        weights, weight=1.5, window=3, decay=0.75, item_events=[1, 2, 3, 4, 5]
    )
    original.save(tmp_path, {})
    loaded = load_weights(tmp_path)
    manifest = read_manifest(tmp_path)
    term = ("cooccurrence_weight", "cooccurrence_window", "cooccurrence_decay")
    assert [manifest[name] for name in term] == [1.5, 3, 0.75]
    assert [getattr(loaded, name) for name in term] == [1.5, 3, 0.75]
    for name in ("neighbor_indptr", "neighbor_rows", "neighbor_weights", "item_events"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name))
    assert loaded.neighbor_weights.dtype == np.float32
    assert loaded.item_events.dtype == np.float32


# --- items the version does not know (fold-in) -----------------------------------------------


def test_a_new_item_stands_where_its_users_came_from(weights: ItemPoolingWeights) -> None:
    scorer = ItemPoolingScorer(weights)
    contexts = {
        "x": ItemContext(2, {"a": 2, "b": 1, "z": 5}),  # z: unknown to the version, left out
        "y": ItemContext(1, {"z": 1}),  # nothing known: left out
        "a": ItemContext(1, {"b": 1}),  # known to the version: left out
    }
    folded = fold_in(scorer, contexts)
    assert folded.item_ids == ["x"]
    a, b = scorer.rows["a"], scorer.rows["b"]
    expected = (2 * weights.item_out[a] + weights.item_out[b]) / 3
    np.testing.assert_allclose(folded.vectors[0], expected, rtol=1e-6)
    assert folded.biases[0] == pytest.approx((2 * weights.item_bias[a] + weights.item_bias[b]) / 3)
    assert len(folded.term) == 0  # no term without neighbors and event counts
    user = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    plain = float(expected @ user) + folded.biases[0]
    assert folded.scores(user, [a, b])[0] == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize(
    ("history", "summed"),
    [
        # x's cosines: with a 2 / √(4 · 2), with b 1 / √(1 · 2); y's with b 1 / √(1 · 1).
        ([0, 1], {"x": 2 / np.sqrt(8) + 0.5 / np.sqrt(2), "y": 0.5}),  # b second: decay 0.5
        ([1, 0, 2], {"x": 1 / np.sqrt(2) + 0.5 * 2 / np.sqrt(8), "y": 1.0}),  # c: past window
        ([2, 3], {"x": 0.0, "y": 0.0}),  # none of their contexts' items
        ([], {"x": 0.0, "y": 0.0}),
    ],
)
def test_a_new_items_term_is_the_catalogues_from_its_context(
    weights: ItemPoolingWeights, history: list[int], summed: dict[str, float]
) -> None:
    # The term's cosine as the trainer counts it: pairs / √(events of each), the new item's
    # events being those its context counted.
    with_term = with_neighbors(weights, decay=0.5, item_events=[4, 1, 9, 9, 9])
    scorer = ItemPoolingScorer(with_term)
    contexts = {"x": ItemContext(2, {"a": 2, "b": 1}), "y": ItemContext(1, {"b": 1})}
    folded = fold_in(scorer, contexts)
    user = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    plain = folded.vectors @ user + folded.biases
    expected = [plain[n] + 2.0 * np.log1p(summed[item]) for n, item in enumerate(folded.item_ids)]
    np.testing.assert_allclose(folded.scores(user, history), expected, rtol=1e-5)
    # A format 3 artifact (no event counts) ranks them by the embeddings alone.
    without_counts = fold_in(ItemPoolingScorer(with_neighbors(weights, decay=0.5)), contexts)
    np.testing.assert_allclose(without_counts.scores(user, history), plain, rtol=1e-6)


def test_a_format_1_artifact_still_loads_and_scores_as_before(
    tmp_path: Path, weights: ItemPoolingWeights
) -> None:
    weights.save(tmp_path, {})
    manifest = orjson.loads((tmp_path / MANIFEST).read_bytes())
    del manifest["cooccurrence_weight"], manifest["cooccurrence_window"]
    (tmp_path / MANIFEST).write_bytes(orjson.dumps({**manifest, "format": 1}))
    loaded = load_weights(tmp_path)
    assert not loaded.has_neighbors
    history = rows([0, 1, -1, -1])
    scorer = ItemPoolingScorer(loaded)
    np.testing.assert_array_equal(
        scorer.scores(scorer.user_vectors(history), history),
        ItemPoolingScorer(weights).scores(ItemPoolingScorer(weights).user_vectors(history)),
    )


def test_a_format_2_artifact_still_loads_and_scores_without_decay(
    tmp_path: Path, weights: ItemPoolingWeights
) -> None:
    undecayed = with_neighbors(weights, window=3)
    undecayed.save(tmp_path, {})
    manifest = orjson.loads((tmp_path / MANIFEST).read_bytes())
    del manifest["cooccurrence_decay"]
    (tmp_path / MANIFEST).write_bytes(orjson.dumps({**manifest, "format": 2}))
    loaded = load_weights(tmp_path)
    assert loaded.cooccurrence_decay == 1.0
    history = rows([2, 0, 1, -1])
    scorer, expected = ItemPoolingScorer(loaded), ItemPoolingScorer(undecayed)
    np.testing.assert_array_equal(
        scorer.scores(scorer.user_vectors(history), history),
        expected.scores(expected.user_vectors(history), history),
    )


@pytest.mark.parametrize("young_events", [0.0, 2.0, 4.0, 10.0])
def test_young_items_the_version_knows_get_their_contexts_term(
    weights: ItemPoolingWeights, young_events: float
) -> None:
    # The version counted a 4, b 1, c 2 events: young below ``young_events``.
    with_term = with_neighbors(weights, decay=0.5, item_events=[4, 1, 2, 9, 9])
    scorer = ItemPoolingScorer(with_term)
    contexts = {"c": ItemContext(3, {"a": 3, "b": 1}), "d": ItemContext(1, {"a": 1})}
    folded = fold_in(scorer, contexts, young_events)
    assert folded.item_ids == []  # every item known: nothing placed
    scores = np.zeros(len(ITEMS), dtype=np.float32)
    folded.young_term.add(scores, [0, 1])  # a newest, then b
    expected = np.zeros(len(ITEMS))
    if young_events > 2:  # c: cosines with a 3 / √(4 · 3), with b 1 / √(1 · 3), b second
        expected[2] = 2.0 * np.log1p(3 / np.sqrt(12) + 0.5 / np.sqrt(3))
    if young_events > 9:  # d: with a 1 / √(4 · 1)
        expected[3] = 2.0 * np.log1p(1 / np.sqrt(4))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_a_pair_term_adds_the_decayed_log_sum_to_its_targets_only() -> None:
    rng = np.random.default_rng(3)
    size, pairs = 50, 200
    rows_, targets = rng.integers(0, 30, pairs), rng.integers(0, size, pairs)
    cosines = rng.random(pairs).astype(np.float32)
    order = np.lexsort((targets, rows_))
    decay = 0.8 ** np.arange(4)
    term = item_pooling.PairTerm(
        rows_[order], targets[order], cosines[order], 2.0, decay.astype(np.float32)
    )
    history = [int(r) for r in rng.choice(30, 6, replace=False)]
    expected = np.zeros(size)
    for position, row in enumerate(history[:4]):
        for pair in np.flatnonzero(rows_ == row):
            expected[targets[pair]] += decay[position] * cosines[pair]
    expected = 2.0 * np.log1p(expected)
    scores = np.zeros(size, dtype=np.float32)
    term.add(scores, history)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-7)
    assert set(np.flatnonzero(scores)) <= set(targets.tolist())
