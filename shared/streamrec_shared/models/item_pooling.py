"""The item-pooling model outside TensorFlow: its artifact format and a NumPy scorer.

The trainer learns it with TensorFlow; serving and evaluation need only these arrays. The user
vector is ``u = pool(item_in[recent]) @ projection + projection_bias`` where ``pool`` is a
softmax-over-positions weighted mean of the most recent items (newest first), and an item's
score is ``u · item_out[item] + item_bias[item]``. A user with no history gets
``u = projection_bias``: the model's own popularity-like prior.

Format 2 adds an optional item-to-item term, counted rather than learned: each item's strongest
co-occurring items (``neighbor_*``, CSR rows, cosine ``count(a, b) / √(count(a) · count(b))``
over pairs within users' last ``cooccurrence_window`` items) and the score gets
``cooccurrence_weight · log(1 + Σ cosine)`` summed over the user's ``cooccurrence_window``
newest items. It reacts to an item the stream just made popular in one version, where the
embeddings need many steps; format 1 artifacts (no such arrays) score as before.

Items a version does not know (launched after it) are placed by :func:`fold_in` from the items
their first users touched just before them, until a version trains them.

Format 3 weighs the k-th newest of those items ``cooccurrence_decay^k`` in the sum (one-off runs
of ``benchmarks/model_arms.PoolingArm`` on ML-100K, decay 0.8 against 1.0: HR@10 +0.001 to
+0.003 over three seeds); format 2 artifacts have no decay (1.0) and score as before.

Format 4 adds each item's event count as the term counted it (``item_events``), so that items
the version does not know get the term too, from their contexts (:func:`fold_in`); format 3
artifacts rank them by the embeddings alone, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

FAMILY = "item_pooling"
ARTIFACT_FORMAT = 4
READABLE_FORMATS = (1, 2, 3, 4)
MANIFEST = "manifest.json"
ITEMS = "items.json"
WEIGHTS = "weights.npz"

Floats = npt.NDArray[np.float32]
Rows = npt.NDArray[np.int64]
# The neighbor term sums into a dense row when the catalogue is at most this many times the
# entries a user's window gathers, from padded copies of the lists of at most this many cells
# (12 B each). The crossover, timed once for 10 rows of 100 neighbors (p50 of the term alone,
# padded against CSR + np.unique): 1,682 items 12 vs 56 µs, 16,000 36 vs 59, 32,000 62 vs 60.
DENSE_SUM_FACTOR = 32
PADDED_MAX_CELLS = 4_000_000
_NEIGHBOR_ARRAYS = ("neighbor_indptr", "neighbor_rows", "neighbor_weights", "item_events")


def _no_rows() -> Rows:
    return np.zeros(0, dtype=np.int64)


def _no_floats() -> Floats:
    return np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class ItemPoolingWeights:
    item_ids: list[str]
    item_in: Floats
    item_out: Floats
    item_bias: Floats
    position_logits: Floats
    projection: Floats
    projection_bias: Floats
    # The item-to-item term (format 2); empty ``neighbor_indptr``: none.
    neighbor_indptr: Rows = field(default_factory=_no_rows)
    neighbor_rows: Rows = field(default_factory=_no_rows)
    neighbor_weights: Floats = field(default_factory=_no_floats)
    cooccurrence_weight: float = 0.0
    cooccurrence_window: int = 0
    cooccurrence_decay: float = 1.0  # format 3
    # Events per item as the term counted them (format 4; empty: not known).
    item_events: Floats = field(default_factory=_no_floats)

    @property
    def history_length(self) -> int:
        return int(self.position_logits.shape[0])

    @property
    def has_neighbors(self) -> bool:
        return len(self.neighbor_indptr) > 0 and self.cooccurrence_weight > 0

    def save(self, folder: Path, manifest: dict[str, Any]) -> None:
        """Write the artifact files; ``manifest`` gets the format fields added."""
        body = {
            **manifest,
            "format": ARTIFACT_FORMAT,
            "family": FAMILY,
            "item_count": len(self.item_ids),
            "embedding_dim": int(self.item_in.shape[1]),
            "history_length": self.history_length,
            # The term's scalars (its arrays are in the weights file); 0: no term.
            "cooccurrence_weight": self.cooccurrence_weight if self.has_neighbors else 0.0,
            "cooccurrence_window": self.cooccurrence_window if self.has_neighbors else 0,
            "cooccurrence_decay": self.cooccurrence_decay if self.has_neighbors else 1.0,
        }
        (folder / MANIFEST).write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        (folder / ITEMS).write_bytes(orjson.dumps(self.item_ids))
        arrays: dict[str, npt.NDArray[Any]] = {
            "item_in": self.item_in,
            "item_out": self.item_out,
            "item_bias": self.item_bias,
            "position_logits": self.position_logits,
            "projection": self.projection,
            "projection_bias": self.projection_bias,
        }
        if self.has_neighbors:
            arrays["neighbor_indptr"] = self.neighbor_indptr
            arrays["neighbor_rows"] = self.neighbor_rows
            arrays["neighbor_weights"] = self.neighbor_weights
            if len(self.item_events):
                arrays["item_events"] = self.item_events
        with (folder / WEIGHTS).open("wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]


def read_manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = orjson.loads((folder / MANIFEST).read_bytes())
    if manifest.get("family") != FAMILY or manifest.get("format") not in READABLE_FORMATS:
        raise ValueError(f"not an {FAMILY} artifact of format {READABLE_FORMATS}: {folder}")
    return manifest


def load_weights(folder: Path) -> ItemPoolingWeights:
    manifest = read_manifest(folder)
    item_ids = orjson.loads((folder / ITEMS).read_bytes())
    with np.load(folder / WEIGHTS, allow_pickle=False) as arrays:
        dense: dict[str, Any] = {
            name: np.asarray(arrays[name], dtype=np.float32)
            for name in arrays.files
            if name not in _NEIGHBOR_ARRAYS
        }
        neighbors: dict[str, Any] = {}
        if "neighbor_indptr" in arrays.files:
            neighbors = {
                "neighbor_indptr": np.asarray(arrays["neighbor_indptr"], dtype=np.int64),
                "neighbor_rows": np.asarray(arrays["neighbor_rows"], dtype=np.int64),
                "neighbor_weights": np.asarray(arrays["neighbor_weights"], dtype=np.float32),
                "cooccurrence_weight": float(manifest["cooccurrence_weight"]),
                "cooccurrence_window": int(manifest["cooccurrence_window"]),
                "cooccurrence_decay": float(manifest.get("cooccurrence_decay", 1.0)),
            }
            if "item_events" in arrays.files:
                neighbors["item_events"] = np.asarray(arrays["item_events"], dtype=np.float32)
        return ItemPoolingWeights(item_ids=list(item_ids), **dense, **neighbors)


def _padded_neighbors(weights: ItemPoolingWeights) -> tuple[Rows, Floats] | None:
    """The neighbor lists as two ``items × longest list`` arrays (padding: row 0, weight 0),
    where the catalogue is small enough for the term to sum into a dense row (at most
    ``DENSE_SUM_FACTOR`` times the entries one user's window gathers) and the copies stay
    within ``PADDED_MAX_CELLS``. Else None."""
    if not weights.has_neighbors:
        return None
    items = len(weights.item_ids)
    lengths = np.diff(weights.neighbor_indptr)
    width = int(lengths.max(initial=0))
    small = items <= DENSE_SUM_FACTOR * weights.cooccurrence_window * width
    if width == 0 or not small or items * width > PADDED_MAX_CELLS:
        return None
    owner = np.repeat(np.arange(items), lengths)
    column = np.arange(len(weights.neighbor_rows)) - weights.neighbor_indptr[owner]
    rows = np.zeros((items, width), dtype=np.int64)
    cosines = np.zeros((items, width), dtype=np.float32)
    rows[owner, column] = weights.neighbor_rows
    cosines[owner, column] = weights.neighbor_weights
    return rows, cosines


class ItemPoolingScorer:
    """Scores users against the whole catalogue with NumPy (one BLAS call per batch)."""

    def __init__(self, weights: ItemPoolingWeights) -> None:
        self.weights = weights
        self.rows: dict[str, int] = {item: row for row, item in enumerate(weights.item_ids)}
        # What the term weighs the newest, second newest... history item by.
        self.decay = weights.cooccurrence_decay ** np.arange(weights.cooccurrence_window)
        self._padded = _padded_neighbors(weights)

    @property
    def item_count(self) -> int:
        return len(self.weights.item_ids)

    def needs_context(self, item: str, young_events: float) -> bool:
        """Whether :func:`fold_in` uses ``item``'s context: the version does not know it, or
        counted fewer than ``young_events`` of its events (and has the counts, format 4)."""
        row = self.rows.get(item)
        if row is None:
            return True
        events = self.weights.item_events
        return self.weights.has_neighbors and len(events) > row and events[row] < young_events

    def history_rows(self, histories: Sequence[Sequence[str]]) -> Rows:
        """Item ids (newest first) to a padded row matrix; unknown items are skipped (-1)."""
        length = self.weights.history_length
        matrix = np.full((len(histories), length), -1, dtype=np.int64)
        for index, items in enumerate(histories):
            known = [self.rows[item] for item in items if item in self.rows][:length]
            matrix[index, : len(known)] = known
        return matrix

    def user_vectors(self, history_rows: Rows) -> Floats:
        weights = self.weights
        mask = history_rows >= 0
        logits = np.where(mask, weights.position_logits[None, : history_rows.shape[1]], -np.inf)
        top = np.max(logits, axis=1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        attention = np.where(mask, np.exp(logits - top), 0.0)
        total = attention.sum(axis=1, keepdims=True)
        attention = attention / np.where(total > 0, total, 1.0)
        embedded = weights.item_in[np.where(mask, history_rows, 0)]
        pooled: Floats = np.einsum("bl,bld->bd", attention, embedded)
        return (pooled @ weights.projection + weights.projection_bias).astype(np.float32)

    def add_neighbor_term(self, scores: Floats, rows: Sequence[int] | Rows) -> None:
        """Add the item-to-item term of one user, whose known history rows (newest first) are
        ``rows``, to their ``scores`` over the catalogue, in place; nothing without neighbors
        or history."""
        weights = self.weights
        if not weights.has_neighbors or len(rows) == 0:
            return
        newest = np.asarray(rows[: weights.cooccurrence_window], dtype=np.int64)
        decay = self.decay[: len(newest)]
        if self._padded is not None:
            # A small catalogue: the newest rows' blocks at once, summed into a dense row (no
            # sort, no scatter; ``make bench-scoring``, one user at 1,682 items, session 9: 69 µs
            # with the term, 100 µs with session 8's gather through the CSR arrays, 50 without).
            neighbor_rows, neighbor_weights = self._padded
            summed = np.bincount(
                neighbor_rows[newest].ravel(),
                (neighbor_weights[newest] * decay[:, None]).ravel(),
                minlength=self.item_count,
            )
            np.log1p(summed, out=summed)
            scores += (weights.cooccurrence_weight * summed).astype(np.float32)
            return
        # A large one: the CSR slices of the newest rows, gathered at once, summed per item.
        indptr = weights.neighbor_indptr
        picked, lengths = _slices(indptr[newest], indptr[newest + 1])
        items, inverse = np.unique(weights.neighbor_rows[picked], return_inverse=True)
        summed = np.bincount(
            inverse, weights=weights.neighbor_weights[picked] * decay.repeat(lengths)
        )
        scores[items] += (weights.cooccurrence_weight * np.log1p(summed)).astype(np.float32)

    def scores(self, user_vectors: Floats, history_rows: Rows | None = None) -> Floats:
        """Every item's score per user; with ``history_rows`` (as ``history_rows`` gives them)
        the item-to-item term is added, if the artifact has one."""
        scores = (user_vectors @ self.weights.item_out.T + self.weights.item_bias).astype(
            np.float32
        )
        if history_rows is not None and self.weights.has_neighbors:
            for user, rows in enumerate(history_rows):
                self.add_neighbor_term(scores[user], rows[rows >= 0])
        return scores


def _slices(starts: Rows, ends: Rows) -> tuple[Rows, Rows]:
    """The positions ``starts[i]:ends[i]`` of every slice, concatenated, and their lengths."""
    lengths = ends - starts
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return offsets + np.arange(int(lengths.sum())), lengths


def unit_length(vectors: Floats) -> Floats:
    """``vectors`` (one, or one per row) scaled to unit length, for cosines."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    scaled: Floats = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return scaled


@dataclass(frozen=True)
class ItemContext:
    """What an item's first users touched just before it: over ``events`` of its events, how
    often each item was among the user's newest few (``before``)."""

    events: int
    before: Mapping[str, int]


@dataclass(frozen=True, eq=False)
class PairTerm:
    """An item-to-item term from counted pairs: ``cosines`` between the known rows ``rows``
    (sorted) and ``targets`` (indices into the scores it adds to); empty: no term."""

    rows: Rows = field(default_factory=_no_rows)
    targets: Rows = field(default_factory=_no_rows)
    cosines: Floats = field(default_factory=_no_floats)
    weight: float = 0.0
    decay: Floats = field(default_factory=_no_floats)  # the weight per history position
    # The distinct targets, and each pair's index among them: the sum runs over those only, not
    # over all the scores (100 young items of 100 pairs each, per request: 25 -> 22 µs in a
    # catalogue of 1,682 items, 292 -> 21 µs in one of 100,000; one-off timing, session 17).
    distinct: Rows = field(init=False, repr=False)
    slot: Rows = field(init=False, repr=False)

    def __post_init__(self) -> None:
        distinct, slot = np.unique(self.targets, return_inverse=True)
        object.__setattr__(self, "distinct", distinct)
        object.__setattr__(self, "slot", slot.reshape(-1))

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, scores: Floats, history_rows: Sequence[int] | Rows) -> None:
        """Add ``weight · log(1 + Σ decay^k · cosine)`` over one user's known history rows
        (newest first) to their ``scores`` of the targets, in place, as the catalogue's term."""
        if len(self.rows) == 0 or len(history_rows) == 0:
            return
        newest = np.asarray(history_rows[: len(self.decay)], dtype=np.int64)
        picked, lengths = _slices(
            np.searchsorted(self.rows, newest, "left"),
            np.searchsorted(self.rows, newest, "right"),
        )
        weighted = self.cosines[picked] * self.decay[: len(newest)].repeat(lengths)
        summed = np.bincount(self.slot[picked], weighted, minlength=len(self.distinct))
        scores[self.distinct] += (self.weight * np.log1p(summed)).astype(np.float32)


@dataclass(frozen=True, eq=False)  # identity: a table is one object, never compared by value
class FoldedItems:
    """Items a version does not know, placed in its output space (:func:`fold_in`), with their
    item-to-item term (``term``, over these items); and the live term of young items the version
    knows (``young_term``, over the catalogue's rows)."""

    item_ids: list[str]
    vectors: Floats  # items × dim, like ``item_out``
    biases: Floats
    term: PairTerm = field(default_factory=PairTerm)
    young_term: PairTerm = field(default_factory=PairTerm)
    rows: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", {item: row for row, item in enumerate(self.item_ids)})

    @functools.cached_property
    def normalized(self) -> Floats:
        """The vectors at unit length (similar items), once per table."""
        return unit_length(self.vectors)

    def scores(self, user_vector: Floats, history_rows: Sequence[int] | Rows = ()) -> Floats:
        """One user's scores for these items: the model's dot product and bias, and the term
        from the user's known history rows (newest first), as the catalogue's items get it."""
        scores = (self.vectors @ user_vector + self.biases).astype(np.float32, copy=False)
        self.term.add(scores, history_rows)
        return scores


def fold_in(
    scorer: ItemPoolingScorer, contexts: Mapping[str, ItemContext], young_events: float = 0.0
) -> FoldedItems:
    """Place items the version does not know from their contexts ("fold-in").

    Each item gets the count-weighted mean output vector and bias of the known items in its
    context: it stands where its first users came from. A version cannot rank an item it has not
    trained on; the synthetic drift stream, a version every 250 events, in process: HR@10 0.544
    → 0.597 with this (``benchmarks/model_arms.NewItems``). With the artifact's event counts
    (format 4) it gets the item-to-item term too, its cosine with a known item h being
    ``count(h before it) / √(events(h) · its events)``, as the trainer counts pairs: 0.597 →
    0.608 (one-off runs, contexts of the first 10 events). Contexts with no known item are left
    out.

    Items the version knows but counted fewer than ``young_events`` events of keep their trained
    score and get the same term from their context on top (``young_term``): the version's own
    pairs for them are few and stale, the context's are live. Same stream and cadence: 0.608 →
    0.630 with 20 (replacing their trained vector by the fold-in instead scores lower).
    """
    weights = scorer.weights
    with_term = weights.has_neighbors and len(weights.item_events) == len(weights.item_ids)
    # The contexts that count (a young item's only for the term), then every pair of them in
    # flat arrays: item by item, 200 contexts of 60 known items each took 20 ms, and inference
    # redoes it at every change of a context (one-off timing, session 17).
    chosen = [
        (item, context)
        for item, context in contexts.items()
        if scorer.needs_context(item, young_events) and (with_term or item not in scorer.rows)
    ]
    befores = [context.before for _, context in chosen]
    total = sum(map(len, befores))
    # map and chain iterate in C (fold_in 6.1 -> 5.1 ms with them against generator
    # expressions, same timing).
    names = chain.from_iterable(befores)
    rows = np.fromiter(map(scorer.rows.get, names, repeat(-1)), np.int64, total)
    counts = np.fromiter(chain.from_iterable(b.values() for b in befores), np.float32, total)
    owner = np.repeat(np.arange(len(chosen)), [len(b) for b in befores])
    known = (rows >= 0) & (counts > 0)
    rows, counts, owner = rows[known], counts[known], owner[known]
    # Contexts with no known item are left out; the rest are renumbered.
    kept = np.bincount(owner, minlength=len(chosen)) > 0
    owner = (np.cumsum(kept) - 1)[owner]
    chosen = [pair for pair, keep in zip(chosen, kept.tolist(), strict=True) if keep]
    own_rows = np.array([scorer.rows.get(item, -1) for item, _ in chosen], dtype=np.int64)
    is_new = own_rows < 0
    new_index = np.cumsum(is_new) - 1  # a new item's index among the new items
    ids = [item for (item, _), new in zip(chosen, is_new.tolist(), strict=True) if new]
    # A new item stands at the count-weighted mean of its known items' output vectors and biases.
    new_pair = is_new[owner]
    segment = new_index[owner[new_pair]]
    new_rows, new_counts = rows[new_pair], counts[new_pair]
    share = new_counts / np.bincount(segment, new_counts)[segment]
    vectors = np.zeros((len(ids), weights.item_out.shape[1]), dtype=np.float32)
    if ids:
        starts = np.flatnonzero(np.diff(segment, prepend=-1))
        vectors = np.add.reduceat(share[:, None] * weights.item_out[new_rows], starts, axis=0)
    biases = np.bincount(segment, share * weights.item_bias[new_rows], minlength=len(ids))
    term, young_term = PairTerm(), PairTerm()
    if with_term and chosen:
        events = np.array([context.events for _, context in chosen], dtype=np.float32)
        cosines = counts / np.sqrt(
            np.maximum(weights.item_events[rows], 1.0) * np.maximum(events, 1.0)[owner]
        )
        # A new item's pairs point at its index among the new items, a young item's at its row.
        targets = np.where(is_new, new_index, own_rows)[owner]
        term = _pair_term(rows[new_pair], targets[new_pair], cosines[new_pair], scorer)
        young_term = _pair_term(rows[~new_pair], targets[~new_pair], cosines[~new_pair], scorer)
    return FoldedItems(ids, vectors.astype(np.float32), biases.astype(np.float32), term, young_term)


def _pair_term(rows: Rows, targets: Rows, cosines: Floats, scorer: ItemPoolingScorer) -> PairTerm:
    if len(rows) == 0:
        return PairTerm()
    order = np.lexsort((targets, rows))  # by row, for PairTerm.add's binary search
    return PairTerm(
        rows[order],
        targets[order],
        cosines[order],
        scorer.weights.cooccurrence_weight,
        scorer.decay,
    )
