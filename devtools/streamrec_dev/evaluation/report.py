"""Results of one evaluation run: a Markdown table, JSON per arm and per run, PNG plots.

Everything goes under ``benchmarks/results/evaluation/<dataset>/``:

- ``results.md``: the table (HR/NDCG at 10 and 20, cold-user HR@10, runtime) and HR@10 by how
  many items the user had touched when asked;
- ``results.json``: the run (dataset, protocol, every arm's result), ``<arm>.json`` each arm;
- ``hr10_over_time.png``: the windowed HR@10 curve of every arm (5 % windows);
- ``final.png``: bars of the final HR@10 and NDCG@10.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import orjson
from matplotlib.figure import Figure

from streamrec_dev.evaluation.data import REPO_ROOT
from streamrec_dev.evaluation.protocol import EvaluationResult

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results" / "evaluation"


def safe_name(arm: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", arm)


def markdown_table(results: Sequence[EvaluationResult]) -> str:
    head = (
        "| arm | HR@10 | NDCG@10 | HR@20 | NDCG@20 | HR@10 cold users | scored | runtime s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = [
        f"| {r.arm} | {r.metrics['hr@10']:.3f} | {r.metrics['ndcg@10']:.3f} "
        f"| {r.metrics['hr@20']:.3f} | {r.metrics['ndcg@20']:.3f} "
        f"| {_cold(r)} | {r.scored:,} | {r.runtime_s:.1f} |"
        for r in results
    ]
    return head + "\n".join(rows) + "\n"


def touched_table(results: Sequence[EvaluationResult]) -> str:
    """HR@10 per arm and "items touched before" bucket (results from before the buckets: none)."""
    with_buckets = [r for r in results if r.by_touched]
    if not with_buckets:
        return ""
    buckets = with_buckets[0].by_touched  # the same interactions are scored for every arm
    head = (
        "| arm | "
        + " | ".join(f"{b.label} ({b.scored:,})" for b in buckets)
        + " |\n|---|"
        + "---:|" * len(buckets)
        + "\n"
    )
    rows = [
        f"| {r.arm} | " + " | ".join(f"{b.metrics['hr@10']:.3f}" for b in r.by_touched) + " |"
        for r in with_buckets
    ]
    return (
        "\nHR@10 by how many items the user had touched when asked (scored interactions in "
        "parentheses):\n\n" + head + "\n".join(rows) + "\n"
    )


def tables(results: Sequence[EvaluationResult]) -> str:
    """The main table, then HR@10 by items touched before: what a run prints and keeps."""
    return markdown_table(results) + touched_table(results)


def describe(results: Sequence[EvaluationResult], dataset: str, source: str) -> str:
    if not results:
        return f"# Evaluation: {dataset}\n\nno arms ran\n"
    first = results[0]
    config = first.config
    return (
        f"# Evaluation: {dataset}\n\n"
        f"Source: `{source}`. {first.interactions:,} interactions; the first "
        f"{config.history_fraction:.0%} ({first.history:,}) are history, the remaining "
        f"{first.evaluated:,} are evaluated test-then-train ({first.scored:,} scored, "
        f"{first.repeats:,} repeats of an already touched item skipped, {first.cold_scored:,} "
        f"from users absent from the history, {first.unknown_targets:,} targets never seen "
        f"before). Top-{config.k} lists, touched items excluded; HR/NDCG averaged over scored "
        f"interactions.\n\n" + tables(results)
    )


def _cold(result: EvaluationResult) -> str:
    return f"{result.cold_metrics['hr@10']:.3f}" if result.cold_scored else "–"


def plot_windows(
    results: Sequence[EvaluationResult],
    path: Path,
    dataset: str,
    marks: dict[str, float] | None = None,
) -> None:
    figure = Figure(figsize=(11, 5), layout="constrained")
    axes = figure.subplots()
    # Up to 20 distinct colours; arms through the stack solid, in-process arms dashed.
    colormap = matplotlib.colormaps["tab20"]
    palette = [colormap(index) for index in range(colormap.N)]
    for index, result in enumerate(results):
        if not result.windows:
            continue
        evaluated = max(1, result.evaluated)
        x = [100.0 * (w.end - result.history) / evaluated for w in result.windows]
        y = [w.metrics["hr@10"] for w in result.windows]
        axes.plot(
            x,
            y,
            marker="o",
            markersize=3,
            label=result.arm,
            color=palette[index % len(palette)],
            linestyle="-" if result.arm.startswith("stack:") else "--",
            linewidth=2.0 if result.arm.startswith("stack:") else 1.2,
        )
    if results:
        first = results[0]
        for name, at in (marks or {}).items():
            where = 100.0 * (at * first.interactions - first.history) / max(1, first.evaluated)
            if 0 <= where <= 100:
                axes.axvline(where, color="grey", linestyle="--", linewidth=1)
                axes.annotate(
                    name,
                    (where, 0.98),
                    xycoords=("data", "axes fraction"),
                    ha="right",
                    va="top",
                    rotation=90,
                    fontsize="small",
                    color="grey",
                )
    axes.set_xlabel("evaluated part of the stream (%, end of each 5 % window)")
    axes.set_ylabel("HR@10 in the window")
    axes.set_title(f"{dataset}: HR@10 over time (prequential)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.savefig(path, dpi=120)


def plot_final(results: Sequence[EvaluationResult], path: Path, dataset: str) -> None:
    figure = Figure(figsize=(max(6.0, 1.3 * len(results) + 2), 4.5), layout="constrained")
    axes = figure.subplots()
    width = 0.38
    positions = range(len(results))
    for shift, metric in ((-width / 2, "hr@10"), (width / 2, "ndcg@10")):
        values = [r.metrics[metric] for r in results]
        bars = axes.bar([p + shift for p in positions], values, width, label=metric.upper())
        axes.bar_label(bars, fmt="%.3f", fontsize="x-small")
    axes.set_xticks(list(positions), [r.arm for r in results], rotation=20, ha="right")
    axes.set_title(f"{dataset}: final figures")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=120)


def write_report(
    results: Sequence[EvaluationResult],
    dataset: str,
    source: str,
    out_dir: Path | None = None,
    extra: dict[str, Any] | None = None,
    marks: dict[str, float] | None = None,
) -> Path:
    """Write the table, the JSON files and the plots; returns the folder."""
    folder = out_dir or RESULTS_DIR / dataset
    folder.mkdir(parents=True, exist_ok=True)
    run = {
        "dataset": dataset,
        "source": source,
        "marks": marks or {},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        **(extra or {}),
        "results": [r.to_dict() for r in results],
    }
    options = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    (folder / "results.json").write_bytes(orjson.dumps(run, option=options))
    for result in results:
        (folder / f"{safe_name(result.arm)}.json").write_bytes(result.to_json())
    (folder / "results.md").write_text(describe(results, dataset, source), encoding="utf-8")
    plot_windows(results, folder / "hr10_over_time.png", dataset, marks)
    plot_final(results, folder / "final.png", dataset)
    return folder


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
