"""A synthetic clickstream with taste drift, for demos and for runs without MovieLens.

Items belong to topics; each user prefers one topic and picks items from it (popular ones more
often), with some exploration. Halfway through the stream a share of users switch topic (taste
drift), and new items launch throughout, so a recommender that does not learn online falls behind.
Deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SyntheticEvent:
    user_id: str
    item_id: str
    type: str
    timestamp: float  # unix seconds


@dataclass(frozen=True)
class DriftingClickstream:
    users: int = 500
    topics: int = 12
    initial_items: int = 600
    launched_items: int = 200  # new items appearing over the stream
    events: int = 20_000
    drift_at: float = 0.5  # fraction of the stream where tastes shift
    drifting_users: float = 0.6
    exploration: float = 0.1
    start_time: float = 1_700_000_000.0
    seconds_per_event: float = 1.0
    seed: int = 7

    def __iter__(self) -> Iterator[SyntheticEvent]:
        rng = random.Random(self.seed)  # noqa: S311 - reproducible simulation, not security
        catalogue: list[list[int]] = [[] for _ in range(self.topics)]
        next_item = 0
        for _ in range(self.initial_items):
            catalogue[next_item % self.topics].append(next_item)
            next_item += 1
        taste = [rng.randrange(self.topics) for _ in range(self.users)]
        drifters = set(rng.sample(range(self.users), int(self.users * self.drifting_users)))
        launch_every = max(1, self.events // max(1, self.launched_items))
        drift_event = int(self.events * self.drift_at)
        types = ("view", "view", "view", "click", "click", "add_to_cart", "purchase")
        for n in range(self.events):
            if n == drift_event:
                for user in drifters:
                    taste[user] = (taste[user] + 1 + rng.randrange(self.topics - 1)) % self.topics
            if n % launch_every == 0 and next_item < self.initial_items + self.launched_items:
                # New items go to the front of their topic: they are "hot" when they launch.
                catalogue[next_item % self.topics].insert(0, next_item)
                next_item += 1
            user = rng.randrange(self.users)
            topic = taste[user] if rng.random() > self.exploration else rng.randrange(self.topics)
            items = catalogue[topic]
            # Zipf-like preference for the front of the topic's list.
            rank = min(len(items) - 1, int(rng.paretovariate(1.2)) - 1)
            yield SyntheticEvent(
                user_id=f"u{user}",
                item_id=f"i{items[rank]}",
                type=rng.choice(types),
                timestamp=self.start_time + n * self.seconds_per_event,
            )
