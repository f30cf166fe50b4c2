"""The trainer's own Prometheus metrics, on the app's registry (next to the HTTP metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class TrainerMetrics:
    events_trained: Counter
    versions_published: Counter
    candidates_rejected: Counter
    dead_lettered: Counter
    cycle_seconds: Histogram
    active_runs: Gauge

    @classmethod
    def on(cls, registry: CollectorRegistry) -> TrainerMetrics:
        return cls(
            events_trained=Counter(
                "trainer_events_trained_total", "Events trained on.", ["spec"], registry=registry
            ),
            versions_published=Counter(
                "trainer_versions_published_total",
                "Versions published.",
                ["spec"],
                registry=registry,
            ),
            candidates_rejected=Counter(
                "trainer_candidates_rejected_total",
                "Candidates the gate rejected.",
                ["spec"],
                registry=registry,
            ),
            dead_lettered=Counter(
                "trainer_dead_lettered_total",
                "Records sent to the dead-letter topic.",
                ["topic"],
                registry=registry,
            ),
            cycle_seconds=Histogram(
                "trainer_publish_cycle_seconds",
                "Judge + store + checkpoint time of one publish cycle.",
                ["spec"],
                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
                registry=registry,
            ),
            active_runs=Gauge("trainer_active_runs", "Runs in progress.", registry=registry),
        )
