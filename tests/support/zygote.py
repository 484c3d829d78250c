"""Celery workers forked from a process that has already imported them: the suite's CPU saver.

A test's ``celery -A consumers worker`` spends ~0.8 s of its ~0.9 s start importing Celery, kombu
and our code, and the suite starts well over a hundred of them on two cores. A *zygote* (one per
pytest process, started on first use) imports all that once; each worker is then a fork of it that
sets its own environment, working directory and log file and runs Celery's real command line
(``celery.__main__.main``) with the same arguments: the same worker, ready in a fraction of the
CPU. Importing reads no setting (``test_importing_the_task_modules_reads_no_setting``), so a forked
worker is configured from its own environment exactly as a fresh one is.

A worker is only forked when a fresh interpreter would import the same code the zygote holds: our
checkout as the working directory and the only ``PYTHONPATH`` entry, and no
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client reads it when imported). Anything else (an old
checkout, an adapter plugin on its own path, a metrics worker, the recording app, which reads
its settings when imported) starts as a
plain subprocess, as does every worker when ``PYTEST_ZYGOTE=0``.

The worker is the zygote's child, not the test's: ``ForkedWorker`` is the ``Popen`` a test
holds, asking the zygote for its exit status. Signals go straight to the worker (its own session,
so ``os.killpg(pid)`` reaches its pool as for a ``start_new_session`` subprocess).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.02
# What a worker imports before it takes a message; the zygote imports it once.
PRELOAD = (
    "celery.__main__",
    "celery.bin.celery",  # with the commands plugins add (Flower's)
    "celery.apps.worker",
    "celery.worker.consumer",
    "celery.concurrency.prefork",
    "celery.concurrency.solo",
    "celery.concurrency.thread",
    "celery.events.dispatcher",
    "kombu.transport.redis",
    "kombu.transport.pyamqp",
    "consumers.tasks",
    "producer.tasks",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql.psycopg",
    "cryptography.fernet",
    "cffi.cparser",
    "httpcore",
    "h11",
    "kombu.matcher",
    "consumers.audit",
    "producer.cli",
    "producer.auth_cli",
    "producer.auth_login",
    "webbrowser",
)
FORKABLE_APPS = frozenset({"consumers", "producer"})


def forkable(env: dict[str, str], cwd: Path = ROOT, app: str = "consumers") -> bool:
    """True when a fork of the zygote runs the same code a fresh ``python -m`` would (for a
    worker: of the Celery app ``app``)."""
    return (
        os.environ.get("PYTEST_ZYGOTE", "1") != "0"
        and app in FORKABLE_APPS
        and Path(cwd).resolve() == ROOT
        and env.get("PYTHONPATH") == str(ROOT)
        and "PROMETHEUS_MULTIPROC_DIR" not in env
    )


class ForkedWorker(subprocess.Popen[bytes]):
    """A process the zygote forked, with the part of ``Popen`` tests use: pid, poll, wait, kill."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str]) -> None:
        # Popen's own __init__ would start a process: this one exists already.
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self._child_created = False  # nothing for Popen.__del__ to reap
        self._zygote = zygote

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.exit_status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(POLL_SECONDS)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def communicate(self, *args: Any, **kwargs: Any) -> tuple[bytes, bytes]:
        raise NotImplementedError("a forked worker writes to its log file")


class Zygote:
    """The parent's end: one zygote process, asked to fork workers and for their exit status."""

    def __init__(self) -> None:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env["PYTHONPATH"] = str(ROOT)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        self._lock = threading.Lock()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker zygote exited ({self._proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def spawn(
        self, module: str, args: list[str], env: dict[str, str], out: Path, err: Path | None = None
    ) -> ForkedWorker:
        """Fork ``python -m MODULE ARGS`` with ``env``; stdout to ``out``, stderr to ``err`` (or
        ``out``), both files emptied first (there when this returns, as a Popen's would be)."""
        for path in {out, err or out}:
            path.write_bytes(b"")
        request = {"op": "spawn", "module": module, "argv": args, "env": env, "cwd": str(ROOT)}
        answer = self._ask({**request, "out": str(out), "err": str(err or out)})
        return ForkedWorker(self, int(answer["pid"]), [module, *args])

    def run(
        self, module: str, args: list[str], env: dict[str, str], *, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """``subprocess.run([python, -m, MODULE, *ARGS], capture_output=True, text=True)``."""
        with tempfile.TemporaryDirectory(prefix="zygote-") as scratch:
            out, err = Path(scratch, "out"), Path(scratch, "err")
            proc = self.spawn(module, args, env, out, err)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            stdout, stderr = (path.read_text(errors="replace") for path in (out, err))
        return subprocess.CompletedProcess([module, *args], code, stdout, stderr)

    def exit_status(self, pid: int) -> int | None:
        """The worker's exit code (negative: the signal that ended it), None while it runs."""
        code = self._ask({"op": "poll", "pid": pid})["returncode"]
        return None if code is None else int(code)

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def run_module(
    module: str, args: list[str], env: dict[str, str], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` to its end, output captured as text: forked when ``forkable``."""
    if forkable(env):
        return zygote().run(module, args, env, timeout=timeout)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_module(
    module: str, args: list[str], env: dict[str, str], out: Path | None, err: Path | None = None
) -> subprocess.Popen[bytes]:
    """``python -m MODULE ARGS`` in the background, in a session of its own: stdout to ``out``
    (None: discarded), stderr to ``err`` (None: with stdout). Forked when ``forkable``."""
    out = out or Path(os.devnull)
    app = args[args.index("-A") + 1] if module == "celery" and "-A" in args else "consumers"
    if forkable(env, app=app):
        return zygote().spawn(module, args, env, out, err)
    with out.open("wb") as stdout, (err or out).open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def zygote() -> Zygote:
    """This pytest process's zygote, started on first use."""
    global _zygote
    with _zygote_lock:
        if _zygote is None:
            _zygote = Zygote()
        return _zygote


def close() -> None:
    """End this process's zygote, if one was started (the session's end)."""
    global _zygote
    with _zygote_lock:
        if _zygote is not None:
            _zygote.close()
            _zygote = None


# ---- the zygote process ----


def _run_worker(request: dict[str, Any], private: tuple[int, int]) -> None:
    """In the forked child: become the worker ``request`` describes; never returns."""
    code = 1
    try:
        os.setsid()
        for fd in private:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["out"]), (2, request["err"])):
            out = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.dup2(out, fd)
            os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        random.seed()  # not the zygote's sequence in every worker
        for entry in reversed(request["env"].get("PYTHONPATH", "").split(os.pathsep)):
            if entry and entry not in sys.path:
                sys.path.insert(0, entry)
        sys.argv = [request["module"], *request["argv"]]
        # As ``python -m MODULE ARGV`` runs it (sys.argv[0] and __main__ included).
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - the worker's crash goes to its log, as Python's would
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # exiting anyway
                stream.flush()
        os._exit(code)


def _serve(requests: IO[bytes], answers: IO[bytes], private: tuple[int, int]) -> None:
    for line in requests:
        request = json.loads(line)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _run_worker(request, private)
            answer: dict[str, Any] = {"pid": pid}
        else:
            try:
                done, status = os.waitpid(request["pid"], os.WNOHANG)
            except ChildProcessError:
                done, status = request["pid"], 0
            answer = {"returncode": os.waitstatus_to_exitcode(status) if done else None}
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()


def main() -> None:
    # The protocol keeps fds of its own, so nothing an import prints can corrupt it.
    requests_fd, answers_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    for module in PRELOAD:
        __import__(module)
    if threading.active_count() != 1:
        raise RuntimeError("an import started a thread: forking would lose it")
    with os.fdopen(requests_fd, "rb") as requests, os.fdopen(answers_fd, "wb") as answers:
        _serve(requests, answers, (requests_fd, answers_fd))


if __name__ == "__main__":
    main()
