"""``streamrec``: the developer CLI (local stack, topics, demo stream)."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime

import httpx
import typer
from rich.console import Console
from rich.table import Table
from streamrec_shared.settings import RedisSettings, TopicSettings

from streamrec_dev.servers import ServerError
from streamrec_dev.stack import LocalStack, StackPorts
from streamrec_dev.synthetic import DriftingClickstream

app = typer.Typer(help="streamrec developer CLI.", no_args_is_help=True, add_completion=False)
console = Console()


@app.command()
def up(
    demo: bool = typer.Option(True, help="Also run the synthetic demo stream."),
    demo_rate: float = typer.Option(20.0, help="Demo events per second."),
) -> None:
    """Start Kafka, Redis, topics, every service and the demo stream (idempotent)."""
    stack = LocalStack(demo_rate=demo_rate)
    try:
        with console.status("starting (the first run resolves the Kafka jars with Maven)"):
            stack.up(demo=demo, progress=console.print)
    except ServerError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    _print_status(stack)
    ingest = stack.service("ingest").url
    trainer = stack.service("trainer").url
    inference = stack.service("inference").url
    console.print(
        "\nTry it:\n"
        f"  curl -s -X POST {ingest}/v1/events -H 'content-type: application/json' \\\n"
        '       -d \'{"user_id": "u1", "item_id": "i42", "type": "click"}\'\n'
        f"  curl -s '{inference}/v1/recommendations?user_id=u1&k=5'\n"
        f"  curl -s {trainer}/v1/specs/default/versions/latest   # the demo model, retrained live\n"
        f"Console (gateway): {stack.service('gateway').url}/   API docs: {ingest}/docs,"
        f" {trainer}/docs, {inference}/docs\n"
        "Stop everything with: make down"
    )


@app.command()
def down() -> None:
    """Stop exactly what `up` started (by PID file), in reverse order."""
    LocalStack().down(progress=console.print)


def _print_status(stack: LocalStack) -> None:
    table = Table("component", "state", "pid", "address", "log")
    for server in stack.all():
        pid = server.pid()
        if server.name == "kafka":
            address = stack.kafka.bootstrap
        elif server.name == "redis":
            address = stack.redis.url
        elif server.port:
            address = f"http://127.0.0.1:{server.port}"
        else:
            address = "-"
        state = "[green]running[/green]" if pid else "[red]stopped[/red]"
        table.add_row(server.name, state, str(pid or "-"), address, str(server.log_file))
    console.print(table)


@app.command()
def status() -> None:
    """Show what runs, where it listens and where it logs."""
    _print_status(LocalStack())


@app.command()
def topics() -> None:
    """Create the platform's topics on the local broker (idempotent)."""
    for name, state in LocalStack().create_topics().items():
        console.print(f"{name}: {state}")


@app.command()
def dockerfiles() -> None:
    """Write services/*/Dockerfile from infra/docker/service.Dockerfile.in."""
    from streamrec_dev.dockerfiles import write_all

    changed = write_all()
    for path in changed:
        console.print(f"wrote {path.relative_to(path.parents[2])}")
    if not changed:
        console.print("all Dockerfiles up to date")


@app.command()
def demo(
    ingest_url: str = typer.Option("http://127.0.0.1:8001", help="Ingest base URL."),
    rate: float = typer.Option(20.0, help="Events per second."),
    events: int = typer.Option(0, help="Stop after this many events (0: run until stopped)."),
) -> None:
    """Post the synthetic drifting clickstream to ingest at a steady rate."""
    asyncio.run(_demo(ingest_url, rate, events))


async def _demo(ingest_url: str, rate: float, limit: int) -> None:
    stream = DriftingClickstream(events=10**9)
    interval = 1.0 / rate
    sent = 0
    async with httpx.AsyncClient(base_url=ingest_url, timeout=10) as client:
        next_at = time.monotonic()
        for event in itertools.islice(stream, limit or None):
            body = {
                "user_id": event.user_id,
                "item_id": event.item_id,
                "type": event.type,
                # Demo events happen now; the generator's clock only orders them.
                "timestamp": datetime.now(UTC).isoformat(),
            }
            try:
                response = await client.post("/v1/events", json=body)
                if response.status_code >= 500:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            except httpx.HTTPError:
                await asyncio.sleep(1.0)
            sent += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    console.print(f"demo: sent {sent} events")


# --- evaluation (issue 5): in-process peers and the prequential replay through the stack ---


_DATASET_HELP = "synthetic (the drifting stream), ml-100k (../shared/datasets), or a file path."
_FORMAT_HELP = "auto, ml-100k (u.data), movielens-csv (ratings.csv), csv (named columns)."


@app.command()
def evaluate(
    dataset: str = typer.Option("synthetic", help=_DATASET_HELP),
    data_format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    user_column: str = typer.Option("user_id", help="csv: the user column."),
    item_column: str = typer.Option("item_id", help="csv: the item column."),
    timestamp_column: str = typer.Option("timestamp", help="csv: unix seconds or ISO 8601."),
    value_column: str | None = typer.Option(None, help="csv: an optional rating column."),
    arms: str = typer.Option("peers", help="'peers' (every in-process peer) or peer names, a,b."),
    limit: int = typer.Option(0, help="Only the first N interactions in time order (0: all)."),
    out: str | None = typer.Option(
        None, help="Results folder [benchmarks/results/evaluation/<dataset>]."
    ),
) -> None:
    """Prequential evaluation of the in-process peers: table, JSON and plots."""
    from pathlib import Path

    from streamrec_dev.evaluation.report import tables
    from streamrec_dev.evaluation.runner import (
        describe_dataset,
        evaluate_and_report,
        load_limited,
        peer_arms,
    )

    try:
        loaded = load_limited(
            dataset, data_format, user_column, item_column, timestamp_column, value_column, limit
        )
    except (OSError, ValueError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    console.print(describe_dataset(loaded))
    try:
        chosen = peer_arms(None if arms == "peers" else arms.split(","))
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    results, folder = evaluate_and_report(
        loaded, chosen, out_dir=Path(out) if out else None, console=console
    )
    typer.echo(tables(results))
    console.print(f"wrote {folder}")


@app.command()
def replay(
    dataset: str = typer.Option("synthetic", help=_DATASET_HELP),
    data_format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    user_column: str = typer.Option("user_id", help="csv: the user column."),
    item_column: str = typer.Option("item_id", help="csv: the item column."),
    timestamp_column: str = typer.Option("timestamp", help="csv: unix seconds or ISO 8601."),
    value_column: str | None = typer.Option(None, help="csv: an optional rating column."),
    ingest_url: str = typer.Option("http://127.0.0.1:8001", help="Ingest base URL."),
    inference_url: str = typer.Option("http://127.0.0.1:8003", help="Inference base URL."),
    features_redis: str = typer.Option(
        f"redis://127.0.0.1:{StackPorts().redis}/0",
        help="The stack's Redis: ask for a user only once the feature updater has applied their"
        " last event, by the positions it stores there ('' to not wait).",
    ),
    features_prefix: str = typer.Option(
        RedisSettings.model_fields["key_prefix"].default, help="The feature store's key prefix."
    ),
    events_topic: str = typer.Option(
        TopicSettings.model_fields["events"].default, help="The topic the feature updater applies."
    ),
    rate: float = typer.Option(0.0, help="Evaluated events per second (0: as fast as possible)."),
    arm: str = typer.Option("stack", help="Name of this arm in the results."),
    id_prefix: str = typer.Option("", help="Prefix for user and item ids (isolates runs)."),
    wait_model: bool = typer.Option(
        True, help="After posting the history, wait for inference to serve a new model version."
    ),
    ready_timeout: float = typer.Option(600.0, help="How long to wait for that version (s)."),
    limit: int = typer.Option(0, help="Only the first N interactions in time order (0: all)."),
    out: str | None = typer.Option(
        None, help="Results folder [benchmarks/results/evaluation/<dataset>/replay-<arm>]."
    ),
) -> None:
    """Replay a time-ordered file through the real HTTP API, scoring it test-then-train."""
    from pathlib import Path

    from streamrec_dev.evaluation.protocol import ProtocolConfig, split_point
    from streamrec_dev.evaluation.protocol import evaluate as run_protocol
    from streamrec_dev.evaluation.replay import (
        AppliedPositions,
        HttpFeed,
        HttpRanker,
        HttpRecommender,
        ReplayError,
        wait_for_new_model,
    )
    from streamrec_dev.evaluation.report import RESULTS_DIR, tables, write_report
    from streamrec_dev.evaluation.runner import describe_dataset, load_limited, progress_bar

    try:
        loaded = load_limited(
            dataset, data_format, user_column, item_column, timestamp_column, value_column, limit
        )
    except (OSError, ValueError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    console.print(describe_dataset(loaded))
    config = ProtocolConfig()
    total = len(loaded.interactions)
    try:
        ready = wait_for_new_model(inference_url, ready_timeout) if wait_model else None
    except (httpx.HTTPError, ValueError) as error:
        console.print(f"[red]inference at {inference_url} does not answer: {error}[/red]")
        raise typer.Exit(1) from None
    positions = (
        AppliedPositions(features_redis, features_prefix, events_topic) if features_redis else None
    )
    with progress_bar(console) as progress:
        history = progress.add_task("history -> ingest", total=split_point(total, 0.5))
        scoring = progress.add_task(f"{arm}: test-then-train", total=total)
        feed = HttpFeed(
            ingest_url,
            ready=ready,
            rate=rate or None,
            id_prefix=id_prefix,
            history_progress=lambda count: progress.advance(history, count),
            features=positions,
        )
        stack = HttpRecommender(feed, HttpRanker(inference_url, id_prefix=id_prefix))
        try:
            result = run_protocol(
                arm,
                stack,
                loaded.interactions,
                dataset=loaded.name,
                config=config,
                progress=lambda count: progress.advance(scoring, count),
            )
        except ReplayError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(1) from None
        finally:
            stack.close()
            if positions is not None:
                positions.close()
    folder = write_report(
        [result],
        loaded.name,
        loaded.source,
        Path(out) if out else RESULTS_DIR / loaded.name / f"replay-{arm}",
        extra={"replay": {"ingest_url": ingest_url, "inference_url": inference_url, "rate": rate}},
        marks=loaded.marks,
    )
    typer.echo(tables([result]))
    console.print(f"wrote {folder}")


if __name__ == "__main__":
    app()
