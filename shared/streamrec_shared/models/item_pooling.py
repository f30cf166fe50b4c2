"""The item-pooling model outside TensorFlow: its artifact format and a NumPy scorer.

The trainer learns it with TensorFlow; serving and evaluation need only these arrays. The user
vector is ``u = pool(item_in[recent]) @ projection + projection_bias`` where ``pool`` is a
softmax-over-positions weighted mean of the most recent items (newest first), and an item's
score is ``u · item_out[item] + item_bias[item]``. A user with no history gets
``u = projection_bias``: the model's own popularity-like prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

FAMILY = "item_pooling"
ARTIFACT_FORMAT = 1
MANIFEST = "manifest.json"
ITEMS = "items.json"
WEIGHTS = "weights.npz"

Floats = npt.NDArray[np.float32]
Rows = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ItemPoolingWeights:
    item_ids: list[str]
    item_in: Floats
    item_out: Floats
    item_bias: Floats
    position_logits: Floats
    projection: Floats
    projection_bias: Floats

    @property
    def history_length(self) -> int:
        return int(self.position_logits.shape[0])

    def save(self, folder: Path, manifest: dict[str, Any]) -> None:
        """Write the artifact files; ``manifest`` gets the format fields added."""
        body = {
            **manifest,
            "format": ARTIFACT_FORMAT,
            "family": FAMILY,
            "item_count": len(self.item_ids),
            "embedding_dim": int(self.item_in.shape[1]),
            "history_length": self.history_length,
        }
        (folder / MANIFEST).write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        (folder / ITEMS).write_bytes(orjson.dumps(self.item_ids))
        with (folder / WEIGHTS).open("wb") as handle:
            np.savez(
                handle,
                item_in=self.item_in,
                item_out=self.item_out,
                item_bias=self.item_bias,
                position_logits=self.position_logits,
                projection=self.projection,
                projection_bias=self.projection_bias,
            )


def read_manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = orjson.loads((folder / MANIFEST).read_bytes())
    if manifest.get("family") != FAMILY or manifest.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"not an {FAMILY} artifact of format {ARTIFACT_FORMAT}: {folder}")
    return manifest


def load_weights(folder: Path) -> ItemPoolingWeights:
    read_manifest(folder)
    item_ids = orjson.loads((folder / ITEMS).read_bytes())
    with np.load(folder / WEIGHTS, allow_pickle=False) as arrays:
        return ItemPoolingWeights(
            item_ids=list(item_ids),
            **{name: np.asarray(arrays[name], dtype=np.float32) for name in arrays.files},
        )


class ItemPoolingScorer:
    """Scores users against the whole catalogue with NumPy (one BLAS call per batch)."""

    def __init__(self, weights: ItemPoolingWeights) -> None:
        self.weights = weights
        self.rows: dict[str, int] = {item: row for row, item in enumerate(weights.item_ids)}

    @property
    def item_count(self) -> int:
        return len(self.weights.item_ids)

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

    def scores(self, user_vectors: Floats) -> Floats:
        return (user_vectors @ self.weights.item_out.T + self.weights.item_bias).astype(np.float32)
