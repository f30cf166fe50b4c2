"""The manifests against the services' own code: routes, settings and ports."""

from __future__ import annotations

import functools
import importlib
import os
import re
from pathlib import PurePosixPath
from typing import Any

import httpx
import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from streamrec_shared.settings import KafkaSettings

from tests.k8s import model
from tests.k8s.render import SERVICES, Obj


@functools.cache
def paths_of(service: str) -> frozenset[str]:
    return frozenset(model.served_paths(model.create_app(service)))


def _probes(container: dict[str, object]) -> dict[str, dict[str, object]]:
    return {
        kind: container[kind]  # type: ignore[misc]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if kind in container
    }


def test_deployments_probe_readiness_and_liveness_on_routes_the_service_serves(
    objects: list[Obj],
) -> None:
    checked = 0
    for workload, container, service in model.app_containers(objects):
        if workload.obj["kind"] != "Deployment" or not model.is_server(container):
            continue  # the feature updater: test_the_feature_updater_process_is_probed_on_metrics
        probes = _probes(container)
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"  # type: ignore[index]
        assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"  # type: ignore[index]
        port_names = {p["name"] for p in container["ports"]}
        for kind, probe in probes.items():
            http = probe["httpGet"]
            assert http["path"] in paths_of(service), f"{workload.name} {kind} {http['path']}"  # type: ignore[index]
            assert http["port"] in port_names  # type: ignore[index]
        checked += 1
    assert checked >= len(SERVICES)


def test_prometheus_annotations_point_at_the_metrics_route(objects: list[Obj]) -> None:
    for workload, container, service in model.app_containers(objects):
        if workload.obj["kind"] != "Deployment":
            continue
        template = workload.obj["spec"]["template"]["metadata"]["annotations"]
        if model.is_server(container):
            assert template["prometheus.io/path"] in paths_of(service)
        else:  # prometheus_client's own server (the feature updater) answers on every path
            assert template["prometheus.io/path"] == "/metrics", workload.name
        assert int(template["prometheus.io/port"]) == container["ports"][0]["containerPort"]


# ------------------------------------------------------------------------------------ settings


def test_every_variable_a_manifest_sets_is_a_setting_the_service_reads(
    objects: list[Obj],
) -> None:
    """Deployments and the batch Job template alike (every app container of every workload):
    a name no settings class reads is a typo or a setting that does not exist (yet), except the
    few that a library in the image reads (model.FOREIGN_ENV)."""
    checked = 0
    for workload, container, service in model.app_containers(objects):
        readable = model.env_names(model.settings_class(service))
        sources = model.container_env(container, objects)
        names = [s.name for s in sources]
        foreign = {n for n in names if n in model.FOREIGN_ENV}
        for name in sorted(foreign):
            reader = model.FOREIGN_ENV[name]
            assert reader in model.dependencies(service), f"{workload.name}: {name} ({reader})"
        unknown = sorted(set(names) - readable - foreign)
        assert not unknown, f"{workload.name}: {unknown} are read by no {service} setting"
        duplicated = sorted({n for n in names if names.count(n) > 1})
        assert not duplicated, f"{workload.name}: {duplicated} set twice (which one wins?)"
        checked += len(names)
    assert checked > 0


def test_settings_built_from_the_manifests_are_valid(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings class accepts every value (types, enums, ranges), and the port it ends up
    with is the container's and the Service's."""
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    for workload, container, service in model.app_containers(objects):
        for name in list(os.environ):
            if name.upper().startswith("STREAMREC_"):
                monkeypatch.delenv(name)
        for source in model.container_env(container, objects):
            # Secrets the operators create (prod) hold values unknown here: an example will do.
            monkeypatch.setenv(source.name, model.value_of(source))
        settings = model.settings_class(service)()
        if workload.obj["kind"] != "Deployment":
            assert "ports" not in container  # a batch run serves nothing
            continue
        (port,) = container["ports"]
        assert settings.port == port["containerPort"] == SERVICES[service]  # type: ignore[attr-defined]
        fronting = [
            s
            for s in services.values()
            if s["spec"].get("selector")
            and model.selects({"matchLabels": s["spec"]["selector"]}, workload.pod_labels)
        ]
        names = [s["metadata"]["name"] for s in fronting]
        if not model.is_server(container):
            # Not the service's API (the feature updater: metrics only): no Service may send
            # requests there.
            assert not fronting, f"{workload.name} is behind {names}"
            continue
        assert len(fronting) == 1, f"{workload.name} is behind {names}"
        (service_port,) = fronting[0]["spec"]["ports"]
        assert service_port["targetPort"] == port["name"]
        assert service_port["port"] == port["containerPort"]


def test_every_configmap_and_secret_a_workload_uses_is_rendered_or_documented(
    objects: list[Obj], overlay_name: str
) -> None:
    external = set(model.EXTERNAL_SECRETS)  # k8s/README.md, "Secrets"
    readme = (model.REPO / "k8s" / "README.md").read_text()
    for _, container, _ in model.app_containers(objects):
        for source in model.container_env(container, objects):  # raises on a missing ConfigMap
            if source.secret and source.value is None:
                assert overlay_name != "dev", f"dev must run standalone: {source.secret}"
                assert source.secret in external, source.secret
                assert f"`{source.secret}`" in readme


def test_env_names_follow_nested_settings_and_reject_the_rest() -> None:
    class Inner(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="X_INNER_")
        depth: int = 1

    class Outer(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="X_OUTER_")
        port: int = 1
        inner: Inner = Field(default_factory=Inner)
        kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    names = model.env_names(Outer)
    assert {"X_OUTER_PORT", "X_OUTER_INNER", "X_INNER_DEPTH"} <= names
    assert "STREAMREC_KAFKA_BOOTSTRAP_SERVERS" in names
    assert "X_OUTER_DEPTH" not in names
    assert "X_INNER_PORT" not in names


def test_the_cross_check_catches_an_unknown_variable(dev: list[Obj]) -> None:
    config = next(
        o for o in dev if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("ingest-")
    )
    config["data"]["STREAMREC_INGEST_MAX_BATCH_EVENT"] = "10"  # a typo of MAX_BATCH_EVENTS
    _, container, _ = next(c for c in model.app_containers(dev) if c[2] == "ingest")
    names = {s.name for s in model.container_env(container, dev)}
    assert names - model.env_names(model.settings_class("ingest")) == {
        "STREAMREC_INGEST_MAX_BATCH_EVENT"
    }


def test_the_cross_check_covers_the_batch_job_template(dev: list[Obj]) -> None:
    config = next(
        o
        for o in dev
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("trainer-batch-settings")
    )
    config["data"]["STREAMREC_TRAINER_BATCH_SPEC"] = "default"  # not BATCH_SPEC_ID
    _, container, _ = next(c for c in model.app_containers(dev) if c[0].name == "trainer-batch")
    names = {s.name for s in model.container_env(container, dev)}
    assert names - model.env_names(model.settings_class("trainer")) - set(model.FOREIGN_ENV) == {
        "STREAMREC_TRAINER_BATCH_SPEC"
    }


# ------------------------------------------------------------------------------------- trainer

ARTIFACTS_CLAIM = "trainer-artifacts"


def _trainer_workloads(objects: list[Obj]) -> dict[str, tuple[model.Workload, dict[str, Any]]]:
    found = {
        w.name: (w, c) for w, c, service in model.app_containers(objects) if service == "trainer"
    }
    assert set(found) == {"trainer", "trainer-batch"}
    return found


def _settings(
    service: str, container: dict[str, Any], objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The service's settings as the container gets them (only the manifests' variables)."""
    for name in list(os.environ):
        if name.upper().startswith("STREAMREC_"):
            monkeypatch.delenv(name)
    for source in model.container_env(container, objects):
        monkeypatch.setenv(source.name, model.value_of(source))
    return model.settings_class(service)()


def _trainer_settings(
    container: dict[str, Any], objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> Any:
    return _settings("trainer", container, objects, monkeypatch)


def test_trainer_and_batch_runs_share_the_registry_secret_and_the_artifact_volume(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both write the same registry and artifact store: the database URL comes from the Secret
    (never the default SQLite file in the working directory), and the artifact directory is
    where the artifact PVC is mounted (not the read-only root filesystem)."""
    for name, (workload, container) in _trainer_workloads(objects).items():
        (entry,) = [e for e in container["env"] if e["name"] == "STREAMREC_TRAINER_DATABASE_URL"]
        ref = entry["valueFrom"]["secretKeyRef"]
        # dev generates the Secret, so kustomize appends its content hash to the name.
        assert re.fullmatch(r"streamrec-trainer-database(-[a-z0-9]{10})?", ref["name"]), name
        assert ref["key"] == "url", name
        settings = _trainer_settings(container, objects, monkeypatch)
        assert not settings.database_url.get_secret_value().startswith("sqlite"), name
        volumes = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in workload.pod_spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {
            PurePosixPath(m["mountPath"])
            for m in container["volumeMounts"]
            if volumes.get(m["name"]) == ARTIFACTS_CLAIM and not m.get("readOnly")
        }
        assert PurePosixPath(settings.artifacts_dir) in mounts, (name, settings.artifacts_dir)


def test_tensorflow_thread_pools_follow_the_cpu_limit(objects: list[Obj]) -> None:
    for name, (_, container) in _trainer_workloads(objects).items():
        env = {e["name"]: e for e in container["env"]}
        for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            ref = env[variable]["valueFrom"]["resourceFieldRef"]
            assert ref["containerName"] == container["name"], (name, variable)
            assert ref["resource"] == "limits.cpu", (name, variable)
        assert "cpu" in container["resources"]["limits"], name


def test_the_batch_job_runs_the_batch_entry_point_on_its_own_spec_setting(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    workloads = _trainer_workloads(objects)
    _, batch = workloads["trainer-batch"]
    assert batch["command"] == ["python", "-m", "trainer.batch"]
    assert callable(importlib.import_module("trainer.batch").main)
    sources = {s.name: s for s in model.container_env(batch, objects)}
    assert sources["STREAMREC_TRAINER_BATCH_SPEC_ID"].origin.startswith("ConfigMap/")
    assert _trainer_settings(batch, objects, monkeypatch).batch_spec_id
    # The follow-mode trainer reads no batch settings: setting them there would mislead.
    _, follow = workloads["trainer"]
    names = {s.name for s in model.container_env(follow, objects)}
    assert not {n for n in names if n.startswith("STREAMREC_TRAINER_BATCH_")}


def test_dev_registry_url_reaches_the_in_cluster_postgresql(dev: list[Obj]) -> None:
    """The generated dev Secret is a URL the registry's engine accepts, with an installed
    driver, pointing at the dev PostgreSQL Service's name and port."""
    _, container = _trainer_workloads(dev)["trainer"]
    (source,) = [
        s for s in model.container_env(container, dev) if s.name == "STREAMREC_TRAINER_DATABASE_URL"
    ]
    assert source.value is not None
    url = make_url(source.value)
    assert url.get_backend_name() == "postgresql"
    url.get_dialect().import_dbapi()  # the driver (psycopg 3) is installed
    postgresql = model.find(dev, "Service", "postgresql")
    assert url.host == postgresql["metadata"]["name"]
    assert url.port in {p["port"] for p in postgresql["spec"]["ports"]}
    assert url.database


# ----------------------------------------------------------------------------------- inference

UPDATER_COMMAND = ["python", "-m", "inference.updater"]


def _inference_containers(
    objects: list[Obj],
) -> dict[str, tuple[model.Workload, dict[str, Any]]]:
    return {
        w.name: (w, c)
        for w, c, service in model.app_containers(objects)
        if service == "inference" and w.obj["kind"] == "Deployment"
    }


def _servers(objects: list[Obj]) -> dict[str, tuple[model.Workload, dict[str, Any]]]:
    found = {n: wc for n, wc in _inference_containers(objects).items() if model.is_server(wc[1])}
    assert "inference" in found
    return found


def _mount_of(
    path: PurePosixPath, workload: model.Workload, container: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The (mount, volume) that holds ``path``: the deepest mount at or above it."""
    volumes = {v["name"]: v for v in workload.pod_spec.get("volumes", [])}
    holding = [
        m
        for m in container.get("volumeMounts", [])
        if path == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in path.parents
    ]
    if not holding:
        return None
    mount = max(holding, key=lambda m: len(PurePosixPath(m["mountPath"]).parts))
    return mount, volumes[mount["name"]]


def test_inference_caches_artifacts_on_a_writable_emptydir(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The artifact cache is written at every model load: outside dev the root filesystem is
    read-only, so it must be a volume (per pod: an emptyDir), mounted writable, of its own
    (/tmp is HOME's and small)."""
    for name, (workload, container) in _servers(objects).items():
        settings = _settings("inference", container, objects, monkeypatch)
        cache = PurePosixPath(settings.artifact_cache_dir)
        assert cache.is_absolute(), (name, cache)  # not relative to the working directory
        held = _mount_of(cache, workload, container)
        assert held is not None, f"{name}: {cache} is on the root filesystem"
        mount, volume = held
        assert not mount.get("readOnly"), name
        assert "emptyDir" in volume, name
        assert mount["mountPath"] != "/tmp", name


def test_the_cache_check_rejects_a_cache_on_the_root_filesystem(prod: list[Obj]) -> None:
    workload, container = _servers(prod)["inference"]
    assert _mount_of(PurePosixPath("/var/cache/other"), workload, container) is None
    held = _mount_of(PurePosixPath("/tmp/x"), workload, container)
    assert held is not None
    assert held[0]["mountPath"] == "/tmp"


def test_inference_reads_models_from_the_trainer_service(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = model.find(objects, "Service", "trainer")
    for name, (_, container) in _servers(objects).items():
        settings = _settings("inference", container, objects, monkeypatch)
        url = httpx.URL(settings.trainer_url)
        assert url.scheme == "http", name
        assert url.host == trainer["metadata"]["name"], name
        assert url.port in {p["port"] for p in trainer["spec"]["ports"]}, name
        assert settings.spec_id == "default", name
        assert settings.artifacts_dir is None, name  # the trainer's volume is ReadWriteOnce


def test_only_the_canary_pins_a_model_version(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stable pool follows every new version (no MODEL_VERSION at all); inference-canary
    serves the one version under test, set in its own ConfigMap."""
    for name, (_, container) in _servers(objects).items():
        sources = {s.name: s for s in model.container_env(container, objects)}
        settings = _settings("inference", container, objects, monkeypatch)
        if name == "inference-canary":
            source = sources["STREAMREC_INFERENCE_MODEL_VERSION"]
            assert source.origin.startswith("ConfigMap/inference-settings-canary"), source
            assert isinstance(settings.model_version, int)
            assert settings.model_version >= 1
        else:
            assert name == "inference"
            assert "STREAMREC_INFERENCE_MODEL_VERSION" not in sources
            assert settings.model_version is None


def test_the_canary_overlay_has_a_pinned_canary(canary: list[Obj]) -> None:
    assert set(_servers(canary)) == {"inference", "inference-canary"}


def _runs_an_updater(
    container: dict[str, Any], objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> bool:
    if container.get("command") == UPDATER_COMMAND:
        return True
    assert model.is_server(container), container.get("command")
    return bool(_settings("inference", container, objects, monkeypatch).run_feature_updater)


def test_exactly_one_feature_updater_runs(
    objects: list[Obj], overlay_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inference/updater.py assigns itself every partition of `events` (the consumer group gets
    commits only): N updaters would each read and try to apply every event. So exactly one pod
    runs it: the one inference pod in dev, inference-features (one replica, Recreate) where the
    HPA scales inference (prod); never the autoscaled pool or the canary."""
    updaters = {
        name: workload
        for name, (workload, container) in _inference_containers(objects).items()
        if _runs_an_updater(container, objects, monkeypatch)
    }
    expected = "inference" if overlay_name == "dev" else "inference-features"
    assert set(updaters) == {expected}
    (workload,) = updaters.values()
    assert model.replicas(objects, workload.obj) == 1, "no HPA, one replica"
    if expected == "inference-features":
        assert workload.obj["spec"]["strategy"]["type"] == "Recreate"
        assert model.replicas(objects, model.find(objects, "Deployment", "inference")) is None


def test_the_feature_updater_process_is_probed_on_metrics(
    prod: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m inference.updater` serves no API: only prometheus_client's metrics server,
    on --metrics-port (default: STREAMREC_INFERENCE_PORT), which answers on every path. No
    readiness probe (no Service); startup and liveness on the metrics port."""
    workload, container = _inference_containers(prod)["inference-features"]
    assert container["command"] == UPDATER_COMMAND
    assert "args" not in container
    updater = importlib.import_module("inference.updater")
    assert callable(updater.main)
    (port,) = container["ports"]
    settings = _settings("inference", container, prod, monkeypatch)
    assert port["containerPort"] == settings.port
    assert "readinessProbe" not in container
    for kind in ("startupProbe", "livenessProbe"):
        http = container[kind]["httpGet"]
        assert http["port"] == port["name"], kind
        assert http["path"] == "/metrics", kind
    assert workload.pod_spec["terminationGracePeriodSeconds"] > 5  # the final commit waits 5 s
    # The settings the features are written with are the ones the serving pods read them with.
    _, serving = _servers(prod)["inference"]
    refs = [r["configMapRef"]["name"] for r in container["envFrom"]]
    assert refs == [r["configMapRef"]["name"] for r in serving["envFrom"]]
