"""The product's model as in-process arms (``benchmarks.model_arms``): the history fit they
share leaves each arm's learner exactly where a fit of its own would have."""

from __future__ import annotations

import dataclasses

import numpy as np
from streamrec_dev.evaluation.data import synthetic
from streamrec_dev.synthetic import DriftingClickstream
from streamrec_shared.models.item_pooling import ItemPoolingWeights
from streamrec_shared.schemas.events import Interaction as Event
from trainer.learner import Learner

from benchmarks.model_arms import HYPERPARAMETERS, HistoryFit, PoolingArm

EPOCHS = 2


def events(seed: int, count: int) -> list[Event]:
    stream = DriftingClickstream(events=count, users=30, initial_items=50, seed=seed)
    return [
        Event(row.user, row.item, 1.0, str(row.timestamp)) for row in synthetic(stream).interactions
    ]


def fitted_alone(history: list[Event]) -> Learner:
    """The batch fit as a model arm did it before the fit was shared."""
    learner = Learner(HYPERPARAMETERS)
    for offset, event in enumerate(history):
        learner.observe(event, 0, offset)
    learner.train_pending(flush=True)
    learner.train_epochs(EPOCHS - 1, seed=HYPERPARAMETERS.seed)
    return learner


def assert_same_weights(
    first: Learner | ItemPoolingWeights, second: Learner | ItemPoolingWeights
) -> None:
    def weights(of: Learner | ItemPoolingWeights) -> dict[str, object]:
        return dataclasses.asdict(of.candidate() if isinstance(of, Learner) else of)

    mine, theirs = weights(first), weights(second)
    assert mine.keys() == theirs.keys()
    for name, value in mine.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(theirs[name]), err_msg=name)


def test_a_shared_fit_continues_exactly_as_a_fit_of_its_own() -> None:
    stream = events(seed=1, count=500)
    history, later = stream[:300], stream[300:]
    alone = fitted_alone(history)
    fit = HistoryFit(HYPERPARAMETERS, EPOCHS)
    shared = fit.learner(history)
    assert_same_weights(shared, alone)
    assert_same_weights(fit.weights(history), alone.candidate())  # what the frozen arms get
    assert fit.fits == 1
    # Then both learn the same stream: optimizer slots, replay sample and random draws must
    # have come through the copy for the steps to match.
    for offset, event in enumerate(later, start=len(history)):
        alone.observe(event, 0, offset)
        shared.observe(event, 0, offset)
    alone.train_pending(flush=True)
    shared.train_pending(flush=True)
    assert_same_weights(shared, alone)


def test_arms_share_one_fit_per_history() -> None:
    fit = HistoryFit(HYPERPARAMETERS, EPOCHS)
    first = synthetic(DriftingClickstream(events=200, users=20, initial_items=40, seed=1))
    second = synthetic(DriftingClickstream(events=200, users=20, initial_items=40, seed=2))
    for dataset in (first, first, second, second):
        PoolingArm(False, None, fit).fit_history(dataset.interactions)
    assert fit.fits == 2
