"""The control protocol: decoding, round trips and the validators of each message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from streamrec_shared.schemas.control import (
    CONTROL_TYPES,
    BoundedStream,
    CandidateRejected,
    ControlDecodeError,
    ControlMessageBase,
    DeploymentChanged,
    FollowStream,
    ModelPublished,
    OffsetRange,
    StopRequested,
    TrainingFailed,
    TrainingFinished,
    TrainingMode,
    TrainingStarted,
    TrainRequested,
    ValidationPolicy,
    decode_control,
)
from streamrec_shared.schemas.models import ItemPoolingHyperparameters, ItemPoolingSpec

EMITTED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DIGEST = "ab" * 32


def envelope(type_: str, **fields: Any) -> dict[str, Any]:
    """A message as a producer would put it on the topic (JSON-ready)."""
    return {
        "schema_version": 1,
        "message_id": "m-1",
        "type": type_,
        "emitted_at": EMITTED.isoformat(),
        **fields,
    }


def encoded(type_: str, **fields: Any) -> bytes:
    return orjson.dumps(envelope(type_, **fields))


def batch_request(**overrides: Any) -> TrainRequested:
    fields: dict[str, Any] = {
        "spec_id": "movies",
        "spec": ItemPoolingSpec(hyperparameters=ItemPoolingHyperparameters(embedding_dim=8)),
        "mode": TrainingMode.BATCH,
        "stream": BoundedStream(
            topic="events",
            partitions={0: OffsetRange(start=0, end=100), 2: OffsetRange(start=5, end=5)},
        ),
        **overrides,
    }
    return TrainRequested(**fields)


ALL_MESSAGES: list[ControlMessageBase] = [
    batch_request(),
    TrainRequested(
        spec_id="movies",
        spec=ItemPoolingSpec(),
        mode=TrainingMode.INCREMENTAL,
        stream=FollowStream(topic="events", start="latest", offsets={1: 10}),
        validation=ValidationPolicy(rate=0.5, metric="hr@20"),
        warm_start=False,
        epochs=3,
    ),
    StopRequested(run_id="run-1", spec_id="movies"),
    TrainingStarted(run_id="run-1", spec_id="movies", resumed_from={0: 7, 11: 0}),
    ModelPublished(
        spec_id="movies",
        version=3,
        run_id="run-1",
        family="item_pooling",
        artifact_uri="file:///artifacts/movies/" + DIGEST,
        digest=DIGEST,
        trained_through={0: 100, 1: 42},
        events_trained=142,
        item_count=17,
        metrics={"ndcg@10": 0.25},
        baseline_metrics={"ndcg@10": 0.2},
    ),
    CandidateRejected(spec_id="movies", run_id="run-1", reason="worse", metrics={"hr@10": 0.1}),
    TrainingFailed(run_id="run-1", spec_id="movies", error="boom"),
    TrainingFinished(run_id="run-1", spec_id="movies", status="stopped", events_trained=9),
    DeploymentChanged(name="home", spec_id="movies", stable_version=2, canary_version=3),
]


def test_every_control_type_has_a_round_trip_case() -> None:
    assert {message.type for message in ALL_MESSAGES} == CONTROL_TYPES


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: m.type)
def test_encode_then_decode_is_identity(message: ControlMessageBase) -> None:
    decoded = decode_control(message.encode())
    assert decoded == message
    assert type(decoded) is type(message)


def test_defaults_fill_the_envelope() -> None:
    message = StopRequested(run_id="r", spec_id="s")
    body = orjson.loads(message.encode())
    assert body["schema_version"] == 1
    assert body["type"] == "stop_requested"
    assert len(body["message_id"]) == 32
    assert datetime.fromisoformat(body["emitted_at"]).tzinfo is not None
    assert StopRequested(run_id="r", spec_id="s").message_id != message.message_id


def test_unknown_type_is_ignored() -> None:
    assert decode_control(encoded("model_retired", spec_id="movies", anything=[1, 2])) is None


def test_unknown_type_from_a_future_schema_version_is_ignored_too() -> None:
    assert decode_control(encoded("model_retired", schema_version=2)) is None


def test_known_type_with_another_schema_version_is_rejected() -> None:
    with pytest.raises(ControlDecodeError, match="stop_requested"):
        decode_control(encoded("stop_requested", schema_version=2, run_id="r", spec_id="s"))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"{not json", id="bad-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b'"stop_requested"', id="string"),
        pytest.param(orjson.dumps({"type": "stop_requested"}), id="no-envelope"),
        pytest.param(
            orjson.dumps({k: v for k, v in envelope("model_retired").items() if k != "emitted_at"}),
            id="unknown-type-without-envelope",
        ),
        pytest.param(encoded("stop_requested", run_id="r"), id="missing-field"),
        pytest.param(encoded("stop_requested", run_id="r", spec_id="Bad Id"), id="bad-spec-id"),
        pytest.param(encoded("model_published", spec_id="s", version=0), id="invalid-known"),
    ],
)
def test_undecodable_values_raise(value: bytes) -> None:
    with pytest.raises(ControlDecodeError):
        decode_control(value)


def test_tombstone_raises() -> None:
    with pytest.raises(ControlDecodeError, match="tombstone"):
        decode_control(None)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(ControlDecodeError, ValueError)


def test_extra_top_level_fields_are_ignored() -> None:
    decoded = decode_control(
        encoded("stop_requested", run_id="r", spec_id="s", priority="high", added_in_v1_1=True)
    )
    assert decoded == StopRequested(run_id="r", spec_id="s", message_id="m-1", emitted_at=EMITTED)


def test_offsets_keys_are_parsed_from_json_strings() -> None:
    decoded = decode_control(
        encoded("training_started", run_id="r", spec_id="s", resumed_from={"0": 3, "12": 40})
    )
    assert isinstance(decoded, TrainingStarted)
    assert decoded.resumed_from == {0: 3, 12: 40}
    assert all(isinstance(key, int) for key in decoded.resumed_from)


@pytest.mark.parametrize(
    "resumed_from", [{"-1": 3}, {"0": -3}, {"zero": 3}], ids=["negative-key", "negative", "name"]
)
def test_bad_offsets_are_rejected(resumed_from: dict[str, int]) -> None:
    with pytest.raises(ControlDecodeError):
        decode_control(
            encoded("training_started", run_id="r", spec_id="s", resumed_from=resumed_from)
        )


def test_bounded_stream_partitions_decode_with_int_keys() -> None:
    raw = orjson.loads(batch_request().encode())
    assert set(raw["stream"]["partitions"]) == {"0", "2"}
    decoded = decode_control(orjson.dumps(raw))
    assert isinstance(decoded, TrainRequested)
    assert isinstance(decoded.stream, BoundedStream)
    assert decoded.stream.partitions[2] == OffsetRange(start=5, end=5)


def test_batch_mode_needs_a_range() -> None:
    with pytest.raises(ValidationError, match="kind=range"):
        batch_request(stream=FollowStream(topic="events"))


def test_incremental_mode_needs_follow() -> None:
    with pytest.raises(ValidationError, match="kind=follow"):
        batch_request(mode=TrainingMode.INCREMENTAL)


def test_mode_mismatch_on_the_wire_is_a_decode_error() -> None:
    raw = orjson.loads(batch_request().encode())
    raw["mode"] = "incremental"
    with pytest.raises(ControlDecodeError, match="train_requested"):
        decode_control(orjson.dumps(raw))


def test_stream_kind_selects_the_stream_model() -> None:
    raw = orjson.loads(batch_request().encode())
    raw["stream"]["kind"] = "follow"  # a follow stream has no "partitions"
    with pytest.raises(ControlDecodeError):
        decode_control(orjson.dumps(raw))


def test_offset_range_end_before_start_is_rejected() -> None:
    with pytest.raises(ValidationError, match="end must not be before start"):
        OffsetRange(start=10, end=9)


def test_empty_offset_range_is_allowed() -> None:
    assert OffsetRange(start=10, end=10).end == 10


def test_bounded_stream_needs_a_partition() -> None:
    with pytest.raises(ValidationError):
        BoundedStream(topic="events", partitions={})


def test_default_run_id_is_generated_and_valid() -> None:
    first, second = batch_request(), batch_request()
    assert first.run_id != second.run_id
    assert len(first.run_id) == 32


@pytest.mark.parametrize("run_id", ["", "has space", "x" * 65, "a/b"])
def test_bad_run_ids_are_rejected(run_id: str) -> None:
    with pytest.raises(ValidationError):
        StopRequested(run_id=run_id, spec_id="s")


def test_digest_must_be_lowercase_sha256_hex() -> None:
    with pytest.raises(ValidationError):
        ModelPublished.model_validate({**ALL_MESSAGES[4].model_dump(), "digest": DIGEST.upper()})


def test_deployment_canary_weight_is_bounded() -> None:
    with pytest.raises(ValidationError):
        DeploymentChanged(name="home", spec_id="movies", canary_weight=1.5)


def test_messages_are_frozen() -> None:
    message = StopRequested(run_id="r", spec_id="s")
    with pytest.raises(ValidationError):
        message.run_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: m.type)
def test_subject_key_is_the_spec_id(message: ControlMessageBase) -> None:
    assert message.subject_key() == b"movies"


def test_deployment_subject_is_its_spec_not_its_name() -> None:
    # Everything about one model (publishes and the deployments of it) shares one partition.
    message = DeploymentChanged(name="home", spec_id="movies")
    assert message.subject_key() == b"movies"


def test_offset_bounds_of_a_range_and_of_a_follow() -> None:
    spec = {"family": "item_pooling"}
    batch = TrainRequested.model_validate(
        {"spec_id": "s", "spec": spec, "mode": "batch", "stream": {"kind": "range",
         "topic": "events",
         "partitions": {"0": {"start": 3, "end": 9}, "2": {"start": 0, "end": 4}}}}
    )  # fmt: skip
    assert batch.offset_bounds() == ({0: 3, 2: 0}, {0: 9, 2: 4})
    follow = TrainRequested.model_validate(
        {"spec_id": "s", "spec": spec, "mode": "incremental",
         "stream": {"kind": "follow", "topic": "events", "offsets": {"1": 7}}}
    )  # fmt: skip
    assert follow.offset_bounds() == ({1: 7}, None)
