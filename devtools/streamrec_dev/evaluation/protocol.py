"""The fixed prequential protocol every arm is scored on, in-process peers and the stack alike.

1. Sort by timestamp (stable; the readers do). The first ``history_fraction`` (50 %) is history:
   the feed's ``fit_history`` gets all of it before any evaluation.
2. Every later interaction (u, i), in order, is *test-then-train*: ask every ranker
   ``recommend(u, K=20, exclude=items u touched so far)``, score each list, then the feed
   ``observe``s the interaction.
3. Scoring is full ranking over the whole catalogue the recommender knows, expressed through its
   top-K list: a hit at K if i is among the first K items, NDCG@K = 1 / log2(position + 2) (0 for a
   miss), so a target the recommender does not know, or ranks below K, is a miss.
   HR@10/20 and NDCG@10/20 are averaged over scored interactions
   (``streamrec_shared.ranking.rank_metrics``: the trainer's gate uses the same function).
4. A repeat (u touches an item they touched before) cannot be scored, since touched items are
   excluded: it is observed but not scored, as in the trainer's held-out sample. MovieLens has
   none; the synthetic stream has many and reports their count.
5. The evaluated part is also cut into ``windows`` (20: 5 % each, by stream position) for the
   curve over time, split into users with history (seen in the first half) and cold users, and
   split by how many items the user had touched when asked (``TOUCHED_BUCKETS``): on ML-100K
   that is where the misses are (heavy raters' next items are the hardest to guess).

An arm is a feed (what the stream goes into: ``fit_history``, ``observe``) and a ranker (what
answers: ``recommend``). An in-process peer is both (a ``Recommender``, ``evaluate``); arms that
differ only in what serves one shared stream (the stack arms) are several rankers on one feed
(``evaluate_shared``), and each is scored exactly as if it had been evaluated alone.

The protocol cleans what a ranker returns (drops excluded items and duplicates, truncates to K),
so a remote service whose features lag a little is scored exactly like a peer.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol, runtime_checkable

import numpy as np
import orjson
from streamrec_shared.ranking import rank_metrics

from streamrec_dev.evaluation.data import Interaction

PROGRESS_EVERY = 500
# How long ``ask_at_once`` waits for any answer before it reads the rest in turn.
ANSWER_WAIT_S = 1.0
# Lower bounds of the "items touched before" buckets: none, 1-4, 5-19, 20-49, 50-99, 100-199,
# 200 and more.
TOUCHED_BUCKETS = (0, 1, 5, 20, 50, 100, 200)


@runtime_checkable
class Feed(Protocol):
    """What the stream goes into: the history once, then each evaluated interaction in order."""

    def fit_history(self, interactions: Sequence[Interaction]) -> None: ...

    def observe(self, interaction: Interaction) -> None: ...


@runtime_checkable
class Ranker(Protocol):
    """What an arm answers; ``exclude`` is the protocol's own set: read it, never keep it."""

    def recommend(self, user: str, k: int, exclude: set[str]) -> list[str]: ...


@runtime_checkable
class SplitRanker(Ranker, Protocol):
    """A remote ranker whose question and answer are two calls, so that one thread asks every
    arm at once and reads each answer as it comes (``evaluate_shared(concurrent=True)``): the
    replay shares the machine with the services it measures, and a thread per arm cost it
    twice the CPU (futures, locks and the GIL handed between seven threads at every question).
    """

    def ask(self, user: str, k: int, exclude: set[str]) -> None: ...

    def fileno(self) -> int:
        """Readable once the answer is in; -1 when ``answer`` will not wait."""
        ...

    def answer(self) -> list[str]: ...


@runtime_checkable
class Recommender(Feed, Ranker, Protocol):
    """An arm that is its own feed, as every in-process peer is."""


@dataclass(frozen=True)
class ProtocolConfig:
    history_fraction: float = 0.5
    k: int = 20
    cutoffs: tuple[int, ...] = (10, 20)
    windows: int = 20
    score_repeats: bool = False  # score repeats (always misses) instead of skipping them

    def __post_init__(self) -> None:
        if not 0.0 <= self.history_fraction < 1.0:
            raise ValueError("history_fraction must be in [0, 1)")
        if max(self.cutoffs) > self.k:
            raise ValueError("every cutoff must be <= k")
        if self.windows < 1:
            raise ValueError("windows must be >= 1")


@dataclass
class WindowResult:
    index: int
    start: int  # stream positions [start, end) of the whole stream
    end: int
    first_timestamp: float
    last_timestamp: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class TouchedBucket:
    """The scored interactions of users who had touched ``low``..``high`` items (None: no
    upper bound) when asked."""

    low: int
    high: int | None
    scored: int
    metrics: dict[str, float]

    @property
    def label(self) -> str:
        if self.high is None:
            return f"{self.low}+"
        return str(self.low) if self.high == self.low else f"{self.low}-{self.high}"


@dataclass
class EvaluationResult:
    arm: str
    dataset: str
    config: ProtocolConfig
    interactions: int
    history: int
    evaluated: int  # interactions after the history
    scored: int  # evaluated minus skipped repeats
    repeats: int  # interactions with an item the user touched before
    unknown_targets: int  # scored targets that no earlier interaction mentioned (new items)
    cold_scored: int  # scored interactions of users absent from the history
    metrics: dict[str, float]
    cold_metrics: dict[str, float]
    warm_metrics: dict[str, float]
    windows: list[WindowResult]
    fit_s: float
    evaluate_s: float
    recommend_s: float  # total time inside recommend()
    extra: dict[str, Any] = field(default_factory=dict)
    by_touched: list[TouchedBucket] = field(default_factory=list)  # empty in older results

    @property
    def runtime_s(self) -> float:
        return self.fit_s + self.evaluate_s

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["runtime_s"] = self.runtime_s
        return data

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        data = dict(data)
        data.pop("runtime_s", None)
        config = dict(data.pop("config"))
        config["cutoffs"] = tuple(config["cutoffs"])
        windows = [WindowResult(**window) for window in data.pop("windows")]
        by_touched = [TouchedBucket(**bucket) for bucket in data.pop("by_touched", [])]
        return cls(config=ProtocolConfig(**config), windows=windows, by_touched=by_touched, **data)


def clean_top_k(recommended: Sequence[str], exclude: set[str], k: int) -> list[str]:
    """What the protocol scores: excluded items and duplicates dropped, the first ``k`` kept."""
    kept: list[str] = []
    taken: set[str] = set()
    for item in recommended:
        if item in exclude or item in taken:
            continue
        kept.append(item)
        taken.add(item)
        if len(kept) == k:
            break
    return kept


def split_point(count: int, history_fraction: float) -> int:
    return int(count * history_fraction)


def evaluate(
    arm: str,
    recommender: Recommender,
    interactions: Sequence[Interaction],
    *,
    dataset: str = "",
    config: ProtocolConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvaluationResult:
    """Run the protocol for one arm that is its own feed (every in-process peer)."""
    return evaluate_shared(
        recommender,
        {arm: recommender},
        interactions,
        dataset=dataset,
        config=config,
        progress=progress,
    )[0]


def evaluate_shared(
    feed: Feed,
    rankers: Mapping[str, Ranker],
    interactions: Sequence[Interaction],
    *,
    dataset: str = "",
    config: ProtocolConfig | None = None,
    progress: Callable[[int], None] | None = None,
    before_asking: Callable[[str], None] | None = None,
    concurrent: bool = False,
) -> list[EvaluationResult]:
    """Run the protocol once for several arms that see the same stream, one result per ranker.

    ``feed`` gets the history and each interaction once; before each scored interaction every
    ranker is asked the same question and scored on its own answer, exactly as if it had been
    evaluated alone. ``before_asking`` runs with the user before the rankers are asked (where a
    remote feed waits until the stack has applied that user's last event); ``concurrent`` asks
    the rankers at once (remote services answer in parallel): from this thread when every one
    is a ``SplitRanker`` (``ask_at_once``), else one thread each. ``progress`` is
    called with the number of interactions advanced. A result's ``extra`` holds the feed's
    ``stats()`` (the same in every result) and then its ranker's, when they have one.
    """
    config = config or ProtocolConfig()
    names = list(rankers)
    total = len(interactions)
    split = split_point(total, config.history_fraction)
    history = interactions[:split]

    started = time.perf_counter()
    feed.fit_history(history)
    fit_s = time.perf_counter() - started
    if progress:
        progress(split)

    touched: dict[str, set[str]] = {}
    for row in history:
        touched.setdefault(row.user, set()).add(row.item)
    warm_users = set(touched)
    catalogue = {row.item for row in history}

    evaluated = total - split
    ranks = {name: np.full(evaluated, np.inf) for name in names}
    recommend_s = dict.fromkeys(names, 0.0)
    scored = np.zeros(evaluated, dtype=bool)
    cold = np.zeros(evaluated, dtype=bool)
    touched_before = np.zeros(evaluated, dtype=np.int64)
    unknown_targets = 0
    repeats = 0
    k = config.k
    clock = time.perf_counter

    def ask(name: str, user: str, seen: set[str]) -> tuple[list[str], float]:
        asked = clock()
        recommended = rankers[name].recommend(user, k, seen)
        return recommended, clock() - asked

    split_rankers = {
        name: ranker for name, ranker in rankers.items() if isinstance(ranker, SplitRanker)
    }
    split_asking = concurrent and len(split_rankers) == len(names)
    pool = ThreadPoolExecutor(len(names)) if concurrent and not split_asking else None
    started = clock()
    try:
        for position in range(evaluated):
            row = interactions[split + position]
            seen = touched.get(row.user)
            if seen is None:
                seen = touched[row.user] = set()
            repeat = row.item in seen
            repeats += repeat
            if not repeat or config.score_repeats:
                if before_asking:
                    before_asking(row.user)
                if split_asking:
                    answered = ask_at_once(split_rankers, row.user, k, seen)
                    answers = [answered[name] for name in names]
                elif pool is None:
                    answers = [ask(name, row.user, seen) for name in names]
                else:
                    answers = list(pool.map(partial(ask, user=row.user, seen=seen), names))
                for name, (recommended, seconds) in zip(names, answers, strict=True):
                    recommend_s[name] += seconds
                    top = clean_top_k(recommended, seen, k)
                    if row.item in top:
                        ranks[name][position] = top.index(row.item)
                scored[position] = True
                cold[position] = row.user not in warm_users
                touched_before[position] = len(seen)
                if row.item not in catalogue:
                    unknown_targets += 1
            feed.observe(row)
            seen.add(row.item)
            catalogue.add(row.item)
            if progress and (position + 1) % PROGRESS_EVERY == 0:
                progress(PROGRESS_EVERY)
    finally:
        if pool is not None:
            pool.shutdown()
    evaluate_s = clock() - started
    if progress and evaluated % PROGRESS_EVERY:
        progress(evaluated % PROGRESS_EVERY)

    bounds = [round(evaluated * w / config.windows) for w in range(config.windows + 1)]
    spans = [(index, bounds[index], bounds[index + 1]) for index in range(config.windows)]
    spans = [(index, low, high) for index, low, high in spans if high > low]
    bucket_of = np.searchsorted(TOUCHED_BUCKETS, touched_before, side="right") - 1
    bucket_bounds = [
        (index, low, TOUCHED_BUCKETS[index + 1] - 1 if index + 1 < len(TOUCHED_BUCKETS) else None)
        for index, low in enumerate(TOUCHED_BUCKETS)
    ]
    feed_stats = _stats(feed)
    results = []
    for name in names:
        arm_ranks = ranks[name]
        windows = [
            WindowResult(
                index=index,
                start=split + low,
                end=split + high,
                first_timestamp=interactions[split + low].timestamp,
                last_timestamp=interactions[split + high - 1].timestamp,
                metrics=rank_metrics(arm_ranks[low:high][scored[low:high]], config.cutoffs),
            )
            for index, low, high in spans
        ]
        results.append(
            EvaluationResult(
                arm=name,
                dataset=dataset,
                config=config,
                interactions=total,
                history=split,
                evaluated=evaluated,
                scored=int(scored.sum()),
                repeats=repeats,
                unknown_targets=unknown_targets,
                cold_scored=int(cold.sum()),
                metrics=rank_metrics(arm_ranks[scored], config.cutoffs),
                cold_metrics=rank_metrics(arm_ranks[scored & cold], config.cutoffs),
                warm_metrics=rank_metrics(arm_ranks[scored & ~cold], config.cutoffs),
                windows=windows,
                fit_s=fit_s,
                evaluate_s=evaluate_s,
                recommend_s=recommend_s[name],
                extra={**feed_stats, **_stats(rankers[name])},
                by_touched=[
                    TouchedBucket(
                        low=low,
                        high=high,
                        scored=int(in_bucket.sum()),
                        metrics=rank_metrics(arm_ranks[in_bucket], config.cutoffs),
                    )
                    for index, low, high in bucket_bounds
                    if (in_bucket := scored & (bucket_of == index)).any()
                ],
            )
        )
    return results


def ask_at_once(
    rankers: Mapping[str, SplitRanker], user: str, k: int, exclude: set[str]
) -> dict[str, tuple[list[str], float]]:
    """Every ranker's answer and its seconds from question to answer: all asked first, each
    answer read as it comes in."""
    clock = time.perf_counter
    asked: dict[str, float] = {}
    for name, ranker in rankers.items():
        asked[name] = clock()
        ranker.ask(user, k, exclude)
    answers: dict[str, tuple[list[str], float]] = {}
    waiting: dict[int, str] = {}
    for name, ranker in rankers.items():
        descriptor = ranker.fileno()
        if descriptor < 0:
            answers[name] = (ranker.answer(), clock() - asked[name])
        else:
            waiting[descriptor] = name
    while waiting:
        ready, _, _ = select.select(list(waiting), [], [], ANSWER_WAIT_S)
        # None in time: read the rest in turn, each under its client's own timeout and retries.
        for descriptor in ready or list(waiting):
            name = waiting.pop(descriptor)
            answers[name] = (rankers[name].answer(), clock() - asked[name])
    return answers


def _stats(part: object) -> dict[str, Any]:
    """What a feed or ranker reports about itself (``stats()``), when it does."""
    stats = getattr(part, "stats", None)
    return dict(stats()) if callable(stats) else {}
