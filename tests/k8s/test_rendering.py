"""Every kustomization renders and every object is valid (the same check as k8s_check.sh), and
the validators themselves reject what they must, so that a pass means something."""

from __future__ import annotations

import pytest

from tests.k8s import model, render, tools
from tests.k8s.render import Obj


@pytest.mark.parametrize(
    "target", [f"overlays/{o}" for o in render.OVERLAYS] + [*render.STANDALONE]
)
def test_target_renders_and_every_object_validates(target: str) -> None:
    objects = render.overlay(target)
    assert objects, f"k8s/{target} rendered nothing"
    assert render.validate_all(objects) == []


def test_overlays_put_everything_in_their_namespace(objects: list[Obj]) -> None:
    namespaces = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    assert len(namespaces) == 1
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespaces[0], render.label(obj)


def test_generated_crds_are_valid_and_serve_the_versions_used(objects: list[Obj]) -> None:
    crds = render.generated_crds()
    assert render.validate_all(crds) == []
    served = set(render.crd_schemas())
    used = {(o["apiVersion"], o["kind"]) for o in objects if "strimzi.io" in o["apiVersion"]}
    assert used, "no Strimzi resources rendered"
    assert used <= served


def _one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    return next(
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    )


def test_validator_rejects_an_unknown_deployment_field(prod: list[Obj]) -> None:
    deployment = _one(prod, "Deployment", "ingest")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsRoot"] = 1
    assert any("runAsRoot" in p for p in render.validate(deployment))


def test_validator_rejects_a_wrong_type_in_a_built_in_kind(prod: list[Obj]) -> None:
    hpa = _one(prod, "HorizontalPodAutoscaler", "ingest")
    hpa["spec"]["minReplicas"] = "two"
    assert render.validate(hpa) != []


def test_validator_rejects_unknown_kinds() -> None:
    thing = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert render.validate(thing) != []


def test_crd_validation_rejects_unknown_fields_and_bad_values(prod: list[Obj]) -> None:
    topic = _one(prod, "KafkaTopic", "events")
    topic["spec"]["partitionCount"] = 6
    assert any("partitionCount" in p for p in render.validate(topic))
    topic = _one(prod, "KafkaTopic", "events")
    topic["spec"]["partitions"] = 0
    assert render.validate(topic) != []
    pool = _one(prod, "KafkaNodePool")
    pool["spec"]["roles"] = ["zookeeper"]
    assert render.validate(pool) != []
    kafka = _one(prod, "Kafka")
    kafka["spec"]["zookeeper"] = {"replicas": 3}  # gone from the v1 API
    assert render.validate(kafka) != []
    kafka = _one(prod, "Kafka")
    kafka["metadata"]["labels"] = {"x": 1}
    assert render.validate(kafka) != []


def test_crd_validation_leaves_open_maps_open(prod: list[Obj]) -> None:
    # spec.kafka.config and KafkaTopic spec.config preserve unknown fields in Strimzi's schema.
    kafka = _one(prod, "Kafka")
    kafka["spec"]["kafka"]["config"]["num.network.threads"] = 8
    assert render.validate(kafka) == []


def test_strict_schema_closes_declared_objects_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    strict = render.strict(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["open"]
    assert strict["properties"]["map"]["additionalProperties"] == {"type": "string"}


def test_tools_are_pinned() -> None:
    tools.ensure_all()  # built here when this test runs first
    assert tools.kustomize_version() == tools.KUSTOMIZE_VERSION
    assert tools.skaffold_version() == tools.SKAFFOLD_VERSION
    assert (tools.STRIMZI_CRD_DIR / ".complete").read_text().split()[1] == tools.STRIMZI_VERSION


def test_every_service_has_a_workload_in_every_overlay(objects: list[Obj]) -> None:
    deployed = {service for _, _, service in model.app_containers(objects)}
    assert deployed == set(render.SERVICES)
