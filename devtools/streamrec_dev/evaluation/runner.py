"""Run arms on a dataset under the protocol with a progress bar, and write the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from streamrec_dev.evaluation.data import Dataset, load_dataset
from streamrec_dev.evaluation.peers import PEERS
from streamrec_dev.evaluation.protocol import (
    EvaluationResult,
    ProtocolConfig,
    Recommender,
    evaluate,
)
from streamrec_dev.evaluation.report import write_report

ArmFactory = Callable[[], Recommender]


def load_limited(
    dataset: str,
    data_format: str = "auto",
    user_column: str = "user_id",
    item_column: str = "item_id",
    timestamp_column: str = "timestamp",
    value_column: str | None = None,
    limit: int = 0,
) -> Dataset:
    """``load_dataset``, cut to the first ``limit`` interactions in time order (smoke runs)."""
    loaded = load_dataset(
        dataset,
        data_format,
        user_column=user_column,
        item_column=item_column,
        timestamp_column=timestamp_column,
        value_column=value_column,
    )
    if limit:
        rows = loaded.interactions[:limit]
        scale = len(loaded.interactions) / max(1, len(rows))
        marks = {name: at * scale for name, at in loaded.marks.items() if at * scale < 1}
        loaded = Dataset(loaded.name, rows, f"{loaded.source}[:{limit}]", marks)
    return loaded


def describe_dataset(dataset: Dataset) -> str:
    return (
        f"{dataset.name}: {len(dataset.interactions):,} interactions, {dataset.users:,} users, "
        f"{dataset.items:,} items ({dataset.source})"
    )


def peer_arms(names: Sequence[str] | None = None) -> dict[str, ArmFactory]:
    """The named in-process peers (all of them by default), in the order given."""
    chosen = list(names) if names else list(PEERS)
    unknown = [name for name in chosen if name not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    return {name: PEERS[name] for name in chosen}


def progress_bar(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_arms(
    dataset: Dataset,
    arms: dict[str, ArmFactory],
    config: ProtocolConfig | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> list[EvaluationResult]:
    """Each arm in turn, on the same interactions, with a progress bar per arm."""
    config = config or ProtocolConfig()
    results: list[EvaluationResult] = []
    total = len(dataset.interactions)
    with progress_bar(console) as progress:
        if not show_progress:
            progress.disable = True
        for name, factory in arms.items():
            task = progress.add_task(name, total=total)

            def advance(count: int, task_id: TaskID = task) -> None:
                progress.advance(task_id, count)

            result = evaluate(
                name,
                factory(),
                dataset.interactions,
                dataset=dataset.name,
                config=config,
                progress=advance,
            )
            progress.update(task, completed=total)
            results.append(result)
    return results


def evaluate_and_report(
    dataset: Dataset,
    arms: dict[str, ArmFactory],
    config: ProtocolConfig | None = None,
    out_dir: Path | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> tuple[list[EvaluationResult], Path]:
    results = run_arms(dataset, arms, config, console, show_progress)
    folder = write_report(results, dataset.name, dataset.source, out_dir, marks=dataset.marks)
    return results, folder
