"""The benchmark report's gateway section: the same rate's direct and proxied windows, paired."""

from __future__ import annotations

import json
from typing import Any

from benchmarks.inference_latency import saturation_bracket
from benchmarks.report import build, gateway, inference, quiet_freshness, trainer


def window(target: str, rate: float, p50: float | None, p99: float | None) -> dict[str, Any]:
    return {
        "target": target,
        "offered_rps": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": 1,
        "timeouts": 2,
    }


def test_gateway_overhead_pairs_windows_of_the_same_rate() -> None:
    data = {
        "catalogue_a": {
            "latency": [
                window("inference a", 500.0, 1.25, 4.5),
                window("gateway a", 500.0, 2.0, 7.0),
                window("trivial endpoint", 500.0, 0.5, 2.0),
                window("inference a", 100.0, 1.0, 4.0),
                window("gateway a", 100.0, 1.5, 3.5),
                window("inference a", 1000.0, 1.0, 4.0),  # no gateway window at this rate
            ]
        }
    }
    lines = gateway(data)
    rows = lines[2:]
    assert rows == [
        "| 100 req/s | 1.00 / 4.00 | 1.50 / 3.50 | +0.50 / -0.50 | 3 |",
        "| 500 req/s | 1.25 / 4.50 | 2.00 / 7.00 | +0.75 / +2.50 | 3 |",
    ]


def test_gateway_section_says_when_there_is_nothing_to_pair(tmp_path: Any) -> None:
    assert gateway({"catalogue_a": {"latency": [window("inference a", 100.0, 1.0, 2.0)]}}) == []
    report = build(tmp_path)
    assert "## Gateway overhead\n\nnot run" in report


def test_saturation_is_the_benchmarks_verdict_over_every_window() -> None:
    """The saturation steps alone (all failing here) would say 0; the verdict also counts the
    latency windows, one of which passed."""
    wrk = {"requests_per_s": 2000.0}
    data = {
        "catalogue_a": {
            "latency": [window("inference a", 1000.0, 1.0, 5.0)],
            "saturation": {
                "inference": {"saturation_rps": 0.0, "criterion": "p99 <= 50 ms"},
                "trivial_endpoint": {"saturation_rps": 4000.0},
            },
            "wrk_closed_loop": {"inference": wrk, "trivial": {"requests_per_s": 8000.0}},
        },
        "verdicts": {
            "saturation_rps": 1000.0,
            "saturation_bracket": {"highest_passing_rps": 1000.0, "lowest_failing_rps": 1500.0},
        },
    }
    text = "\n".join(inference(data))
    assert "p99 <= 50 ms): 1,000 req/s, 1,500 fails (trivial endpoint 4,000)" in text


def test_the_trivial_endpoints_saturation_counts_its_latency_windows_too() -> None:
    """Its saturation steps start where inference's did: when it fails the first one, the
    latency windows it passed still bound it (the report said "trivial endpoint 0")."""

    def passing(target: str, rate: float, passes: bool) -> dict[str, Any]:
        return {**window(target, rate, 1.0, 5.0), "passes": passes}

    catalogue = {
        "latency": [
            passing("trivial endpoint", 500.0, True),
            passing("trivial endpoint", 1000.0, True),
            passing("inference a", 1000.0, True),
        ],
        "saturation": {
            "inference": {"steps": [passing("inference a", 1500.0, False)]},
            "trivial_endpoint": {"steps": [passing("trivial endpoint", 1500.0, False)]},
        },
    }
    bracket = saturation_bracket(catalogue, "trivial endpoint", "trivial_endpoint")
    assert (bracket["highest_passing_rps"], bracket["lowest_failing_rps"]) == (1000.0, 1500.0)
    data = {
        "catalogue_a": {
            **catalogue,
            "wrk_closed_loop": {
                "inference": {"requests_per_s": 2000.0},
                "trivial": {"requests_per_s": 8000.0},
            },
        },
        "verdicts": {"saturation_rps": 1000.0, "trivial_saturation_bracket": bracket},
    }
    assert "(trivial endpoint 1,000, 1,500 fails)" in "\n".join(inference(data))


def test_cpu_lines_say_where_the_cpu_went_at_each_saturation_step() -> None:
    step = window("inference a", 2000.0, 2.5, 71.0) | {
        "seconds": 5.0,
        "passes": False,
        "machine_busy": 0.82,
        "machine_cpus": 2,
        "server_cpu_us_per_ok": 338,
        "cpu_s_by_process": {"inference": 3.4, "generator": 1.8, "trainer": 0.1},
    }
    data = {
        "catalogue_a": {
            "latency": [],
            "saturation": {"inference": {"steps": [step]}, "trivial_endpoint": {}},
            "wrk_closed_loop": {
                "inference": {"requests_per_s": 1.0},
                "trivial": {"requests_per_s": 2.0},
            },
        },
    }
    text = "\n".join(inference(data))
    assert (
        "At 2,000 req/s (fails): inference 338 µs of CPU per answer; 1.64 of 2 cores busy "
        "(inference 0.68, generator 0.36)." in text
    )


def test_the_quiet_stream_section_shows_the_rolling_sample_against_the_fixed_one() -> None:
    figures = {"p50_s": 1.0, "p99_s": 2.0}
    data = {
        "offered_events_per_s": 20.0,
        "served_freshness_first_covering_version": figures,
        "served_freshness_conservative": {"p99_s": 24.0},
        "versions_during_load": 20,
        "failed_requests": 0,
        "settings": {"fixed_sample": False},
        "against_baseline": {
            "file": "benchmarks/results/model_freshness_quiet_fixed.json",
            "figures": {"served p99 s": {"baseline": 26.0, "this": 2.0, "ratio": 13.0}},
        },
    }
    lines = quiet_freshness(data)
    assert (
        "20 events/s offered, rolling gate sample: p50 1.00 s, p99 2.00 s (conservative,"
        " held-out events counted once released: p99 24.00 s); 20 versions" in lines[0]
    )
    # A run from before the rolling sample (no such setting) had a fixed one.
    del data["settings"]
    assert "fixed gate sample" in quiet_freshness(data)[0]
    assert "counted one version later" in quiet_freshness(data)[0]
    assert "| served p99 s | 26.00 | 2.00 | 13.0× |" in lines


def test_the_trainer_section_adds_publish_costs_only_where_measured() -> None:
    median = {"kafka_events_per_s": 60_000.0, "tensors_events_per_s": 80_000.0,
              "kafka_vs_tensors": 0.75}  # fmt: skip
    publish = {"candidate_ms": 50.0, "training_state_ms": 15.0, "artifact_ms": 6.0,
               "training_state_mb": 7.4, "items": 1682.0, "state_vs_artifact": 2.5}  # fmt: skip
    old = {"specs": {"default": {"median": median, "rounds": [{}]}}}
    assert len(trainer(old)) == 3  # a file written before publish costs were measured

    new = {"specs": {"default": {"median": {**median, "publish": publish}, "rounds": [{}]}}}
    row = trainer(new)[-1]
    assert row == "| default (1,682 items) | 50.0 | 15.0 (7.4 MB) | 6.0 | 2.50× |"


def test_each_section_says_when_it_was_measured(tmp_path: Any) -> None:
    # `make bench` reruns only some benchmarks: a section from an older run must say so.
    (tmp_path / "model_freshness_quiet.json").write_text(
        json.dumps({"timestamp": "2026-12-05T16:49:17.020770+00:00"})
    )
    (tmp_path / "scoring.json").write_text(
        json.dumps({"measured_at": "2026-12-06T14:09:13.5+00:00", "results": {}})
    )
    (tmp_path / "ingest_throughput.json").write_text(json.dumps({"ratios": {}}))  # an older file
    report = build(tmp_path)
    assert "Measured at 2026-12-05 16:49:17 UTC (`model_freshness_quiet.json`)." in report
    assert "Measured at 2026-12-06 14:09:13 UTC (`scoring.json`)." in report
    ingest = report.split("## Ingest")[1].split("## ")[0]
    assert "Measured at" not in ingest
