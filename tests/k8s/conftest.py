"""Rendered overlays for the manifest tests (kustomize from .cache/bin, built when missing)."""

from __future__ import annotations

import pytest

from tests.k8s import render
from tests.k8s.render import Obj


@pytest.fixture(params=render.OVERLAYS)
def overlay_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def objects(overlay_name: str) -> list[Obj]:
    return render.overlay(f"overlays/{overlay_name}")


@pytest.fixture
def dev() -> list[Obj]:
    return render.overlay("overlays/dev")


@pytest.fixture
def prod() -> list[Obj]:
    return render.overlay("overlays/prod")


@pytest.fixture
def canary() -> list[Obj]:
    return render.overlay("overlays/canary")
