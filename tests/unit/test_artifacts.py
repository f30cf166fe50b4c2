"""Artifacts: content digests, atomic writes, verified opens, URIs confined to the store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamrec_shared.artifacts import ArtifactError, DirectoryArtifactStore, directory_digest


def fill(files: dict[str, bytes]) -> Callable[[Path], None]:
    """A ``build`` callback writing ``files`` (relative name → content)."""

    def build(folder: Path) -> None:
        for name, content in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)

    return build


def folder_with(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    fill(files)(path)
    return path


FILES = {"manifest.json": b'{"a": 1}', "weights/w.npz": b"\x00" * 100}


@pytest.fixture
def store(tmp_path: Path) -> DirectoryArtifactStore:
    return DirectoryArtifactStore(root=tmp_path / "store")


def entries(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*")}


# --- directory_digest -----------------------------------------------------------------------


def test_digest_is_stable_hex(tmp_path: Path) -> None:
    folder = folder_with(tmp_path / "a", FILES)
    digest = directory_digest(folder)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert directory_digest(folder) == digest


def test_digest_ignores_creation_order_and_location(tmp_path: Path) -> None:
    first = folder_with(tmp_path / "first", FILES)
    second = folder_with(tmp_path / "elsewhere" / "second", dict(reversed(FILES.items())))
    assert directory_digest(first) == directory_digest(second)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param({**FILES, "manifest.json": b'{"a": 2}'}, id="content"),
        pytest.param({**FILES, "manifest.json": b'{"a": 1} '}, id="size"),
        pytest.param(
            {"manifest.jsn": FILES["manifest.json"], "weights/w.npz": b"\x00" * 100}, id="rename"
        ),
        pytest.param(
            {"manifest.json": b'{"a": 1}', "weights2/w.npz": b"\x00" * 100},
            id="move-to-other-folder",
        ),
        pytest.param({**FILES, "extra": b""}, id="new-empty-file"),
        pytest.param({"manifest.json": b'{"a": 1}'}, id="file-removed"),
        # Same bytes overall, split differently between two files: names and sizes delimit.
        pytest.param(
            {"manifest.json": b'{"a": 1}\x00', "weights/w.npz": b"\x00" * 99}, id="boundary-moved"
        ),
    ],
)
def test_digest_changes_with_any_change(tmp_path: Path, changed: dict[str, bytes]) -> None:
    original = folder_with(tmp_path / "original", FILES)
    other = folder_with(tmp_path / "other", changed)
    assert directory_digest(other) != directory_digest(original)


def test_digest_of_an_empty_folder_is_that_of_nothing(tmp_path: Path) -> None:
    empty = folder_with(tmp_path / "empty", {})
    (empty / "sub").mkdir()
    assert directory_digest(empty) == directory_digest(folder_with(tmp_path / "e2", {}))


# --- write ---------------------------------------------------------------------------------


def test_write_names_the_artifact_by_its_digest(store: DirectoryArtifactStore) -> None:
    stored = store.write("movies/v1", fill(FILES))
    path = store.root / "movies" / "v1" / stored.digest
    assert stored.uri == path.resolve().as_uri()
    assert stored.uri.startswith("file:///")
    assert stored.digest == directory_digest(path)
    assert (path / "weights" / "w.npz").read_bytes() == FILES["weights/w.npz"]
    assert list((store.root / ".staging").iterdir()) == []


def test_build_gets_an_empty_folder(store: DirectoryArtifactStore) -> None:
    seen: list[list[Path]] = []
    store.write("k", lambda folder: seen.append(list(folder.iterdir())))
    store.write("k", lambda folder: seen.append(list(folder.iterdir())))
    assert seen == [[], []]


def test_failed_build_leaves_nothing_but_an_empty_staging_dir(
    store: DirectoryArtifactStore,
) -> None:
    def build(folder: Path) -> None:
        fill(FILES)(folder)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        store.write("movies", build)
    assert entries(store.root) == {".staging"}


def test_writing_the_same_content_twice_is_idempotent(store: DirectoryArtifactStore) -> None:
    first = store.write("movies", fill(FILES))
    second = store.write("movies", fill(dict(reversed(FILES.items()))))
    assert second == first
    assert len(list((store.root / "movies").iterdir())) == 1
    assert list((store.root / ".staging").iterdir()) == []


def test_different_content_gets_a_different_folder(store: DirectoryArtifactStore) -> None:
    first = store.write("movies", fill(FILES))
    second = store.write("movies", fill({**FILES, "manifest.json": b"{}"}))
    assert second.uri != first.uri
    assert store.open(first.uri, first.digest) != store.open(second.uri, second.digest)


@pytest.mark.parametrize("key", ["", "..", "a/../b", "../outside", "/abs", "."])
def test_bad_keys_are_rejected(store: DirectoryArtifactStore, key: str) -> None:
    with pytest.raises(ArtifactError, match="bad artifact key"):
        store.write(key, fill(FILES))
    assert not store.root.exists() or entries(store.root) <= {".staging"}


# --- open / path_of / delete -----------------------------------------------------------


def test_open_returns_the_verified_folder(store: DirectoryArtifactStore) -> None:
    stored = store.write("movies", fill(FILES))
    path = store.open(stored.uri, stored.digest)
    assert (path / "manifest.json").read_bytes() == FILES["manifest.json"]


def test_open_rejects_a_tampered_file(store: DirectoryArtifactStore) -> None:
    stored = store.write("movies", fill(FILES))
    path = store.path_of(stored.uri)
    (path / "weights" / "w.npz").write_bytes(b"\x01" * 100)  # same size, other bytes
    with pytest.raises(ArtifactError, match="expected"):
        store.open(stored.uri, stored.digest)


def test_open_rejects_an_added_file(store: DirectoryArtifactStore) -> None:
    stored = store.write("movies", fill(FILES))
    (store.path_of(stored.uri) / "backdoor.py").write_text("print('hi')")
    with pytest.raises(ArtifactError):
        store.open(stored.uri, stored.digest)


def test_open_rejects_the_wrong_digest(store: DirectoryArtifactStore) -> None:
    stored = store.write("movies", fill(FILES))
    with pytest.raises(ArtifactError):
        store.open(stored.uri, "0" * 64)


def test_open_of_a_missing_artifact_fails(store: DirectoryArtifactStore) -> None:
    stored = store.write("movies", fill(FILES))
    store.delete(stored.uri)
    with pytest.raises(ArtifactError, match="does not exist"):
        store.open(stored.uri, stored.digest)


def test_path_of_accepts_percent_encoded_uris(tmp_path: Path) -> None:
    store = DirectoryArtifactStore(root=tmp_path / "my store")
    stored = store.write("spec one", fill(FILES))
    assert "%20" in stored.uri
    assert store.path_of(stored.uri) == (tmp_path / "my store" / "spec one" / stored.digest)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/movies/abc",
        "http://example.com/store/movies",
        "/plain/path",
        "movies/abc",
    ],
)
def test_path_of_rejects_other_schemes(store: DirectoryArtifactStore, uri: str) -> None:
    with pytest.raises(ArtifactError, match="not a file artifact URI"):
        store.path_of(uri)


def test_path_of_rejects_uris_outside_the_root(
    store: DirectoryArtifactStore, tmp_path: Path
) -> None:
    outside = folder_with(tmp_path / "outside", FILES)
    sibling = folder_with(tmp_path / "store-sibling", FILES)  # shares the root's name prefix
    for uri in (
        outside.as_uri(),
        sibling.as_uri(),
        (store.root / ".." / "outside").as_uri(),
        "file:///etc",
    ):
        with pytest.raises(ArtifactError, match="outside the store"):
            store.path_of(uri)
    with pytest.raises(ArtifactError):
        store.open(outside.as_uri(), directory_digest(outside))


def test_delete_removes_only_that_artifact(store: DirectoryArtifactStore) -> None:
    first = store.write("movies", fill(FILES))
    second = store.write("movies", fill({"other": b"x"}))
    store.delete(first.uri)
    assert not store.path_of(first.uri).exists()
    assert store.open(second.uri, second.digest).is_dir()
    store.delete(first.uri)  # already gone: no error


def test_delete_outside_the_store_is_refused(store: DirectoryArtifactStore, tmp_path: Path) -> None:
    outside = folder_with(tmp_path / "outside", FILES)
    with pytest.raises(ArtifactError):
        store.delete(outside.as_uri())
    assert outside.is_dir()


def test_the_root_itself_is_not_an_artifact(store: DirectoryArtifactStore) -> None:
    stored = store.write("movies", fill(FILES))
    with pytest.raises(ArtifactError):
        store.delete(store.root.resolve().as_uri())
    assert store.open(stored.uri, stored.digest).is_dir()
