"""What the tests read out of the rendered manifests, the Dockerfiles and the services' code."""

from __future__ import annotations

import base64
import importlib
import json
import re
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic_settings import BaseSettings

from tests.k8s.render import SERVICES, Obj
from tests.k8s.tools import REPO

IMAGE_PREFIX = "streamrec/"

# ----------------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    obj: Obj
    pod_spec: dict[str, Any]
    pod_labels: dict[str, str]

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def containers(self) -> list[dict[str, Any]]:
        return [*self.pod_spec.get("initContainers", []), *self.pod_spec["containers"]]


def workloads(objects: list[Obj]) -> list[Workload]:
    found = []
    for obj in objects:
        kind = obj["kind"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            template = obj["spec"]["template"]
        elif kind == "CronJob":
            template = obj["spec"]["jobTemplate"]["spec"]["template"]
        elif kind == "Pod":
            template = obj
        else:
            continue
        labels = template.get("metadata", {}).get("labels", {})
        found.append(Workload(obj, template["spec"], labels))
    return found


def service_of(container: dict[str, Any]) -> str | None:
    """The platform service whose image a container runs (None for Redis, PostgreSQL...)."""
    image: str = container["image"]
    if not image.startswith(IMAGE_PREFIX):
        return None
    name = image[len(IMAGE_PREFIX) :].split(":")[0].split("@")[0]
    return name if name in SERVICES else None


def app_containers(objects: list[Obj]) -> Iterator[tuple[Workload, dict[str, Any], str]]:
    for workload in workloads(objects):
        for container in workload.containers:
            service = service_of(container)
            if service:
                yield workload, container, service


def is_server(container: dict[str, Any]) -> bool:
    """Whether the container runs its image's CMD (uvicorn serving the app), rather than another
    entry point of the same image (the feature updater, a batch run)."""
    return "command" not in container and "args" not in container


def replicas(objects: list[Obj], deployment: Obj) -> int | None:
    """A Deployment's replica count; None when an HPA owns it."""
    name = deployment["metadata"]["name"]
    for obj in objects:
        if obj["kind"] != "HorizontalPodAutoscaler":
            continue
        if obj["spec"]["scaleTargetRef"]["name"] == name:
            return None
    return int(deployment["spec"].get("replicas", 1))


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name} is not rendered")


def find_generated(objects: list[Obj], kind: str, name: str) -> Obj | None:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    return None


# ------------------------------------------------------------------------------------ settings

# Variables a container may set although no settings class reads them: a library in the image
# reads them (k8s/README.md, "Variables outside the settings"). Exact names, so that a typo still
# fails the cross-check, each with the distribution that reads it, which the service must depend on.
FOREIGN_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "tensorflow-cpu",  # TensorFlow's C++ log threshold
    "TF_NUM_INTRAOP_THREADS": "tensorflow-cpu",  # process_util: the intra-op pool's size
    "TF_NUM_INTEROP_THREADS": "tensorflow-cpu",  # and the inter-op pool's
}


def dependencies(service: str) -> set[str]:
    """The distributions a service's pyproject.toml depends on (names only)."""
    project = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())
    return {
        re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
        for requirement in project["project"]["dependencies"]
    }


def settings_class(service: str) -> type[BaseSettings]:
    module = importlib.import_module(f"{service}.config")
    cls: type[BaseSettings] = getattr(module, f"{service.capitalize()}Settings")
    return cls


def _nested_settings(annotation: Any) -> list[type[BaseSettings]]:
    candidates = [annotation, *typing.get_args(annotation)]
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseSettings)]


def env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads, nested settings included: a field of
    a BaseSettings type built by its default factory reads the variables of its own prefix."""
    config = cls.model_config
    prefix = config.get("env_prefix", "")
    names: set[str] = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias or info.alias
        if isinstance(alias, str):
            names.add(alias)
        elif alias is not None and hasattr(alias, "choices"):
            names |= {c for c in alias.choices if isinstance(c, str)}
        else:
            names.add(f"{prefix}{name}")
        if info.default_factory is not None:
            for nested in _nested_settings(info.annotation):
                names |= env_names(nested)
    if not config.get("case_sensitive", False):
        names = {n.upper() for n in names}
    return names


# ----------------------------------------------------------------------------- container's env


@dataclass
class EnvSource:
    """Where a variable comes from: a literal, a ConfigMap key or a Secret key."""

    name: str
    value: str | None
    origin: str
    secret: str | None = None


def _decoded(secret: Obj, key: str) -> str | None:
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    if key in secret.get("data", {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


# The Secrets prod expects the operators to create (k8s/README.md, "Secrets"), each with a value
# of the shape it must hold: settings built from manifests whose Secrets are not rendered use it.
EXTERNAL_SECRETS = {
    "streamrec-redis": "rediss://:password@redis.example:6380/0",
    "streamrec-trainer-database": "postgresql+psycopg://user:password@db.example:5432/streamrec",
    # sha256 hex digests, comma-separated: here the digest of "example".
    "streamrec-gateway-api-keys": (
        "50d858e0985ecc7f60418aaf0cc5ab587f42c2570a884095a9e8ccacd0f6545c"
    ),
}


def value_of(source: EnvSource) -> str:
    """The variable's value, or for a Secret the operators create, an example of its shape."""
    if source.value is not None:
        return source.value
    if source.secret in EXTERNAL_SECRETS:
        return EXTERNAL_SECRETS[source.secret]
    return f"from-{source.origin}"


def container_env(container: dict[str, Any], objects: list[Obj]) -> list[EnvSource]:
    """Every variable the container gets from the manifests, in Kubernetes' order (envFrom first,
    then env), with its value where the manifests hold it. Secrets that are not rendered (prod:
    created by the operators) give value None."""
    sources: list[EnvSource] = []
    for ref in container.get("envFrom", []):
        prefix = ref.get("prefix", "")
        if "configMapRef" in ref:
            name = ref["configMapRef"]["name"]
            cm = find_generated(objects, "ConfigMap", name)
            if cm is None:
                raise KeyError(f"ConfigMap {name} is referenced but not rendered")
            for key, value in cm.get("data", {}).items():
                sources.append(EnvSource(prefix + key, str(value), f"ConfigMap/{name}"))
        if "secretRef" in ref:
            raise AssertionError("envFrom a whole Secret hides which variables it sets")
    for entry in container.get("env", []):
        if "value" in entry:
            sources.append(EnvSource(entry["name"], str(entry["value"]), "env"))
            continue
        source = entry["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = find_generated(objects, "Secret", ref["name"])
            value = _decoded(secret, ref["key"]) if secret else None
            sources.append(
                EnvSource(entry["name"], value, f"Secret/{ref['name']}", secret=ref["name"])
            )
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            cm = find(objects, "ConfigMap", ref["name"])
            sources.append(
                EnvSource(entry["name"], cm["data"][ref["key"]], f"ConfigMap/{ref['name']}")
            )
        elif "resourceFieldRef" in source:
            sources.append(EnvSource(entry["name"], None, "resourceFieldRef"))
        else:
            sources.append(EnvSource(entry["name"], None, "fieldRef"))
    return sources


# ---------------------------------------------------------------------------------- app routes


def create_app(service: str) -> FastAPI:
    module = importlib.import_module(f"{service}.main")
    app: FastAPI = module.create_app()
    return app


def served_paths(app: FastAPI) -> set[str]:
    """Routes the app answers: the OpenAPI paths plus routes outside the schema (/metrics)."""
    paths = set(app.openapi()["paths"])
    paths |= {route.path for route in app.routes if hasattr(route, "path")}
    return paths


# ---------------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path}: no stage {name!r}")

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def effective(self, stage: Stage, keyword: str) -> str | None:
        """The last ``keyword`` (USER, CMD) in effect in a stage, following FROM <stage>."""
        found = stage.all(keyword)
        if found:
            return found[-1]
        parents = [s for s in self.stages if s.name == stage.base]
        return self.effective(parents[0], keyword) if parents else None


def parse_dockerfile(path: Path) -> Dockerfile:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            match = re.match(r"^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", args, re.IGNORECASE)
            assert match, f"{path}: cannot read FROM {args}"
            stages.append(Stage(match.group(1), match.group(2)))
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(path, stages)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


def option(command: list[str], name: str) -> str:
    index = command.index(name)
    return command[index + 1]


def dockerfile(service: str) -> Dockerfile:
    return parse_dockerfile(REPO / "services" / service / "Dockerfile")


# ------------------------------------------------------------------------------ NetworkPolicy


@dataclass(frozen=True)
class Endpoint:
    """A pod (or a stand-in for something outside: another namespace, outside the cluster)."""

    name: str
    labels: tuple[tuple[str, str], ...]
    namespace: str | None  # None: outside the cluster
    namespace_labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[int, str], ...] = ()  # (number, name)

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict[str, Any], other: Endpoint, namespace: str) -> bool:
    if "ipBlock" in peer:
        return other.namespace is None  # only the outside is addressed by IP here
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], dict(other.namespace_labels)):
            return False
    elif other.namespace != namespace:
        return False
    return selects(peer.get("podSelector"), other.label_dict())


def _port_matches(ports: list[dict[str, Any]] | None, target: Endpoint, port: int) -> bool:
    if not ports:
        return True
    names = {name: number for number, name in target.ports}
    for spec in ports:
        if spec.get("protocol", "TCP") != "TCP":
            continue
        value = spec.get("port")
        if value is None:
            return True
        number = names.get(value) if isinstance(value, str) else value
        if number is None:
            continue
        if number == port or (spec.get("endPort") and number <= port <= spec["endPort"]):
            return True
    return False


def _policy_types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def allowed(policies: list[Obj], src: Endpoint, dst: Endpoint, port: int) -> bool:
    """Whether NetworkPolicies let ``src`` open a TCP connection to ``dst:port``."""
    for direction, subject, peer_key, rule_key, other in (
        ("Ingress", dst, "from", "ingress", src),
        ("Egress", src, "to", "egress", dst),
    ):
        if subject.namespace is None:
            continue  # outside the cluster: no policy applies
        relevant = [
            p
            for p in policies
            if p["metadata"].get("namespace", subject.namespace) == subject.namespace
            and direction in _policy_types(p)
            and selects(p["spec"].get("podSelector", {}), subject.label_dict())
        ]
        if not relevant:
            continue
        ok = False
        for policy in relevant:
            namespace = policy["metadata"].get("namespace", subject.namespace)
            for rule in policy["spec"].get(rule_key, []):
                peers = rule.get(peer_key)
                if peers is not None and not any(
                    _peer_matches(peer, other, namespace) for peer in peers
                ):
                    continue
                if _port_matches(rule.get("ports"), dst, port):
                    ok = True
        if not ok:
            return False
    return True


def strimzi_listener_policies(objects: list[Obj]) -> list[Obj]:
    """The ingress policies Strimzi's operator generates for its Kafka pods from the listeners'
    networkPolicyPeers (no peers: open to all)."""
    policies = []
    for kafka in (o for o in objects if o["kind"] == "Kafka"):
        name = kafka["metadata"]["name"]
        rules = []
        for listener in kafka["spec"]["kafka"]["listeners"]:
            rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": listener["port"]}]}
            if "networkPolicyPeers" in listener:
                rule["from"] = listener["networkPolicyPeers"]
            rules.append(rule)
        policies.append(
            {
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": f"{name}-network-policy-kafka",
                    "namespace": kafka["metadata"].get("namespace"),
                },
                "spec": {
                    "podSelector": {
                        "matchLabels": {"strimzi.io/cluster": name, "strimzi.io/kind": "Kafka"}
                    },
                    "policyTypes": ["Ingress"],
                    "ingress": rules,
                },
            }
        )
    return policies


def endpoints(objects: list[Obj]) -> list[Endpoint]:
    """The overlay's pods, its Kafka brokers (as Strimzi labels them), and stand-ins for the
    cluster DNS, a Prometheus in `monitoring`, another namespace and the outside world."""
    namespace = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    ns_labels = (("kubernetes.io/metadata.name", namespace),)
    found = []
    for workload in workloads(objects):
        ports = tuple(
            (p["containerPort"], p.get("name", ""))
            for c in workload.containers
            for p in c.get("ports", [])
        )
        found.append(
            Endpoint(
                workload.name,
                tuple(sorted(workload.pod_labels.items())),
                namespace,
                ns_labels,
                ports,
            )
        )
    for kafka in (o for o in objects if o["kind"] == "Kafka"):
        name = kafka["metadata"]["name"]
        ports = tuple((lis["port"], lis["name"]) for lis in kafka["spec"]["kafka"]["listeners"])
        labels = {"strimzi.io/cluster": name, "strimzi.io/kind": "Kafka"}
        found.append(Endpoint("kafka", tuple(sorted(labels.items())), namespace, ns_labels, ports))
    found += [
        Endpoint(
            "kube-dns",
            (("k8s-app", "kube-dns"),),
            "kube-system",
            (("kubernetes.io/metadata.name", "kube-system"),),
            ((53, "dns-tcp"),),
        ),
        Endpoint(
            "prometheus",
            (("app.kubernetes.io/name", "prometheus"),),
            "monitoring",
            (("kubernetes.io/metadata.name", "monitoring"),),
        ),
        Endpoint(
            "other-namespace-pod",
            (("app.kubernetes.io/name", "gateway"),),  # same labels, wrong namespace
            "elsewhere",
            (("kubernetes.io/metadata.name", "elsewhere"),),
        ),
        Endpoint("outside", (), None, (), ((6379, ""), (6380, ""), (5432, ""), (443, ""))),
    ]
    return found


def flows(objects: list[Obj]) -> set[tuple[str, str, int]]:
    """Every (source, destination, port) that the overlay's NetworkPolicies allow, over the
    ports each destination listens on."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    policies += strimzi_listener_policies(objects)
    points = endpoints(objects)
    result = set()
    for src in points:
        for dst in points:
            if src is dst:
                continue
            for port, _ in dst.ports:
                if allowed(policies, src, dst, port):
                    result.add((src.name, dst.name, port))
    return result
