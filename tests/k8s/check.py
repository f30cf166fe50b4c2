"""``python -m tests.k8s.check``: render every kustomization under k8s/ and validate every object.

Run by ``scripts/k8s_check.sh`` (and so by ``make test``). ``--prepare`` only fetches the tools.
Then each skaffold profile is rendered by ``skaffold render`` (offline) and checked like
kustomize's output, and against it: the same objects apart from image references, every platform
image tagged by skaffold. Exit status 1 when anything fails to render or validate.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import yaml

from tests.k8s import render, tools

IMAGE_PREFIX = "streamrec/"  # the platform's images, which skaffold builds


def skaffold_profiles() -> dict[str, list[str]]:
    """Profile -> the kustomize paths it renders, from skaffold.yaml."""
    config: dict[str, Any] = yaml.safe_load((tools.REPO / "skaffold.yaml").read_text())
    return {
        profile["name"]: profile["manifests"]["kustomize"]["paths"]
        for profile in config["profiles"]
    }


def check_skaffold() -> int:
    failures = 0
    for profile, paths in skaffold_profiles().items():
        try:
            objects = render.skaffold_render(profile)
            kustomized = [o for p in paths for o in render.render(p.removeprefix("k8s/"))]
        except render.RenderError as error:
            print(f"FAIL skaffold render -p {profile}: {error}")
            failures += 1
            continue
        problems = render.validate_all(objects)
        problems += [
            f"not as kustomize builds {', '.join(paths)}: {difference}"
            for difference in render.differences_apart_from_images(kustomized, objects)
        ]
        problems += [
            f"an image skaffold does not build: {image}"
            for image in render.images_not_tagged(objects, IMAGE_PREFIX, render.SKAFFOLD_TAG)
        ]
        for problem in problems:
            print(f"FAIL skaffold render -p {profile}: {problem}")
        failures += len(problems)
        status = "ok  " if not problems else "FAIL"
        print(f"{status} skaffold render -p {profile}: {len(objects)} objects")
    return failures


def main(argv: list[str]) -> int:
    started = time.monotonic()
    try:
        tools.ensure_all()
    except tools.ToolError as error:
        print(f"k8s-check: {error}", file=sys.stderr)
        return 1
    if "--prepare" in argv:
        return 0
    failures = 0
    crds = render.generated_crds()
    for problem in render.validate_all(crds):
        print(f"FAIL generated Strimzi CRD {problem}")
        failures += 1
    for target in (*(f"overlays/{o}" for o in render.OVERLAYS), *render.STANDALONE):
        try:
            objects = render.render(target)
        except render.RenderError as error:
            print(f"FAIL k8s/{target}: {error}")
            failures += 1
            continue
        problems = render.validate_all(objects)
        for problem in problems:
            print(f"FAIL k8s/{target}: {problem}")
        failures += len(problems)
        status = "ok  " if not problems else "FAIL"
        print(f"{status} k8s/{target}: {len(objects)} objects")
    failures += check_skaffold()
    print(
        f"k8s-check: {'FAILED' if failures else 'passed'} "
        f"(Kubernetes {render.KUBERNETES_VERSION} strict, Strimzi {tools.STRIMZI_VERSION} CRDs, "
        f"skaffold {tools.SKAFFOLD_VERSION} render) "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
