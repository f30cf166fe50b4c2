"""Interaction streams for the evaluation: MovieLens files, any CSV, the synthetic drifting stream.

Every reader returns a list of ``Interaction`` sorted by timestamp with a *stable* sort, so
interactions that share a timestamp (MovieLens users rate many films in the same second) keep
their order in the file and every run sees the same sequence.

MovieLens is never copied into the repository: ``ml-100k`` is read from
``../shared/datasets/ml-100k/u.data`` next to the repository (``STREAMREC_DATASETS_DIR`` points
elsewhere); without it the evaluation still runs on the synthetic stream.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from streamrec_dev.synthetic import DriftingClickstream

REPO_ROOT = Path(__file__).resolve().parents[3]
FORMATS = ("auto", "ml-100k", "movielens-csv", "csv")


@dataclass(frozen=True, slots=True)
class Interaction:
    """One positive interaction; ``value`` is the rating for rating datasets, else ``None``."""

    user: str
    item: str
    timestamp: float  # unix seconds
    value: float | None = None


@dataclass(frozen=True)
class Dataset:
    name: str  # names the results folder: "synthetic", "ml-100k", or the file's stem
    interactions: list[Interaction]
    source: str  # where it came from (a path, or the generator and its parameters)
    # Known events in the stream, as a fraction of it (the synthetic taste shift): plotted.
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def users(self) -> int:
        return len({row.user for row in self.interactions})

    @property
    def items(self) -> int:
        return len({row.item for row in self.interactions})


def datasets_dir() -> Path:
    configured = os.environ.get("STREAMREC_DATASETS_DIR")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "datasets"


def ml_100k_path() -> Path:
    return datasets_dir() / "ml-100k" / "u.data"


def display_path(path: Path) -> str:
    """Relative to the repository when that is shorter (results should not name a home folder)."""
    relative = os.path.relpath(path.resolve(), REPO_ROOT)
    return relative if len(relative) < len(str(path.resolve())) else str(path)


def time_ordered(rows: Iterable[Interaction]) -> list[Interaction]:
    """Stable sort by timestamp: ties keep their input order."""
    return sorted(rows, key=lambda row: row.timestamp)


def read_movielens_udata(path: Path) -> list[Interaction]:
    """MovieLens 100K ``u.data``: tab-separated user, item, rating, unix time; no header."""
    rows: list[Interaction] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 4:
                raise ValueError(f"{path}:{number}: expected 4 tab-separated fields: {line!r}")
            user, item, rating, stamp = fields[:4]
            rows.append(Interaction(user, item, float(stamp), float(rating)))
    return time_ordered(rows)


def read_movielens_csv(path: Path) -> list[Interaction]:
    """MovieLens ``ratings.csv`` (ml-latest, ml-20m, ...): ``userId,movieId,rating,timestamp``."""
    return read_csv(path, user="userId", item="movieId", timestamp="timestamp", value="rating")


def parse_timestamp(text: str) -> float:
    """Unix seconds, or ISO 8601 (no zone means UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def read_csv(
    path: Path,
    *,
    user: str = "user_id",
    item: str = "item_id",
    timestamp: str = "timestamp",
    value: str | None = None,
    delimiter: str = ",",
) -> list[Interaction]:
    """A CSV with a header row; the user, item and timestamp (and optional value) columns named."""
    rows: list[Interaction] = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        wanted = [user, item, timestamp, *([value] if value else [])]
        missing = [name for name in wanted if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; the header has {reader.fieldnames}")
        for record in reader:
            rating = record[value] if value else None
            rows.append(
                Interaction(
                    record[user],
                    record[item],
                    parse_timestamp(record[timestamp]),
                    float(rating) if rating not in (None, "") else None,
                )
            )
    return time_ordered(rows)


# The evaluation's synthetic stream: 40,000 events, the taste shift at 75 % of the stream (the
# middle of the evaluated half), so the curve shows a steady state, the shift, and the recovery.
EVALUATION_STREAM = DriftingClickstream(events=40_000, drift_at=0.75)


def synthetic(stream: DriftingClickstream = EVALUATION_STREAM) -> Dataset:
    """The drifting clickstream (taste shift, new items launching) as a dataset."""
    rows = [Interaction(event.user_id, event.item_id, event.timestamp) for event in stream]
    return Dataset(
        "synthetic", time_ordered(rows), f"synthetic: {stream!r}", {"taste shift": stream.drift_at}
    )


def detect_format(path: Path) -> str:
    if path.name == "u.data":
        return "ml-100k"
    if path.suffix == ".csv":
        with path.open(encoding="utf-8") as handle:
            header = handle.readline().strip().split(",")
        if header[:4] == ["userId", "movieId", "rating", "timestamp"]:
            return "movielens-csv"
        return "csv"
    raise ValueError(f"cannot tell the format of {path}: pass --format")


def load_dataset(
    spec: str,
    data_format: str = "auto",
    *,
    user_column: str = "user_id",
    item_column: str = "item_id",
    timestamp_column: str = "timestamp",
    value_column: str | None = None,
    delimiter: str = ",",
) -> Dataset:
    """``synthetic``, ``ml-100k`` (from the shared datasets folder) or a path to a file."""
    if data_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {data_format!r}")
    if spec == "synthetic":
        return synthetic()
    if spec == "ml-100k":
        path = ml_100k_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"ML-100K not found at {path}"
                " (set STREAMREC_DATASETS_DIR, or use the synthetic set)"
            )
        return Dataset("ml-100k", read_movielens_udata(path), display_path(path))
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    kind = detect_format(path) if data_format == "auto" else data_format
    if kind == "ml-100k":
        rows = read_movielens_udata(path)
    elif kind == "movielens-csv":
        rows = read_movielens_csv(path)
    else:
        rows = read_csv(
            path,
            user=user_column,
            item=item_column,
            timestamp=timestamp_column,
            value=value_column,
            delimiter=delimiter,
        )
    name = path.parent.name if path.name in ("u.data", "ratings.csv") else path.stem
    return Dataset(name, rows, display_path(path))
