"""The gateway's manifests against its code: the pools it is pointed at, the API keys' Secret."""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import pytest
from gateway.config import GatewaySettings
from gateway.routing import CANARY, Split, key_accepted

from tests.k8s import model, render
from tests.k8s.render import Obj

KEYS_SECRET = "streamrec-gateway-api-keys"
KEYS_VARIABLE = "STREAMREC_GATEWAY_API_KEY_HASHES"
DEV_KEY = "streamrec-dev-key"  # documented in k8s/README.md, "Secrets"


def _gateway(objects: list[Obj]) -> dict[str, Any]:
    (container,) = [c for w, c, service in model.app_containers(objects) if service == "gateway"]
    return container


def _settings(objects: list[Obj], monkeypatch: pytest.MonkeyPatch) -> GatewaySettings:
    for name in list(os.environ):
        if name.upper().startswith("STREAMREC_"):
            monkeypatch.delenv(name)
    for source in model.container_env(_gateway(objects), objects):
        monkeypatch.setenv(source.name, model.value_of(source))
    return GatewaySettings()


def _pods_behind(url: str, objects: list[Obj]) -> tuple[list[model.Workload], int]:
    """The workloads whose pods the Service named by ``url``'s host selects, and the port the
    Service forwards ``url``'s port to."""
    parsed = httpx.URL(url)
    assert parsed.scheme == "http", url
    service = model.find(objects, "Service", parsed.host)
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == parsed.port]
    selector = {"matchLabels": service["spec"]["selector"]}
    pods = [w for w in model.workloads(objects) if model.selects(selector, w.pod_labels)]
    assert pods, f"Service {parsed.host} selects no pod"
    (target,) = {
        p["containerPort"]
        for w in pods
        for c in w.containers
        for p in c.get("ports", [])
        if p.get("name") == port["targetPort"] or p["containerPort"] == port["targetPort"]
    }
    return pods, target


def test_the_gateway_pools_point_at_the_inference_services(
    objects: list[Obj], overlay_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stable pool is the `inference` Service (stable pods only); the canary overlay, and it
    alone, adds inference-canary with a weight strictly between 0 and 1."""
    settings = _settings(objects, monkeypatch)
    stable, _ = _pods_behind(settings.inference_url, objects)
    assert [w.name for w in stable] == ["inference"]
    assert stable[0].pod_labels["streamrec.io/variant"] == "stable"
    if overlay_name == "canary":
        assert settings.inference_canary_url is not None
        canary, _ = _pods_behind(settings.inference_canary_url, objects)
        assert [w.name for w in canary] == ["inference-canary"]
        assert canary[0].pod_labels["streamrec.io/variant"] == "canary"
        assert 0.0 < settings.canary_weight < 1.0
        split = Split(settings.inference_url, settings.inference_canary_url, settings.canary_weight)
        assert any(split.pool_for(f"user-{i}").variant == CANARY for i in range(1000))
    else:
        assert settings.inference_canary_url is None
        assert settings.canary_weight == 0.0


def test_every_url_the_gateway_is_given_is_open_to_it(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each upstream is a Service of the overlay, and the NetworkPolicies let the gateway reach
    the pods behind it on their port (the canary's too, where there is one)."""
    settings = _settings(objects, monkeypatch)
    urls = [settings.ingest_url, settings.trainer_url, settings.inference_url]
    urls += [settings.inference_canary_url] if settings.inference_canary_url else []
    flows = model.flows(objects)
    for url in urls:
        pods, port = _pods_behind(url, objects)
        for workload in pods:
            assert ("gateway", workload.name, port) in flows, url


def _keys_source(objects: list[Obj]) -> model.EnvSource:
    sources = model.container_env(_gateway(objects), objects)
    (source,) = [s for s in sources if s.name == KEYS_VARIABLE]
    return source


def test_the_api_keys_come_from_a_secret_and_only_from_it(objects: list[Obj]) -> None:
    source = _keys_source(objects)
    assert source.secret is not None, source.origin
    # dev generates the Secret, so kustomize appends its content hash to the name.
    assert re.fullmatch(rf"{KEYS_SECRET}(-[a-z0-9]{{10}})?", source.secret), source.secret
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            assert KEYS_VARIABLE not in obj.get("data", {}), render.label(obj)


def test_dev_accepts_the_documented_dev_key_and_prod_expects_the_operators_secret(
    objects: list[Obj], overlay_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _keys_source(objects)
    settings = _settings(objects, monkeypatch)
    if overlay_name == "dev":
        assert source.value is not None, "dev generates the Secret"
        assert key_accepted(DEV_KEY, settings.api_key_hashes)
        assert DEV_KEY not in source.value  # the digest is stored, not the key
    else:
        assert source.value is None, "prod's API keys are the operators' (k8s/README.md)"
        assert source.secret == KEYS_SECRET
    readme = (model.REPO / "k8s" / "README.md").read_text()
    assert f"`{KEYS_SECRET}`" in readme
    assert f"`{DEV_KEY}`" in readme
