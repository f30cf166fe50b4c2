"""The validation gate: publish a candidate unless it is worse than the current version.

Both versions rank the same held-out events, so the comparison is paired: the per-event
differences cancel what makes one window easy and another hard, which an unpaired comparison of
two means on ~100 events cannot (its noise, about 0.025 NDCG@10 on ML-100K, is larger than any
sensible tolerance). The candidate is rejected only when the upper confidence bound of the mean
difference is below minus the tolerance: evidence of a regression, not a noisy window. A broken
model (a large, consistent drop) is still caught at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt
from streamrec_shared.schemas.control import ValidationPolicy

Decision = Literal["published", "rejected", "deferred"]


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    # Mean of candidate - current over the paired events, its standard error, and the upper
    # confidence bound the decision used (None without a current version to compare with).
    difference: float | None = None
    standard_error: float | None = None
    upper_bound: float | None = None

    def record(self) -> dict[str, float | str | None]:
        """What the registry keeps next to the metrics, whatever the decision."""
        return {
            "decision": self.decision,
            "difference": self.difference,
            "standard_error": self.standard_error,
            "upper_bound": self.upper_bound,
        }


def short_sample(policy: ValidationPolicy, events: int, final_batch: bool) -> Verdict | None:
    """The verdict on a sample of ``events`` held-out events too small to judge (deferred, or
    rejected at the end of a batch, which gets no more), else ``None``. A run asks before it
    builds a candidate: with a current version, nothing else could decide."""
    if events >= policy.min_events:
        return None
    return Verdict(
        "rejected" if final_batch else "deferred",
        f"{events} held-out events, the gate needs {policy.min_events}",
    )


def judge(
    policy: ValidationPolicy,
    candidate: npt.NDArray[np.float64],
    current: npt.NDArray[np.float64] | None,
    final_batch: bool,
) -> Verdict:
    """``candidate`` and ``current``: the policy's metric per held-out event, same events in
    the same order (``current`` is None for the first version of a spec)."""
    if current is None:
        return Verdict("published", "first version of this spec")
    if len(candidate) != len(current):
        raise ValueError("the gate compares the same events: lengths differ")
    events = len(candidate)
    short = short_sample(policy, events, final_batch)
    if short is not None:
        return short
    differences = candidate - current
    difference = float(differences.mean())
    standard_error = float(differences.std(ddof=1) / math.sqrt(events))
    upper = difference + NormalDist().inv_cdf(policy.confidence) * standard_error
    figures = (
        f"{policy.metric} {float(candidate.mean()):.4f} vs current {float(current.mean()):.4f}"
        f" on {events} events: difference {difference:+.4f} ± {standard_error:.4f} (SE),"
        f" {policy.confidence:.0%} upper bound {upper:+.4f}, tolerance {policy.tolerance}"
    )
    if upper < -policy.tolerance:
        return Verdict("rejected", f"worse: {figures}", difference, standard_error, upper)
    return Verdict("published", figures, difference, standard_error, upper)
