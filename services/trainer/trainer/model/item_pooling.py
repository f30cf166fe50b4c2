"""The item-pooling next-item model in TensorFlow, trained with sparse Adagrad.

Why hand-written steps instead of ``keras.Model.fit``: a step touches a few thousand rows of
item tables that may hold millions; Keras' dense optimizers would update (and keep slots for)
every row every step. Here each step gathers the rows it needs, differentiates with respect to
those gathered rows only, and scatters the updates back: cost grows with the batch, not with the
catalogue. The same gather/scatter seam is what a parameter-server strategy shards.

No fixed vocabulary: the item tables are variables whose first dimension is unknown to the
graph (``shape=[None, dim]``), so growing them (doubling capacity, new rows initialised at
random) is an ``assign`` and never retraces the step function. Memory: ``capacity × dim × 4``
bytes for each of ``item_in``, ``item_out`` and their two Adagrad accumulators, plus
``capacity × 8`` for the bias and its accumulator; capacity is at most twice the item count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf
from streamrec_shared.models.item_pooling import ItemPoolingWeights
from streamrec_shared.schemas.models import ItemPoolingHyperparameters

ADAGRAD_INITIAL_ACCUMULATOR = 0.1
INIT_STDDEV = 0.05


@dataclass(frozen=True)
class Batch:
    """Training examples: newest-first history rows (-1 padded), target row, weight."""

    history: npt.NDArray[np.int32]
    target: npt.NDArray[np.int32]
    weight: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.target.shape[0])


class ItemPoolingModel:
    def __init__(self, hyperparameters: ItemPoolingHyperparameters) -> None:
        hp = hyperparameters
        self.hp = hp
        self.dim = hp.embedding_dim
        self.length = hp.history_length
        self.capacity = hp.initial_capacity
        self._rng = np.random.default_rng(hp.seed)
        tf.random.set_seed(hp.seed)
        rows = tf.TensorShape([None, self.dim])
        self.item_in = tf.Variable(self._init_rows(self.capacity), shape=rows, name="item_in")
        # Tied: one table (and one accumulator) serves both roles.
        self.item_out = (
            self.item_in
            if hp.tie_embeddings
            else tf.Variable(self._init_rows(self.capacity), shape=rows, name="item_out")
        )
        self.item_bias = tf.Variable(
            tf.zeros([self.capacity]), shape=tf.TensorShape([None]), name="item_bias"
        )
        self.acc_in = tf.Variable(self._accumulator(self.capacity, self.dim), shape=rows)
        self.acc_out = (
            self.acc_in
            if hp.tie_embeddings
            else tf.Variable(self._accumulator(self.capacity, self.dim), shape=rows)
        )
        self.acc_bias = tf.Variable(
            self._accumulator(self.capacity, None), shape=tf.TensorShape([None])
        )
        self.position_logits = tf.Variable(tf.zeros([self.length]), name="position_logits")
        self.projection = tf.Variable(tf.eye(self.dim), name="projection")
        self.projection_bias = tf.Variable(tf.zeros([self.dim]), name="projection_bias")
        self.dense = [self.position_logits, self.projection, self.projection_bias]
        self.dense_acc = [
            tf.Variable(tf.fill(tf.shape(v), ADAGRAD_INITIAL_ACCUMULATOR)) for v in self.dense
        ]
        self.steps = 0
        self._step = tf.function(
            self._train_step,
            input_signature=[
                tf.TensorSpec([None, self.length], tf.int32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([None], tf.int32),
            ],
            jit_compile=False,
        )

    # --- tables -------------------------------------------------------------------------

    def _init_rows(self, count: int) -> npt.NDArray[np.float32]:
        return self._rng.normal(0.0, INIT_STDDEV, size=(count, self.dim)).astype(np.float32)

    @staticmethod
    def _accumulator(count: int, dim: int | None) -> npt.NDArray[np.float32]:
        shape = (count,) if dim is None else (count, dim)
        return np.full(shape, ADAGRAD_INITIAL_ACCUMULATOR, dtype=np.float32)

    def rng_state(self) -> dict[str, Any]:
        return dict(self._rng.bit_generator.state)

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state

    def ensure_capacity(self, items: int) -> None:
        """Make room for ``items`` rows, doubling so growth costs O(log n) copies in total."""
        if items <= self.capacity:
            return
        new_capacity = max(items, 2 * self.capacity)
        extra = new_capacity - self.capacity
        self.item_in.assign(tf.concat([self.item_in, self._init_rows(extra)], 0))
        self.acc_in.assign(tf.concat([self.acc_in, self._accumulator(extra, self.dim)], 0))
        if not self.hp.tie_embeddings:
            self.item_out.assign(tf.concat([self.item_out, self._init_rows(extra)], 0))
            self.acc_out.assign(tf.concat([self.acc_out, self._accumulator(extra, self.dim)], 0))
        self.item_bias.assign(tf.concat([self.item_bias, tf.zeros([extra])], 0))
        self.acc_bias.assign(tf.concat([self.acc_bias, self._accumulator(extra, None)], 0))
        self.capacity = new_capacity

    # --- training -----------------------------------------------------------------------

    def negatives(self, items: int) -> npt.NDArray[np.int32]:
        """Candidates besides the batch's positives: every item when the catalogue is small
        enough (exact softmax), otherwise a uniform sample shared by the batch."""
        if items <= self.hp.sampled_negatives:
            return np.arange(items, dtype=np.int32)
        return self._rng.integers(0, items, size=self.hp.sampled_negatives, dtype=np.int32)

    def train(self, batch: Batch, items: int) -> float:
        """One sparse Adagrad step; returns the batch's weighted loss."""
        loss = self._step(batch.history, batch.target, batch.weight, self.negatives(items))
        self.steps += 1
        return float(loss)

    def _user_vectors(self, history: tf.Tensor, embedded: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(history >= 0, tf.float32)
        logits = self.position_logits[None, :] + (mask - 1.0) * 1e9
        attention = tf.nn.softmax(logits, axis=1) * mask
        attention = attention / tf.maximum(tf.reduce_sum(attention, axis=1, keepdims=True), 1e-12)
        pooled = tf.einsum("bl,bld->bd", attention, embedded)
        return tf.matmul(pooled, self.projection) + self.projection_bias

    def _train_step(
        self, history: tf.Tensor, target: tf.Tensor, weight: tf.Tensor, negatives: tf.Tensor
    ) -> tf.Tensor:
        batch = tf.shape(target)[0]
        in_rows, in_index = tf.unique(tf.reshape(tf.maximum(history, 0), [-1]))
        out_rows, out_index = tf.unique(tf.concat([target, negatives], 0))
        labels = out_index[:batch]
        rows_in = tf.gather(self.item_in, in_rows)
        rows_out = tf.gather(self.item_out, out_rows)
        bias_out = tf.gather(self.item_bias, out_rows)
        with tf.GradientTape() as tape:
            tape.watch([rows_in, rows_out, bias_out])
            embedded = tf.reshape(tf.gather(rows_in, in_index), [batch, self.length, self.dim])
            users = self._user_vectors(history, embedded)
            logits = tf.matmul(users, rows_out, transpose_b=True) + bias_out[None, :]
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            loss = tf.reduce_sum(losses * weight) / tf.maximum(tf.reduce_sum(weight), 1e-12)
            if self.hp.l2 > 0:
                # Padding positions gather row 0: leave them out of the penalty.
                real = tf.cast(history >= 0, tf.float32)[:, :, None]
                penalty = tf.reduce_sum(tf.square(embedded) * real) + tf.reduce_sum(
                    tf.square(rows_out)
                )
                loss += self.hp.l2 * penalty / tf.cast(batch, tf.float32)
        grads = tape.gradient(loss, [rows_in, rows_out, bias_out, *self.dense])
        rate = self.hp.learning_rate
        for table, acc, rows, grad in (
            (self.item_in, self.acc_in, in_rows, grads[0]),
            (self.item_out, self.acc_out, out_rows, grads[1]),
            (self.item_bias, self.acc_bias, out_rows, grads[2]),
        ):
            # Gradients of gathered rows may come back as IndexedSlices over the unique rows;
            # densify over those rows only (a few thousand, never the whole table).
            grad = tf.convert_to_tensor(grad)
            new_acc = tf.gather(acc, rows) + tf.square(grad)
            acc.scatter_update(tf.IndexedSlices(new_acc, rows))
            table.scatter_sub(tf.IndexedSlices(rate * grad / tf.sqrt(new_acc), rows))
        for variable, acc, grad in zip(self.dense, self.dense_acc, grads[3:], strict=True):
            acc.assign_add(tf.square(grad))
            variable.assign_sub(rate * grad / tf.sqrt(acc))
        return loss

    # --- export and state ---------------------------------------------------------------

    def export(self, item_ids: list[str]) -> ItemPoolingWeights:
        """The serving arrays for the first ``len(item_ids)`` rows."""
        count = len(item_ids)
        self.ensure_capacity(count)
        return ItemPoolingWeights(
            item_ids=list(item_ids),
            item_in=self.item_in[:count].numpy(),
            item_out=self.item_out[:count].numpy(),
            item_bias=self.item_bias[:count].numpy(),
            position_logits=self.position_logits.numpy(),
            projection=self.projection.numpy(),
            projection_bias=self.projection_bias.numpy(),
        )

    def state(self, items: int) -> dict[str, npt.NDArray[np.float32]]:
        """Everything a checkpoint needs to continue exactly: tables and optimizer slots."""
        arrays = {
            "item_in": self.item_in[:items].numpy(),
            "item_out": self.item_out[:items].numpy(),
            "item_bias": self.item_bias[:items].numpy(),
            "acc_in": self.acc_in[:items].numpy(),
            "acc_out": self.acc_out[:items].numpy(),
            "acc_bias": self.acc_bias[:items].numpy(),
        }
        for index, (variable, acc) in enumerate(zip(self.dense, self.dense_acc, strict=True)):
            arrays[f"dense_{index}"] = variable.numpy()
            arrays[f"dense_acc_{index}"] = acc.numpy()
        return arrays

    def restore(self, arrays: dict[str, npt.NDArray[np.float32]]) -> None:
        items = int(arrays["item_in"].shape[0])
        self.ensure_capacity(items)
        for name in self._table_names(
            ("item_in", "item_out", "item_bias", "acc_in", "acc_out", "acc_bias")
        ):
            variable: tf.Variable = getattr(self, name)
            variable.assign(tf.concat([arrays[name], variable[items:]], 0))
        for index, (variable, acc) in enumerate(zip(self.dense, self.dense_acc, strict=True)):
            variable.assign(arrays[f"dense_{index}"])
            acc.assign(arrays[f"dense_acc_{index}"])

    def _table_names(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """Tied tables are one variable: write it once (from ``item_in``), never twice."""
        if not self.hp.tie_embeddings:
            return names
        return tuple(n for n in names if n not in ("item_out", "acc_out"))

    def warm_start(self, weights: ItemPoolingWeights) -> None:
        """Start from a published version's weights (fresh optimizer slots)."""
        if weights.history_length != self.length or weights.item_in.shape[1] != self.dim:
            raise ValueError("the published version has a different shape than this spec")
        items = len(weights.item_ids)
        self.ensure_capacity(items)
        for name in self._table_names(("item_in", "item_out", "item_bias")):
            variable: tf.Variable = getattr(self, name)
            variable.assign(tf.concat([getattr(weights, name), variable[items:]], 0))
        self.position_logits.assign(weights.position_logits)
        self.projection.assign(weights.projection)
        self.projection_bias.assign(weights.projection_bias)
