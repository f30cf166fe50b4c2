"""The TF model's hand-written gradients and fused Adagrad (``ItemPoolingModel._update``) against
the textbook formulation: GradientTape over the same loss, and Adagrad written out, from the same
initial state. Padded batches, L2, tied tables and sampled softmax included."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from streamrec_shared.schemas.models import ItemPoolingHyperparameters
from trainer.model.item_pooling import Batch, ItemPoolingModel


def reference_step(
    model: ItemPoolingModel, batch: Batch, negatives: np.ndarray, exact: bool
) -> float:
    """One step the straightforward way: tape gradients of the gathered rows, then Adagrad."""
    hp = model.hp
    size = len(batch)
    # The newest ``length`` items are pooled; the mask reaches every item the example carries.
    history = tf.constant(batch.history[:, : model.length])
    in_rows, in_index = tf.unique(tf.reshape(tf.maximum(history, 0), [-1]))
    out_rows, out_index = tf.unique(tf.concat([batch.target, negatives], 0))
    rows_in = tf.gather(model.item_in, in_rows)
    rows_out = tf.gather(model.item_out, out_rows)
    bias_out = tf.gather(model.item_bias, out_rows)
    with tf.GradientTape() as tape:
        tape.watch([rows_in, rows_out, bias_out])
        embedded = tf.reshape(tf.gather(rows_in, in_index), [size, model.length, model.dim])
        mask = tf.cast(history >= 0, tf.float32)
        logits = model.position_logits[None, :] + (mask - 1.0) * 1e9
        attention = tf.nn.softmax(logits, axis=1) * mask
        attention = attention / tf.maximum(tf.reduce_sum(attention, axis=1, keepdims=True), 1e-12)
        pooled = tf.einsum("bl,bld->bd", attention, embedded)
        users = tf.matmul(pooled, model.projection) + model.projection_bias
        scores = tf.matmul(users, rows_out, transpose_b=True) + bias_out[None, :]
        if hp.mask_history and exact:
            scores += history_mask(batch, out_rows.numpy())
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=out_index[:size], logits=scores
        )
        weight = tf.constant(batch.weight)
        loss = tf.reduce_sum(losses * weight) / tf.maximum(tf.reduce_sum(weight), 1e-12)
        if hp.l2 > 0:
            real = mask[:, :, None]
            penalty = tf.reduce_sum(tf.square(embedded) * real) + tf.reduce_sum(tf.square(rows_out))
            loss += hp.l2 * penalty / size
    grads = tape.gradient(loss, [rows_in, rows_out, bias_out, *model.dense])
    rate = hp.learning_rate
    for table, acc, rows, grad in (
        (model.item_in, model.acc_in, in_rows, grads[0]),
        (model.item_out, model.acc_out, out_rows, grads[1]),
        (model.item_bias, model.acc_bias, out_rows, grads[2]),
    ):
        grad = tf.convert_to_tensor(grad)
        new_acc = tf.gather(acc, rows) + tf.square(grad)
        acc.scatter_update(tf.IndexedSlices(new_acc, rows))
        table.scatter_sub(tf.IndexedSlices(rate * grad / tf.sqrt(new_acc), rows))
    for variable, acc, grad in zip(model.dense, model.dense_acc, grads[3:], strict=True):
        acc.assign_add(tf.square(grad))
        variable.assign_sub(rate * grad / tf.sqrt(acc))
    return float(loss)


def history_mask(batch: Batch, out_rows: np.ndarray) -> np.ndarray:
    """−1e9 at each example's history items (its target excepted, pooled or not), as columns of
    ``out_rows``."""
    column = {int(row): index for index, row in enumerate(out_rows)}
    mask = np.zeros((len(batch), len(out_rows)), dtype=np.float32)
    for example, (items, target) in enumerate(zip(batch.history, batch.target, strict=True)):
        for item in items:
            if item >= 0 and item != target:
                mask[example, column[int(item)]] -= 1e9
    return mask


def random_batch(rng: np.random.Generator, size: int, length: int, items: int) -> Batch:
    history = rng.integers(0, items, size=(size, length)).astype(np.int32)
    # Ragged histories (padding -1 at the end), one empty one.
    for row, keep in enumerate(rng.integers(0, length + 1, size=size)):
        history[row, keep:] = -1
    history[0, :] = -1
    target = rng.integers(0, items, size=size).astype(np.int32)
    weight = rng.choice([1.0, 1.5, 3.0], size=size).astype(np.float32)
    return Batch(history=history, target=target, weight=weight)


CASES = {
    "exact": {},
    "l2": {"l2": 0.01},
    "tied": {"tie_embeddings": True},
    "sampled": {"sampled_negatives": 32},
    "sampled-tied-l2": {"sampled_negatives": 32, "tie_embeddings": True, "l2": 0.01},
    "masked-tied": {"mask_history": True, "tie_embeddings": True},
    # Examples carry 8 items: the newest 5 pooled, all 8 out of the softmax.
    "masked-further": {"mask_history": True, "tie_embeddings": True, "mask_length": 8},
    # The mask applies to the exact softmax only: a sampled step is the plain one.
    "masked-sampled": {"mask_history": True, "sampled_negatives": 32},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("size", [64, 37])  # a full batch, and one padded inside train()
def test_hand_written_step_matches_the_tape_and_textbook_adagrad(case: str, size: int) -> None:
    hp = ItemPoolingHyperparameters(
        embedding_dim=8, history_length=5, batch_size=64, initial_capacity=64, **CASES[case]
    )
    items = 60
    fused, reference = ItemPoolingModel(hp), ItemPoolingModel(hp)  # same seed: same start
    rng = np.random.default_rng(3)
    for _ in range(4):
        batch = random_batch(rng, size, hp.example_length, items)
        # ``train`` draws its negatives from the model's generator: draw the reference's from
        # the other model's generator, in the same state.
        negatives = reference.negatives(items)
        loss = fused.train(batch, items)
        expected = reference_step(reference, batch, negatives, items <= hp.sampled_negatives)
        assert loss == pytest.approx(expected, rel=1e-5)
    for name, got, want in [
        ("item_in", fused.item_in, reference.item_in),
        ("item_out", fused.item_out, reference.item_out),
        ("item_bias", fused.item_bias, reference.item_bias),
        ("acc_in", fused.acc_in, reference.acc_in),
        ("acc_out", fused.acc_out, reference.acc_out),
        ("acc_bias", fused.acc_bias, reference.acc_bias),
        *zip(["positions", "projection", "projection_bias"], fused.dense, reference.dense,
             strict=True),
        *zip(["acc_positions", "acc_projection", "acc_projection_bias"], fused.dense_acc,
             reference.dense_acc, strict=True),
    ]:  # fmt: skip
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=2e-6, err_msg=name)
