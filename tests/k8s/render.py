"""Render the kustomizations under ``k8s/`` and validate every object without a cluster.

Built-in kinds are validated with ``kubernetes-validate`` against the OpenAPI schemas of a pinned
Kubernetes version, in strict mode (unknown fields are errors, as ``kubectl apply`` with its
default strict field validation makes them). Strimzi's custom resources are validated against
the ``openAPIV3Schema`` of Strimzi's own CRDs (see ``tools.py``), made strict the same way (an
object schema that lists its properties and does not preserve unknown fields admits no others),
and their ``metadata`` against Kubernetes' ObjectMeta. Not evaluated: the CRDs' CEL rules
(``x-kubernetes-validations``), which only an API server runs.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

from tests.k8s import tools

K8S = tools.REPO / "k8s"

# The Kubernetes version the manifests are validated against (one that kubernetes-validate 1.37.0
# ships). Everything used here is GA or on by default there (preStop `sleep` needs 1.30+).
KUBERNETES_VERSION = "1.33.0"

OVERLAYS = ("dev", "prod", "canary")
# Every kustomization that must render and validate on its own as well.
STANDALONE = (
    "base",
    "base/platform",
    "base/kafka",
    "base/ingest",
    "base/trainer",
    "base/inference",
    "base/inference-canary",
    "base/inference-features",
    "base/gateway",
)
SERVICES = {"ingest": 8001, "trainer": 8002, "inference": 8003, "gateway": 8000}

Obj = dict[str, Any]


class RenderError(RuntimeError):
    pass


def render(target: str) -> list[Obj]:
    """``kustomize build k8s/<target>`` as a list of objects."""
    kustomize = tools.ensure_kustomize()
    result = subprocess.run(
        [str(kustomize), "build", str(K8S / target)],
        text=True,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"kustomize build k8s/{target}:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


SKAFFOLD_TAG = "k8s-check"


def skaffold_render(profile: str) -> list[Obj]:
    """``skaffold render -p <profile>`` of skaffold.yaml, offline (no cluster), as objects.

    ``--digest-source=tag --tag=k8s-check``: skaffold puts a tag on every image it builds
    without building anything (and without asking git for one), so the output shows which
    images those are. skaffold runs ``kustomize build`` itself: the pinned kustomize comes first
    on PATH. Its HOME is a temporary directory whose global config turns its usage metrics off:
    it writes that config, and nothing here may write to the user's home.
    """
    skaffold = tools.ensure_skaffold()
    kustomize = tools.ensure_kustomize()
    with tempfile.TemporaryDirectory(prefix="skaffold-render-") as tmp:
        home, output = Path(tmp), Path(tmp) / "rendered.yaml"
        (home / ".skaffold").mkdir()
        (home / ".skaffold" / "config").write_text("global:\n  collect-metrics: false\n")
        result = subprocess.run(
            [
                str(skaffold), "render", f"--profile={profile}", "--offline=true",
                "--digest-source=tag", f"--tag={SKAFFOLD_TAG}", "--update-check=false",
                f"--output={output}", f"--filename={tools.REPO / 'skaffold.yaml'}",
            ],
            text=True,
            capture_output=True,
            check=False,
            cwd=tools.REPO,
            env={
                **os.environ,
                "HOME": str(home),
                "PATH": f"{kustomize.parent}{os.pathsep}{os.environ['PATH']}",
            },
        )  # fmt: skip
        if result.returncode != 0:
            raise RenderError(f"skaffold render -p {profile}:\n{result.stdout}{result.stderr}")
        return [doc for doc in yaml.safe_load_all(output.read_text()) if doc]


def containers_of(obj: Obj) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def image_name(image: str) -> str:
    """``registry/name:tag@digest`` -> ``registry/name`` (a port in the registry is kept)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def without_image_references(objects: list[Obj]) -> list[Obj]:
    """A copy with every container image reduced to its name (no tag, no digest)."""
    out = copy.deepcopy(objects)
    for obj in out:
        for container in containers_of(obj):
            container["image"] = image_name(container["image"])
    return out


def differences_apart_from_images(expected: list[Obj], actual: list[Obj]) -> list[str]:
    """What differs between two renderings once image references are reduced to names."""

    def by_label(objects: list[Obj]) -> dict[str, Obj]:
        return {label(o): o for o in without_image_references(objects)}

    want, got = by_label(expected), by_label(actual)
    problems = [f"{name}: missing" for name in sorted(set(want) - set(got))]
    problems += [f"{name}: not expected" for name in sorted(set(got) - set(want))]
    problems += [
        f"{name}: differs at {_first_difference(want[name], got[name])}"
        for name in sorted(set(want) & set(got))
        if want[name] != got[name]
    ]
    return problems


def _first_difference(a: Any, b: Any, path: str = "$") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{index}]")
    return f"{path} ({a!r} != {b!r})"


def images_not_tagged(objects: list[Obj], prefix: str, tag: str) -> list[str]:
    """Containers whose image starts with ``prefix`` but is not ``<name>:<tag>``: images that
    skaffold did not tag, so does not build."""
    return [
        f"{label(obj)}: {container['image']}"
        for obj in objects
        for container in containers_of(obj)
        if container["image"].startswith(prefix)
        and container["image"] != f"{image_name(container['image'])}:{tag}"
    ]


@functools.cache
def rendered(target: str) -> tuple[Obj, ...]:
    return tuple(render(target))


def overlay(target: str) -> list[Obj]:
    """A fresh copy of a rendered target (tests may modify it)."""
    return copy.deepcopy(list(rendered(target)))


def label(obj: Obj) -> str:
    namespace = obj.get("metadata", {}).get("namespace")
    name = obj.get("metadata", {}).get("name", "?")
    return f"{obj.get('kind')}/{(namespace + '/') if namespace else ''}{name}"


# --------------------------------------------------------------------------------- CRD schemas


def strict(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema that, like the API server's strict field validation, rejects
    fields it does not declare."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@dataclass(frozen=True)
class CrdSchema:
    group: str
    version: str
    kind: str
    schema: dict[str, Any]


@functools.cache
def crd_schemas() -> dict[tuple[str, str], CrdSchema]:
    """(apiVersion, kind) -> schema, from the generated Strimzi CRDs."""
    schemas = {}
    for path in sorted(tools.ensure_strimzi_crds().glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = version["schema"]["openAPIV3Schema"]
            key = (f"{group}/{version['name']}", kind)
            schemas[key] = CrdSchema(group, version["name"], kind, strict(schema))
    return schemas


def generated_crds() -> list[Obj]:
    return [
        yaml.safe_load(p.read_text()) for p in sorted(tools.ensure_strimzi_crds().glob("*.yaml"))
    ]


@functools.cache
def _object_meta_validator() -> jsonschema.protocols.Validator:
    schema_dir = f"v{KUBERNETES_VERSION}-local-strict"
    definitions = kv_utils.schema_contents(
        f"kubernetes-json-schema/{schema_dir}/_definitions.json", KUBERNETES_VERSION
    )
    registry: Registry = Resource.from_contents(definitions) @ Registry()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "https://kubernetes.io/api/_definitions.json"
        "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    }
    return jsonschema.Draft202012Validator(schema, registry=registry)


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _errors(validator: jsonschema.protocols.Validator, data: Any, prefix: str) -> Iterator[str]:
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in error.path)
        yield f"{prefix}{('.' + path) if path else ''}: {error.message}"


def validate_custom(obj: Obj) -> list[str]:
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    crd = crd_schemas().get(key)
    if crd is None:
        return [f"no CRD schema for {key[1]} {key[0]} (Strimzi {tools.STRIMZI_VERSION})"]
    # OpenAPI v3.0 schemas follow JSON Schema draft 4's vocabulary.
    problems = list(_errors(jsonschema.Draft4Validator(crd.schema), obj, "$"))
    problems += _errors(_object_meta_validator(), obj.get("metadata", {}), "metadata")
    name = obj.get("metadata", {}).get("name", "")
    if not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        problems.append(f"metadata.name {name!r} is not a DNS subdomain name")
    return problems


# ------------------------------------------------------------------------------------ validate


def validate(obj: Obj) -> list[str]:
    """Every problem with one object, as strings; empty when it is valid."""
    api_version = obj.get("apiVersion", "")
    if api_version.split("/")[0].endswith("strimzi.io"):
        return validate_custom(obj)
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        return [f"{path or '$'}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


def validate_all(objects: list[Obj]) -> list[str]:
    problems = []
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        key = (obj.get("kind", ""), obj.get("metadata", {}).get("namespace", ""), label(obj))
        if key in seen:
            problems.append(f"{label(obj)}: defined twice")
        seen.add(key)
        problems += [f"{label(obj)}: {p}" for p in validate(obj)]
    return problems
