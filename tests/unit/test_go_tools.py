"""Go tools are built once per pinned version (the stamp), and again when the pin moves; a
module that ``go install`` refuses is built from its own source."""

from __future__ import annotations

import json
import subprocess
import zipfile
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


# ------------------------------------------------------------------------- built from source

# A module that `go install module/cmd@version` refuses: its go.mod has a replace directive. Its
# dependency comes from the same local proxy (a file:// GOPROXY: the layout of the module proxy
# protocol), so the test builds it for real, offline.
HELLO = "example.org/hello"
GREETING = "example.org/greeting"
HELLO_FILES = {
    "go.mod": (
        f"module {HELLO}\n\ngo 1.22\n\nrequire {GREETING} v1.0.0\n\n"
        f"replace {GREETING} => {GREETING} v1.1.0\n"
    ),
    "cmd/hello/main.go": (
        'package main\n\nimport (\n\t"fmt"\n\n\t"example.org/greeting"\n)\n\n'
        'var version = "unset"\n\nfunc main() { fmt.Println(greeting.Word, version) }\n'
    ),
}


def _publish(proxy: Path, module: str, version: str, files: dict[str, str]) -> None:
    where = proxy / module / "@v"
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{version}.info").write_text(json.dumps({"Version": version}))
    (where / f"{version}.mod").write_text(files["go.mod"])
    with zipfile.ZipFile(where / f"{version}.zip", "w") as archive:
        for name, text in files.items():
            archive.writestr(f"{module}@{version}/{name}", text)


@pytest.fixture
def local_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    proxy = tmp_path / "proxy"
    for version, word in (("v1.0.0", "old"), ("v1.1.0", "replaced")):
        _publish(
            proxy,
            GREETING,
            version,
            {
                "go.mod": f"module {GREETING}\n\ngo 1.22\n",
                "greeting.go": f'package greeting\n\nconst Word = "{word}"\n',
            },
        )
    monkeypatch.setenv("GOPROXY", proxy.as_uri())
    monkeypatch.setenv("GOSUMDB", "off")  # nothing here is in the checksum database
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "modcache"))
    monkeypatch.setenv("GOFLAGS", "-modcacherw -buildvcs=false")  # a removable module cache
    # hello's go.sum, as its author's `go mod tidy` would have written it: the sums of the
    # replacement version it builds with.
    download = subprocess.run(
        ["go", "mod", "download", "-json", f"{GREETING}@v1.1.0"],
        text=True, capture_output=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    sums = json.loads(download.stdout)
    go_sum = f"{GREETING} v1.1.0 {sums['Sum']}\n{GREETING} v1.1.0/go.mod {sums['GoModSum']}\n"
    _publish(proxy, HELLO, "v1.0.0", {**HELLO_FILES, "go.sum": go_sum})
    _publish(proxy, HELLO, "v1.0.1", HELLO_FILES)  # without go.sum
    return proxy


def test_a_module_with_replace_directives_is_built_from_its_source(
    tmp_path: Path, local_proxy: Path
) -> None:
    bin_dir = tmp_path / "bin"
    # Both reasons why `go install` fails for skaffold: the proxy has no version list for the
    # module (here: no `list` file) ...
    with pytest.raises(go_tools.GoToolError, match="list"):
        go_tools.go_install(f"{HELLO}/cmd/hello", "v1.0.0", bin_dir)
    # ... and, with one, the replace directives.
    (local_proxy / HELLO / "@v" / "list").write_text("v1.0.0\n")
    with pytest.raises(go_tools.GoToolError, match="replace directives"):
        go_tools.go_install(f"{HELLO}/cmd/hello", "v1.0.0", bin_dir)
    (local_proxy / HELLO / "@v" / "list").unlink()
    ldflags = ["-X", "main.version=v1.0.0"]
    tool = go_tools.ensure_built_from_source(
        "hello", HELLO, "v1.0.0", "./cmd/hello", bin_dir, ldflags
    )
    assert tool == bin_dir / "hello"
    out = subprocess.run([str(tool)], text=True, capture_output=True, check=True).stdout
    assert out.split() == ["replaced", "v1.0.0"]  # the replace directive held; ldflags applied
    assert (bin_dir / ".hello.version").read_text().strip() == "v1.0.0"
    built = tool.stat().st_mtime_ns
    go_tools.ensure_built_from_source("hello", HELLO, "v1.0.0", "./cmd/hello", bin_dir, ldflags)
    assert tool.stat().st_mtime_ns == built  # the stamp holds: not built again
    assert not list(bin_dir.glob(".hello.new"))


def test_a_version_the_proxy_does_not_serve_is_a_clear_error(
    tmp_path: Path, local_proxy: Path
) -> None:
    with pytest.raises(go_tools.GoToolError, match=r"mod download -json example\.org/hello@v9"):
        go_tools.go_build_from_source(HELLO, "v9.0.0", "./cmd/hello", "hello", tmp_path)
    assert not (tmp_path / "hello").exists()


def test_the_build_uses_only_what_go_sum_vouches_for(tmp_path: Path, local_proxy: Path) -> None:
    # -mod=readonly: a dependency without its go.sum entry fails the build, it is not resolved.
    with pytest.raises(go_tools.GoToolError, match=r"missing go\.sum entry"):
        go_tools.go_build_from_source(HELLO, "v1.0.1", "./cmd/hello", "hello", tmp_path)
