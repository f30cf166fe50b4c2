"""The committed lock files (requirements/*.txt, written by scripts/lock.sh).

They replace uv.lock in the repository because the project never names a package registry's
host; they must still pin every version with its hashes, and agree with the pyproject files.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from streamrec_dev.servers import REPO_ROOT

LOCKS = REPO_ROOT / "requirements"
SERVICES = ("ingest", "trainer", "inference", "gateway")
MEMBERS = ("shared", *(f"services/{s}" for s in SERVICES), "devtools")

# A requirement line of `uv export`: `name==version`, an optional marker, hashes on the next lines.
REQUIREMENT = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]*)==(?P<version>[^\s;]+)(?: ; [^\\]+)? \\$")
HOST = re.compile(r"://|pypi|pythonhosted|index-url|find-links|^\s*--trusted-host", re.I | re.M)
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*(?P<version>[^\s;,]+)"
)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, set[str]]:
    """Each locked distribution's versions (more than one where markers split by Python version),
    checking on the way that every requirement is pinned exactly and followed by its hashes."""
    lines = path.read_text().splitlines()
    versions: dict[str, set[str]] = {}
    for number, line in enumerate(lines):
        if not line or line.startswith((" ", "#")):
            continue
        match = REQUIREMENT.match(line)
        assert match, f"{path.name}:{number + 1}: not a pinned requirement: {line!r}"
        following = lines[number + 1] if number + 1 < len(lines) else ""
        assert following.strip().startswith("--hash=sha256:"), f"{path.name}: {line} has no hash"
        versions.setdefault(normalized(match["name"]), set()).add(match["version"])
    return versions


def pins(requirements: list[str]) -> dict[str, str]:
    """The exact `==` pins of a pyproject dependency list (the workspace members are not pinned)."""
    found = {}
    for requirement in requirements:
        match = PIN.match(requirement)
        if match:
            found[normalized(match["name"])] = match["version"]
    return found


def member_pins(member: str) -> dict[str, str]:
    project = tomllib.loads((REPO_ROOT / member / "pyproject.toml").read_text())
    return pins(project["project"]["dependencies"])


def dev_group_pins() -> dict[str, str]:
    root = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return pins(root["dependency-groups"]["dev"])


def test_there_is_one_lock_for_the_venv_and_one_per_service_image() -> None:
    assert sorted(p.stem for p in LOCKS.glob("*.txt")) == sorted(["dev", *SERVICES])


@pytest.mark.parametrize("path", sorted(LOCKS.glob("*.txt")), ids=lambda p: p.name)
def test_a_lock_names_no_host_and_pins_every_version_with_hashes(path: Path) -> None:
    text = path.read_text()
    assert not HOST.search(text), f"{path.name} names a host: {HOST.search(text)}"
    versions = locked(path)
    assert versions
    # The workspace members are installed from the checkout (--no-deps), not from the lock.
    assert not [name for name in versions if name.startswith("streamrec")]


def test_the_dev_lock_has_every_direct_pin_of_every_member_and_the_dev_group() -> None:
    versions = locked(LOCKS / "dev.txt")
    wanted = {name: v for member in MEMBERS for name, v in member_pins(member).items()}
    wanted |= dev_group_pins()
    assert len(wanted) > 20
    wrong = {name: v for name, v in wanted.items() if v not in versions.get(name, set())}
    assert not wrong, f"pyproject pins not in requirements/dev.txt (run make lock): {wrong}"


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_lock_has_its_pins_and_the_shared_library_s_but_no_dev_tools(
    service: str,
) -> None:
    versions = locked(LOCKS / f"{service}.txt")
    wanted = member_pins("shared") | member_pins(f"services/{service}")
    wrong = {name: v for name, v in wanted.items() if v not in versions.get(name, set())}
    assert not wrong, f"pyproject pins not in requirements/{service}.txt (run make lock): {wrong}"
    for tool in ("pytest", "mypy", "ruff"):  # the dev group's
        assert tool not in versions, f"{service}'s image would install {tool}"


def test_the_lock_reader_refuses_what_the_locks_must_not_hold(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("six==1.17.0 \\\n    --hash=sha256:00\n")
    assert locked(path) == {"six": {"1.17.0"}}
    for bad in ("six>=1.17.0 \\\n    --hash=sha256:00\n", "six==1.17.0\n", "-e ./shared\n"):
        path.write_text(bad)
        with pytest.raises(AssertionError):
            locked(path)
    assert HOST.search("--index-url https://example.org/simple")
    assert pins(["streamrec-shared", "uvicorn[standard]==0.54.0", "a>=1"]) == {"uvicorn": "0.54.0"}


def imported_top_levels(folder: Path) -> set[str]:
    """The top-level modules a package's code imports (absolute imports only)."""
    import ast

    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_what_a_service_imports_is_in_its_image_s_lock(service: str) -> None:
    """A module the service or the shared library imports at all must be installed in the
    service's image: a dependency that only another member declared is in the dev environment
    (every test passes) and missing from the image (the pod fails at start-up)."""
    import sys
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    code = (REPO_ROOT / "services" / service / service, REPO_ROOT / "shared" / "streamrec_shared")
    modules = set().union(*map(imported_top_levels, code))
    own = {service, "streamrec_shared"}
    third_party = {m for m in modules - own if m not in sys.stdlib_module_names}
    assert third_party, "the import scan found nothing: the scan is broken"
    versions = locked(LOCKS / f"{service}.txt")
    missing = {
        module: distributions.get(module)
        for module in third_party
        if not any(normalized(d) in versions for d in distributions.get(module, []))
    }
    assert not missing, f"imported by {service} but not in requirements/{service}.txt: {missing}"
