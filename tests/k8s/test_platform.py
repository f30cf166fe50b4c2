"""Platform-wide properties of the rendered overlays: security, Kafka, scaling, canary, network."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.k8s import model
from tests.k8s.render import SERVICES, Obj

PLATFORM_PODS = {*SERVICES, "trainer-batch", "inference-canary", "inference-features"}


def _container_contexts(workload: model.Workload) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    pod = workload.pod_spec.get("securityContext", {})
    return [(pod, c.get("securityContext", {})) for c in workload.containers]


# -------------------------------------------------------------------------------------- security


def test_nothing_runs_as_root(objects: list[Obj]) -> None:
    found = model.workloads(objects)
    assert found
    for workload in found:
        for pod, container in _container_contexts(workload):
            non_root = container.get("runAsNonRoot", pod.get("runAsNonRoot"))
            user = container.get("runAsUser", pod.get("runAsUser"))
            assert non_root is True, workload.name
            assert isinstance(user, int), workload.name
            assert user > 0, workload.name


def test_pods_meet_the_restricted_pod_security_standard(objects: list[Obj]) -> None:
    for workload in model.workloads(objects):
        spec = workload.pod_spec
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), workload.name
        assert all("hostPath" not in v for v in spec.get("volumes", [])), workload.name
        assert spec["automountServiceAccountToken"] is False, workload.name
        for pod, container in _container_contexts(workload):
            seccomp = container.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", workload.name
            assert container.get("allowPrivilegeEscalation") is False, workload.name
            assert container.get("privileged", False) is False, workload.name
            assert container.get("capabilities", {}).get("drop") == ["ALL"], workload.name
            assert not container.get("capabilities", {}).get("add"), workload.name


def test_root_filesystems_are_read_only_except_for_dev_file_sync(
    objects: list[Obj], overlay_name: str
) -> None:
    for workload in model.workloads(objects):
        for container in workload.containers:
            read_only = container["securityContext"]["readOnlyRootFilesystem"]
            synced = overlay_name == "dev" and workload.obj["kind"] == "Deployment"
            if synced and model.service_of(container):
                assert read_only is False, workload.name  # skaffold writes synced sources
            else:
                assert read_only is True, workload.name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if model.service_of(container):
                assert "/tmp" in mounts, f"{workload.name}: HOME and temp files live on /tmp"


def test_service_accounts_mount_no_token_and_every_container_is_bounded(
    objects: list[Obj],
) -> None:
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert accounts
    assert all(a["automountServiceAccountToken"] is False for a in accounts)
    names = {a["metadata"]["name"] for a in accounts}
    for workload, container, _ in model.app_containers(objects):
        assert workload.pod_spec["serviceAccountName"] in names
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), workload.name
        assert "memory" in resources["limits"], workload.name


# ----------------------------------------------------------------------------------------- Kafka


def _platform_config(objects: list[Obj]) -> dict[str, str]:
    config = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("streamrec-platform")
    )
    data: dict[str, str] = config["data"]
    return data


def test_kafka_is_kraft_with_node_pools(objects: list[Obj]) -> None:
    (kafka,) = [o for o in objects if o["kind"] == "Kafka"]
    annotations = kafka["metadata"]["annotations"]
    assert annotations["strimzi.io/node-pools"] == "enabled"
    assert annotations["strimzi.io/kraft"] == "enabled"
    assert "zookeeper" not in kafka["spec"]
    pools = [o for o in objects if o["kind"] == "KafkaNodePool"]
    for pool in pools:
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    roles = [r for p in pools for r in p["spec"]["roles"] for _ in range(p["spec"]["replicas"])]
    assert roles.count("controller") % 2 == 1, "a KRaft quorum needs an odd number of voters"
    assert roles.count("broker") >= 1


def test_the_cluster_runs_the_kafka_version_the_integration_tests_run(objects: list[Obj]) -> None:
    """The local broker (infra/kafka/pom.xml, what tests/integration proves aiokafka against)
    and the cluster's (Strimzi's spec.kafka.version) are the same release."""
    (kafka,) = [o for o in objects if o["kind"] == "Kafka"]
    pom = (model.REPO / "infra" / "kafka" / "pom.xml").read_text()
    (local,) = re.findall(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert kafka["spec"]["kafka"]["version"] == local
    major_minor = ".".join(local.split(".")[:2])
    assert kafka["spec"]["kafka"]["metadataVersion"].startswith(f"{major_minor}-IV")


def test_services_are_pointed_at_the_kafka_cluster_strimzi_creates(objects: list[Obj]) -> None:
    (kafka,) = [o for o in objects if o["kind"] == "Kafka"]
    (plain,) = [lis for lis in kafka["spec"]["kafka"]["listeners"] if lis["tls"] is False]
    expected = f"{kafka['metadata']['name']}-kafka-bootstrap:{plain['port']}"
    config = _platform_config(objects)
    assert config["STREAMREC_KAFKA_BOOTSTRAP_SERVERS"] == expected
    assert config["STREAMREC_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False


def test_topics_match_what_the_services_are_told(objects: list[Obj]) -> None:
    config = _platform_config(objects)
    topics = {t["spec"]["topicName"]: t["spec"] for t in objects if t["kind"] == "KafkaTopic"}
    (kafka,) = [o for o in objects if o["kind"] == "Kafka"]
    for t in objects:
        if t["kind"] == "KafkaTopic":
            assert t["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    events = int(config["STREAMREC_TOPIC_EVENTS_PARTITIONS"])
    default = int(config["STREAMREC_TOPIC_DEFAULT_PARTITIONS"])
    expected_partitions = {
        config["STREAMREC_TOPIC_EVENTS"]: events,
        config["STREAMREC_TOPIC_IMPRESSIONS"]: events,
        config["STREAMREC_TOPIC_CONTROL"]: int(config["STREAMREC_TOPIC_CONTROL_PARTITIONS"]),
        config["STREAMREC_TOPIC_EVENTS_DLQ"]: default,
        config["STREAMREC_TOPIC_REC_REQUESTS"]: default,
        config["STREAMREC_TOPIC_REC_RESPONSES"]: default,
    }
    assert {name: spec["partitions"] for name, spec in topics.items()} == expected_partitions
    replicas = int(config["STREAMREC_TOPIC_REPLICATION_FACTOR"])
    min_isr = int(config["STREAMREC_TOPIC_MIN_INSYNC_REPLICAS"])
    brokers = sum(
        p["spec"]["replicas"]
        for p in objects
        if p["kind"] == "KafkaNodePool" and "broker" in p["spec"]["roles"]
    )
    broker_config = kafka["spec"]["kafka"]["config"]
    assert broker_config["default.replication.factor"] == replicas
    assert broker_config["min.insync.replicas"] == min_isr
    assert broker_config["offsets.topic.replication.factor"] == replicas
    for name, spec in topics.items():
        assert spec["replicas"] == replicas, name
        assert spec["config"]["min.insync.replicas"] == min_isr, name
        assert min_isr <= replicas <= brokers, name


def test_prod_replicates_three_ways_with_two_in_sync(prod: list[Obj], canary: list[Obj]) -> None:
    for objects in (prod, canary):
        config = _platform_config(objects)
        assert config["STREAMREC_TOPIC_REPLICATION_FACTOR"] == "3"
        assert config["STREAMREC_TOPIC_MIN_INSYNC_REPLICAS"] == "2"
        topics = [t for t in objects if t["kind"] == "KafkaTopic"]
        assert {t["spec"]["topicName"] for t in topics} == {
            "events",
            "control",
            "impressions",
            "events.dlq",
            "rec.requests",
            "rec.responses",
        }
        assert all(t["spec"]["replicas"] == 3 for t in topics)
        assert all(t["spec"]["config"]["min.insync.replicas"] == 2 for t in topics)


# ---------------------------------------------------------------------------- scaling, budgets


def test_prod_autoscales_ingest_inference_and_gateway_only(prod: list[Obj]) -> None:
    hpas = {
        o["spec"]["scaleTargetRef"]["name"]: o
        for o in prod
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    assert set(hpas) == {"ingest", "inference", "gateway"}
    for name, hpa in hpas.items():
        deployment = model.find(prod, "Deployment", name)
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the replica count"
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "cpu" in container["resources"]["requests"]  # utilisation is relative to it
    assert model.find(prod, "Deployment", "trainer")["spec"]["replicas"] == 1


def test_prod_budgets_cover_exactly_the_autoscaled_pods(prod: list[Obj]) -> None:
    budgets = [o for o in prod if o["kind"] == "PodDisruptionBudget"]
    covered = {}
    for budget in budgets:
        selected = [
            w.name
            for w in model.workloads(prod)
            if model.selects(budget["spec"]["selector"], w.pod_labels)
        ]
        assert len(selected) == 1, (budget["metadata"]["name"], selected)
        covered[selected[0]] = budget
        assert budget["spec"].get("maxUnavailable") == 1
    assert set(covered) == {"ingest", "inference", "gateway"}


def test_dev_runs_one_replica_without_hpas_or_budgets(dev: list[Obj]) -> None:
    assert not [o for o in dev if o["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget")]
    for deployment in (o for o in dev if o["kind"] == "Deployment"):
        assert deployment["spec"]["replicas"] == 1
    assert {o["metadata"]["name"] for o in dev if o["kind"] == "Service"} >= {"redis", "postgresql"}


def test_trainer_is_one_writer_of_its_artifact_volume(objects: list[Obj]) -> None:
    """One trainer pod, ever: two would both consume the control group and write the same
    checkpoints (and the volume is ReadWriteOnce). No overlay scales it."""
    trainer = model.find(objects, "Deployment", "trainer")
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"]["type"] == "Recreate"
    assert not [
        o
        for o in objects
        if o["kind"] == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"]["name"] == "trainer"
    ]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for w in model.workloads(objects)
        if w.name in ("trainer", "trainer-batch")
        for v in w.pod_spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"trainer-artifacts"}
    model.find(objects, "PersistentVolumeClaim", "trainer-artifacts")
    batch = model.find(objects, "CronJob", "trainer-batch")
    assert batch["spec"]["suspend"] is True  # a template, never started by the schedule
    affinity = batch["spec"]["jobTemplate"]["spec"]["template"]["spec"]["affinity"]
    (term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert model.selects(term["labelSelector"], model.workloads([trainer])[0].pod_labels)


# ---------------------------------------------------------------------------------------- canary


def test_canary_is_a_second_inference_pool_with_its_own_settings(canary: list[Obj]) -> None:
    stable = model.find(canary, "Deployment", "inference")
    candidate = model.find(canary, "Deployment", "inference-canary")
    stable_pod = model.workloads([stable])[0].pod_labels
    canary_pod = model.workloads([candidate])[0].pod_labels
    assert stable_pod["streamrec.io/variant"] == "stable"
    assert canary_pod["streamrec.io/variant"] == "canary"
    for service, own, other in (
        ("inference", stable_pod, canary_pod),
        ("inference-canary", canary_pod, stable_pod),
    ):
        selector = {"matchLabels": model.find(canary, "Service", service)["spec"]["selector"]}
        assert model.selects(selector, own), service
        assert not model.selects(selector, other), service
    settings = [
        {
            ref["configMapRef"]["name"]
            for ref in d["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        }
        for d in (stable, candidate)
    ]
    assert settings[0] != settings[1], "the canary needs its own settings (its model version)"
    assert candidate["spec"]["template"]["spec"]["containers"][0]["image"] == "streamrec/inference"
    hpa_targets = {
        o["spec"]["scaleTargetRef"]["name"]
        for o in canary
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    assert "inference-canary" not in hpa_targets


def test_only_the_canary_overlay_has_a_canary(dev: list[Obj], prod: list[Obj]) -> None:
    for objects in (dev, prod):
        assert not [o for o in objects if o["metadata"]["name"] == "inference-canary"]


# --------------------------------------------------------------------------------------- network

INTENDED = {
    ("gateway", "ingest", 8001),
    ("gateway", "trainer", 8002),
    ("gateway", "inference", 8003),
    # Version records and artifact files from the registry (STREAMREC_INFERENCE_TRAINER_URL).
    ("inference", "trainer", 8002),
    *(
        (pod, "kafka", 9092)
        for pod in ("gateway", "ingest", "inference", "trainer", "trainer-batch")
    ),
    *(
        (pod, "kube-dns", 53)
        for pod in ("gateway", "ingest", "inference", "trainer", "trainer-batch")
    ),
    *(("prometheus", pod, port) for pod, port in SERVICES.items()),
    # The public entry is open to every source, on its port only.
    *(
        (src, "gateway", 8000)
        for src in ("outside", "other-namespace-pod", "kube-dns", "kafka", "prometheus")
    ),
}
DEV_DEPENDENCIES = {
    ("ingest", "redis", 6379),
    ("inference", "redis", 6379),
    ("trainer", "postgresql", 5432),
    ("trainer-batch", "postgresql", 5432),
}
EXTERNAL_DEPENDENCIES = {
    *((pod, "outside", port) for pod in ("ingest", "inference") for port in (6379, 6380)),
    ("trainer", "outside", 5432),
    ("trainer-batch", "outside", 5432),
}
# prod's feature updater on its own (components/feature-updater): events in, features out, its
# metrics scraped; nothing calls it.
FEATURE_UPDATER = {
    ("inference-features", "kafka", 9092),
    ("inference-features", "kube-dns", 53),
    *(("inference-features", "outside", port) for port in (6379, 6380)),
    ("prometheus", "inference-features", 8003),
}
CANARY = {
    ("gateway", "inference-canary", 8003),
    ("inference-canary", "trainer", 8002),
    ("prometheus", "inference-canary", 8003),
    ("inference-canary", "kafka", 9092),
    ("inference-canary", "kube-dns", 53),
    *(("inference-canary", "outside", port) for port in (6379, 6380)),
}


def platform_flows(objects: list[Obj]) -> set[tuple[str, str, int]]:
    pods = {w.name for w in model.workloads(objects)}
    return {f for f in model.flows(objects) if f[0] in pods or f[1] in pods}


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ("dev", INTENDED | DEV_DEPENDENCIES),
        ("prod", INTENDED | EXTERNAL_DEPENDENCIES | FEATURE_UPDATER),
        ("canary", INTENDED | EXTERNAL_DEPENDENCIES | FEATURE_UPDATER | CANARY),
    ],
)
def test_network_policies_allow_exactly_the_intended_flows(
    overlay: str, expected: set[tuple[str, str, int]], request: pytest.FixtureRequest
) -> None:
    objects: list[Obj] = request.getfixturevalue(overlay)
    allowed = platform_flows(objects)
    assert allowed - expected == set(), "flows nobody intended"
    assert expected - allowed == set(), "intended flows that are blocked"


def test_without_the_default_deny_everything_would_be_open(dev: list[Obj]) -> None:
    open_ = [o for o in dev if not o["metadata"]["name"].startswith("default-deny")]
    leaked = platform_flows(open_) - platform_flows(dev)
    # Redis and PostgreSQL have no egress rules of their own: the default deny is what holds them.
    assert ("redis", "outside", 443) in leaked
    assert ("postgresql", "outside", 443) in leaked


def test_dropping_a_policy_blocks_its_flow(dev: list[Obj]) -> None:
    without = [o for o in dev if o["metadata"]["name"] != "kafka-clients-egress"]
    lost = platform_flows(dev) - platform_flows(without)
    assert ("ingest", "kafka", 9092) in lost


def test_selector_semantics() -> None:
    labels = {"app.kubernetes.io/name": "ingest"}
    assert model.selects({}, labels)
    assert model.selects({"matchLabels": labels}, labels)
    assert not model.selects({"matchLabels": {"app.kubernetes.io/name": "gateway"}}, labels)
    expression = {"key": "app.kubernetes.io/name", "operator": "In", "values": ["ingest"]}
    assert model.selects({"matchExpressions": [expression]}, labels)
    assert not model.selects({"matchExpressions": [{**expression, "operator": "NotIn"}]}, labels)
