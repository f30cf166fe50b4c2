"""The product's own model as in-process arms of the evaluation protocol (an estimate before the
through-the-stack arms: same model code, same learner, no Kafka/HTTP in between).

- ``pooling-frozen``: trained on the history, then nothing changes (the static baseline; users'
  recent items stay as they were at the end of the history);
- ``pooling-fresh-features``: the frozen model, but each user's recent items follow the stream
  (what the Redis feature cache gives the service);
- ``pooling-incremental``: fresh features and the learner keeps training on the stream, with a
  new version every ``retrain_every`` events (the full product, in process).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from streamrec_dev.evaluation.data import Interaction
from streamrec_dev.evaluation.protocol import Recommender
from streamrec_dev.evaluation.stack_arms import EVALUATION_HYPERPARAMETERS
from streamrec_shared.models.item_pooling import ItemPoolingScorer
from streamrec_shared.schemas.events import Interaction as Event
from streamrec_shared.schemas.models import ItemPoolingHyperparameters
from trainer.learner import Learner

# The best settings tried on ML-100K for this protocol (see the README's evaluation section):
# tied embeddings (+0.02 HR@10 over separate tables), small batches, half of each step replayed.
# The stack arms create their spec from the same dictionary.
HYPERPARAMETERS = ItemPoolingHyperparameters(**EVALUATION_HYPERPARAMETERS)
HISTORY_EPOCHS = 10


class PoolingArm:
    def __init__(
        self,
        fresh_features: bool,
        retrain_every: int | None,
        hp: ItemPoolingHyperparameters = HYPERPARAMETERS,
        epochs: int = HISTORY_EPOCHS,
    ) -> None:
        self.hp = hp
        self.epochs = epochs
        self.fresh_features = fresh_features
        self.retrain_every = retrain_every
        self.learner = Learner(hp)
        self.recent: dict[str, deque[str]] = {}
        self.scorer: ItemPoolingScorer | None = None
        self.seen = 0

    def _event(self, interaction: Interaction) -> Event:
        return Event(interaction.user, interaction.item, 1.0, str(interaction.timestamp))

    def fit_history(self, interactions: Sequence[Interaction]) -> None:
        for offset, interaction in enumerate(interactions):
            self.learner.observe(self._event(interaction), 0, offset)
            self._remember(interaction)
            if offset % 8192 == 0:
                self.learner.train_pending()
        self.learner.train_pending(flush=True)
        if self.epochs > 1:
            self.learner.train_epochs(self.epochs - 1, seed=self.hp.seed)
        self.scorer = ItemPoolingScorer(self.learner.candidate())
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
        scores = scorer.scores(scorer.user_vectors(rows), rows)[0]
        excluded = [scorer.rows[item] for item in exclude if item in scorer.rows]
        scores[excluded] = -np.inf
        top = np.argpartition(-scores, k)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        return [scorer.weights.item_ids[row] for row in top if np.isfinite(scores[row])]

    def observe(self, interaction: Interaction) -> None:
        if self.fresh_features:
            self._remember(interaction)
        if self.retrain_every is None:
            return
        self.learner.observe(self._event(interaction), 0, self.seen)
        self.seen += 1
        if self.seen % self.retrain_every == 0:
            self.learner.train_pending(flush=True)
            self.scorer = ItemPoolingScorer(self.learner.candidate())


MODEL_ARMS: dict[str, Callable[[], Recommender]] = {
    "pooling-frozen": lambda: PoolingArm(fresh_features=False, retrain_every=None),
    "pooling-fresh-features": lambda: PoolingArm(fresh_features=True, retrain_every=None),
    "pooling-incremental": lambda: PoolingArm(fresh_features=True, retrain_every=1000),
}
