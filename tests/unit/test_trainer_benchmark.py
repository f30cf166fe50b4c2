"""The trainer benchmark's publish costs: measured on what a publish stores, and cleaned up."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

from streamrec_shared.schemas.events import Interaction
from streamrec_shared.schemas.models import ItemPoolingHyperparameters
from trainer.learner import Learner

from benchmarks.trainer_throughput import publish_costs


def test_publish_costs_time_the_state_and_the_artifact_and_leave_nothing(tmp_path: Path) -> None:
    hp = ItemPoolingHyperparameters(embedding_dim=4, history_length=3, batch_size=16)
    learner = Learner(hp)
    for n in range(200):
        interaction = Interaction(f"u{n % 7}", f"i{n % 13}", 1.0, "2026-06-01T00:00:00Z")
        learner.observe(interaction, 0, n)
    learner.train_pending(flush=True)

    costs = publish_costs(learner, tmp_path / "store", repeats=2)

    assert costs["items"] == 13
    assert costs["training_state_mb"] > 0  # tables, optimizer slots and item-pair counts
    for part in ("candidate_ms", "training_state_ms", "artifact_ms"):
        assert costs[part] > 0
    assert costs["state_vs_artifact"] > 0
    stored = [path for path in (tmp_path / "store").rglob("*") if path.is_file()]
    assert stored == []  # each stored copy was deleted again, as a run keeps only a few
