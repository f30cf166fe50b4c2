"""The product's own model as in-process arms of the evaluation protocol (an estimate before the
through-the-stack arms: same model code, same learner, no Kafka/HTTP in between).

- ``pooling-frozen``: trained on the history, then nothing changes (the static baseline; users'
  recent items stay as they were at the end of the history);
- ``pooling-fresh-features``: the frozen model, but each user's recent items follow the stream
  (what the Redis feature cache gives the service);
- ``pooling-incremental``: fresh features and the learner keeps training on the stream, with a
  new version every ``retrain_every`` events (the full product, in process);
- ``pooling-incremental-new-items``: the same, and items the version does not know yet are
  ranked from their first events (:class:`NewItems`), as the stack's inference does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from inference.config import InferenceSettings
from streamrec_dev.evaluation.data import Interaction
from streamrec_dev.evaluation.protocol import Recommender
from streamrec_dev.evaluation.stack_arms import EVALUATION_HYPERPARAMETERS
from streamrec_shared.models.item_pooling import (
    Floats,
    FoldedItems,
    ItemContext,
    ItemPoolingScorer,
    ItemPoolingWeights,
    Rows,
    fold_in,
)
from streamrec_shared.schemas.events import Interaction as Event
from streamrec_shared.schemas.models import ItemPoolingHyperparameters
from trainer.learner import Learner

# The best settings tried on ML-100K for this protocol (see the README's evaluation section):
# tied embeddings (+0.02 HR@10 over separate tables), small batches, half of each step replayed.
# The stack arms create their spec from the same dictionary.
HYPERPARAMETERS = ItemPoolingHyperparameters(**EVALUATION_HYPERPARAMETERS)
HISTORY_EPOCHS = 10
# As inference keeps and uses new items' contexts by default.
CONTEXT_EVENTS = InferenceSettings.model_fields["new_item_context_events"].default
YOUNG_EVENTS = InferenceSettings.model_fields["young_item_events"].default
YOUNG_ITEMS = InferenceSettings.model_fields["young_items_max"].default


class NewItems:
    """Items launched since the version, ranked from their first events ("fold-in").

    A version knows only the items it trained on, so an item launched after it cannot be
    recommended until the next one, while the co-occurrence peer ranks it from its first event.
    Here the contexts (each user's newest ``window`` items before each of an item's first
    ``CONTEXT_EVENTS`` events in the stream) are kept in memory, and :func:`fold_in` places the
    items the version does not know from them, and gives the young ones it knows their live
    term, as inference does from the contexts the feature updater keeps in Redis. A version that
    knows the item replaces its placed vector with what it trained.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.context: dict[str, Counter[str]] = {}
        self.events: Counter[str] = Counter()
        self.first_seen: dict[str, int] = {}  # item → its rank by first event in the stream
        self._ranked: tuple[ItemPoolingScorer, FoldedItems] | None = None

    def observe(self, item: str, before: Iterable[str], scorer: ItemPoolingScorer) -> None:
        """``before``: the user's items before this event, oldest first."""
        self.events[item] += 1
        self.first_seen.setdefault(item, len(self.first_seen))
        if self.events[item] > CONTEXT_EVENTS:
            return
        self.context.setdefault(item, Counter()).update(list(before)[-self.window :])
        if scorer.needs_context(item, YOUNG_EVENTS):
            self._ranked = None  # a context the table uses changed

    def scores(
        self,
        scorer: ItemPoolingScorer,
        user_vector: Floats,
        history_rows: Rows,
        exclude: set[str],
    ) -> tuple[list[str], Floats]:
        """The unknown items' ids and one user's scores for them (``history_rows``: the user's
        known rows, newest first; items in ``exclude``: -inf), to rank with the catalogue's."""
        folded = self.folded(scorer)
        scores = folded.scores(user_vector, history_rows)
        scores[[item in exclude for item in folded.item_ids]] = -np.inf
        return folded.item_ids, scores

    def folded(self, scorer: ItemPoolingScorer) -> FoldedItems:
        """The unknown items with a known context, placed against ``scorer``'s version."""
        if self._ranked is None or self._ranked[0] is not scorer:
            newest = len(self.first_seen) - YOUNG_ITEMS  # the young: among the newest only
            contexts = {
                item: ItemContext(min(self.events[item], CONTEXT_EVENTS), before)
                for item, before in self.context.items()
                if item not in scorer.rows or self.first_seen[item] >= newest
            }
            self._ranked = (scorer, fold_in(scorer, contexts, YOUNG_EVENTS))
        return self._ranked[1]


class HistoryFit:
    """The batch training on the history, done once for every arm that asks with the same
    history (each fit took ~40 s on ML-100K). Arms that keep training continue from their own
    copy of the learner (``Learner.save`` / ``load``: weights, optimizer slots, replay sample and
    random streams), exactly where a fit of their own would have left them; the frozen ones need
    only its weights, which are not copied (a learner's replay sample alone is 120 MB)."""

    def __init__(
        self, hp: ItemPoolingHyperparameters = HYPERPARAMETERS, epochs: int = HISTORY_EPOCHS
    ) -> None:
        self.hp = hp
        self.epochs = epochs
        self._history: list[Event] | None = None  # what the saved learner was fitted on
        self._weights: ItemPoolingWeights | None = None  # its candidate
        self._folder = Path(tempfile.mkdtemp(prefix="streamrec-history-fit-"))
        weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        self.fits = 0

    def weights(self, history: list[Event]) -> ItemPoolingWeights:
        """The fitted version's weights (read-only arrays: arms may share them)."""
        if history != self._history:
            learner = Learner(self.hp)
            for offset, event in enumerate(history):
                learner.observe(event, 0, offset)
                if offset % 8192 == 0:
                    learner.train_pending()
            learner.train_pending(flush=True)
            if self.epochs > 1:
                learner.train_epochs(self.epochs - 1, seed=self.hp.seed)
            learner.save(self._folder, {})
            self._history, self._weights = history, learner.candidate()
            self.fits += 1
        assert self._weights is not None
        return self._weights

    def learner(self, history: list[Event]) -> Learner:
        """A learner of its own, where the fit left it."""
        self.weights(history)
        return Learner.load(self._folder, self.hp)[0]


class PoolingArm:
    def __init__(
        self,
        fresh_features: bool,
        retrain_every: int | None,
        history_fit: HistoryFit | None = None,
        rank_new_items: bool = False,
    ) -> None:
        self.history_fit = history_fit or HistoryFit()
        self.hp = self.history_fit.hp
        self.fresh_features = fresh_features
        self.retrain_every = retrain_every
        self.learner: Learner | None = None  # only for the arms that keep training
        self.recent: dict[str, deque[str]] = {}
        self.scorer: ItemPoolingScorer | None = None
        self.seen = 0
        self.new_items = NewItems(self.hp.cooccurrence_window) if rank_new_items else None

    def _event(self, interaction: Interaction) -> Event:
        return Event(interaction.user, interaction.item, 1.0, str(interaction.timestamp))

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        history = [self._event(row) for row in interactions]
        if self.retrain_every is None:
            self.scorer = ItemPoolingScorer(self.history_fit.weights(history))
        else:
            self.learner = self.history_fit.learner(history)
            self.scorer = ItemPoolingScorer(self.learner.candidate())
        for interaction in interactions:
            self._remember(interaction)
        self.seen = len(interactions)

    def _remember(self, interaction: Interaction) -> None:
        recent = self.recent.get(interaction.user)
        if recent is None:
            recent = self.recent[interaction.user] = deque(maxlen=self.hp.history_length)
        recent.append(interaction.item)

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]:
        assert self.scorer is not None
        scorer = self.scorer
        history = list(reversed(self.recent.get(user, ())))
        rows = scorer.history_rows([history])
        user_vectors = scorer.user_vectors(rows)
        scores = scorer.scores(user_vectors, rows)[0]
        if self.new_items is not None:
            self.new_items.folded(scorer).young_term.add(scores, rows[0][rows[0] >= 0])
        excluded = [scorer.rows[item] for item in exclude if item in scorer.rows]
        scores[excluded] = -np.inf
        ids = scorer.weights.item_ids
        if self.new_items is not None:
            new_ids, new_scores = self.new_items.scores(
                scorer, user_vectors[0], rows[0][rows[0] >= 0], exclude
            )
            scores = np.concatenate([scores, new_scores])
            ids = [*ids, *new_ids]
        top = np.argpartition(-scores, k)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        return [ids[row] for row in top if np.isfinite(scores[row])]

    def observe(self, interaction: Interaction) -> None:
        if self.new_items is not None and self.scorer is not None:
            before = self.recent.get(interaction.user, ())
            self.new_items.observe(interaction.item, before, self.scorer)
        if self.fresh_features:
            self._remember(interaction)
        if self.retrain_every is None:
            return
        assert self.learner is not None, "fit_history first"
        self.learner.observe(self._event(interaction), 0, self.seen)
        self.seen += 1
        if self.seen % self.retrain_every == 0:
            self.learner.train_pending(flush=True)
            self.scorer = ItemPoolingScorer(self.learner.candidate())


def model_arms() -> dict[str, Callable[[], Recommender]]:
    """The in-process arms, sharing one history fit (per history they are run on)."""
    fit = HistoryFit()
    return {
        "pooling-frozen": lambda: PoolingArm(False, None, fit),
        "pooling-fresh-features": lambda: PoolingArm(True, None, fit),
        "pooling-incremental": lambda: PoolingArm(True, 1000, fit),
        "pooling-incremental-new-items": lambda: PoolingArm(True, 1000, fit, rank_new_items=True),
    }
