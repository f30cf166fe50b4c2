"""Command-line tools built from the Go module proxy into ``.cache/bin`` (pinned, built once).

The machines have Go but not these tools' packages: ``go install module@version`` is the one
way the project fetches a Go tool (kustomize for the manifest checks, vegeta for the benchmarks'
open-loop load).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from streamrec_dev.servers import REPO_ROOT

BIN = REPO_ROOT / ".cache" / "bin"


class GoToolError(RuntimeError):
    pass


def go_install(package: str, version: str, bin_dir: Path = BIN) -> None:
    """``go install package@version`` into ``bin_dir``, with the machine's own Go (no
    toolchain download: there is no internet beyond the registries)."""
    go = shutil.which("go")
    if not go:
        raise GoToolError(f"{package} is built with Go: put Go 1.26 or newer on PATH")
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(bin_dir), "GOTOOLCHAIN": "local"}
    result = subprocess.run(
        [go, "install", f"{package}@{version}"], text=True, capture_output=True, env=env
    )
    if result.returncode != 0:
        raise GoToolError(f"go install {package}@{version} failed:\n{result.stderr}")


def ensure_stamped(binary: str, package: str, version: str, bin_dir: Path = BIN) -> Path:
    """The tool at the pinned version, built unless a stamp says it already is (for tools
    whose binary cannot report the version it was built from)."""
    path, stamp = bin_dir / binary, bin_dir / f".{binary}.version"
    if path.exists() and stamp.exists() and stamp.read_text().strip() == version:
        return path
    go_install(package, version, bin_dir)
    stamp.write_text(version + "\n")
    return path
