"""Recommendation quality of the in-process peers on the fixed prequential protocol (issue 5).

For each dataset (ML-100K when ``../shared/datasets/ml-100k/u.data`` is there, and the synthetic
drifting stream): the first 50 % in time order is history, every later interaction is scored
test-then-train (top-20 with touched items excluded; HR@10/20, NDCG@10/20; 5 % windows), for
each peer: popularity (history / online), implicit ALS (frozen / user fold-in), item
co-occurrence over the last 10 items (counts, and a cosine variant), River BiasedMF.

The same-run baseline is popularity from the history. Writes, per dataset,
``benchmarks/results/evaluation/<dataset>/`` (``results.md``, ``results.json``, one JSON per
arm, ``hr10_over_time.png``, ``final.png``). About a minute on 2 cores.
Run: ``make bench-eval`` (or ``.venv/bin/python benchmarks/evaluation.py --help``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# One BLAS thread: the per-user solves and matrix-vector products are small (and implicit warns).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from streamrec_dev.evaluation.data import load_dataset, ml_100k_path  # noqa: E402
from streamrec_dev.evaluation.peers import PEERS  # noqa: E402
from streamrec_dev.evaluation.report import RESULTS_DIR, markdown_table  # noqa: E402
from streamrec_dev.evaluation.runner import evaluate_and_report, peer_arms  # noqa: E402

BASELINE = "popularity-history"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--datasets",
        default="ml-100k,synthetic",
        help="comma list: ml-100k, synthetic, or paths (ml-100k is skipped when absent)",
    )
    parser.add_argument("--arms", default=",".join(PEERS), help="comma list of peers")
    parser.add_argument(
        "--no-model-arms",
        action="store_true",
        help="leave out the product's model in process (benchmarks/model_arms.py)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results root")
    options = parser.parse_args()
    console = Console()
    arms = peer_arms(options.arms.split(","))
    if BASELINE not in arms:
        arms = {BASELINE: PEERS[BASELINE], **arms}
    if not options.no_model_arms:
        from benchmarks.model_arms import MODEL_ARMS

        arms = {**arms, **MODEL_ARMS}
    for name in options.datasets.split(","):
        if name == "ml-100k" and not ml_100k_path().is_file():
            console.print(f"[yellow]ml-100k skipped: {ml_100k_path()} is not there[/yellow]")
            continue
        dataset = load_dataset(name)
        console.rule(f"{dataset.name}: {len(dataset.interactions):,} interactions")
        results, folder = evaluate_and_report(
            dataset, arms, out_dir=options.out / dataset.name, console=console
        )
        baseline = next(r for r in results if r.arm == BASELINE).metrics["hr@10"]
        print(markdown_table(results))
        for result in results:
            ratio = result.metrics["hr@10"] / baseline if baseline else float("nan")
            print(f"  {result.arm:28s} HR@10 {ratio:5.2f}x {BASELINE}")
        print(f"wrote {folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
