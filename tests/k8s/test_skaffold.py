"""``skaffold render`` of each profile against kustomize's build of its overlay: the same objects
apart from image references. The comparison is checked first on kustomize's own output, so that
a pass means something."""

from __future__ import annotations

from typing import Any

import pytest

from tests.k8s import check, render
from tests.k8s.render import Obj


def _images(objects: list[Obj]) -> list[str]:
    return [c["image"] for o in objects for c in render.containers_of(o)]


def _tagged(objects: list[Obj], tag: str) -> list[Obj]:
    """The objects with every platform image tagged, as skaffold's render does."""
    out = render.without_image_references(objects)
    for obj in out:
        for container in render.containers_of(obj):
            if container["image"].startswith(check.IMAGE_PREFIX):
                container["image"] += f":{tag}"
    return out


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("streamrec/gateway", "streamrec/gateway"),
        ("streamrec/gateway:abc123-dirty", "streamrec/gateway"),
        (
            "registry.example:5000/streamrec/gateway:v1@sha256:" + "0" * 64,
            "registry.example:5000/streamrec/gateway",
        ),
        ("registry.example:5000/redis", "registry.example:5000/redis"),
    ],
)
def test_image_name_drops_tag_and_digest_only(image: str, name: str) -> None:
    assert render.image_name(image) == name


def test_tagged_images_are_the_same_objects(objects: list[Obj]) -> None:
    tagged = _tagged(objects, render.SKAFFOLD_TAG)
    assert _images(tagged) != _images(objects)
    assert render.differences_apart_from_images(objects, tagged) == []
    assert render.images_not_tagged(tagged, check.IMAGE_PREFIX, render.SKAFFOLD_TAG) == []
    # kustomize's own output has no tags; another tag is not skaffold's either.
    assert render.images_not_tagged(objects, check.IMAGE_PREFIX, render.SKAFFOLD_TAG) != []
    other = _tagged(objects, "latest")
    assert render.images_not_tagged(other, check.IMAGE_PREFIX, render.SKAFFOLD_TAG) != []


def test_any_other_difference_is_reported(prod: list[Obj]) -> None:
    tagged = _tagged(prod, render.SKAFFOLD_TAG)
    deployment: Any = next(o for o in tagged if o["kind"] == "Deployment")
    deployment["metadata"]["labels"]["skaffold.dev/run-id"] = "x"
    dropped = next(o for o in tagged if o["kind"] == "Service")
    tagged.remove(dropped)
    problems = render.differences_apart_from_images(prod, tagged)
    assert f"{render.label(dropped)}: missing" in problems
    assert any(
        p.startswith(f"{render.label(deployment)}: differs at $.metadata.labels") for p in problems
    ), problems


def test_the_profiles_render_the_overlays() -> None:
    assert check.skaffold_profiles() == {name: [f"k8s/overlays/{name}"] for name in render.OVERLAYS}


# ------------------------------------------------------------------------ skaffold render itself


@pytest.mark.parametrize("profile", render.OVERLAYS)
def test_skaffold_renders_what_kustomize_builds_apart_from_images(profile: str) -> None:
    """`skaffold render -p <profile>`, offline: valid, the objects of the profile's overlay as
    kustomize builds them, and every platform image tagged (one skaffold builds)."""
    objects = render.skaffold_render(profile)
    assert render.validate_all(objects) == []
    (path,) = check.skaffold_profiles()[profile]
    kustomized = list(render.rendered(path.removeprefix("k8s/")))
    assert render.differences_apart_from_images(kustomized, objects) == []
    assert render.images_not_tagged(objects, check.IMAGE_PREFIX, render.SKAFFOLD_TAG) == []
    assert any(
        c["image"].startswith(check.IMAGE_PREFIX) for o in objects for c in render.containers_of(o)
    )
