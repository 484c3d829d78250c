"""An ERP worker with clocks on it: where each process's time goes (Redis, SQL), for bench/e2e.py.

Run as a script (``python bench/worker_probe.py OUT_DIR -A consumers worker ...``): it wraps the
Redis client's send and read calls (a round trip is one send: a pipeline or a script is one) and
SQLAlchemy's cursor executes and commits, then hands over to ``celery``. Every process (the main
one, each pool process) writes its totals to ``OUT_DIR/<pid>.json`` after each task (at most
every 0.2 s) and when it exits. Redis work is split by client: the ledger's (``ours``, built by
``consumers.components``) and everything else (kombu's broker traffic, task events). A bench tool
only: it patches libraries, which production code never does.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

# The script's folder is bench/: keep its modules (common, publish...) off the import path.
sys.path.pop(0)

import redis
import redis.connection
import sqlalchemy
from celery.signals import task_postrun, worker_process_init, worker_process_shutdown
from sqlalchemy import event

OUT = Path(sys.argv.pop(1))
# Counting round trips by command name costs a little parsing per send: asked for by the bench.
COMMANDS = os.environ.get("PROBE_COMMANDS") == "1"
_totals: dict[str, float] = {}
_lock = threading.Lock()
_last_write = [0.0]


def _add(name: str, seconds: float, count: int = 1) -> None:
    with _lock:
        _totals[name + "_s"] = _totals.get(name + "_s", 0.0) + seconds
        _totals[name + "_n"] = _totals.get(name + "_n", 0) + count


def _write(force: bool = False) -> None:
    now = time.monotonic()
    if not force and now - _last_write[0] < 0.2:
        return
    _last_write[0] = now
    with _lock:
        data = dict(_totals)
    data["cpu_s"] = sum(os.times()[:2])
    path = OUT / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


_send = redis.connection.AbstractConnection.send_packed_command
_read = redis.connection.AbstractConnection.read_response


def _kind(conn: Any) -> str:
    return "redis_ours" if getattr(conn, "_ours", False) else "redis_other"


def _names(command: Any) -> str:
    """The commands a packed send carries, by name (``GET``, ``EVALSHA``, ``MULTI+...``)."""
    chunks = command if isinstance(command, list) else [command]
    names = []
    for chunk in chunks:
        parts = bytes(chunk).split(b"\r\n")
        # *N, $len, NAME, ...: every command in the chunk starts with "*".
        for i, part in enumerate(parts):
            if part.startswith(b"*") and i + 2 < len(parts):
                names.append(parts[i + 2].decode(errors="replace").upper())
    return "+".join(names[:3]) + ("+..." if len(names) > 3 else "")


def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
    started = time.perf_counter()
    try:
        _send(self, command, check_health)  # type: ignore[no-untyped-call]
    finally:
        kind = _kind(self)
        _add(kind, time.perf_counter() - started)
        if COMMANDS:
            _add(f"cmd {kind} {_names(command)}", 0.0)


def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
    started = time.perf_counter()
    try:
        return _read(self, *args, **kwargs)
    finally:
        # Time only: the round trip was counted when it was sent.
        _add(_kind(self), time.perf_counter() - started, 0)


redis.connection.AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
redis.connection.AbstractConnection.read_response = read_response  # type: ignore[method-assign]

_sql_started = threading.local()


@event.listens_for(sqlalchemy.engine.Engine, "before_cursor_execute")
def _before(*_: Any) -> None:
    _sql_started.t = time.perf_counter()


@event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
def _after(*_: Any) -> None:
    _add("sql", time.perf_counter() - getattr(_sql_started, "t", time.perf_counter()))


_commit_impl = sqlalchemy.engine.Connection._commit_impl


def _timed_commit(self: Any) -> None:
    started = time.perf_counter()
    try:
        _commit_impl(self)
    finally:
        _add("sql", time.perf_counter() - started, 0)


sqlalchemy.engine.Connection._commit_impl = _timed_commit  # type: ignore[method-assign]

# The item path's ledger client: what a worker process's parts (consumers/components.py) build.
import consumers.components  # noqa: E402

_ledger_client = consumers.components.ledger_client


def _marked_client(*args: Any, **kwargs: Any) -> redis.Redis:
    client = _ledger_client(*args, **kwargs)
    pool = client.connection_pool
    make = pool.make_connection

    def make_connection() -> Any:
        conn = make()
        conn._ours = True  # type: ignore[attr-defined]
        return conn

    pool.make_connection = make_connection  # type: ignore[method-assign]
    return client


consumers.components.ledger_client = _marked_client


@task_postrun.connect(weak=False)  # type: ignore[untyped-decorator]
def _after_task(**_: Any) -> None:
    _add("tasks", 0.0)
    _write()


@worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
def _child_start(**_: Any) -> None:
    with _lock:
        _totals.clear()


@worker_process_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
def _child_end(**_: Any) -> None:
    _write(force=True)


def _start_ticker() -> None:
    threading.Thread(target=_ticker, daemon=True).start()


def _ticker() -> None:
    while True:
        time.sleep(0.2)
        _write(force=True)


if __name__ == "__main__":
    from celery.__main__ import main

    _start_ticker()
    os.register_at_fork(after_in_child=_start_ticker)
    sys.argv[0] = "celery"
    # Extra worker options a bench row asks for (a pool, a prefetch multiplier).
    sys.argv += os.environ.get("PROBE_WORKER_ARGS", "").split()
    main()
