"""Model specs are data: a known family and bounded hyperparameters, nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from streamrec_shared.schemas.models import (
    FAMILIES,
    ItemPoolingHyperparameters,
    ItemPoolingSpec,
    ModelSpecIn,
)


def hyperparameters(**fields: Any) -> ItemPoolingHyperparameters:
    return ItemPoolingHyperparameters.model_validate(fields)


def test_defaults() -> None:
    hp = ItemPoolingHyperparameters()
    assert hp.embedding_dim == 64
    assert hp.history_length == 20
    assert hp.learning_rate == 0.1
    assert hp.batch_size == 1024
    assert hp.sampled_negatives == 4096
    assert hp.l2 == 0.0
    assert hp.initial_capacity == 1024
    assert hp.replay_buffer == 100_000
    assert hp.replay_fraction == 0.25
    assert hp.seed == 0


@pytest.mark.parametrize(
    ("fields", "length"),
    [
        ({}, 20),
        ({"mask_history": True}, 20),
        ({"mask_history": True, "mask_length": 150}, 150),
        ({"mask_history": True, "mask_length": 10}, 20),  # the pooled items are carried anyway
        ({"mask_length": 150}, 20),  # no mask: nothing to reach for
    ],
)
def test_examples_carry_the_pooled_items_or_the_masks_reach(
    fields: dict[str, Any], length: int
) -> None:
    assert hyperparameters(**fields).example_length == length


def test_spec_in_defaults_to_an_item_pooling_spec() -> None:
    spec = ModelSpecIn(id="movies")
    assert spec.description == ""
    assert spec.spec == ItemPoolingSpec()
    assert spec.spec.family == "item_pooling"
    assert spec.spec.hyperparameters == ItemPoolingHyperparameters()
    assert FAMILIES == ("item_pooling",)


def test_a_spec_parses_from_json() -> None:
    spec = ModelSpecIn.model_validate_json(
        '{"id": "ml-1m", "spec": {"family": "item_pooling",'
        ' "hyperparameters": {"embedding_dim": 32, "l2": 0.001}}}'
    )
    assert spec.spec.hyperparameters.embedding_dim == 32
    assert spec.spec.hyperparameters.l2 == 0.001
    assert spec.spec.hyperparameters.history_length == 20


@pytest.mark.parametrize(
    ("field", "lowest", "highest"),
    [
        ("embedding_dim", 4, 512),
        ("history_length", 1, 200),
        ("mask_length", 1, 500),
        ("batch_size", 16, 65_536),
        ("sampled_negatives", 16, 1_000_000),
        ("initial_capacity", 16, 10_000_000),
        ("replay_buffer", 0, 10_000_000),
        ("seed", 0, None),
    ],
)
def test_integer_bounds(field: str, lowest: int, highest: int | None) -> None:
    assert getattr(hyperparameters(**{field: lowest}), field) == lowest
    with pytest.raises(ValidationError, match=field):
        hyperparameters(**{field: lowest - 1})
    if highest is not None:
        assert getattr(hyperparameters(**{field: highest}), field) == highest
        with pytest.raises(ValidationError, match=field):
            hyperparameters(**{field: highest + 1})


@pytest.mark.parametrize(
    ("field", "accepted", "rejected"),
    [
        ("learning_rate", [1e-6, 10.0], [0.0, -0.1, 10.01]),
        ("l2", [0.0, 1.0], [-1e-9, 1.01]),
        ("replay_fraction", [0.0, 0.99], [1.0, -0.1]),
    ],
)
def test_float_bounds(field: str, accepted: list[float], rejected: list[float]) -> None:
    for value in accepted:
        assert getattr(hyperparameters(**{field: value}), field) == value
    for value in rejected:
        with pytest.raises(ValidationError, match=field):
            hyperparameters(**{field: value})


def test_non_finite_learning_rate_is_rejected() -> None:
    with pytest.raises(ValidationError):
        hyperparameters(learning_rate=float("nan"))


def test_fractional_integers_are_rejected() -> None:
    with pytest.raises(ValidationError):
        hyperparameters(embedding_dim=8.5)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "s", "owner": "me"},
        {"id": "s", "spec": {"family": "item_pooling", "code": "import os"}},
        {"id": "s", "spec": {"hyperparameters": {"embedding_dim": 8, "optimizer": "adam"}}},
    ],
    ids=["spec-in", "spec", "hyperparameters"],
)
def test_extra_fields_are_forbidden_at_every_level(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ModelSpecIn.model_validate(body)


def test_unknown_family_is_rejected() -> None:
    with pytest.raises(ValidationError):
        ModelSpecIn.model_validate({"id": "s", "spec": {"family": "python_upload"}})


@pytest.mark.parametrize("spec_id", ["a", "0", "movies", "ml-1m", "a-", "x" * 63, "9-lives"])
def test_valid_spec_ids(spec_id: str) -> None:
    assert ModelSpecIn(id=spec_id).id == spec_id


@pytest.mark.parametrize(
    "spec_id",
    ["", "-movies", "Movies", "ml_1m", "ml.1m", "a b", "x" * 64, "movies\n", "é"],
)
def test_invalid_spec_ids(spec_id: str) -> None:
    with pytest.raises(ValidationError):
        ModelSpecIn(id=spec_id)


def test_description_is_bounded() -> None:
    assert len(ModelSpecIn(id="s", description="d" * 1000).description) == 1000
    with pytest.raises(ValidationError):
        ModelSpecIn(id="s", description="d" * 1001)


def test_specs_are_frozen_and_compare_by_value() -> None:
    spec = ItemPoolingSpec(hyperparameters=hyperparameters(embedding_dim=8))
    with pytest.raises(ValidationError):
        spec.family = "other"  # type: ignore[misc, assignment]
    assert spec == ItemPoolingSpec(hyperparameters=hyperparameters(embedding_dim=8))
    assert spec != ItemPoolingSpec()
