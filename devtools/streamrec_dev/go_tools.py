"""Command-line tools built from the Go module proxy into ``.cache/bin`` (pinned, built once).

The machines have Go but not these tools' packages. ``go install module@version`` is how the
project fetches a Go tool (kustomize for the manifest checks, vegeta for the benchmarks'
open-loop load); ``go_build_from_source`` is the way for a module that ``go install`` cannot
build (skaffold: see its docstring).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from streamrec_dev.servers import REPO_ROOT

BIN = REPO_ROOT / ".cache" / "bin"


class GoToolError(RuntimeError):
    pass


def _go(what: str) -> str:
    go = shutil.which("go")
    if not go:
        raise GoToolError(f"{what} is built with Go: put Go 1.26 or newer on PATH")
    return go


def go_install(package: str, version: str, bin_dir: Path = BIN) -> None:
    """``go install package@version`` into ``bin_dir``, with the machine's own Go (no
    toolchain download: there is no internet beyond the registries)."""
    go = _go(package)
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(bin_dir), "GOTOOLCHAIN": "local"}
    result = subprocess.run(
        [go, "install", f"{package}@{version}"], text=True, capture_output=True, env=env
    )
    if result.returncode != 0:
        raise GoToolError(f"go install {package}@{version} failed:\n{result.stderr}")


def _stamp(binary: str, bin_dir: Path) -> Path:
    return bin_dir / f".{binary}.version"


def is_stamped(binary: str, version: str, bin_dir: Path) -> bool:
    """Whether ``bin_dir/binary`` is there and its stamp names ``version``."""
    stamp = _stamp(binary, bin_dir)
    return (bin_dir / binary).exists() and stamp.exists() and stamp.read_text().strip() == version


def ensure_stamped(binary: str, package: str, version: str, bin_dir: Path = BIN) -> Path:
    """The tool at the pinned version, built unless a stamp says it already is (for tools
    whose binary cannot report the version it was built from)."""
    if not is_stamped(binary, version, bin_dir):
        go_install(package, version, bin_dir)
        _stamp(binary, bin_dir).write_text(version + "\n")
    return bin_dir / binary


def _run_go(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, text=True, capture_output=True, cwd=cwd, env=env)
    if result.returncode != 0:
        output = f"{result.stdout}{result.stderr}"  # download -json reports its error on stdout
        raise GoToolError(f"go {' '.join(command[1:])} failed in {cwd}:\n{output}")
    return result.stdout


def go_build_from_source(
    module: str,
    version: str,
    package: str,
    binary: str,
    bin_dir: Path = BIN,
    ldflags: Sequence[str] = (),
) -> None:
    """Build ``package`` (a path inside the module, e.g. ``./cmd/tool``) from the source of
    ``module@version`` into ``bin_dir/binary``.

    For modules that ``go install package@version`` cannot build: it rejects a module whose
    go.mod has ``replace`` directives, and it asks the proxy for the module's version list,
    which the proxy may refuse while still serving the pinned version itself. So: ``go mod
    download -json`` fetches exactly that version and says where its source is (``Dir``), the
    source is copied out of the read-only module cache into a temporary directory, and ``go
    build`` runs there as in the module's own repository, replace directives honoured.
    ``-mod=readonly``: the dependencies are exactly those of the module's go.mod, each checked
    against its go.sum (a build that needs anything else fails instead of resolving it).
    """
    go = _go(f"{module}@{version}")
    env = {**os.environ, "GOTOOLCHAIN": "local"}
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="go-build-") as tmp:
        work = Path(tmp)
        # Outside any go.mod, so that download resolves the module alone.
        info = json.loads(
            _run_go([go, "mod", "download", "-json", f"{module}@{version}"], work, env)
        )
        if info.get("Error") or not info.get("Dir"):
            raise GoToolError(f"go mod download {module}@{version}: {info.get('Error', 'no Dir')}")
        source = work / "src"
        shutil.copytree(info["Dir"], source)
        # The module cache's files and directories are read-only: made writable in the copy,
        # so that the temporary directory can be removed.
        for path in (source, *source.rglob("*")):
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        built = work / binary
        command = [go, "build", "-mod=readonly", "-trimpath", "-o", str(built)]
        if ldflags:
            command.append(f"-ldflags={' '.join(ldflags)}")
        _run_go([*command, package], source, env)
        # Copied beside the tool, then renamed over it: an interrupted build leaves no
        # half-written tool, and a running one keeps its file.
        staged = bin_dir / f".{binary}.new"
        shutil.copy2(built, staged)
        staged.replace(bin_dir / binary)


def ensure_built_from_source(
    binary: str,
    module: str,
    version: str,
    package: str,
    bin_dir: Path = BIN,
    ldflags: Sequence[str] = (),
) -> Path:
    """``go_build_from_source`` once per pinned version (the same stamp as ``ensure_stamped``)."""
    if not is_stamped(binary, version, bin_dir):
        go_build_from_source(module, version, package, binary, bin_dir, ldflags)
        _stamp(binary, bin_dir).write_text(version + "\n")
    return bin_dir / binary
