"""Model artifacts: written atomically, named by content, verified by digest before use.

A directory store is the default (a local disk or a volume). ``ArtifactStore`` is the seam an
object store implements later: the trainer writes through it, inference reads through it, and
neither touches paths directly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse


class ArtifactError(RuntimeError):
    """An artifact is missing, outside the store, or not what the registry recorded."""


def directory_digest(path: Path) -> str:
    """sha256 over every file under ``path``: relative name, size and content, in name order.

    Names are part of the digest, so renaming a file inside an artifact changes it too.
    """
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        name = file.relative_to(path).as_posix().encode()
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(file.stat().st_size.to_bytes(8, "big"))
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    uri: str
    digest: str


class ArtifactStore(Protocol):
    def write(self, key: str, build: Callable[[Path], None]) -> StoredArtifact:
        """Run ``build(folder)`` to fill an empty folder, then store it whole or not at all."""
        ...

    def open(self, uri: str, digest: str) -> Path:
        """A local folder with the artifact's files, after checking them against ``digest``."""
        ...

    def delete(self, uri: str) -> None: ...


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class DirectoryArtifactStore:
    """Artifacts as folders ``<root>/<key>/<digest>``, addressed by ``file://`` URIs.

    A write fills a temporary folder on the same file system, fsyncs it and renames it into
    place: a reader (or a crash) never sees half an artifact. Naming by digest makes rewriting
    the same content a no-op and lets two writers race safely.
    """

    root: Path

    def write(self, key: str, build: Callable[[Path], None]) -> StoredArtifact:
        parts = Path(key).parts
        if not parts or any(part in {"..", "."} or part.startswith("/") for part in parts):
            raise ArtifactError(f"bad artifact key {key!r}")
        staging_root = self.root / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = staging_root / uuid.uuid4().hex
        staging.mkdir()
        try:
            build(staging)
            digest = directory_digest(staging)
            _fsync_tree(staging)
            final = self.root.joinpath(*parts, digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                staging.rename(final)
            except OSError:
                if not final.is_dir():  # anything but "the same content is already there"
                    raise
            _fsync_dir(final.parent)
            return StoredArtifact(uri=final.resolve().as_uri(), digest=digest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def path_of(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ArtifactError(f"not a file artifact URI: {uri!r}")
        path = Path(unquote(parsed.path)).resolve()
        root = self.root.resolve()
        if not path.is_relative_to(root):
            raise ArtifactError(f"artifact {uri!r} is outside the store")
        # An artifact is <key...>/<digest>: never the root, a bare key folder or the staging area.
        inside = path.relative_to(root).parts
        if len(inside) < 2 or inside[0] == ".staging":
            raise ArtifactError(f"{uri!r} is not an artifact of this store")
        return path

    def open(self, uri: str, digest: str) -> Path:
        path = self.path_of(uri)
        if not path.is_dir():
            raise ArtifactError(f"artifact {uri!r} does not exist")
        actual = directory_digest(path)
        if actual != digest:
            raise ArtifactError(f"artifact {uri!r} has digest {actual}, expected {digest}")
        return path

    def delete(self, uri: str) -> None:
        shutil.rmtree(self.path_of(uri), ignore_errors=True)
