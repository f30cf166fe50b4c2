"""``python -m tests.k8s.check``: render every kustomization under k8s/ and validate every object.

Run by ``scripts/k8s_check.sh`` (and so by ``make test``). ``--prepare`` only fetches the tools.
Exit status 1 when anything fails to render or validate.
"""

from __future__ import annotations

import sys
import time

from tests.k8s import render, tools


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
    print(
        f"k8s-check: {'FAILED' if failures else 'passed'} "
        f"(Kubernetes {render.KUBERNETES_VERSION} strict, Strimzi {tools.STRIMZI_VERSION} CRDs) "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
