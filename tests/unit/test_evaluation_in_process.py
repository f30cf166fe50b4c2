"""The evaluation's in-process arms as its background process runs them
(``benchmarks.evaluation.in_process_results``): made from their names, in the order given."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def evaluation_script_imported() -> Iterator[None]:
    # The script sets one thread per library in os.environ when imported: not for later tests.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.usefixtures("evaluation_script_imported")
def test_in_process_arms_are_made_by_name_in_the_child_in_the_order_given() -> None:
    from benchmarks.evaluation import in_process_results

    peers = ["popularity-online", "popularity-history"]
    results = in_process_results("synthetic", 1500, peers, with_model_arms=False)
    assert [result.arm for result in results] == peers
    assert all(result.dataset == "synthetic" and result.interactions == 1500 for result in results)
    assert all(result.scored > 0 for result in results)
