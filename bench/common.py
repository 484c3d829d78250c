"""What the benchmarks share: one table style, a Redis database of their own, realistic payloads.

Every bench's ``--redis`` defaults to ``BENCH_REDIS`` (else db 8) and ``--rabbitmq`` to
``BENCH_RABBITMQ`` (``bench/e2e.py``'s ``--postgres`` to ``BENCH_POSTGRES``):
``make bench BENCH_REDIS=redis://127.0.0.1:6379/1`` moves them all.

Every bench prints one table of figures measured side by side in the same run (a shared, busy
machine makes absolute numbers noisy; the ratios between rows are the result), and empties only
its own Redis database, before and after.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from contract.settings import Settings
from devtools.simulator.payloads import export_item, seeded_uuid

# db 8: the test suite takes dbs 9-15 (tests/conftest.py); a bench beside it empties none of them.
DEFAULT_REDIS = "redis://127.0.0.1:6379/8"
# The default virtual host, which the RabbitMQ tests take turns on (tests/support/serial.py); give
# the bench one of its own on a shared broker (bench/rabbit.py).
DEFAULT_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
TOKEN = "bench-token"
# The checkout, put on a started worker's PYTHONPATH.
ROOT = Path(__file__).resolve().parent.parent
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def bench_redis_url() -> str:
    """The Redis database every bench empties and uses: ``BENCH_REDIS``, else db 8."""
    return os.environ.get("BENCH_REDIS") or DEFAULT_REDIS


def bench_rabbitmq_url() -> str:
    """The RabbitMQ URL (and virtual host) the benches use: ``BENCH_RABBITMQ``, else the default."""
    return os.environ.get("BENCH_RABBITMQ") or DEFAULT_RABBITMQ


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()
) -> None:
    """Print one result table (first column left-aligned, figures right-aligned) and its notes."""
    table = Table()
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=120)
    console.print(title, style="bold", highlight=False)
    console.print(table)
    for note in notes:
        console.print(f"  {note}")
    console.print()


@contextmanager
def own_redis(url: str) -> Iterator[redis.Redis]:
    """The bench's Redis database, emptied before and after (no other database is touched)."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def sample_export_items(count: int, company_id: str, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` distinct ``ExportItemV3`` payloads from the simulator's own generator."""
    rng = random.Random(f"bench:{seed}")
    return [
        export_item(
            rng,
            seeded_uuid(rng),
            company_id,
            _EPOCH + timedelta(seconds=rng.randrange(365 * 86_400)),
            with_account=True,
            vendor_based=False,
        )
        for _ in range(count)
    ]


def rate(count: int, seconds: float) -> str:
    """A rate for the table: whole units per second."""
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of an ERP worker a benchmark starts against ``settings``' simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    env.update(
        PLEO_API_URL=settings.api_url,
        PLEO_API_TOKEN=TOKEN,
        REDIS_URL=settings.redis_url,
        ERP_DATABASE_URL=settings.erp_database_url,
        PLEO_REPORT_INTERVAL="0.5",
        # A benchmark's Redis is a throwaway (it is flushed): no persistence asked of it.
        PLEO_REDIS_EPHEMERAL="1",
        PYTHONPATH=str(ROOT),
    )
    return env
