"""The four services' Dockerfiles come from one template (``infra/docker/service.Dockerfile.in``).

Kubernetes wants one Dockerfile per service (``services/<name>/Dockerfile``, what skaffold
builds), but they differ only in the service's name, port and shutdown grace: writing them from
one template keeps a fix in one place. ``streamrec dockerfiles`` rewrites them; a test fails when
a committed Dockerfile differs from its rendering.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from streamrec_dev.servers import REPO_ROOT

TEMPLATE = REPO_ROOT / "infra" / "docker" / "service.Dockerfile.in"


@dataclass(frozen=True)
class ImageSpec:
    summary: str
    # uvicorn's --timeout-graceful-shutdown; the trainer may be finishing a training step.
    grace_s: int = 20


IMAGES = {
    "ingest": ImageSpec("validates events and writes them durably to Kafka"),
    "trainer": ImageSpec("streaming TensorFlow trainer and model registry", grace_s=30),
    "inference": ImageSpec("top-K recommendations from Redis features and the newest model"),
    "gateway": ImageSpec("routing, auth, canary split"),
}


def service_port(service: str) -> int:
    """The port the service's settings listen on: one source for the image and the manifests."""
    config = importlib.import_module(f"{service}.config")
    settings_class = getattr(config, f"{service.capitalize()}Settings")
    port: int = settings_class.model_fields["port"].default
    return port


def render(service: str) -> str:
    spec = IMAGES[service]
    return (
        TEMPLATE.read_text()
        .replace("@SERVICE@", service)
        .replace("@SUMMARY@", spec.summary)
        .replace("@PORT@", str(service_port(service)))
        .replace("@GRACE_S@", str(spec.grace_s))
    )


def dockerfile_path(service: str) -> Path:
    return REPO_ROOT / "services" / service / "Dockerfile"


def write_all() -> list[Path]:
    """Rewrite every service's Dockerfile; return those that changed."""
    changed = []
    for service in IMAGES:
        path = dockerfile_path(service)
        text = render(service)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed
