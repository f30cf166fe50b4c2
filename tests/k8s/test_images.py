"""The images: skaffold's artifacts, the Dockerfiles and the build context."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import model, render
from tests.k8s.render import SERVICES, Obj
from tests.k8s.tools import REPO

SKAFFOLD = REPO / "skaffold.yaml"
PYTHON_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")  # exact patch, no digest drift


def skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return config


def artifact_sets(config: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    sets = [("(default)", config["build"]["artifacts"])]
    for profile in config.get("profiles", []):
        if "build" in profile:
            sets.append((profile["name"], profile["build"]["artifacts"]))
    return sets


def bootstrap_uv_version() -> str:
    match = re.search(r"^UV_VERSION=(\S+)$", (REPO / "scripts/bootstrap.sh").read_text(), re.M)
    assert match
    return match.group(1)


# -------------------------------------------------------------------------------- skaffold.yaml


def test_skaffold_builds_each_service_from_its_dockerfile_with_the_repo_as_context() -> None:
    for where, artifacts in artifact_sets(skaffold()):
        images = {a["image"]: a for a in artifacts}
        assert set(images) == {f"streamrec/{s}" for s in SERVICES}, where
        for service in SERVICES:
            artifact = images[f"streamrec/{service}"]
            assert artifact["context"] == ".", where
            dockerfile = artifact["docker"]["dockerfile"]
            assert dockerfile == f"services/{service}/Dockerfile", where
            assert (REPO / dockerfile).is_file(), f"{where}: {dockerfile} does not exist"
            target = artifact["docker"].get("target")
            if target:
                model.dockerfile(service).stage(target)  # the stage exists


def test_every_image_the_manifests_run_is_built_by_skaffold(objects: list[Obj]) -> None:
    built = {a["image"] for a in skaffold()["build"]["artifacts"]}
    used = {
        c["image"]
        for w in model.workloads(objects)
        for c in w.containers
        if c["image"].startswith(model.IMAGE_PREFIX)
    }
    assert used == built


def test_skaffold_profiles_deploy_existing_overlays() -> None:
    config = skaffold()
    profiles = {p["name"]: p for p in config["profiles"]}
    assert {"dev", "prod", "canary"} <= set(profiles)
    assert config["manifests"]["kustomize"]["paths"] == ["k8s/overlays/dev"]
    for name in ("dev", "prod", "canary"):
        paths = profiles[name]["manifests"]["kustomize"]["paths"]
        assert paths == [f"k8s/overlays/{name}"]
        assert render.rendered(f"overlays/{name}")
    assert "kubectl" in config["deploy"]


def test_skaffold_port_forwards_the_gateway_into_the_overlay_namespace() -> None:
    config = skaffold()
    profiles = {p["name"]: p for p in config["profiles"]}
    for overlay, forwards in (
        ("dev", config["portForward"]),
        ("prod", profiles["prod"]["portForward"]),
        ("canary", profiles["canary"]["portForward"]),
    ):
        objects = list(render.rendered(f"overlays/{overlay}"))
        namespace = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
        service = model.find(objects, "Service", "gateway")
        (forward,) = forwards
        assert forward["resourceType"] == "service"
        assert forward["resourceName"] == "gateway"
        assert forward["namespace"] == namespace
        assert forward["port"] == service["spec"]["ports"][0]["port"] == SERVICES["gateway"]


def test_skaffold_dev_syncs_python_sources_to_where_the_image_has_them() -> None:
    profiles = {p["name"]: p for p in skaffold()["profiles"]}
    dev = profiles["dev"]
    assert {"command": "dev"} in dev["activation"]
    for artifact in dev["build"]["artifacts"]:
        service = artifact["image"].removeprefix(model.IMAGE_PREFIX)
        assert artifact["docker"]["target"] == "dev"
        rules = artifact["sync"]["manual"]
        sources = {rule["src"] for rule in rules}
        assert sources == {
            f"services/{service}/{service}/**/*.py",
            "shared/streamrec_shared/**/*.py",
        }
        dockerfile = model.dockerfile(service)
        workdir = dockerfile.effective(dockerfile.stage("dev"), "WORKDIR")
        reload_dirs = _options(
            model.exec_form(dockerfile.effective(dockerfile.stage("dev"), "CMD") or ""),
            "--reload-dir",
        )
        for rule in rules:
            assert rule["dest"] == workdir == "/app"
            synced_dir = rule["src"].split("/**")[0]
            assert f"{workdir}/{synced_dir}" in reload_dirs
            assert list(REPO.glob(rule["src"])), f"{rule['src']} matches no file"


def _options(command: list[str], name: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == name]


# ---------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_pins_its_bases_and_uv(service: str) -> None:
    dockerfile = model.dockerfile(service)
    external = [
        s.base for s in dockerfile.stages if s.base not in {t.name for t in dockerfile.stages}
    ]
    assert external
    assert all(PYTHON_BASE.match(b) for b in external), external
    assert len(set(external)) == 1, "build and runtime stages must share one base"
    uv = [args for s in dockerfile.stages for args in s.all("RUN") if "uv==" in args]
    assert uv == [f"pip install uv=={bootstrap_uv_version()}"]


def _commands(run: str) -> list[list[str]]:
    """The words of each command of a RUN (split at ``&&``), without RUN's own --mount options."""
    words = [w for w in run.split() if not w.startswith("--mount=")]
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return commands


def _uv_pip(run: str) -> list[list[str]]:
    return [c for c in _commands(run) if c[:2] == ["uv", "pip"]]


def _sources(copy: str) -> list[str]:
    return copy.split()[:-1]


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_installs_its_locked_dependencies_before_its_code_only(service: str) -> None:
    build = model.dockerfile(service).stage("build")
    steps = [(kw, args) for kw, args in build.instructions if kw in ("COPY", "RUN")]
    installs = [i for i, (kw, args) in enumerate(steps) if kw == "RUN" and _uv_pip(args)]
    assert len(installs) == 2, "one dependency layer, one code layer"
    lock = f"requirements/{service}.txt"
    assert (REPO / lock).is_file()

    # Dependency layer: only this service's lock is copied, installed with hashes required into
    # the virtual environment the runtime stages put on PATH.
    before = [
        source for kw, args in steps[: installs[0]] if kw == "COPY" for source in _sources(args)
    ]
    assert before == [lock]
    deps_run = steps[installs[0]][1]
    assert ["uv", "venv", "/app/.venv"] in _commands(deps_run)
    (deps,) = _uv_pip(deps_run)
    assert deps[2] in ("sync", "install")
    assert "--require-hashes" in deps
    assert lock in deps
    assert not {"-e", "--editable", "--no-deps"} & set(deps)
    assert "VIRTUAL_ENV=/app/.venv" in " ".join(build.all("ENV"))
    app_env = " ".join(model.dockerfile(service).stage("app").all("ENV"))
    assert "PATH=/app/.venv/bin:" in app_env

    # Code layer: the shared library and this service, no other service's code, installed without
    # dependencies (the lock has them all) and editable from where the dev stage syncs sources.
    between = [
        source
        for kw, args in steps[installs[0] : installs[1]]
        if kw == "COPY"
        for source in _sources(args)
    ]
    assert sorted(between) == sorted(
        [
            "shared/pyproject.toml",
            "shared/streamrec_shared",
            f"services/{service}/pyproject.toml",
            f"services/{service}/{service}",
        ]
    )
    (code,) = _uv_pip(steps[installs[1]][1])
    assert code[2] == "install"
    assert "--no-deps" in code
    assert "--no-sources" in code  # the members' workspace sources need the root, not copied
    editables = [code[i + 1] for i, word in enumerate(code) if word in ("-e", "--editable")]
    assert sorted(editables) == ["services/" + service, "shared"]
    assert not any(word in ("-r", "--requirement") for word in code)
    after = [args for kw, args in steps[installs[1] + 1 :] if kw == "COPY"]
    assert not after, f"copied after the last install: {after}"
    others = [s for s in SERVICES if s != service]
    copied = [
        source
        for stage in model.dockerfile(service).stages
        for args in stage.all("COPY")
        for source in _sources(args)
    ]
    assert not any(
        f"services/{o}/" in source or f"requirements/{o}." in source
        for source in copied
        for o in others
    )


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("stage", ["runtime", "dev"])
def test_dockerfile_runs_uvicorn_as_a_numeric_non_root_user(service: str, stage: str) -> None:
    dockerfile = model.dockerfile(service)
    target = dockerfile.stage(stage)
    user = dockerfile.effective(target, "USER")
    assert user is not None
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user), user
    command = model.exec_form(dockerfile.effective(target, "CMD") or "null")
    assert command[:3] == ["uvicorn", "--factory", f"{service}.main:create_app"]
    assert int(model.option(command, "--port")) == SERVICES[service]
    assert int(model.option(command, "--timeout-graceful-shutdown")) > 0
    assert "--workers" not in command  # one process per container
    assert dockerfile.effective(target, "ENTRYPOINT") is None


def test_the_default_build_target_is_the_runtime_stage() -> None:
    for service in SERVICES:
        assert model.dockerfile(service).final.name == "runtime"


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_bakes_in_no_secrets(service: str) -> None:
    dockerfile = model.dockerfile(service)
    for stage in dockerfile.stages:
        for keyword, args in stage.instructions:
            if keyword in ("ENV", "ARG"):
                assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY|_URL)\b", args, re.I), args
            if keyword in ("COPY", "ADD"):
                assert not re.search(r"\.env|secret|\.pem|\.key", args, re.I), args


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_exposes_the_service_port_and_the_factory_is_real(service: str) -> None:
    dockerfile = model.dockerfile(service)
    exposed = [a for s in dockerfile.stages for a in s.all("EXPOSE")]
    assert exposed == [str(SERVICES[service])]
    app = model.create_app(service)
    assert "/healthz" in model.served_paths(app)


def test_graceful_shutdown_fits_in_the_termination_grace_period(objects: list[Obj]) -> None:
    for workload, container, service in model.app_containers(objects):
        if workload.obj["kind"] != "Deployment" or not model.is_server(container):
            continue  # uvicorn's drain is the image's CMD (the feature updater: test_services)
        dockerfile = model.dockerfile(service)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
        grace = workload.pod_spec["terminationGracePeriodSeconds"]
        for stage in ("dev", "runtime"):
            command = model.exec_form(dockerfile.effective(dockerfile.stage(stage), "CMD") or "")
            graceful = int(model.option(command, "--timeout-graceful-shutdown"))
            assert pre_stop.get("seconds", 0) + graceful < grace, (workload.name, stage)


def _trainer_checkpoint_budget_s() -> float:
    """How long the trainer's shutdown waits for its runs to checkpoint: the ``timeout=`` of
    ``Coordinator.stop`` in services/trainer/trainer/coordinator.py."""
    tree = ast.parse((REPO / "services" / "trainer" / "trainer" / "coordinator.py").read_text())
    stop = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name == "stop"
    )
    budgets = [
        keyword.value.value
        for node in ast.walk(stop)
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg == "timeout" and isinstance(keyword.value, ast.Constant)
    ]
    assert budgets, "Coordinator.stop has no literal timeout: update this test"
    return float(max(budgets))


def test_the_trainer_has_time_to_checkpoint_its_runs_on_sigterm(objects: list[Obj]) -> None:
    """uvicorn first drains requests (--timeout-graceful-shutdown), then the lifespan's
    shutdown checkpoints every run: the pod is not killed before both had their time."""
    trainer = model.find(objects, "Deployment", "trainer")
    grace = trainer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    budget = _trainer_checkpoint_budget_s()
    dockerfile = model.dockerfile("trainer")
    for stage in ("dev", "runtime"):
        command = model.exec_form(dockerfile.effective(dockerfile.stage(stage), "CMD") or "")
        graceful = int(model.option(command, "--timeout-graceful-shutdown"))
        assert graceful + budget <= grace, (stage, graceful, budget, grace)


# ---------------------------------------------------------------------------------- .dockerignore


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _included(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches everything under
    a directory it matches."""
    included = True
    parts = Path(path).parts
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatchcase(p, glob) or fnmatch.fnmatchcase(p, glob.replace("**/", ""))
            for p in prefixes
        ):
            included = negated
    return included


def test_dockerignore_is_an_allowlist_that_admits_what_the_dockerfiles_copy() -> None:
    patterns = _dockerignore()
    assert patterns[0] == "*", "start from nothing: a new file never leaks into an image"
    for service in SERVICES:
        for stage in model.dockerfile(service).stages:
            for args in stage.all("COPY"):
                if args.startswith("--from"):
                    continue
                for source in args.split()[:-1]:
                    # a file (pyproject.toml, a lock file) or a package folder
                    sample = source if Path(source).suffix else f"{source}/x.py"
                    assert _included(sample, patterns), f"{service}: COPY {source} is ignored"
    for secret_or_junk in (
        ".venv/bin/python",
        ".git/config",
        ".cache/bin/kustomize",
        ".env",
        "services/ingest/ingest/.env",
        "services/ingest/ingest/__pycache__/api.cpython-311.pyc",
        "tests/unit/test_event_schema.py",
        "infra/kafka/libs/kafka.jar",
        ".run/kafka/server.log",
        "k8s/overlays/prod/kustomization.yaml",
        "uv.lock",  # names the registry host; the images install from requirements/
    ):
        assert not _included(secret_or_junk, patterns), secret_or_junk


def test_dockerignore_matcher_follows_last_match_wins() -> None:
    assert _included("a.py", ["*", "!a.py"])
    assert not _included("a.py", ["!a.py", "*"])
    assert not _included("src/__pycache__/m.pyc", ["*", "!src/", "**/__pycache__"])


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_is_rendered_from_the_shared_template(service: str) -> None:
    from streamrec_dev.dockerfiles import dockerfile_path
    from streamrec_dev.dockerfiles import render as render_dockerfile

    assert dockerfile_path(service).read_text() == render_dockerfile(service), (
        f"services/{service}/Dockerfile differs from infra/docker/service.Dockerfile.in: "
        "edit the template and run `streamrec dockerfiles`"
    )
