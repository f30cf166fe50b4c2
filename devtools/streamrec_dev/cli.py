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

from streamrec_dev.servers import ServerError
from streamrec_dev.stack import LocalStack
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


if __name__ == "__main__":
    app()
