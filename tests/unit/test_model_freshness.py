"""The model-freshness benchmark's attribution of events to versions (no servers)."""

from __future__ import annotations

import numpy as np

from benchmarks.model_freshness import Acks, Announcement, covering_versions

# One partition; event k is acknowledged at time k with offset k; version n (from 0) is
# announced at 1.5 + 2n and covers offsets below 2n + 2.
ACKS = Acks(times=[float(k) for k in range(10)], partitions=[0] * 10, offsets=list(range(10)))
PUBLISHED = [Announcement(1.5 + 2 * n, n + 1, {0: 2 * n + 2}) for n in range(6)]


def test_without_held_out_events_the_conservative_version_is_the_first_covering_one() -> None:
    first, conservative = covering_versions(ACKS, PUBLISHED, holdout_rate=0.0, seed=1)
    assert first.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert conservative.tolist() == first.tolist()


def test_a_fixed_sample_trains_held_out_events_into_the_next_version() -> None:
    first, conservative = covering_versions(ACKS, PUBLISHED, holdout_rate=1.0, seed=1)
    assert conservative.tolist() == (first + 1).tolist()


def test_a_rolling_sample_trains_them_after_the_first_version_past_their_wait() -> None:
    first, conservative = covering_versions(ACKS, PUBLISHED, 1.0, seed=1, hold_s=4.0)
    # Event 0 (202 at 0 s) waits until 4 s: the first version announced after that is index 2
    # (5.5 s), so the one trained on it is index 3 (without the wait: index 1). From event 6
    # on, that would be a version after the last one announced: not covered (-1).
    expected = [3, 3, 4, 4, 5, 5, -1, -1, -1, -1]
    assert conservative.tolist() == expected
    assert np.all((conservative > first) | (conservative == -1))
