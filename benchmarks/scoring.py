"""Scoring one user against the whole catalogue: TensorFlow vs NumPy, at two catalogue sizes.

Inference computes a user vector from recent items and ranks every item by
``u · item_out + bias``. This measures that step alone (user vector + scores + top-K), one
request at a time as the service does, with one BLAS/TF thread (what each serving process gets):

- NumPy on the exported arrays (what inference uses),
- a compiled ``tf.function`` doing the same with ``tf.math.top_k``,
- Keras ``model.predict`` on an equivalent model (the known trap: per-call overhead),
- NumPy with the item-to-item term of format 3 (100 neighbors per item, the 10 newest items
  weighed 0.8^k),

for the ML-100K catalogue (1,682 items) and a synthetic 100,000-item one. Prints p50/p99 in
microseconds and writes ``benchmarks/results/scoring.json``.
Run: ``make bench-scoring`` (or ``.venv/bin/python benchmarks/scoring.py``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from streamrec_shared.models.item_pooling import ItemPoolingScorer, ItemPoolingWeights  # noqa: E402
from streamrec_shared.ranking import top_k  # noqa: E402

from benchmarks.report import write_results  # noqa: E402

DIM, LENGTH, K = 64, 20, 10
NEIGHBORS, WINDOW = 100, 10


def weights(items: int, seed: int = 0) -> ItemPoolingWeights:
    rng = np.random.default_rng(seed)
    return ItemPoolingWeights(
        item_ids=[f"i{n}" for n in range(items)],
        item_in=rng.normal(0, 0.1, (items, DIM)).astype(np.float32),
        item_out=rng.normal(0, 0.1, (items, DIM)).astype(np.float32),
        item_bias=rng.normal(0, 0.1, items).astype(np.float32),
        position_logits=rng.normal(0, 0.1, LENGTH).astype(np.float32),
        projection=np.eye(DIM, dtype=np.float32),
        projection_bias=np.zeros(DIM, dtype=np.float32),
    )


def with_neighbors(w: ItemPoolingWeights, seed: int = 2) -> ItemPoolingWeights:
    """Random neighbor lists of the evaluation spec's shape (every item has ``NEIGHBORS``)."""
    rng = np.random.default_rng(seed)
    items = len(w.item_ids)
    return dataclasses.replace(
        w,
        neighbor_indptr=np.arange(0, (items + 1) * NEIGHBORS, NEIGHBORS, dtype=np.int64),
        neighbor_rows=rng.integers(0, items, items * NEIGHBORS).astype(np.int64),
        neighbor_weights=rng.random(items * NEIGHBORS).astype(np.float32),
        cooccurrence_weight=4.0,
        cooccurrence_window=WINDOW,
        cooccurrence_decay=0.8,  # the product's default
    )


def timed(call: Callable[[np.ndarray], object], histories: list[np.ndarray]) -> dict[str, float]:
    for history in histories[:20]:
        call(history)
    samples = []
    for history in histories:
        started = time.perf_counter()
        call(history)
        samples.append((time.perf_counter() - started) * 1e6)
    return {
        "p50_us": float(np.percentile(samples, 50)),
        "p99_us": float(np.percentile(samples, 99)),
        "calls": len(samples),
    }


def measure(items: int, calls: int) -> dict[str, dict[str, float]]:
    import tensorflow as tf

    w = weights(items)
    scorer = ItemPoolingScorer(w)
    rng = np.random.default_rng(1)
    histories = [rng.integers(0, items, (1, LENGTH)).astype(np.int64) for _ in range(calls)]

    def numpy_top_k(history: np.ndarray) -> object:
        scores = scorer.scores(scorer.user_vectors(history))[0]
        return top_k(scores, K)  # the service's top-K

    neighbor_scorer = ItemPoolingScorer(with_neighbors(w))

    def numpy_with_neighbors(history: np.ndarray) -> object:
        scores = neighbor_scorer.scores(neighbor_scorer.user_vectors(history), history)[0]
        return top_k(scores, K)

    def numpy_full_partition(history: np.ndarray) -> object:
        """The same with one argpartition over the whole catalogue (what top_k replaced)."""
        scores = scorer.scores(scorer.user_vectors(history))[0]
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]

    item_in = tf.constant(w.item_in)
    item_out = tf.constant(w.item_out)
    bias = tf.constant(w.item_bias)
    positions = tf.constant(w.position_logits)

    @tf.function(input_signature=[tf.TensorSpec([1, LENGTH], tf.int64)])
    def tf_top_k(history: tf.Tensor) -> tf.Tensor:
        attention = tf.nn.softmax(positions)[None, :]
        pooled = tf.einsum("bl,bld->bd", attention, tf.gather(item_in, history))
        scores = tf.matmul(pooled, item_out, transpose_b=True) + bias
        return tf.math.top_k(scores, K).indices

    class Pooling(tf.keras.Model):  # type: ignore[misc]
        def call(self, history: tf.Tensor) -> tf.Tensor:
            return tf_top_k(history)

    keras_model = Pooling()
    return {
        "numpy": timed(numpy_top_k, histories),
        "numpy_full_partition": timed(numpy_full_partition, histories),
        "numpy_with_neighbors": timed(numpy_with_neighbors, histories),
        "tf_function": timed(lambda h: tf_top_k(tf.constant(h)).numpy(), histories),
        "keras_predict": timed(
            lambda h: keras_model.predict(h, verbose=0), histories[: max(50, calls // 10)]
        ),
    }


def main() -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    results = {
        f"{items}_items": measure(items, calls) for items, calls in ((1_682, 2000), (100_000, 300))
    }
    print(f"{'catalogue':>12} {'method':>20} {'p50 µs':>10} {'p99 µs':>10}")
    for catalogue, methods in results.items():
        for method, f in methods.items():
            print(f"{catalogue:>12} {method:>20} {f['p50_us']:>10.0f} {f['p99_us']:>10.0f}")
    out = write_results("scoring", results)
    print(f"written {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
