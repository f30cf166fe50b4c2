"""Turns an ordered stream of interactions into training steps, held-out checks and snapshots.

A ``Learner`` owns one model and the state that goes with it: the growable item vocabulary, each
user's recent items (the model's input) and seen items (excluded when ranking), a replay
reservoir of past examples, the examples not trained yet, and the held-out sample the next
publish is judged on. It is synchronous and confined to one worker thread: TensorFlow and the
Python bookkeeping run off the event loop, so the service and its Kafka heartbeats stay live.

Held-out events (a ``rate`` share, chosen by the caller) are evaluated before any model has
trained on them; after the publish decision they are trained on like any other event, so they
reach the next version.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from streamrec_shared.models.item_pooling import ItemPoolingScorer, ItemPoolingWeights
from streamrec_shared.ranking import rank_metrics, tied_ranks
from streamrec_shared.schemas.events import Interaction
from streamrec_shared.schemas.models import ItemPoolingHyperparameters

from trainer.model.item_pooling import Batch, ItemPoolingModel

STATE_ARRAYS = "state.npz"
STATE_META = "state.json"
# Ranking a held-out event scores the whole catalogue: bound the score matrix per chunk.
SCORE_CELLS_PER_CHUNK = 4_000_000

Ints = npt.NDArray[np.int32]


@dataclass
class UserState:
    recent: deque[int]
    # Insertion-ordered set of rows, capped (oldest dropped): the exclusion list for ranking.
    seen: dict[int, None] = field(default_factory=dict)


@dataclass
class Examples:
    """Examples in arrival order, as Python lists until a step needs them as arrays."""

    history: list[list[int]] = field(default_factory=list)
    target: list[int] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    seen: list[list[int]] = field(default_factory=list)  # only kept for held-out examples

    def __len__(self) -> int:
        return len(self.target)

    def take(self, count: int) -> Batch:
        batch = Batch(
            history=np.asarray(self.history[:count], dtype=np.int32),
            target=np.asarray(self.target[:count], dtype=np.int32),
            weight=np.asarray(self.weight[:count], dtype=np.float32),
        )
        del self.history[:count], self.target[:count], self.weight[:count], self.seen[:count]
        return batch

    def extend(self, other: Examples) -> None:
        self.history.extend(other.history)
        self.target.extend(other.target)
        self.weight.extend(other.weight)

    def clear(self) -> None:
        for column in (self.history, self.target, self.weight, self.seen):
            column.clear()


class Reservoir:
    """A uniform sample of every example ever trained (Vitter's algorithm R, vectorised)."""

    def __init__(self, capacity: int, length: int, seed: int) -> None:
        self.capacity = capacity
        self.history = np.full((capacity, length), -1, dtype=np.int32)
        self.target = np.zeros(capacity, dtype=np.int32)
        self.weight = np.zeros(capacity, dtype=np.float32)
        self.offered = 0
        self._rng = np.random.default_rng(seed + 1)

    @property
    def size(self) -> int:
        return min(self.offered, self.capacity)

    def add(self, batch: Batch) -> None:
        if self.capacity == 0:
            return
        count = len(batch)
        seen = self.offered + np.arange(count)
        # Fill the free slots first, then each example replaces a random slot with p = C / seen.
        slots = np.where(seen < self.capacity, seen, self._rng.integers(0, seen + 1))
        keep = slots < self.capacity
        self.history[slots[keep]] = batch.history[keep]
        self.target[slots[keep]] = batch.target[keep]
        self.weight[slots[keep]] = batch.weight[keep]
        self.offered += count

    def rng_state(self) -> dict[str, Any]:
        return dict(self._rng.bit_generator.state)

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state

    def sample(self, count: int) -> Batch | None:
        if self.size == 0 or count <= 0:
            return None
        index = self._rng.integers(0, self.size, size=count)
        return Batch(self.history[index], self.target[index], self.weight[index])


def _concat(first: Batch, second: Batch | None) -> Batch:
    if second is None:
        return first
    return Batch(
        history=np.concatenate([first.history, second.history]),
        target=np.concatenate([first.target, second.target]),
        weight=np.concatenate([first.weight, second.weight]),
    )


class Learner:
    def __init__(self, hyperparameters: ItemPoolingHyperparameters, max_seen: int = 1000) -> None:
        self.hp = hyperparameters
        self.max_seen = max_seen
        self.model = ItemPoolingModel(hyperparameters)
        self.item_ids: list[str] = []
        self.item_rows: dict[str, int] = {}
        self.users: dict[str, UserState] = {}
        self.replay = Reservoir(
            hyperparameters.replay_buffer, hyperparameters.history_length, hyperparameters.seed
        )
        self.pending = Examples()
        # One thread may observe (append to pending) while another trains (takes from it).
        self._pending_lock = threading.Lock()
        self.heldout = Examples()
        # Per partition, the first offset not yet observed.
        self.position: dict[int, int] = {}
        self.events_observed = 0
        self.events_trained = 0
        self.last_loss: float | None = None

    # --- observing -----------------------------------------------------------------------

    def item_row(self, item_id: str) -> int:
        row = self.item_rows.get(item_id)
        if row is None:
            row = len(self.item_ids)
            self.item_rows[item_id] = row
            self.item_ids.append(item_id)
        return row

    def observe(
        self, interaction: Interaction, partition: int, offset: int, hold_out: bool = False
    ) -> None:
        """Add one event: an example from the user's history so far, then update the history.

        A repeat of an item the user has seen is trained on but never held out: ranking
        excludes seen items, so it could not be scored.
        """
        row = self.item_row(interaction.item_id)
        state = self.users.get(interaction.user_id)
        if state is None:
            state = UserState(recent=deque(maxlen=self.hp.history_length))
            self.users[interaction.user_id] = state
        history = list(reversed(state.recent))
        history.extend([-1] * (self.hp.history_length - len(history)))
        repeat = row in state.seen
        if hold_out and not repeat:
            self.heldout.history.append(history)
            self.heldout.target.append(row)
            self.heldout.weight.append(interaction.weight)
            self.heldout.seen.append(list(state.seen))
        else:
            with self._pending_lock:
                self.pending.history.append(history)
                self.pending.target.append(row)
                self.pending.weight.append(interaction.weight)
        state.recent.append(row)
        if not repeat:
            state.seen[row] = None
            if len(state.seen) > self.max_seen:
                del state.seen[next(iter(state.seen))]
        self.position[partition] = offset + 1
        self.events_observed += 1

    def skip(self, partition: int, offset: int) -> None:
        """An offset that carried no interaction (another event type, or dead-lettered)."""
        self.position[partition] = offset + 1

    # --- training ------------------------------------------------------------------------

    def train_pending(self, flush: bool = False) -> int:
        """Train full mini-batches of pending examples (all of them if ``flush``).

        Safe to run in one thread while another observes: batches are taken under the lock,
        and the tables are grown after taking a batch, when every row it names exists.
        """
        batch_size = self.hp.batch_size
        fresh_per_step = max(1, round(batch_size * (1 - self.hp.replay_fraction)))
        steps = 0
        while True:
            with self._pending_lock:
                if not (len(self.pending) >= fresh_per_step or (flush and len(self.pending))):
                    break
                fresh = self.pending.take(fresh_per_step)
            items = len(self.item_ids)
            self.model.ensure_capacity(items)
            replay = self.replay.sample(batch_size - fresh_per_step)
            self.last_loss = self.model.train(_concat(fresh, replay), items)
            self.replay.add(fresh)
            self.events_trained += len(fresh)
            steps += 1
        return steps

    def train_epochs(self, epochs: int, seed: int) -> None:
        """Extra shuffled passes over the replay reservoir (batch mode).

        The reservoir holds every trained example while they fit (``replay_buffer``), so for a
        bounded batch up to that size this is exactly "more epochs"; beyond it, a uniform sample.
        """
        rng = np.random.default_rng(seed)
        size = self.replay.size
        self.model.ensure_capacity(len(self.item_ids))
        for _ in range(epochs):
            order = rng.permutation(size)
            for start in range(0, size, self.hp.batch_size):
                index = order[start : start + self.hp.batch_size]
                batch = Batch(
                    self.replay.history[index], self.replay.target[index], self.replay.weight[index]
                )
                self.last_loss = self.model.train(batch, len(self.item_ids))

    def release_heldout(self) -> None:
        """After a publish decision the held-out sample becomes ordinary training data."""
        with self._pending_lock:
            self.pending.extend(self.heldout)
        self.heldout.clear()

    # --- judging -------------------------------------------------------------------------

    def candidate(self) -> ItemPoolingWeights:
        return self.model.export(self.item_ids)

    def evaluate(self, scorer: ItemPoolingScorer, limit: int) -> dict[str, float]:
        """HR/NDCG@10/20 of ``scorer`` on the newest ``limit`` held-out events.

        The scorer may be an older version with another vocabulary: rows are mapped through item
        ids; items it does not know drop out of histories, and an unknown target is a miss.
        """
        held = self.heldout
        count = min(len(held), limit)
        if count == 0:
            return rank_metrics(np.zeros(0))
        start = len(held) - count
        if scorer.weights.item_ids is self.item_ids or scorer.weights.item_ids == self.item_ids:
            mapping = np.arange(len(self.item_ids), dtype=np.int64)
        else:
            mapping = np.fromiter(
                (scorer.rows.get(item, -1) for item in self.item_ids),
                dtype=np.int64,
                count=len(self.item_ids),
            )
        history = np.asarray(held.history[start:], dtype=np.int64)
        history = np.where(history >= 0, mapping[np.maximum(history, 0)], -1)
        # Items the scorer does not know drop out and older ones move up, as in serving.
        history = np.take_along_axis(history, np.argsort(history < 0, axis=1, kind="stable"), 1)
        targets = mapping[np.asarray(held.target[start:], dtype=np.int64)]
        excluded = [mapping[np.asarray(rows, dtype=np.int64)] for rows in held.seen[start:]]
        excluded = [rows[rows >= 0] for rows in excluded]
        above = np.full(count, np.inf, dtype=np.float64)  # unknown targets: never a hit
        ties = np.zeros(count, dtype=np.float64)
        known = np.flatnonzero(targets >= 0)
        chunk = max(1, SCORE_CELLS_PER_CHUNK // max(1, scorer.item_count))
        for begin in range(0, len(known), chunk):
            rows = known[begin : begin + chunk]
            scores = scorer.scores(scorer.user_vectors(history[rows]))
            above[rows], ties[rows] = tied_ranks(scores, targets[rows], [excluded[r] for r in rows])
        return rank_metrics(above, ties=ties)

    # --- snapshots -----------------------------------------------------------------------

    def save(self, folder: Path, extra: dict[str, Any]) -> None:
        """Everything needed to continue exactly where this learner is (call it while no
        other thread observes)."""
        arrays: dict[str, npt.NDArray[Any]] = {
            f"model.{k}": v for k, v in self.model.state(len(self.item_ids)).items()
        }
        users = list(self.users)
        arrays["users.recent"], arrays["users.recent_len"] = _ragged(
            list(self.users[u].recent) for u in users
        )
        arrays["users.seen"], arrays["users.seen_len"] = _ragged(
            list(self.users[u].seen) for u in users
        )
        for name, examples in (("pending", self.pending), ("heldout", self.heldout)):
            arrays[f"{name}.history"] = np.asarray(examples.history, dtype=np.int32).reshape(
                -1, self.hp.history_length
            )
            arrays[f"{name}.target"] = np.asarray(examples.target, dtype=np.int32)
            arrays[f"{name}.weight"] = np.asarray(examples.weight, dtype=np.float32)
        arrays["heldout.seen"], arrays["heldout.seen_len"] = _ragged(self.heldout.seen)
        size = self.replay.size
        arrays["replay.history"] = self.replay.history[:size]
        arrays["replay.target"] = self.replay.target[:size]
        arrays["replay.weight"] = self.replay.weight[:size]
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        (folder / STATE_ARRAYS).write_bytes(buffer.getvalue())
        meta = {
            **extra,
            "item_ids": self.item_ids,
            "user_ids": users,
            "position": {str(p): o for p, o in self.position.items()},
            "events_observed": self.events_observed,
            "events_trained": self.events_trained,
            "replay_offered": self.replay.offered,
            # Random streams too, so a restored learner draws the same replay and negatives.
            "replay_rng": _big_ints_as_text(self.replay.rng_state()),
            "model_rng": _big_ints_as_text(self.model.rng_state()),
            "steps": self.model.steps,
        }
        (folder / STATE_META).write_bytes(orjson.dumps(meta))

    @classmethod
    def load(
        cls, folder: Path, hyperparameters: ItemPoolingHyperparameters, max_seen: int = 1000
    ) -> tuple[Learner, dict[str, Any]]:
        learner = cls(hyperparameters, max_seen)
        meta: dict[str, Any] = orjson.loads((folder / STATE_META).read_bytes())
        with np.load(folder / STATE_ARRAYS, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        learner.item_ids = list(meta["item_ids"])
        learner.item_rows = {item: row for row, item in enumerate(learner.item_ids)}
        learner.model.restore(
            {k.removeprefix("model."): v for k, v in arrays.items() if k.startswith("model.")}
        )
        learner.model.steps = int(meta["steps"])
        recent = _unragged(arrays["users.recent"], arrays["users.recent_len"])
        seen = _unragged(arrays["users.seen"], arrays["users.seen_len"])
        for user, rows, seen_rows in zip(meta["user_ids"], recent, seen, strict=True):
            learner.users[user] = UserState(
                recent=deque(rows, maxlen=hyperparameters.history_length),
                seen=dict.fromkeys(seen_rows),
            )
        for name in ("pending", "heldout"):
            examples: Examples = getattr(learner, name)
            examples.history = arrays[f"{name}.history"].tolist()
            examples.target = arrays[f"{name}.target"].tolist()
            examples.weight = arrays[f"{name}.weight"].tolist()
        learner.heldout.seen = _unragged(arrays["heldout.seen"], arrays["heldout.seen_len"])
        size = len(arrays["replay.target"])
        learner.replay.history[:size] = arrays["replay.history"]
        learner.replay.target[:size] = arrays["replay.target"]
        learner.replay.weight[:size] = arrays["replay.weight"]
        learner.replay.offered = int(meta["replay_offered"])
        learner.replay.set_rng_state(_text_as_big_ints(meta["replay_rng"]))
        learner.model.set_rng_state(_text_as_big_ints(meta["model_rng"]))
        learner.position = {int(p): int(o) for p, o in meta["position"].items()}
        learner.events_observed = int(meta["events_observed"])
        learner.events_trained = int(meta["events_trained"])
        return learner, meta

    def warm_start(self, weights: ItemPoolingWeights) -> None:
        """Begin from a published version's weights and vocabulary (no user state)."""
        self.item_ids = list(weights.item_ids)
        self.item_rows = {item: row for row, item in enumerate(self.item_ids)}
        self.model.warm_start(weights)


def _ragged(rows: Iterable[list[int]]) -> tuple[Ints, Ints]:
    materialised = list(rows)
    lengths = np.fromiter((len(r) for r in materialised), dtype=np.int32, count=len(materialised))
    flat = np.fromiter(
        (x for r in materialised for x in r), dtype=np.int32, count=int(lengths.sum())
    )
    return flat, lengths


def _unragged(flat: Ints, lengths: Ints) -> list[list[int]]:
    ends = np.cumsum(lengths)
    values = flat.tolist()
    return [values[end - length : end] for end, length in zip(ends, lengths, strict=True)]


def _big_ints_as_text(value: Any) -> Any:
    """NumPy generator states hold 128-bit integers, which JSON encoders refuse: keep them as
    ``{"int": "<digits>"}``."""
    if isinstance(value, dict):
        return {k: _big_ints_as_text(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"int": str(value)}
    return value


def _text_as_big_ints(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"int"}:
            return int(value["int"])
        return {k: _text_as_big_ints(v) for k, v in value.items()}
    return value
