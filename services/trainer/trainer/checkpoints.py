"""Training checkpoints: a run's whole learner state, so a restart continues exactly.

Checkpoints live in the artifact store next to the models (``checkpoints/<spec>/<run>/<digest>``)
and a small pointer file names the latest one. The pointer is replaced atomically after the
checkpoint is complete, so a crash at any moment leaves either the old or the new checkpoint
current, never a torn one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
from streamrec_shared.artifacts import DirectoryArtifactStore, StoredArtifact

POINTER = "LATEST.json"


class Checkpoints:
    def __init__(self, store: DirectoryArtifactStore, keep: int = 3) -> None:
        self.store = store
        self.keep = keep

    def _folder(self, spec_id: str, run_id: str) -> Path:
        return self.store.root / "checkpoints" / spec_id / run_id

    def save(self, spec_id: str, run_id: str, write: Callable[[Path], None]) -> StoredArtifact:
        stored = self.store.write(f"checkpoints/{spec_id}/{run_id}", write)
        folder = self._folder(spec_id, run_id)
        staging = folder / f".{POINTER}.{uuid.uuid4().hex}"
        staging.write_bytes(orjson.dumps({"uri": stored.uri, "digest": stored.digest}))
        with staging.open("rb") as handle:
            os.fsync(handle.fileno())
        staging.replace(folder / POINTER)
        self._prune(folder, current=self.store.path_of(stored.uri))
        return stored

    def latest(self, spec_id: str, run_id: str) -> Path | None:
        """The newest complete checkpoint of the run, verified against its digest."""
        pointer = self._folder(spec_id, run_id) / POINTER
        if not pointer.is_file():
            return None
        target = orjson.loads(pointer.read_bytes())
        return self.store.open(target["uri"], target["digest"])

    def _prune(self, folder: Path, current: Path) -> None:
        older = sorted(
            (p for p in folder.iterdir() if p.is_dir() and p != current),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for stale in older[max(0, self.keep - 1) :]:
            shutil.rmtree(stale, ignore_errors=True)
