"""In-process peers, each a ``Recommender`` scored by the same protocol as the stack's arms.

- ``PopularityHistory``: item counts over the history, frozen.
- ``PopularityOnline``: item counts updated with every observed interaction.
- ``ALSPeer``: ``implicit`` ALS trained on the history. ``fold_in=False`` is frozen (users absent
  from the history get the history's popularity); ``fold_in=True`` recomputes the user's factors
  from every item they touched so far against the frozen item factors (the ALS least-squares step
  for one user, exactly implicit's ``recalculate_user``), so cold users are served from their
  first interaction.
- ``CooccurrencePeer``: online item co-occurrence: each interaction counts a pair with each of the
  user's previous ``window`` (10) items; candidates score the summed counts with the user's last
  ``window`` items, online popularity breaking ties and filling the list. ``normalize="cosine"``
  (a variant, not in the issue's list) divides each count by sqrt(count(j) · count(c)).
- ``RiverMFPeer``: River's ``BiasedMF`` learned online (every positive plus ``negatives`` sampled
  items as 0), ranked over the whole catalogue from a NumPy mirror of River's item weights (each
  ``learn_one`` changes one user and one item, so the mirror is updated row by row; scores equal
  ``predict_one`` up to the user's bias, a constant that leaves the order unchanged).

Items are rows of a growable ``Catalogue``; every peer ranks all the items it knows with one
vectorized top-K (``top_k``), excluded rows masked.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix  # type: ignore[import-untyped]

from streamrec_dev.evaluation.data import Interaction
from streamrec_dev.evaluation.protocol import Recommender

Floats = npt.NDArray[np.float64]
Rows = npt.NDArray[np.int64]


class Catalogue:
    """Item id ↔ row, growing as items appear."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, item: str) -> int:
        row = self.rows.get(item)
        if row is None:
            row = self.rows[item] = len(self.ids)
            self.ids.append(item)
        return row

    def known_rows(self, items: Iterable[str]) -> Rows:
        rows = self.rows
        return np.fromiter((rows[i] for i in items if i in rows), dtype=np.int64)


def top_k(scores: Floats, k: int, excluded: Rows) -> list[int]:
    """Rows of the ``k`` best scores (higher first, lower row on ties), excluded rows skipped."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if excluded.size:
        scores[excluded] = -np.inf
    if len(scores) > k:
        # Everything tied with the k-th best is a candidate, so ties go to the lower row
        # whatever k is (argpartition alone would pick among ties at the boundary arbitrarily).
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= kth)
    else:
        candidates = np.arange(len(scores))
    order = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
    return [int(row) for row in order if scores[row] > -np.inf]


class _Counts:
    """Interaction counts per item row (popularity), growable."""

    def __init__(self) -> None:
        self.values = np.zeros(1024, dtype=np.float64)

    def add(self, row: int, amount: float = 1.0) -> None:
        if row >= len(self.values):
            grown = np.zeros(max(2 * len(self.values), row + 1), dtype=np.float64)
            grown[: len(self.values)] = self.values
            self.values = grown
        self.values[row] += amount

    def view(self, count: int) -> Floats:
        return self.values[:count]


class PopularityHistory:
    """The history's most interacted-with items, never updated."""

    def __init__(self) -> None:
        self.ranked: list[str] = []

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        counts: dict[str, int] = {}
        for row in interactions:
            counts[row.item] = counts.get(row.item, 0) + 1
        # Most popular first; ties by first appearance (dicts keep insertion order, sort is stable).
        self.ranked = sorted(counts, key=counts.__getitem__, reverse=True)

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        out: list[str] = []
        for item in self.ranked:
            if item not in exclude:
                out.append(item)
                if len(out) == k:
                    break
        return out

    def observe(self, interaction: Interaction) -> None:
        return None


class PopularityOnline:
    """Item counts over everything observed so far."""

    def __init__(self) -> None:
        self.catalogue = Catalogue()
        self.counts = _Counts()

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        for row in interactions:
            self.observe(row)

    def scores(self) -> Floats:
        return self.counts.view(len(self.catalogue))

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        rows = top_k(self.scores(), k, self.catalogue.known_rows(exclude))
        ids = self.catalogue.ids
        return [ids[row] for row in rows]

    def observe(self, interaction: Interaction) -> None:
        self.counts.add(self.catalogue.row(interaction.item))


def _blas_single_thread() -> object:
    """OpenBLAS threads off: implicit warns otherwise, and small solves are faster on one."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    return threadpool_limits(1, "blas")


def _solve(matrix: Floats, vector: Floats) -> Floats:
    return np.asarray(np.linalg.solve(matrix, vector), dtype=np.float64)


class ALSPeer:
    """implicit ALS on the history; ``fold_in`` recomputes users from their items so far."""

    def __init__(
        self,
        fold_in: bool = False,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 2.0,
        iterations: int = 15,
        seed: int = 0,
    ) -> None:
        self.fold_in = fold_in
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed
        self.catalogue = Catalogue()  # the history's items: the only ones ALS can rank
        self.users: dict[str, int] = {}
        self.user_factors = np.zeros((0, factors))
        self.item_factors = np.zeros((0, factors))
        self.gram = np.zeros((factors, factors))  # YᵀY + λI
        # Per user: item row -> interaction count, over history and observed (known items only).
        self.user_items: dict[str, dict[int, float]] = {}
        # Fold-in: each user's normal equations (A, b), updated by rank one per interaction
        # (factors² × 8 B per user: 32 KiB at 64 factors), and the solved vector until it changes.
        self.systems: dict[str, tuple[Floats, Floats]] = {}
        self.vectors: dict[str, Floats] = {}
        self.popular = PopularityHistory()

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        from implicit.cpu.als import AlternatingLeastSquares  # type: ignore[import-untyped]

        self.popular.fit_history(interactions)
        for row in interactions:
            self.users.setdefault(row.user, len(self.users))
            self._count(row.user, self.catalogue.row(row.item))
        users, items = len(self.users), len(self.catalogue)
        indptr, indices, data = [0], list[int](), list[float]()
        for name in self.users:  # insertion order = user index
            counts = self.user_items[name]
            indices.extend(counts)
            data.extend(counts.values())
            indptr.append(len(indices))
        matrix = csr_matrix(
            (np.asarray(data, dtype=np.float32), indices, indptr),
            shape=(users, items),
        )
        with _blas_single_thread():  # type: ignore[attr-defined]
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                num_threads=1,
                random_state=self.seed,
            )
            model.fit(matrix, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float64)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float64)
        self.gram = self.item_factors.T @ self.item_factors + self.regularization * np.eye(
            self.factors
        )

    def _count(self, user: str, row: int) -> None:
        counts = self.user_items.setdefault(user, {})
        counts[row] = counts.get(row, 0.0) + 1.0

    def user_vector(self, user: str) -> Floats | None:
        if not self.fold_in:
            index = self.users.get(user)
            return None if index is None else self.user_factors[index]
        vector = self.vectors.get(user)
        if vector is None:
            system = self.systems.get(user)
            if system is None:
                counts = self.user_items.get(user)
                if not counts:
                    return None
                system = self.systems[user] = self.normal_equations(counts)
            vector = self.vectors[user] = _solve(*system)
        return vector

    def normal_equations(self, counts: dict[int, float]) -> tuple[Floats, Floats]:
        """A = YᵀY + λI + Yᵀ(Cᵤ − I)Y, b = YᵀCᵤpᵤ, Cᵤ = alpha · counts (implicit's form)."""
        rows = np.fromiter(counts, dtype=np.int64, count=len(counts))
        confidence = self.alpha * np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        factors = self.item_factors[rows]
        matrix = self.gram + factors.T @ (factors * (confidence - 1.0)[:, None])
        return matrix, factors.T @ confidence

    def solve(self, counts: dict[int, float]) -> Floats:
        """The user's least-squares factors given their item counts, from scratch."""
        return _solve(*self.normal_equations(counts))

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        vector = self.user_vector(user)
        if vector is None:
            return self.popular.recommend(user, k, exclude)
        rows = top_k(self.item_factors @ vector, k, self.catalogue.known_rows(exclude))
        ids = self.catalogue.ids
        return [ids[row] for row in rows]

    def observe(self, interaction: Interaction) -> None:
        if not self.fold_in:
            return
        row = self.catalogue.rows.get(interaction.item)
        if row is None:  # items after the history have no factors: the item side is frozen
            return
        user = interaction.user
        before = self.user_items.get(user, {}).get(row, 0.0)
        self._count(user, row)
        system = self.systems.get(user)
        if system is not None:
            # Confidence of this item goes from 1 (absent) to alpha, or from alpha·n to alpha·(n+1).
            factor = self.item_factors[row]
            matrix, vector = system
            matrix += (self.alpha - (1.0 if before == 0 else 0.0)) * np.outer(factor, factor)
            vector += self.alpha * factor
        self.vectors.pop(user, None)


class CooccurrencePeer:
    """Online item-to-item co-occurrence within each user's last ``window`` items."""

    def __init__(self, window: int = 10, normalize: str = "none", max_items: int = 30_000) -> None:
        if normalize not in ("none", "cosine"):
            raise ValueError("normalize is 'none' (counts) or 'cosine'")
        self.window = window
        self.normalize = normalize
        self.max_items = max_items  # the dense matrix takes max_items² × 4 B at most
        self.catalogue = Catalogue()
        self.counts = _Counts()
        self.pairs = np.zeros((256, 256), dtype=np.float32)
        self.recent: dict[str, deque[int]] = {}

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        for row in interactions:
            self.observe(row)

    def _grow(self, rows: int) -> None:
        size = len(self.pairs)
        if rows <= size:
            return
        if rows > self.max_items:
            raise MemoryError(f"co-occurrence over {rows} items exceeds max_items={self.max_items}")
        grown = np.zeros((min(self.max_items, 2 * size), min(self.max_items, 2 * size)), np.float32)
        grown[:size, :size] = self.pairs
        self.pairs = grown

    def observe(self, interaction: Interaction) -> None:
        row = self.catalogue.row(interaction.item)
        self._grow(row + 1)
        recent = self.recent.get(interaction.user)
        if recent is None:
            recent = self.recent[interaction.user] = deque(maxlen=self.window)
        pairs = self.pairs
        for other in recent:
            if other != row:
                pairs[row, other] += 1.0
                pairs[other, row] += 1.0
        recent.append(row)
        self.counts.add(row)

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        count = len(self.catalogue)
        popularity = self.counts.view(count)
        # Popularity only breaks ties: below 1 it never outweighs a count, and scaled down further
        # it never outweighs a cosine difference.
        scores = popularity / (popularity.sum() + 1.0)
        recent = self.recent.get(user)
        if recent:
            rows = np.fromiter(recent, dtype=np.int64, count=len(recent))
            pairs = self.pairs[rows, :count].astype(np.float64)
            if self.normalize == "cosine":
                # count(j, c) / sqrt(count(j) · count(c)): popular items stop dominating.
                pairs /= np.sqrt(popularity[rows])[:, None]
                pairs /= np.sqrt(np.maximum(popularity, 1.0))[None, :]
                scores *= 1e-9
            scores = scores + pairs.sum(axis=0)
        ranked = top_k(scores, k, self.catalogue.known_rows(exclude))
        ids = self.catalogue.ids
        return [ids[r] for r in ranked]


class RiverMFPeer:
    """River ``BiasedMF`` learned online on positives plus sampled negatives, fully ranked."""

    def __init__(
        self,
        factors: int = 32,
        negatives: int = 4,
        learning_rate: float = 0.05,
        l2: float = 0.001,
        seed: int = 0,
    ) -> None:
        from river import optim, reco

        self.factors = factors
        self.negatives = negatives
        self.model = reco.BiasedMF(
            n_factors=factors,
            bias_optimizer=optim.SGD(learning_rate),
            latent_optimizer=optim.SGD(learning_rate),
            l2_bias=l2,
            l2_latent=l2,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed,
        )
        self.rng = random.Random(seed)  # noqa: S311 - negative sampling, not security
        self.catalogue = Catalogue()
        self.latents = np.zeros((1024, factors))
        self.biases = np.zeros(1024)
        self.popular = PopularityOnline()

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        for row in interactions:
            self.observe(row)

    def _mirror(self, item: str) -> None:
        row = self.catalogue.row(item)
        if row >= len(self.biases):
            size = 2 * len(self.biases)
            latents, biases = np.zeros((size, self.factors)), np.zeros(size)
            latents[: len(self.latents)], biases[: len(self.biases)] = self.latents, self.biases
            self.latents, self.biases = latents, biases
        self.latents[row] = self.model.i_latents[item]
        self.biases[row] = self.model.i_biases[item]

    def observe(self, interaction: Interaction) -> None:
        user, item = interaction.user, interaction.item
        self.popular.observe(interaction)
        self.model.learn_one(user, item, 1.0)  # type: ignore[no-untyped-call]
        self._mirror(item)
        ids = self.catalogue.ids
        for _ in range(self.negatives if len(ids) > 1 else 0):
            negative = ids[self.rng.randrange(len(ids))]
            if negative != item:
                self.model.learn_one(user, negative, 0.0)  # type: ignore[no-untyped-call]
                self._mirror(negative)

    def scores(self, user: str) -> Floats | None:
        if user not in self.model.u_latents:  # never index it: the defaultdict would invent one
            return None
        count = len(self.catalogue)
        vector = self.model.u_latents[user]
        return self.latents[:count] @ vector + self.biases[:count]  # type: ignore[no-any-return]

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        scores = self.scores(user)
        if scores is None:
            return self.popular.recommend(user, k, exclude)
        rows = top_k(scores, k, self.catalogue.known_rows(exclude))
        ids = self.catalogue.ids
        return [ids[row] for row in rows]


PEERS: dict[str, Callable[[], Recommender]] = {
    "popularity-history": PopularityHistory,
    "popularity-online": PopularityOnline,
    "als-frozen": lambda: ALSPeer(fold_in=False),
    "als-fold-in": lambda: ALSPeer(fold_in=True),
    "cooccurrence-last10": CooccurrencePeer,
    "cooccurrence-last10-cosine": lambda: CooccurrencePeer(normalize="cosine"),
    "river-biased-mf": RiverMFPeer,
}
