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

import dataclasses
import io
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from streamrec_shared.models.item_pooling import ItemPoolingScorer, ItemPoolingWeights
from streamrec_shared.ranking import rank_metrics, tied_ranks
from streamrec_shared.schemas.events import INTERACTION_WEIGHTS, Interaction, decode_interaction
from streamrec_shared.schemas.models import ItemPoolingHyperparameters

from trainer.cooccurrence import Cooccurrence
from trainer.model.item_pooling import Batch, ItemPoolingModel

STATE_ARRAYS = "state.npz"
STATE_META = "state.json"
# Ranking a held-out event scores the whole catalogue: bound the score matrix per chunk.
SCORE_CELLS_PER_CHUNK = 4_000_000

Ints = npt.NDArray[np.int32]
# How much of a version's events a run warm-started from it reads again.
ReadsAgain = Literal["none", "all", "part"]


@dataclass(frozen=True)
class Reading:
    """Which of the events already in the topic a run reads: offsets ``[start, end)`` of each
    partition in ``ranges`` (``end`` None: on and on), and from ``unnamed`` on in the others
    (None: none of theirs). ``runs.reading_of`` makes one from a run's stream."""

    ranges: Mapping[int, tuple[int, int | None]]
    unnamed: int | None = None

    def _range(self, partition: int) -> tuple[int, int | None] | None:
        if partition in self.ranges:
            return self.ranges[partition]
        return None if self.unnamed is None else (self.unnamed, None)

    def reads(self, partition: int, offset: int) -> bool:
        span = self._range(partition)
        return span is not None and span[0] <= offset and (span[1] is None or offset < span[1])

    def again(self, trained_through: Mapping[int, int]) -> ReadsAgain:
        """How much of a version's events, below ``trained_through`` (the next offset per
        partition), this run reads again: none of them, all of them, or part."""
        read, partitions = 0, 0
        for partition, through in trained_through.items():
            if through <= 0:
                continue
            partitions += 1
            span = self._range(partition)
            if span is None or span[0] >= through or (span[1] is not None and span[1] <= span[0]):
                continue  # none of this partition's
            if span[0] > 0 or (span[1] is not None and span[1] < through):
                return "part"
            read += 1
        if read == 0:
            return "none"
        return "all" if read == partitions else "part"


READS_NONE = Reading({})  # a run that starts past every event already in the topic


@dataclass
class UserState:
    """One user's state as the rest of the code sees it (a view: the learner keeps all users'
    recent items in one array)."""

    recent: deque[int]
    # Insertion-ordered set of rows, capped (oldest dropped): the exclusion list for ranking.
    seen: dict[int, None] = field(default_factory=dict)


UNKNOWN: tuple[int, int] = (-1, -1)  # an event's (partition, offset) where it is not known


class Examples:
    """Examples in arrival order, kept as NumPy chunks (one per observed fetch) so that taking
    a mini-batch is a slice, not a conversion of Python lists."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._chunks: deque[Batch] = deque()
        self._head = 0  # examples of the first chunk already taken
        self._count = 0
        # Only kept for held-out examples: each one's seen set, and where its event is in the
        # stream ((partition, offset); (-1, -1): not known).
        self.seen: list[list[int]] = []
        self.sources: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return self._count

    def append(
        self,
        batch: Batch,
        seen: list[list[int]] | None = None,
        sources: list[tuple[int, int]] | None = None,
    ) -> None:
        if len(batch) == 0:
            return
        self._chunks.append(batch)
        self._count += len(batch)
        if seen is not None:
            self.seen.extend(seen)
        if sources is not None:
            self.sources.extend(sources)

    def take(self, count: int) -> Batch:
        """The oldest ``count`` examples (fewer if there are fewer), removed from here."""
        parts: list[Batch] = []
        wanted = min(count, self._count)
        while wanted > 0:
            chunk = self._chunks[0]
            available = len(chunk) - self._head
            used = min(available, wanted)
            end = self._head + used
            parts.append(
                Batch(chunk.history[self._head : end], chunk.target[self._head : end],
                      chunk.weight[self._head : end])
            )  # fmt: skip
            wanted -= used
            if end == len(chunk):
                self._chunks.popleft()
                self._head = 0
            else:
                self._head = end
        taken = sum(len(part) for part in parts)
        self._count -= taken
        del self.seen[:taken]
        del self.sources[:taken]
        return _concat_all(parts, self.length)

    def arrays(self) -> Batch:
        """Every example, oldest first (a copy)."""
        chunks = list(self._chunks)
        if chunks and self._head:
            first = chunks[0]
            chunks[0] = Batch(
                first.history[self._head :], first.target[self._head :], first.weight[self._head :]
            )
        return _concat_all(chunks, self.length)

    @property
    def history(self) -> list[list[int]]:
        return self.arrays().history.tolist()  # type: ignore[no-any-return]

    @property
    def target(self) -> list[int]:
        return self.arrays().target.tolist()  # type: ignore[no-any-return]

    @property
    def weight(self) -> list[float]:
        return self.arrays().weight.tolist()  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._chunks.clear()
        self._head = 0
        self._count = 0
        self.seen.clear()
        self.sources.clear()


def _concat_all(parts: list[Batch], length: int) -> Batch:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return Batch(
            np.zeros((0, length), np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
        )
    return Batch(
        history=np.concatenate([part.history for part in parts]),
        target=np.concatenate([part.target for part in parts]),
        weight=np.concatenate([part.weight for part in parts]),
    )


def _batch_arrays(name: str, batch: Batch) -> dict[str, npt.NDArray[Any]]:
    """A batch as arrays named ``name.history`` / ``.target`` / ``.weight``, to store."""
    return {
        f"{name}.history": batch.history,
        f"{name}.target": batch.target,
        f"{name}.weight": batch.weight,
    }


def _stored_batch(arrays: Mapping[str, npt.NDArray[Any]], name: str) -> Batch:
    """The batch ``_batch_arrays(name, ...)`` stored."""
    return Batch(
        np.asarray(arrays[f"{name}.history"], dtype=np.int32),
        np.asarray(arrays[f"{name}.target"], dtype=np.int32),
        np.asarray(arrays[f"{name}.weight"], dtype=np.float32),
    )


def _sources_array(name: str, sources: list[tuple[int, int]]) -> dict[str, npt.NDArray[Any]]:
    """Held-out events' (partition, offset) as one ``[n, 2]`` array named ``name.source``."""
    return {f"{name}.source": np.asarray(sources, dtype=np.int64).reshape(-1, 2)}


def _stored_sources(
    arrays: Mapping[str, npt.NDArray[Any]], name: str, count: int
) -> list[tuple[int, int]]:
    """What ``_sources_array`` stored; state from before session 13 has none: not known."""
    stored = arrays.get(f"{name}.source")
    if stored is None:
        return [UNKNOWN] * count
    return [(int(partition), int(offset)) for partition, offset in stored]


class _Users(Mapping[str, UserState]):
    """Read-only view of the per-user state, by user id."""

    def __init__(self, learner: Learner) -> None:
        self._learner = learner

    def __getitem__(self, user: str) -> UserState:
        learner = self._learner
        row = learner.user_rows[user]
        recent = learner.recent[row]
        return UserState(
            recent=deque(recent[recent >= 0][::-1].tolist(), maxlen=learner.hp.example_length),
            seen=learner.seen[row],
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._learner.user_ids)

    def __len__(self) -> int:
        return len(self._learner.user_ids)


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


@dataclass
class Decoded:
    """The interactions among some event records, in order, as columns; ``rejected`` holds
    ``(index, error)`` for the records that are not event records (for the dead-letter topic).
    Records of other event types are left out silently."""

    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    timestamps: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # each interaction's index among the records


def decode_records(values: Iterable[bytes | None]) -> Decoded:
    """``decode_interaction`` for many records, without an object per record.

    The fast path does what ``decode_interaction`` does (parse, look the type up, read the four
    fields); anything unusual goes through ``decode_interaction`` itself, so the outcome and the
    error text are the same record for record.
    """
    out = Decoded()
    users, items, weights, timestamps = out.users, out.items, out.weights, out.timestamps
    loads = orjson.loads
    weight_of = INTERACTION_WEIGHTS.get
    for index, value in enumerate(values):
        try:
            record = loads(value)  # type: ignore[arg-type]
            weight = weight_of(record["type"])
            if weight is None:
                continue
            user, item, timestamp = record["user_id"], record["item_id"], record["timestamp"]
        except Exception:  # the reference decoder decides
            try:
                interaction = decode_interaction(value or b"")
            except ValueError as error:
                out.rejected.append((index, str(error)))
                continue
            if interaction is None:
                continue
            user, item = interaction.user_id, interaction.item_id
            weight, timestamp = interaction.weight, interaction.timestamp
        users.append(user)
        items.append(item)
        weights.append(weight)
        timestamps.append(timestamp)
        out.indices.append(index)
    return out


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
        # Users: a row each; ``recent[row]`` is the newest-first history (-1 padded), exactly an
        # example's input, and ``seen[row]`` the capped insertion-ordered set of seen items.
        self.user_ids: list[str] = []
        self.user_rows: dict[str, int] = {}
        width = hyperparameters.example_length
        self.recent = np.full((1024, width), -1, dtype=np.int32)
        self.seen: list[dict[int, None]] = []
        self.replay = Reservoir(hyperparameters.replay_buffer, width, hyperparameters.seed)
        self.pending = Examples(width)
        # One thread may observe (append to pending) while another trains (takes from it).
        self._pending_lock = threading.Lock()
        self.heldout = Examples(width)
        # Counted, not learned: the item-to-item term a version publishes (off at weight 0).
        self.cooccurrence = (
            Cooccurrence(
                hyperparameters.cooccurrence_window, hyperparameters.cooccurrence_max_pairs
            )
            if hyperparameters.cooccurrence_weight > 0
            else None
        )
        # Per partition, the first offset not yet observed.
        self.position: dict[int, int] = {}
        # Per partition, the offset below which events are already in the item-pair counts: set
        # when a run continues a version's counts and reads part of its events again. Such
        # events are trained but not counted, and never held out (the version trained them).
        # Partitions drop out once observed past it.
        self.counted_through: dict[int, int] = {}
        self.events_observed = 0
        self.events_trained = 0
        self.last_loss: float | None = None

    @property
    def users(self) -> Mapping[str, UserState]:
        return _Users(self)

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
        self.observe_many(
            [interaction.user_id],
            [interaction.item_id],
            [interaction.weight],
            [hold_out] if hold_out else None,
            {partition: offset + 1},
            [(partition, offset)],
        )

    def observe_many(
        self,
        users: Sequence[str],
        items: Sequence[str],
        weights: Sequence[float],
        hold_out: Sequence[bool] | None,
        positions: Mapping[int, int],
        sources: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """``observe`` for a sequence of events in stream order (same result, one event after
        the other), then ``position[p] = positions[p]``. The per-event Python work is the id
        lookups and the seen sets; histories are built for the whole sequence with NumPy.

        ``sources``: each event's (partition, offset), needed while ``counted_through`` is set
        and kept with held-out events (so a run that reads part of a version again knows which
        of its sample it will not read); callers that hold events out should pass them."""
        count = len(users)
        counted = self._counted_before(sources, count)
        if counted is not None and hold_out is not None:
            hold_out = [hold and not known for hold, known in zip(hold_out, counted, strict=True)]
        if count:
            rows = self._rows(self.item_rows, self.item_ids, items)
            user_rows = self._rows(self.user_rows, self.user_ids, users)
            self._grow_users(len(self.user_ids))
            held, held_seen = self._update_seen(user_rows, rows, hold_out)
            target = np.asarray(rows, dtype=np.int32)
            history = self._histories(np.asarray(user_rows, dtype=np.int64), target)
            weight = np.asarray(weights, dtype=np.float32)
            keep = np.ones(count, dtype=bool)
            if held:
                index = np.asarray(held)
                keep[index] = False
                held_sources = (
                    [sources[i] for i in held] if sources is not None else [UNKNOWN] * len(held)
                )
                self.heldout.append(
                    Batch(history[index], target[index], weight[index]), held_seen, held_sources
                )
                fresh = Batch(history[keep], target[keep], weight[keep])
            else:
                fresh = Batch(history, target, weight)
            with self._pending_lock:
                self.pending.append(fresh)
            if self.cooccurrence is not None:
                # Held-out events count once released: the gate must not see its own targets.
                if counted is None:
                    self.cooccurrence.add(fresh.history, fresh.target)
                else:
                    new = ~counted[keep]
                    self.cooccurrence.add(fresh.history[new], fresh.target[new])
            self.events_observed += count
        self.position.update(positions)
        if self.counted_through:
            self.counted_through = {
                p: through
                for p, through in self.counted_through.items()
                if self.position.get(p, 0) < through
            }

    def _counted_before(
        self, sources: Sequence[tuple[int, int]] | None, count: int
    ) -> npt.NDArray[np.bool_] | None:
        """Which events are already in the counts (see ``counted_through``); None: none."""
        if not self.counted_through or count == 0:
            return None
        if sources is None or len(sources) != count:
            raise ValueError("events below counted_through need their (partition, offset)")
        through = self.counted_through
        return np.fromiter(
            (offset < through.get(partition, 0) for partition, offset in sources),
            dtype=bool,
            count=count,
        )

    @staticmethod
    def _rows(rows_of: dict[str, int], ids: list[str], keys: Sequence[str]) -> list[int]:
        """Rows of ``keys``, new keys getting the next rows in order of first appearance."""
        known = len(ids)
        rows = [rows_of.setdefault(key, len(rows_of)) for key in keys]
        if len(rows_of) > known:
            # New keys are listed (in row order) only now, after every row is assigned.
            new = [(row, key) for row, key in zip(rows, keys, strict=True) if row >= known]
            ids.extend(key for _, key in sorted(dict(new).items()))
        return rows

    def _grow_users(self, users: int) -> None:
        if users > len(self.recent):
            grown = np.full(
                (max(users, 2 * len(self.recent)), self.hp.example_length), -1, dtype=np.int32
            )
            grown[: len(self.recent)] = self.recent
            self.recent = grown
        self.seen.extend({} for _ in range(users - len(self.seen)))

    def _update_seen(
        self, user_rows: list[int], rows: list[int], hold_out: Sequence[bool] | None
    ) -> tuple[list[int], list[list[int]]]:
        """Add each event's item to its user's seen set (the one per-event loop); returns the
        held-out events (held out and not a repeat) and their seen sets before the event."""
        seen = self.seen
        cap = self.max_seen
        held: list[int] = []
        held_seen: list[list[int]] = []
        if hold_out is None:
            for user, row in zip(user_rows, rows, strict=True):
                items = seen[user]
                if row not in items:
                    items[row] = None
                    if len(items) > cap:
                        del items[next(iter(items))]
            return held, held_seen
        for index, (user, row, hold) in enumerate(zip(user_rows, rows, hold_out, strict=True)):
            items = seen[user]
            if row in items:
                continue  # a repeat: trained, never held out
            if hold:
                held.append(index)
                held_seen.append(list(items))
            items[row] = None
            if len(items) > cap:
                del items[next(iter(items))]
        return held, held_seen

    def _histories(self, users: npt.NDArray[np.int64], rows: Ints) -> Ints:
        """Each event's newest-first history, then each user's history after the sequence.

        Events are grouped by user (stably); per group a flat run holds the user's history
        (oldest first) followed by the group's items, so an event's history is the ``length``
        entries before it, read backwards.
        """
        length = self.hp.example_length
        count = len(rows)
        order = np.argsort(users, kind="stable")
        sorted_users = users[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_users[1:] != sorted_users[:-1]]))
        group_users = sorted_users[starts]
        sizes = np.diff(np.append(starts, count))
        groups = len(starts)
        back = np.arange(1, length + 1)
        flat = np.empty(groups * length + count, dtype=np.int32)
        state_at = (np.arange(groups) * length + starts)[:, None] + np.arange(length)
        flat[state_at] = self.recent[group_users][:, ::-1]
        event_at = (np.repeat(np.arange(groups), sizes) + 1) * length + np.arange(count)
        flat[event_at] = rows[order]
        history = np.empty((count, length), dtype=np.int32)
        history[order] = flat[event_at[:, None] - back]
        ends = event_at[starts + sizes - 1] + 1
        self.recent[group_users] = flat[ends[:, None] - back]
        return history

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

    def release_heldout(self, keep: int = 0) -> None:
        """After a publish decision the held-out sample becomes ordinary training data, all but
        its newest ``keep`` events, which stay out of training for the next decision."""
        released = self.heldout.take(max(0, len(self.heldout) - keep))
        with self._pending_lock:
            self.pending.append(released)
        if self.cooccurrence is not None:
            self.cooccurrence.add(released.history, released.target)

    # --- judging -------------------------------------------------------------------------

    def candidate(self) -> ItemPoolingWeights:
        weights = self.model.export(self.item_ids)
        if self.cooccurrence is None:
            return weights
        indptr, rows, cosines = self.cooccurrence.neighbors(
            len(self.item_ids), self.hp.cooccurrence_neighbors
        )
        return dataclasses.replace(
            weights,
            neighbor_indptr=indptr,
            neighbor_rows=rows,
            neighbor_weights=cosines,
            cooccurrence_weight=self.hp.cooccurrence_weight,
            cooccurrence_window=self.hp.cooccurrence_window,
            cooccurrence_decay=self.hp.cooccurrence_decay,
            item_events=self.cooccurrence.events(len(self.item_ids)).astype(np.float32),
        )

    def evaluate(self, scorer: ItemPoolingScorer, limit: int) -> dict[str, float]:
        """HR/NDCG@10/20 of ``scorer`` on the newest ``limit`` held-out events."""
        above, ties = self.rank(scorer, limit)
        return rank_metrics(above, ties=ties)

    def rank(
        self, scorer: ItemPoolingScorer, limit: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Per held-out event (the newest ``limit``, oldest first): how many items ``scorer``
        ranks above the target and how many tie with it (``tied_ranks``).

        The scorer may be an older version with another vocabulary: rows are mapped through item
        ids; items it does not know drop out of histories, and an unknown target is a miss.
        """
        held = self.heldout
        count = min(len(held), limit)
        if count == 0:
            return np.zeros(0), np.zeros(0)
        start = len(held) - count
        if scorer.weights.item_ids is self.item_ids or scorer.weights.item_ids == self.item_ids:
            mapping = np.arange(len(self.item_ids), dtype=np.int64)
        else:
            mapping = np.fromiter(
                (scorer.rows.get(item, -1) for item in self.item_ids),
                dtype=np.int64,
                count=len(self.item_ids),
            )
        examples = held.arrays()
        history = examples.history[start:].astype(np.int64)
        history = np.where(history >= 0, mapping[np.maximum(history, 0)], -1)
        # Items the scorer does not know drop out and older ones move up, as in serving.
        history = np.take_along_axis(history, np.argsort(history < 0, axis=1, kind="stable"), 1)
        # As serving pools: the scorer's own number of newest known items.
        history = history[:, : scorer.weights.history_length]
        targets = mapping[examples.target[start:].astype(np.int64)]
        excluded = [mapping[np.asarray(rows, dtype=np.int64)] for rows in held.seen[start:]]
        excluded = [rows[rows >= 0] for rows in excluded]
        above = np.full(count, np.inf, dtype=np.float64)  # unknown targets: never a hit
        ties = np.zeros(count, dtype=np.float64)
        known = np.flatnonzero(targets >= 0)
        chunk = max(1, SCORE_CELLS_PER_CHUNK // max(1, scorer.item_count))
        for begin in range(0, len(known), chunk):
            rows = known[begin : begin + chunk]
            scores = scorer.scores(scorer.user_vectors(history[rows]), history[rows])
            above[rows], ties[rows] = tied_ranks(scores, targets[rows], [excluded[r] for r in rows])
        return above, ties

    # --- snapshots -----------------------------------------------------------------------

    def save(self, folder: Path, extra: dict[str, Any]) -> None:
        """Everything needed to continue exactly where this learner is (call it while no
        other thread observes)."""
        arrays: dict[str, npt.NDArray[Any]] = {
            f"model.{k}": v for k, v in self.model.state(len(self.item_ids)).items()
        }
        users = list(self.user_ids)
        # Per user, the recent rows oldest first (the stored layout since the first version).
        recent = self.recent[: len(users), ::-1]
        arrays["users.recent"] = recent[recent >= 0]
        arrays["users.recent_len"] = (recent >= 0).sum(axis=1).astype(np.int32)
        arrays["users.seen"], arrays["users.seen_len"] = _ragged(
            list(seen) for seen in self.seen[: len(users)]
        )
        arrays.update(_batch_arrays("pending", self.pending.arrays()))
        arrays.update(_batch_arrays("heldout", self.heldout.arrays()))
        arrays["heldout.seen"], arrays["heldout.seen_len"] = _ragged(self.heldout.seen)
        arrays.update(_sources_array("heldout", self.heldout.sources))
        size = self.replay.size
        arrays["replay.history"] = self.replay.history[:size]
        arrays["replay.target"] = self.replay.target[:size]
        arrays["replay.weight"] = self.replay.weight[:size]
        if self.cooccurrence is not None:
            arrays.update(self.cooccurrence.state())
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        (folder / STATE_ARRAYS).write_bytes(buffer.getvalue())
        meta = {
            **extra,
            "item_ids": self.item_ids,
            "user_ids": users,
            "position": {str(p): o for p, o in self.position.items()},
            "counted_through": {str(p): o for p, o in self.counted_through.items()},
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
        user_ids = list(meta["user_ids"])
        learner.user_ids = user_ids
        learner.user_rows = {user: row for row, user in enumerate(user_ids)}
        learner._grow_users(len(user_ids))
        lengths = arrays["users.recent_len"].astype(np.int64)
        flat = arrays["users.recent"]
        if len(flat):
            # Stored oldest first; kept newest first (the newest of a user is column 0).
            rows = np.repeat(np.arange(len(user_ids)), lengths)
            rank = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            learner.recent[rows, np.repeat(lengths, lengths) - 1 - rank] = flat
        learner.seen = [
            dict.fromkeys(rows)
            for rows in _unragged(arrays["users.seen"], arrays["users.seen_len"])
        ]
        learner.pending.append(_stored_batch(arrays, "pending"))
        heldout = _stored_batch(arrays, "heldout")
        learner.heldout.append(
            heldout,
            _unragged(arrays["heldout.seen"], arrays["heldout.seen_len"]),
            _stored_sources(arrays, "heldout", len(heldout)),
        )
        size = len(arrays["replay.target"])
        learner.replay.history[:size] = arrays["replay.history"]
        learner.replay.target[:size] = arrays["replay.target"]
        learner.replay.weight[:size] = arrays["replay.weight"]
        learner.replay.offered = int(meta["replay_offered"])
        if learner.cooccurrence is not None:
            learner.cooccurrence.restore(arrays)
        learner.replay.set_rng_state(_text_as_big_ints(meta["replay_rng"]))
        learner.model.set_rng_state(_text_as_big_ints(meta["model_rng"]))
        learner.position = {int(p): int(o) for p, o in meta["position"].items()}
        # Checkpoints from before session 12 have none.
        learner.counted_through = {
            int(p): int(o) for p, o in meta.get("counted_through", {}).items()
        }
        learner.events_observed = int(meta["events_observed"])
        learner.events_trained = int(meta["events_trained"])
        return learner, meta

    def training_state(self, items: int) -> dict[str, npt.NDArray[Any]]:
        """What a published version stores for a warm start: the model's tables and optimizer
        slots, the item-to-item counts when the spec has the term, and the held-out sample:
        events the version's ``trained_through`` counts but nothing has trained on yet."""
        state: dict[str, npt.NDArray[Any]] = dict(self.model.state(items))
        if self.cooccurrence is not None:
            state.update(self.cooccurrence.state())
        state.update(_batch_arrays("heldout", self.heldout.arrays()))
        state.update(_sources_array("heldout", self.heldout.sources))
        return state

    def warm_start(
        self,
        weights: ItemPoolingWeights,
        state: Mapping[str, npt.NDArray[Any]] | None = None,
        trained_through: Mapping[int, int] | None = None,
        reading: Reading = READS_NONE,
    ) -> ReadsAgain:
        """Begin from a published version's vocabulary and weights, with its training state
        when given (optimizer slots too: see ``ItemPoolingModel.warm_start``); no user state.

        ``reading``: what the run reads; how much of the version's events (below its
        ``trained_through``) that is, is returned. The version's training state holds its
        item-to-item counts and its held-out sample (below ``trained_through``, yet trained
        by nothing):
        - ``none``: continue the counts; train and count the sample, which the run would
          otherwise never see;
        - ``all``: neither: the run counts, trains and judges every event itself;
        - ``part``: continue the counts, skipping the events below ``trained_through`` that the
          run reads again (trained, never held out: see ``counted_through``); count the sample,
          which the counts lack, and train the sample's events that the run will not read;
          those it reads again it trains then. Sample events of no known offset (versions
          published before session 13) are left to the part read again.
        """
        trained_through = trained_through or {}
        reads_again = reading.again(trained_through)
        self.model.warm_start(weights, state)
        self.item_ids = list(weights.item_ids)
        self.item_rows = {item: row for row, item in enumerate(self.item_ids)}
        if state is None or reads_again == "all" or self.cooccurrence is None:
            counts = None
        else:
            counts = self.cooccurrence
            counts.restore(state)
            if reads_again == "part":
                self.counted_through = {p: o for p, o in trained_through.items() if o > 0}
        # Versions published before session 11 store no sample.
        if state is None or reads_again == "all" or "heldout.target" not in state:
            return reads_again
        adopted = _with_width(_stored_batch(state, "heldout"), self.hp.example_length)
        unread = adopted
        if reads_again == "part":
            sources = _stored_sources(state, "heldout", len(adopted))
            keep = np.fromiter(
                (source != UNKNOWN and not reading.reads(*source) for source in sources),
                dtype=bool,
                count=len(sources),
            )
            unread = Batch(adopted.history[keep], adopted.target[keep], adopted.weight[keep])
        with self._pending_lock:
            self.pending.append(unread)
        if counts is not None:
            counts.add(adopted.history, adopted.target)
        return reads_again


def _with_width(batch: Batch, width: int) -> Batch:
    """``batch`` with histories of ``width`` items: a version of another spec may carry more
    or fewer (its mask's reach); the newest are kept, or padding (-1) added."""
    have = batch.history.shape[1]
    if have == width:
        return batch
    if have > width:
        history = batch.history[:, :width]
    else:
        padding = np.full((len(batch), width - have), -1, dtype=np.int32)
        history = np.concatenate([batch.history, padding], axis=1)
    return Batch(np.ascontiguousarray(history), batch.target, batch.weight)


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
