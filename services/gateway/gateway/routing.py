"""The stable/canary split and the API-key check of the proxied routes.

The split is sticky: a user's place on [0, 1) is a hash of their id, and the user goes to the
canary when that place is below the canary's weight. So the same user always lands on the same
pool for a given weight (their recommendations do not flip between models from one request to
the next), and raising the weight only moves users from stable to canary, never back.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

STABLE = "stable"
CANARY = "canary"


@dataclass(frozen=True)
class Pool:
    variant: str  # STABLE or CANARY
    url: str


def place(user_id: str) -> float:
    """The user's fixed place on [0, 1): the first 8 bytes of sha256(user_id).

    A cryptographic hash rather than Python's ``hash()``, which is salted per process: every
    gateway replica, and every restart, must agree.
    """
    digest = hashlib.sha256(user_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Split:
    """Where a user's requests go, given the pools and the canary's weight."""

    def __init__(self, stable_url: str, canary_url: str | None, canary_weight: float) -> None:
        if not 0.0 <= canary_weight <= 1.0:
            raise ValueError(f"canary weight {canary_weight} is not in [0, 1]")
        self.stable = Pool(STABLE, stable_url)
        self.canary = Pool(CANARY, canary_url) if canary_url else None
        # Without a canary pool its weight means nothing: everything is stable.
        self.canary_weight = canary_weight if self.canary else 0.0

    def pool_for(self, user_id: str) -> Pool:
        if self.canary is not None and place(user_id) < self.canary_weight:
            return self.canary
        return self.stable


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_accepted(api_key: str | None, accepted_digests: list[str]) -> bool:
    """Whether ``api_key`` is one of the keys whose sha256 digests are accepted.

    The settings hold digests, never keys; the comparison is constant-time per digest.
    """
    if api_key is None:
        return False
    digest = key_digest(api_key)
    # No short-circuit: the time taken does not depend on which digest matched.
    matches = [hmac.compare_digest(digest, accepted) for accepted in accepted_digests]
    return any(matches)
