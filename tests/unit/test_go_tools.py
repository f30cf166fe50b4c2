"""Go tools are built once per pinned version (the stamp), and again when the pin moves."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamrec_dev import go_tools


def test_a_tool_is_built_once_per_pinned_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[tuple[str, str]] = []

    def fake_install(package: str, version: str, bin_dir: Path) -> None:
        builds.append((package, version))
        (bin_dir / "tool").write_text("#!/bin/sh\n")

    monkeypatch.setattr(go_tools, "go_install", fake_install)
    path = go_tools.ensure_stamped("tool", "example.org/tool", "v1.0.0", tmp_path)
    assert path == tmp_path / "tool"
    go_tools.ensure_stamped("tool", "example.org/tool", "v1.0.0", tmp_path)
    assert builds == [("example.org/tool", "v1.0.0")]
    go_tools.ensure_stamped("tool", "example.org/tool", "v1.1.0", tmp_path)
    assert builds[-1] == ("example.org/tool", "v1.1.0")
    (tmp_path / "tool").unlink()  # a stamp without its binary is no build
    go_tools.ensure_stamped("tool", "example.org/tool", "v1.1.0", tmp_path)
    assert len(builds) == 3


def test_without_go_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(go_tools.shutil, "which", lambda _: None)
    with pytest.raises(go_tools.GoToolError, match=r"put Go 1\.26 or newer on PATH"):
        go_tools.go_install("example.org/tool", "v1.0.0")
