"""Platform settings helpers: isolated topic sets and their environment form."""

from __future__ import annotations

import pytest
from streamrec_shared.settings import TopicSettings


def test_isolated_topics_rename_every_topic_and_keep_the_layout() -> None:
    base = TopicSettings(events_partitions=3, default_partitions=1)
    isolated = base.isolated("t1")
    assert isolated.events == "events-t1"
    assert isolated.events_dlq == "events.dlq-t1"
    assert isolated.rec_responses == "rec.responses-t1"
    assert (isolated.events_partitions, isolated.default_partitions) == (3, 1)
    names = [isolated.events, isolated.control, isolated.events_dlq, isolated.impressions,
             isolated.rec_requests, isolated.rec_responses]  # fmt: skip
    assert len(set(names)) == 6
    assert all(name.endswith("-t1") for name in names)
    assert base.events == "events"  # a copy: the original is unchanged


def test_environment_round_trips_through_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    topics = TopicSettings(events_partitions=4).isolated("x")
    for name, value in topics.environment().items():
        monkeypatch.setenv(name, value)
    assert TopicSettings() == topics


def test_trainer_process_tuning_sets_the_gil_switch_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from trainer.config import TrainerSettings, tune_process

    before = sys.getswitchinterval()
    monkeypatch.setenv("STREAMREC_TRAINER_GIL_SWITCH_INTERVAL_MS", "2")
    try:
        tune_process(TrainerSettings())
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)
