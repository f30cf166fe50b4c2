"""One report from the benchmarks' JSON files: each figure next to the baseline its benchmark
measured in the same run (issue 5, "System benchmarks in the same suite").

Reads ``benchmarks/results/*.json`` and ``benchmarks/results/evaluation/<dataset>/results.json``
as the benchmarks last wrote them (a missing one is reported as not run), prints Markdown and
writes ``benchmarks/results/REPORT.md``. ``make bench`` runs every benchmark, then this.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, results: dict[str, Any]) -> Path:
    """``results/<name>.json`` with the time of measurement, for the benchmarks that have no
    ``--out`` of their own."""
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    stamped = {"measured_at": datetime.now(UTC).isoformat(), "results": results}
    out.write_text(json.dumps(stamped, indent=2) + "\n")
    return out


def measured_at(data: dict[str, Any]) -> str | None:
    """When a benchmark's results were measured (older files may not say), to the second."""
    when = data.get("measured_at") or data.get("timestamp")
    return str(when)[:19].replace("T", " ") + " UTC" if when else None


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def _ratio(value: float | None, baseline: float | None) -> str:
    if value is None or not baseline:
        return "–"
    return f"{value / baseline:.2f}"


def ingest(data: dict[str, Any]) -> list[str]:
    single = data["ingest_single"]["events_per_s"]
    batch = data["ingest_batch"]["events_per_s"]
    trivial = data["trivial_endpoint"]["requests_per_s"]
    raw = data["raw_producer"]["events_per_s"]
    return [
        "| ingest | figure | baseline (same run) | ratio |",
        "|---|---:|---:|---:|",
        f"| 1 event/POST | {single:,.0f} events/s | trivial endpoint {trivial:,.0f} req/s "
        f"| {_ratio(single, trivial)} |",
        f"| 100-event batches | {batch:,.0f} events/s | raw aiokafka producer {raw:,.0f} "
        f"events/s | {_ratio(batch, raw)} |",
    ]


def _windows_by_rate(data: dict[str, Any]) -> dict[float, dict[str, dict[str, Any]]]:
    """Catalogue A's latency windows: offered rate -> target -> window."""
    by_rate: dict[float, dict[str, dict[str, Any]]] = {}
    for entry in data["catalogue_a"]["latency"]:
        by_rate.setdefault(entry["offered_rps"], {})[entry["target"]] = entry
    return by_rate


def inference(data: dict[str, Any]) -> list[str]:
    lines = [
        "| recommendations (1,682 items) | p50 / p99 ms | trivial endpoint p50 / p99 "
        "| Redis GET p50 / p99 |",
        "|---|---:|---:|---:|",
    ]
    by_rate = _windows_by_rate(data)

    def cell(entry: dict[str, Any] | None) -> str:
        return f"{entry['p50_ms']:.2f} / {entry['p99_ms']:.2f}" if entry else "–"

    for rate, targets in sorted(by_rate.items()):
        service = targets.get("inference a")
        trivial = next((v for k, v in targets.items() if "trivial" in k), None)
        redis = next((v for k, v in targets.items() if "redis" in k.lower()), None)
        lines.append(f"| {rate:,.0f} req/s | {cell(service)} | {cell(trivial)} | {cell(redis)} |")
    saturation = data["catalogue_a"]["saturation"]
    # The benchmark's verdict counts every inference window, the latency rates included: the
    # saturation steps alone say 0 when their first step already fails.
    verdicts = data.get("verdicts") or {}
    service_sat = verdicts.get("saturation_rps", saturation["inference"].get("saturation_rps"))
    failing = (verdicts.get("saturation_bracket") or {}).get("lowest_failing_rps")
    trivial_bracket = verdicts.get("trivial_saturation_bracket") or {}
    trivial_sat = trivial_bracket.get(
        "highest_passing_rps", (saturation.get("trivial_endpoint") or {}).get("saturation_rps")
    )
    trivial_failing = trivial_bracket.get("lowest_failing_rps")
    wrk = data["catalogue_a"]["wrk_closed_loop"]
    lines += [
        "",
        f"Open-loop saturation ({saturation['inference'].get('criterion', '')}): "
        f"{service_sat or 0:,.0f} req/s"
        + (f", {failing:,.0f} fails" if failing else "")
        + f" (trivial endpoint {trivial_sat or 0:,.0f}"
        + (f", {trivial_failing:,.0f} fails" if trivial_failing else "")
        + "); closed loop "
        f"(wrk): {wrk['inference']['requests_per_s']:,.0f} req/s vs the trivial endpoint's "
        f"{wrk['trivial']['requests_per_s']:,.0f} "
        f"({_ratio(wrk['inference']['requests_per_s'], wrk['trivial']['requests_per_s'])}).",
    ]
    lines += _cpu_lines(saturation["inference"].get("steps", []))
    b = data.get("catalogue_b")
    if b:
        cells = ", ".join(
            f"{e['offered_rps']:,.0f} req/s {e['p50_ms']:.2f} / {e['p99_ms']:.2f} ms"
            for e in b["latency"]
            if e["target"] == "inference b"
        )
        lines.append(f"100,000 items: {cells}.")
    fresh = data["catalogue_a"].get("feature_freshness")
    if fresh:
        lines.append(
            f"Feature freshness (ingest 202 → visible in Redis, histogram bucket bounds) during "
            f"the load: p50 ≤ {fresh['p50_le_s'] * 1000:.0f} ms, p99 ≤ "
            f"{fresh['p99_le_s'] * 1000:.0f} ms over {fresh['events']:,} events."
        )
    return lines


def cpu_cores(window: dict[str, Any], at_least: float) -> str | None:
    """Where the CPU went in a window: cores busy of all, then cores used per process (CPU
    seconds over the window's length), biggest first; None when the window has no record."""
    used = window.get("cpu_s_by_process")
    if not used or window.get("machine_busy") is None:
        return None
    cpus = window.get("machine_cpus") or 1
    cores = sorted(((v / window["seconds"], k) for k, v in used.items()), reverse=True)
    shown = ", ".join(f"{name} {c:.2f}" for c, name in cores if c >= at_least)
    return f"{window['machine_busy'] * cpus:.2f} of {cpus} cores busy ({shown})"


def _cpu_lines(steps: list[dict[str, Any]]) -> list[str]:
    """A line per saturation step: inference's CPU per answer and where the CPU went."""
    lines = []
    for step in steps:
        cores = cpu_cores(step, at_least=0.05)
        if cores is not None:
            lines.append(
                f"At {step['offered_rps']:,.0f} req/s "
                f"({'passes' if step['passes'] else 'fails'}): inference "
                f"{step.get('server_cpu_us_per_ok') or 0:,} µs of CPU per answer; {cores}."
            )
    return lines


def gateway(data: dict[str, Any]) -> list[str]:
    """The same recommendation requests through the gateway (API key checked, stable pool)
    as straight to inference, window after window in the inference latency run."""
    by_rate = _windows_by_rate(data)
    lines = [
        "| offered load | inference p50 / p99 ms (baseline) | through the gateway p50 / p99 ms"
        " | added p50 / p99 ms | errors + timeouts |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = 0
    for rate, targets in sorted(by_rate.items()):
        direct, proxied = targets.get("inference a"), targets.get("gateway a")
        if not direct or not proxied or proxied["p50_ms"] is None or direct["p50_ms"] is None:
            continue
        rows += 1
        lines.append(
            f"| {rate:,.0f} req/s | {direct['p50_ms']:.2f} / {direct['p99_ms']:.2f} "
            f"| {proxied['p50_ms']:.2f} / {proxied['p99_ms']:.2f} "
            f"| {proxied['p50_ms'] - direct['p50_ms']:+.2f} / "
            f"{proxied['p99_ms'] - direct['p99_ms']:+.2f} "
            f"| {proxied['errors'] + proxied['timeouts']} |"
        )
    return lines if rows else []


def freshness(data: dict[str, Any]) -> list[str]:
    served = data["served_freshness_first_covering_version"]
    conservative = data["served_freshness_conservative"]
    settings = data.get("settings") or {}
    # Runs from before the rolling sample have no such setting: theirs was a fixed one.
    rolling = "fixed_sample" in settings and not settings["fixed_sample"]
    held_out = "once released" if rolling else "one version later"
    return [
        f"Model freshness (ingest 202 → a served version trained on the event), "
        f"{data['offered_events_per_s']:,.0f} events/s offered, "
        f"{'rolling' if rolling else 'fixed'} gate sample: p50 {served['p50_s']:.2f} s, "
        f"p99 {served['p99_s']:.2f} s (conservative, held-out events counted {held_out}: "
        f"p99 {conservative['p99_s']:.2f} s); {data['versions_during_load']} versions "
        f"during the load, {data['failed_requests']} failed requests."
    ]


def quiet_freshness(data: dict[str, Any]) -> list[str]:
    """The quiet-stream run, and the fixed-sample run it was compared with just before."""
    lines = freshness(data)
    compared = data.get("against_baseline")
    if compared:
        lines += [
            "",
            f"| against a fixed sample (`{compared['file']}`) | fixed | rolling | ratio |",
            "|---|---:|---:|---:|",
        ]
        for label, figures in compared["figures"].items():
            lines.append(
                f"| {label} | {figures['baseline']:.2f} | {figures['this']:.2f} "
                f"| {figures['ratio']:.1f}× |"
            )
    return lines


def trainer(data: dict[str, Any]) -> list[str]:
    lines = [
        "| trainer spec (median of rounds) | from Kafka ev/s | in-memory tensors ev/s (baseline)"
        " | ratio (median of per-round ratios) |",
        "|---|---:|---:|---:|",
    ]
    for name, spec in data["specs"].items():
        median = spec["median"]
        lines.append(
            f"| {name} ({len(spec['rounds'])} rounds) | {median['kafka_events_per_s']:,.0f}"
            f" | {median['tensors_events_per_s']:,.0f} | {median['kafka_vs_tensors']:.2f}× |"
        )
    publishes = {name: spec["median"].get("publish") for name, spec in data["specs"].items()}
    if any(publishes.values()):  # files written before session 12 lack it
        lines += [
            "",
            "| per published version, besides training (median ms) | candidate (tables,"
            " neighbors) | training state stored | serving artifact stored (baseline) | ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, costs in publishes.items():
            if costs:
                lines.append(
                    f"| {name} ({costs['items']:,.0f} items) | {costs['candidate_ms']:.1f}"
                    f" | {costs['training_state_ms']:.1f} ({costs['training_state_mb']:.1f} MB)"
                    f" | {costs['artifact_ms']:.1f} | {costs['state_vs_artifact']:.2f}× |"
                )
    return lines


def scoring(data: dict[str, Any]) -> list[str]:
    lines = [
        "| scoring one user | NumPy p50 µs | NumPy, one argpartition of all (before top_k) p50 µs "
        "| NumPy + item-to-item term p50 µs | tf.function p50 µs | Keras predict p50 µs |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def cell(ways: dict[str, Any], name: str) -> str:
        figures = ways.get(name)  # absent from files written before the way was measured
        return f"{figures['p50_us']:,.0f}" if figures else "–"

    for size, ways in data["results"].items():
        lines.append(
            f"| {size.replace('_', ' ')} | {cell(ways, 'numpy')} "
            f"| {cell(ways, 'numpy_full_partition')} | {cell(ways, 'numpy_with_neighbors')} "
            f"| {cell(ways, 'tf_function')} | {cell(ways, 'keras_predict')} |"
        )
    return lines


def evaluation(folder: Path) -> list[str]:
    lines: list[str] = []
    for results in sorted(folder.glob("*/results.json")):
        data = _load(results)
        if not data:
            continue
        arms = {r["arm"]: r for r in data["results"]}
        base = arms.get("popularity-history", {}).get("metrics", {}).get("hr@10")
        lines += [
            f"**{data['dataset']}** ({data.get('created_at', '?')}):",
            "",
            "| arm | HR@10 | NDCG@10 | HR@10 / popularity-history |",
            "|---|---:|---:|---:|",
        ]
        for name, arm in arms.items():
            metrics = arm["metrics"]
            lines.append(
                f"| {name} | {metrics['hr@10']:.3f} | {metrics['ndcg@10']:.3f} "
                f"| {_ratio(metrics['hr@10'], base)} |"
            )
        lines.append("")
    return lines


SECTIONS: list[tuple[str, str, Callable[[dict[str, Any]], list[str]]]] = [
    ("Ingest", "ingest_throughput.json", ingest),
    ("Inference latency", "inference_latency.json", inference),
    ("Model freshness", "model_freshness.json", freshness),
    ("Model freshness, quiet stream", "model_freshness_quiet.json", quiet_freshness),
    ("Trainer throughput", "trainer_throughput.json", trainer),
    ("Scoring", "scoring.json", scoring),
]


def build(results: Path) -> str:
    out = ["# streamrec benchmark report", ""]
    for title, name, render in SECTIONS:
        out += [f"## {title}", ""]
        data = _load(results / name)
        if data and (when := measured_at(data)):
            # make bench reruns only some benchmarks: a section from an older run says so.
            out += [f"Measured at {when} (`{name}`).", ""]
        try:
            out += render(data) if data else [f"not run (`{name}` missing)"]
        except (KeyError, TypeError) as error:  # an older file without the fields used here
            out += [f"`{name}` has not the expected fields ({error!r}): rerun its benchmark"]
        out.append("")
    out += ["## Recommendation quality (prequential, same run per dataset)", ""]
    out += evaluation(results / "evaluation") or ["not run", ""]
    out += ["## Gateway overhead", ""]
    data = _load(results / "inference_latency.json")
    out += (gateway(data) if data else None) or [
        "not run (`inference_latency.json` missing or from before the gateway windows)"
    ]
    out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    options = parser.parse_args()
    text = build(options.results)
    (options.results / "REPORT.md").write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
