"""Model specs: a model is declared as data (a family and its validated hyperparameters).

Kafka-ML trains whatever Python a user uploads; that is remote code execution by design. Here a
spec can only pick one of the families the trainer implements and set bounded numbers on it, so
a spec from the REST API or the control topic can never run code.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SpecId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ItemPoolingHyperparameters(_Strict):
    """Next-item model whose user vector is pooled from the user's most recent items.

    Because the user side is a function of recent items (not a per-user row), an event a user
    just sent changes their recommendations as soon as the feature cache has it, and users never
    seen in training are served from their first event on.
    """

    embedding_dim: int = Field(default=64, ge=4, le=512)
    history_length: int = Field(
        default=20, ge=1, le=200, description="Recent items pooled into the user vector."
    )
    learning_rate: float = Field(default=0.1, gt=0, le=10, description="Sparse Adagrad rate.")
    batch_size: int = Field(default=1024, ge=16, le=65_536)
    sampled_negatives: int = Field(
        default=4096,
        ge=16,
        le=1_000_000,
        description=(
            "Uniformly sampled negatives shared by a mini-batch (plus the batch's own positives);"
            " catalogues up to this size train with the exact full softmax."
        ),
    )
    l2: float = Field(default=0.0, ge=0, le=1, description="L2 on the rows a step touches.")
    tie_embeddings: bool = Field(
        default=False,
        description=(
            "One table for history items and candidates: scores become item-item similarities"
            " (better on sparse, session-like data such as MovieLens; half the memory)."
        ),
    )
    mask_history: bool = Field(
        default=False,
        description="Leave each example's history items out of its softmax (exact softmax only).",
    )
    # Why apart from history_length: serving leaves out every item a user touched, so heavy
    # users' older items should not be negatives either, but pooling them costs training time
    # and adds nothing (one-off ``PoolingArm`` runs on ML-100K, session 12: pooling the newest
    # 50 while masking 300 scored as pooling and masking 150, HR@10 0.233).
    mask_length: int | None = Field(
        default=None,
        ge=1,
        le=500,
        description=(
            "With mask_history, how many of the user's newest items are left out of an example's"
            " softmax (default: history_length); examples, the replay reservoir and the"
            " trainer's row per user carry that many items (4 bytes each)."
        ),
    )
    # On by default: it raised HR@10 on both evaluation datasets (in process, ML-100K 0.222 ->
    # 0.229, synthetic 0.362 -> 0.392) for ~13 µs a request at 1,682 items and ~100 µs at
    # 100,000 (``make bench-scoring``, session 10: p50 32 -> 45 µs and 1,059 -> 1,161 µs;
    # session 9: 50 -> 69 and 1,150 -> 1,372); 0 saves that where throughput matters more.
    cooccurrence_weight: float = Field(
        default=4.0,
        ge=0,
        le=100,
        description=(
            "Weight of the counted item-to-item term: log(1 + summed cosine co-occurrence of an"
            " item with the user's newest items); 0 leaves it out."
        ),
    )
    cooccurrence_window: int = Field(
        default=10,
        ge=1,
        le=200,
        description="Items before an event it is paired with, and newest items scored against.",
    )
    cooccurrence_decay: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description=(
            "The user's k-th newest item counts decay^k in the term: the newest items say most"
            " about the next one."
        ),
    )
    cooccurrence_neighbors: int = Field(
        default=100, ge=1, le=10_000, description="Neighbors kept per item in a version."
    )
    cooccurrence_max_pairs: int = Field(
        default=5_000_000,
        ge=1,
        le=1_000_000_000,
        description=(
            "Distinct item pairs counted at most (12 bytes each); over it every count is halved"
            " and pairs below one are dropped."
        ),
    )
    initial_capacity: int = Field(
        default=1024, ge=16, le=10_000_000, description="Item rows before the first doubling."
    )
    replay_buffer: int = Field(
        default=100_000, ge=0, le=10_000_000, description="Reservoir of past examples."
    )
    replay_fraction: float = Field(
        default=0.25, ge=0, lt=1, description="Share of each incremental step drawn from replay."
    )
    seed: int = Field(default=0, ge=0)

    @property
    def example_length(self) -> int:
        """Items of the user's past an example carries: the pooled history, or the mask's
        reach where that is longer."""
        if self.mask_history and self.mask_length is not None:
            return max(self.history_length, self.mask_length)
        return self.history_length


class ItemPoolingSpec(_Strict):
    family: Literal["item_pooling"] = "item_pooling"
    hyperparameters: ItemPoolingHyperparameters = Field(default_factory=ItemPoolingHyperparameters)


# New families join this union (discriminated by ``family``); nothing else may be trained.
ModelSpec = ItemPoolingSpec
FAMILIES: tuple[str, ...] = ("item_pooling",)


class ModelSpecIn(_Strict):
    """A spec as the REST API creates it."""

    id: SpecId
    description: str = Field(default="", max_length=1000)
    spec: ModelSpec = Field(default_factory=ItemPoolingSpec)
