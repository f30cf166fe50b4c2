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

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf
from streamrec_shared.models.item_pooling import ItemPoolingWeights
from streamrec_shared.schemas.models import ItemPoolingHyperparameters

ADAGRAD_INITIAL_ACCUMULATOR = 0.1
INIT_STDDEV = 0.05
# A published version's training state (``ItemPoolingModel.state``), stored next to it.
TRAINING_STATE = "state.npz"

Ints = npt.NDArray[np.int32]
Floats = npt.NDArray[np.float32]


def save_training_state(folder: Path, state: Mapping[str, Floats]) -> None:
    """Write ``state`` as plain NumPy arrays (no pickle: loading runs no code)."""
    with (folder / TRAINING_STATE).open("wb") as handle:
        np.savez(handle, **state)  # type: ignore[arg-type]


def load_training_state(folder: Path) -> dict[str, Floats]:
    with np.load(folder / TRAINING_STATE, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


@dataclass(frozen=True)
class Batch:
    """Training examples: newest-first history rows (-1 padded), target row, weight."""

    history: npt.NDArray[np.int32]
    target: npt.NDArray[np.int32]
    weight: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.target.shape[0])


def _padded(batch: Batch, size: int) -> tuple[Ints, Ints, npt.NDArray[np.float32]]:
    """The batch's arrays padded to a multiple of ``size`` examples with inert examples (no
    history, weight 0, the first target again), so the fused kernels see a handful of shapes
    and never recompile for a short final batch. Padding changes no loss and no gradient."""
    count = len(batch)
    padded = max(size, -(-count // size) * size)
    if padded == count:
        return batch.history, batch.target, batch.weight
    extra = padded - count
    fill = batch.target[0] if count else 0
    return (
        np.concatenate([batch.history, np.full((extra, batch.history.shape[1]), -1, np.int32)]),
        np.concatenate([batch.target, np.full(extra, fill, np.int32)]),
        np.concatenate([batch.weight, np.zeros(extra, np.float32)]),
    )


# The history side works on [batch, history, dim] arrays: compiled with XLA (fixed shapes per
# spec, so each compiles once per process), which fuses the gathers, products and the
# per-row scatter-add that TensorFlow's kernels would run as separate passes.
def _pool_math(
    embedded: tf.Tensor, history: tf.Tensor, position_logits: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Softmax-over-positions weights of the real (non-padding) positions, and the weighted
    mean of their embeddings."""
    mask = tf.cast(history >= 0, tf.float32)
    logits = position_logits[None, :] + (mask - 1.0) * 1e9
    attention = tf.nn.softmax(logits, axis=1) * mask
    attention = attention / tf.maximum(tf.reduce_sum(attention, axis=1, keepdims=True), 1e-12)
    return tf.reduce_sum(attention[:, :, None] * embedded, 1), attention


def _pool_gradients_math(
    embedded: tf.Tensor,
    history: tf.Tensor,
    attention: tf.Tensor,
    grad_pooled: tf.Tensor,
    in_index: tf.Tensor,
    l2_scale: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Gradients of the position logits, and of the unique history rows summed per row.

    The second is ``[batch × history, dim]`` (an upper bound of the unique rows, so the shape is
    fixed); the caller keeps the first ``len(in_rows)`` rows. ``l2_scale`` adds the penalty's
    gradient of the real positions.
    """
    grad_attention = tf.reduce_sum(embedded * grad_pooled[:, None, :], 2)
    grad_logits = attention * (
        grad_attention - tf.reduce_sum(grad_attention * attention, 1, keepdims=True)
    )
    real = tf.cast(history >= 0, tf.float32)[:, :, None]
    grad_embedded = attention[:, :, None] * grad_pooled[:, None, :] + l2_scale * embedded * real
    dim = tf.shape(embedded)[2]
    rows = tf.math.unsorted_segment_sum(
        tf.reshape(grad_embedded, [-1, dim]), in_index, tf.size(in_index)
    )
    return tf.reduce_sum(grad_logits, 0), rows


_pool = tf.function(_pool_math, jit_compile=True)
_pool_gradients = tf.function(_pool_gradients_math, jit_compile=True)


def _cross_entropy(logits: tf.Tensor, probabilities: tf.Tensor, pairs: tf.Tensor) -> tf.Tensor:
    """Per-example −log softmax(target), from the softmax already computed for the gradient;
    exact log-sum-exp for the rare rows whose target probability is too small for that."""
    target_probability = tf.gather_nd(probabilities, pairs)
    return tf.cond(
        tf.reduce_all(target_probability >= 1e-30),
        lambda: -tf.math.log(target_probability),
        lambda: tf.reduce_logsumexp(logits, axis=1) - tf.gather_nd(logits, pairs),
    )


class ItemPoolingModel:
    def __init__(self, hyperparameters: ItemPoolingHyperparameters) -> None:
        hp = hyperparameters
        self.hp = hp
        self.dim = hp.embedding_dim
        self.length = hp.history_length  # items pooled
        self.width = hp.example_length  # items an example carries (the mask may reach further)
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
        examples = [
            tf.TensorSpec([None, self.width], tf.int32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.float32),
        ]
        real = tf.TensorSpec([], tf.int32)
        self._step = tf.function(
            self._train_step, input_signature=[*examples, tf.TensorSpec([None], tf.int32), real]
        )
        self._exact_step = tf.function(
            self._train_exact_step, input_signature=[*examples, tf.TensorSpec([], tf.int32), real]
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
        history, target, weight = _padded(batch, self.hp.batch_size)
        real = np.int32(len(batch))
        if items <= self.hp.sampled_negatives:
            # Exact softmax: the candidates are rows 0..items-1 (same draws as ``negatives``,
            # which consumes no randomness here), so no unique() over them is needed.
            loss = self._exact_step(history, target, weight, np.int32(items), real)
        else:
            loss = self._step(history, target, weight, self.negatives(items), real)
        self.steps += 1
        return float(loss)

    def _user_vectors(self, history: tf.Tensor, embedded: tf.Tensor) -> tf.Tensor:
        pooled, _ = _pool(embedded, history, self.position_logits)
        return tf.matmul(pooled, self.projection) + self.projection_bias

    def _train_step(
        self,
        history: tf.Tensor,
        target: tf.Tensor,
        weight: tf.Tensor,
        negatives: tf.Tensor,
        real: tf.Tensor,
    ) -> tf.Tensor:
        """Sampled softmax: the batch's positives plus shared negatives, deduplicated."""
        batch = tf.shape(target)[0]
        out_rows, out_index = tf.unique(tf.concat([target, negatives], 0))
        rows_out = tf.gather(self.item_out, out_rows)
        bias_out = tf.gather(self.item_bias, out_rows)
        return self._update(history, out_index[:batch], weight, out_rows, rows_out, bias_out, real)

    def _train_exact_step(
        self,
        history: tf.Tensor,
        target: tf.Tensor,
        weight: tf.Tensor,
        items: tf.Tensor,
        real: tf.Tensor,
    ) -> tf.Tensor:
        """Exact softmax over every item (rows ``0..items-1``): labels are the target rows."""
        rows_out = self.item_out[:items]
        bias_out = self.item_bias[:items]
        return self._update(
            history, target, weight, tf.range(items), rows_out, bias_out, real, exact=True
        )

    @staticmethod
    def _mask_history(logits: tf.Tensor, history: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """The example's own history items out of its softmax (not its target): items a user
        already touched are never recommended to them, so they are not negatives to learn."""
        batch, length = tf.shape(history)[0], tf.shape(history)[1]
        rows = tf.repeat(tf.range(batch), length)
        flat = tf.reshape(history, [-1])
        masked = (flat >= 0) & (flat != tf.repeat(labels, length))
        indices = tf.stack([rows, tf.maximum(flat, 0)], 1)
        updates = tf.where(masked, -1e9, 0.0)
        return tf.tensor_scatter_nd_add(logits, indices, updates)

    def _update(
        self,
        history: tf.Tensor,
        labels: tf.Tensor,
        weight: tf.Tensor,
        out_rows: tf.Tensor,
        rows_out: tf.Tensor,
        bias_out: tf.Tensor,
        real: tf.Tensor,
        exact: bool = False,
    ) -> tf.Tensor:
        """Loss and hand-written gradients of the rows a step touches, then sparse Adagrad.

        The gradients are the analytic ones of the weighted softmax cross-entropy (what a
        GradientTape computes; a unit test checks the two agree): ``softmax − one-hot`` scaled
        by each example's share of the batch weight, back through the scores, the projection
        and the position attention. Written out so the batch-sized work can be fused (XLA on
        the ``[batch, history, dim]`` part) and no ``[batch, candidates]`` array is scaled.
        Padding examples (weight 0, no history) contribute exactly nothing.
        """
        batch = tf.shape(labels)[0]
        masked = history  # the mask's reach: every item an example carries
        history = history[:, : self.length]  # the pooled newest items
        flat = tf.reshape(tf.maximum(history, 0), [-1])
        in_rows, in_index = tf.unique(flat)
        embedded = tf.reshape(tf.gather(self.item_in, flat), [batch, self.length, self.dim])
        pooled, attention = _pool(embedded, history, self.position_logits)
        users = tf.matmul(pooled, self.projection) + self.projection_bias
        # The bias as one more column: one matmul gives the scores, one their row gradients.
        users_1 = tf.concat([users, tf.ones([batch, 1])], 1)
        rows_bias = tf.concat([rows_out, bias_out[:, None]], 1)
        logits = tf.matmul(users_1, rows_bias, transpose_b=True)
        pairs = tf.stack([tf.range(batch), labels], 1)
        if self.hp.mask_history and exact:
            logits = self._mask_history(logits, masked, labels)
        probabilities = tf.nn.softmax(logits)
        losses = _cross_entropy(logits, probabilities, pairs)
        share = weight / tf.maximum(tf.reduce_sum(weight), 1e-12)
        loss = tf.reduce_sum(losses * share)
        # d loss / d logits = share ⊙ (softmax − one-hot); the share is applied to the
        # [batch, dim] factors instead of the [batch, candidates] array.
        residual = tf.tensor_scatter_nd_sub(probabilities, pairs, tf.ones([batch]))
        grad_rows_bias = tf.matmul(residual, users_1 * share[:, None], transpose_a=True)
        grad_users = tf.matmul(residual, rows_out) * share[:, None]
        grad_projection = tf.matmul(pooled, grad_users, transpose_a=True)
        grad_projection_bias = tf.reduce_sum(grad_users, 0)
        grad_pooled = tf.matmul(grad_users, self.projection, transpose_b=True)
        scale = tf.constant(0.0)
        grad_rows_out = grad_rows_bias[:, : self.dim]
        if self.hp.l2 > 0:
            # Padding positions gather row 0: leave them out of the penalty.
            count = tf.cast(real, tf.float32)
            real_positions = tf.cast(history >= 0, tf.float32)[:, :, None]
            penalty = tf.reduce_sum(tf.square(embedded) * real_positions) + tf.reduce_sum(
                tf.square(rows_out)
            )
            loss += self.hp.l2 * penalty / count
            scale = 2.0 * self.hp.l2 / count
            grad_rows_out += scale * rows_out
        grad_positions, grad_embedded = _pool_gradients(
            embedded, history, attention, grad_pooled, in_index, scale
        )
        grad_rows_in = grad_embedded[: tf.shape(in_rows)[0]]
        rate = tf.constant(self.hp.learning_rate)
        no_epsilon = tf.constant(0.0)
        # Fused sparse Adagrad over the unique rows (accumulator += g², row -= rate·g/√acc),
        # in this order, so tied tables take the history update, then the candidate update.
        for table, acc, rows, grad in (
            (self.item_in, self.acc_in, in_rows, grad_rows_in),
            (self.item_out, self.acc_out, out_rows, grad_rows_out),
            (self.item_bias, self.acc_bias, out_rows, grad_rows_bias[:, self.dim]),
        ):
            tf.raw_ops.ResourceSparseApplyAdagradV2(
                var=table.handle,
                accum=acc.handle,
                lr=rate,
                epsilon=no_epsilon,
                grad=grad,
                indices=rows,
            )
        for variable, acc, grad in zip(
            self.dense,
            self.dense_acc,
            (grad_positions, grad_projection, grad_projection_bias),
            strict=True,
        ):
            tf.raw_ops.ResourceApplyAdagradV2(
                var=variable.handle, accum=acc.handle, lr=rate, epsilon=no_epsilon, grad=grad
            )
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

    def state(self, items: int) -> dict[str, Floats]:
        """Everything needed to continue exactly: tables, dense parameters and their optimizer
        slots (checkpoints, and the training state stored with each published version)."""
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

    def restore(self, arrays: Mapping[str, Floats]) -> None:
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

    def warm_start(
        self, weights: ItemPoolingWeights, state: Mapping[str, Floats] | None = None
    ) -> None:
        """Start from a published version: with its training state (``state`` of the same
        rows), exactly where its learner was, optimizer slots included; without, from its
        weights with fresh slots, whose first steps are far larger than the trained model's
        own (every accumulator back at its initial value)."""
        if weights.history_length != self.length or weights.item_in.shape[1] != self.dim:
            raise ValueError("the published version has a different shape than this spec")
        if state is not None:
            self.restore(state)
            return
        items = len(weights.item_ids)
        self.ensure_capacity(items)
        for name in self._table_names(("item_in", "item_out", "item_bias")):
            variable: tf.Variable = getattr(self, name)
            variable.assign(tf.concat([getattr(weights, name), variable[items:]], 0))
        self.position_logits.assign(weights.position_logits)
        self.projection.assign(weights.projection)
        self.projection_bias.assign(weights.projection_bias)
