"""Secrets (chaos item 7): no credential in any log line, CLI output, message or ledger record, and
no worker accepts anything but JSON.

A Redis of its own with a real ``requirepass``, a Bearer token, an API key (Basic auth) and a
``whsec_`` webhook secret, all distinctive, drive every entry point at DEBUG: ``pleo-export run``
(success, a 401 from Pleo, Redis unreachable, a bad job id, 503s outlasting the retry budget),
``enqueue``, ``status``, ``poll``, the webhook receiver (valid and invalid deliveries), a producer
worker and an ERP worker finishing jobs end to end. Every captured byte and every Redis key and
value is then searched for each secret and its base64 and URL-encoded forms. OAuth's secrets
(access and refresh tokens, client secrets, PLEO_CREDENTIALS_KEY): test_secrets_oauth.py.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from contract.celery_app import celery_config, make_app
from contract.errors import BrokerUnavailable
from contract.names import ITEM_TASK, ITEMS_QUEUE, PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Settings
from devtools.processes import signal_group, stop_group
from devtools.simulator import FaultRule, JobSpec, SimState
from producer.signature import sign
from producer.triggers import enqueue
from tests.chaos.conftest import scale, tally
from tests.conftest import env_for, wait_for, with_settings
from tests.support import zygote
from tests.support.local import free_port

pytestmark = [pytest.mark.integration, pytest.mark.worker]

# Test credentials, distinctive so that any spelling of them in any output is found.
REDIS_PASSWORD = "rds-Pw-9Qx7Lm2Kz4Tv"
API_TOKEN = "tok-Chaos-5Hn8Rw3Yb6Jd"
API_KEY = "key-Chaos-2Fp9Vc4Xs7Wq"
WEBHOOK_KEY = b"chaos-webhook-key-7Gd3Kp9Zm"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
ITEMS = scale(12, 120)


def leak_forms() -> dict[bytes, str]:
    """Every spelling of every secret that must not appear, and which secret it spells."""
    spelled: dict[bytes, str] = {}

    def add(name: str, *forms: str | bytes) -> None:
        for form in forms:
            spelled[form.encode() if isinstance(form, str) else form] = name

    for name, secret in (
        ("Redis password", REDIS_PASSWORD),
        ("API token", API_TOKEN),
        ("API key", API_KEY),
        ("webhook secret", WEBHOOK_SECRET),
    ):
        add(name, secret, quote(secret, safe=""), base64.b64encode(secret.encode()))
    add("API key", base64.b64encode(f"{API_KEY}:".encode()))  # the Basic auth header value
    add("Redis password", f":{quote(REDIS_PASSWORD)}@")
    add("webhook secret", WEBHOOK_SECRET.removeprefix("whsec_"), WEBHOOK_KEY)
    add(
        "webhook secret",
        binascii.hexlify(WEBHOOK_KEY),
        quote(WEBHOOK_SECRET.removeprefix("whsec_")),
    )
    return spelled


LEAK_FORMS = leak_forms()


def leaks_in(blob: bytes) -> list[str]:
    """The secrets ``blob`` spells out, in any of their forms (empty when it is clean)."""
    return sorted({name for form, name in LEAK_FORMS.items() if form in blob})


# --- capture ------------------------------------------------------------------------------------


@dataclass
class Capture:
    """Every file the processes of this test wrote their output to; long-running ones included."""

    folder: Path
    settings: Settings
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, settings: Settings | None = None, **extra: str) -> dict[str, str]:
        """A subprocess environment for ``settings`` (default: the secret ones) and the webhook."""
        return env_for(settings or self.settings, PLEO_WEBHOOK_SECRET=WEBHOOK_SECRET, **extra)

    def cli(
        self, name: str, *args: str, settings: Settings | None = None, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pleo-export -vv ARGS``; stdout and stderr land in ``<name>.out``/``.err``."""
        done = zygote.run_module(
            "producer", ["-vv", *args], self.env(settings, **extra), timeout=90
        )
        (self.folder / f"{name}.out").write_text(done.stdout)
        (self.folder / f"{name}.err").write_text(done.stderr)
        return done

    def expect(
        self, code: int, name: str, *args: str, settings: Settings | None = None, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """``cli``, asserting the exit status the README promises for the case."""
        done = self.cli(name, *args, settings=settings, **extra)
        assert done.returncode == code, (name, done.stderr[-2000:])
        return done

    def start(self, name: str, *argv: str, **extra: str) -> Path:
        """Start a long-running process (stdout and stderr into ``<name>.log``); returns the log."""
        log_path = self.folder / f"{name}.log"
        module, *args = argv
        proc = zygote.start_module(module, args, self.env(None, **extra), log_path)
        self.processes.append(proc)
        return log_path

    def worker(self, name: str, app: str, queue: str) -> Path:
        """A real Celery worker logging at DEBUG."""
        argv = ["celery", "-A", app, "worker", "-Q", queue, "-c", "1", "-l", "DEBUG"]
        return self.start(name, *argv, "--without-mingle", "--without-gossip")

    def stop_all(self) -> None:
        """TERM every long-running process (a warm shutdown flushes their logs), KILL stragglers."""
        for proc in self.processes:
            signal_group(proc, signal.SIGTERM)
        for proc in self.processes:
            stop_group(proc, grace=15)

    def files(self) -> list[Path]:
        """Every captured file."""
        return sorted(self.folder.iterdir())


@pytest.fixture
def secret_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own with ``requirepass``; its URL, password included."""
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    server = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)),
            *("--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_for(answers, timeout=20, what="the password-protected redis-server")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"PING\r\n")
        assert raw.recv(100).startswith(b"-NOAUTH"), "the server must demand the password"
    yield url
    client.close()
    server.terminate()
    server.wait(10)


@pytest.fixture
def capture(
    settings: Settings, sim_state: SimState, secret_redis: str, tmp_path: Path
) -> Iterator[Capture]:
    """Settings that carry every secret, and a folder for everything the processes print."""
    sim_state.token = API_TOKEN
    sim_state.api_key = API_KEY
    folder = tmp_path / "capture"
    folder.mkdir()
    secret_settings = with_settings(
        settings,
        api_token=API_TOKEN,
        redis_url=secret_redis,
        broker_url=secret_redis,
        webhook_secret=WEBHOOK_SECRET,
    )
    captured = Capture(folder, secret_settings)
    yield captured
    captured.stop_all()
    for path in folder.glob("*.log"):
        # Shown by pytest only when the test failed: what each long-running process was doing.
        lines = path.read_text(errors="replace").splitlines()
        print(f"--- {path.name} (last 40 lines) ---", *lines[-40:], sep="\n")


# --- reading Redis --------------------------------------------------------------------------------


def redis_values(client: redis.Redis) -> Iterator[bytes]:
    """Every key and value in the database."""
    for key in client.scan_iter(count=1000):
        yield key
        raw_kind = client.type(key)
        kind = raw_kind.decode() if isinstance(raw_kind, bytes) else raw_kind
        values: Any
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "hash":
            values = [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = client.smembers(key)
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "none":
            # Gone since the scan (kombu drops an emptied ``unacked_index``): nothing to read.
            continue
        else:
            pytest.fail(f"unexpected Redis type {kind} at {key!r}")
        yield from values


def _message_body(value: bytes) -> Iterator[bytes]:
    """The decoded body of a kombu envelope (a queued or unacked message), if ``value`` is one."""
    try:
        envelope = json.loads(value)
    except ValueError:
        return
    if isinstance(envelope, list) and envelope:  # kombu's unacked hash: [envelope, exchange, key]
        envelope = envelope[0]
    if isinstance(envelope, dict) and isinstance(envelope.get("body"), str):
        yield base64.b64decode(envelope["body"])


@dataclass
class RedisScan:
    """What one pass over Redis saw: keys and values read, messages decoded, leaks found."""

    values: int = 0
    messages: int = 0
    leaks: list[str] = field(default_factory=list)


def scan_redis(url: str) -> RedisScan:
    """Read every key and value of the database at ``url`` and look for secrets in each."""
    scan = RedisScan()
    client = redis.Redis.from_url(url)
    try:
        for value in redis_values(client):
            bodies = list(_message_body(value))
            scan.values += 1
            scan.messages += len(bodies)
            for blob in (value, *bodies):
                scan.leaks += [f"{name} in Redis value {blob[:80]!r}" for name in leaks_in(blob)]
    finally:
        client.close()
    return scan


# --- helpers for the pipeline -----------------------------------------------------------------


def finished(state: SimState, job_id: str) -> str | None:
    status = state.jobs[job_id].status
    return status if status in {"completed", "completed_with_errors", "failed"} else None


def delivery(job_id: str, *, secret: str = WEBHOOK_SECRET, body: bytes | None = None) -> Any:
    """A webhook delivery for ``job_id``: (body, headers)."""
    data = {"id": job_id, "status": "pending"}
    body = body or json.dumps({"eventType": "v1.export-job.created", "data": data}).encode()
    msg_id, stamp = f"msg_{uuid.uuid4().hex}", int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(msg_id, stamp, body, secret),
    }
    return body, headers


def serving_url(log_path: Path) -> str | None:
    """The receiver's URL once its log says it is serving."""
    for line in log_path.read_text(errors="replace").splitlines():
        if "webhook_serving url=" in line:
            return line.split("url=", 1)[1].split()[0].removesuffix("/webhooks/pleo")
    return None


def log_has(log_path: Path, *fragments: str) -> bool:
    text = log_path.read_text(errors="replace")
    return any(fragment in text for fragment in fragments)


class Trap:
    """Unpickling this creates a directory: the trace a worker that accepted pickle would leave."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (str(self.marker),)


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_no_secret_in_any_output_log_message_or_ledger(
    capture: Capture, sim_state: SimState
) -> None:
    """Every entry point at DEBUG, success and failure: no secret in any byte printed or stored."""
    jobs = [sim_state.add_job(JobSpec(items=ITEMS, seed=n)) for n in range(5)]
    by_token, by_key, by_webhook, by_poll, refused = jobs
    dead_redis = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    key_only = with_settings(capture.settings, api_token=None, api_key=API_KEY)
    ran = capture.expect(0, "run-token", "run", by_token, "--json")
    assert json.loads(ran.stdout)["enqueued"] == ITEMS
    capture.expect(0, "run-key", "run", by_key, settings=key_only)
    capture.expect(0, "status", "status", by_token, "--json")
    capture.expect(0, "enqueue", "enqueue", by_token)
    capture.expect(2, "bad-id", "run", "job-42/../*")
    dead = {"REDIS_URL": dead_redis, "CELERY_BROKER_URL": dead_redis}
    capture.expect(4, "redis-down-run", "run", refused, settings=None, **dead)
    capture.expect(4, "redis-down-status", "status", refused, settings=None, **dead)
    sim_state.add_fault(FaultRule(endpoint="job", kind="status", status=401, times=1))
    capture.expect(3, "pleo-401", "run", refused, settings=key_only)
    sim_state.clear_faults()
    sim_state.add_fault(FaultRule(endpoint="any", kind="status", status=503))
    capture.expect(4, "pleo-503", "run", refused, PLEO_RETRY_BUDGET="0.5")
    sim_state.clear_faults()

    # The webhook receiver: one valid delivery (it enqueues by_webhook) and three refused ones.
    log = capture.start("webhook", "producer", "-vv", "webhook", "--port", "0")
    url = wait_for(lambda: serving_url(log), timeout=30, what="the webhook receiver to serve")
    with httpx.Client(base_url=url, timeout=30) as http:
        answers = [
            http.post("/webhooks/pleo", content=body, headers=headers).status_code
            for body, headers in (
                delivery(by_webhook),
                delivery(by_webhook, secret="whsec_" + base64.b64encode(b"wrong").decode()),
                delivery(by_webhook, body=b"{not json"),
                (b"{}", {"webhook-id": "x"}),
            )
        ]
    assert answers == [202, 401, 400, 401]
    # poll enqueues every pending job, by_poll (which nobody triggered yet) among them.
    polled = capture.expect(0, "poll", "poll", "--json")
    assert by_poll in json.loads(polled.stdout)["job_ids"]

    before_workers = scan_redis(capture.settings.ledger_url)
    assert before_workers.messages >= 2 * ITEMS + 2  # the two runs' items, producer tasks

    capture.worker("producer-worker", "producer", PRODUCER_QUEUE)
    capture.worker("erp-worker", "consumers", ITEMS_QUEUE)
    for job_id in (by_token, by_key, by_webhook, by_poll):
        assert (
            wait_for(
                functools.partial(finished, sim_state, job_id), timeout=120, what=f"job {job_id}"
            )
            == "completed"
        )
    after_workers = scan_redis(capture.settings.ledger_url)
    capture.stop_all()

    texts = {path.name: path.read_bytes() for path in capture.files()}
    leaks = [f"{name} in {file}" for file, blob in texts.items() for name in leaks_in(blob)]
    assert leaks + before_workers.leaks + after_workers.leaks == []

    # The scan saw real output: known non-secret markers are there, in volume.
    everything = b"\n".join(texts.values())
    lines = everything.count(b"\n")
    assert lines > 500, lines
    for marker in (by_token, by_key, by_webhook, by_poll):
        assert marker.encode() in everything
    assert b"page_fetched" in texts["run-token.err"]
    assert b"webhook_accepted" in texts["webhook.log"]
    assert b"item_booked" in texts["erp-worker.log"]
    assert b"report_batch_sent" in everything or b"job_finished" in everything
    assert b"***" in everything or b"**@" in everything  # a redacted URL was shown, not skipped
    assert after_workers.values > 50, after_workers
    tally("output bytes scanned for secrets", len(everything))
    tally("Redis values scanned for secrets", before_workers.values + after_workers.values)


def test_settings_reprs_and_errors_hide_secrets(capture: Capture) -> None:
    """repr/str of Settings and the error raised for an unreachable, passworded Redis hold none."""
    shown = repr(capture.settings) + str(capture.settings)
    assert leaks_in(shown.encode()) == []
    assert "api_token='***'" in shown
    assert f"redis://:***@{capture.settings.redis_url.rsplit('@', 1)[1]}" in shown
    dead = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    with pytest.raises(BrokerUnavailable) as caught:
        enqueue(
            str(uuid.uuid4()),
            settings=with_settings(capture.settings, redis_url=dead, broker_url=dead),
        )
    error = caught.value
    assert leaks_in(f"{error} {error.message} {error!r} {error.__cause__!r}".encode()) == []
    assert "127.0.0.1" in error.message


def test_apps_accept_json_only() -> None:
    """Both Celery apps accept, serialize and send JSON only."""
    from consumers.tasks import app as consumers_app
    from producer.tasks import app as producer_app

    for app in (producer_app, consumers_app, make_app(Settings())):
        assert list(app.conf.accept_content) == ["json"]
        assert app.conf.task_serializer == "json"
        assert app.conf.result_serializer == "json"
        assert app.conf.event_serializer == "json"
        assert app.conf.result_accept_content in (None, ["json"])
    assert celery_config(Settings())["accept_content"] == ["json"]


@pytest.mark.timeout(180)
def test_workers_refuse_pickled_tasks_and_keep_working(
    capture: Capture, sim_state: SimState, tmp_path: Path
) -> None:
    """A pickled task on either queue is refused unread (no side effect); the next job runs."""
    producer_log = capture.worker("producer-worker", "producer", PRODUCER_QUEUE)
    erp_log = capture.worker("erp-worker", "consumers", ITEMS_QUEUE)
    for log_path in (producer_log, erp_log):
        wait_for(functools.partial(log_has, log_path, "ready."), timeout=60, what="worker")
    markers = {queue: tmp_path / f"unpickled-{queue}" for queue in (PRODUCER_QUEUE, ITEMS_QUEUE)}
    sender = make_app(capture.settings)
    try:
        for queue, task in ((PRODUCER_QUEUE, PRODUCER_TASK), (ITEMS_QUEUE, ITEM_TASK)):
            sender.send_task(
                task,
                args=[str(uuid.uuid4())],
                kwargs={"trap": Trap(markers[queue])},
                queue=queue,
                serializer="pickle",
            )
    finally:
        sender.close()
    for log_path in (producer_log, erp_log):
        wait_for(
            functools.partial(log_has, log_path, "ContentDisallowed"),
            timeout=60,
            what=f"the refusal in {log_path.name}",
        )
    job_id = sim_state.add_job(JobSpec(items=ITEMS, seed=11))
    capture.expect(0, "enqueue", "enqueue", job_id)
    state = wait_for(
        lambda: finished(sim_state, job_id), timeout=120, what="the job after the pickles"
    )
    assert state == "completed"
    assert [path for path in markers.values() if path.exists()] == []
    for log_path in (producer_log, erp_log):
        assert log_has(log_path, "application/x-python-serialize")


# Job ids a compromised or buggy sender could put straight on the broker, past every trigger.
RAW_HOSTILE_IDS = [
    "pleo-export:job:*",
    "../../v3/export-jobs",
    "x\n[forged] run_finished job_id=forged status=enqueued",
]


def item_message(job_id: str) -> dict[str, Any]:
    """A schema-1 item message for ``job_id``, otherwise well formed."""
    return {
        "schema": 1,
        "job_id": job_id,
        "company_id": None,
        "accounting_entry_id": str(uuid.uuid4()),
        "sequence": 0,
        "total": 1,
        "status_at_fetch": "pending",
        "booked_at": None,
        "export_item": None,
    }


@pytest.mark.timeout(180)
def test_raw_tasks_with_hostile_job_ids_touch_nothing(
    capture: Capture, sim_state: SimState
) -> None:
    """Tasks sent straight to the broker with hostile job ids: no key, no request, no forged log."""
    producer_log = capture.worker("producer-worker", "producer", PRODUCER_QUEUE)
    erp_log = capture.worker("erp-worker", "consumers", ITEMS_QUEUE)
    sender = make_app(capture.settings)
    try:
        for job_id in RAW_HOSTILE_IDS:
            sender.send_task(PRODUCER_TASK, args=[job_id], queue=PRODUCER_QUEUE)
            sender.send_task(ITEM_TASK, kwargs=item_message(job_id), queue=ITEMS_QUEUE)
    finally:
        sender.close()
    job_id = sim_state.add_job(JobSpec(items=ITEMS, seed=12))
    capture.expect(0, "enqueue", "enqueue", job_id)
    state = wait_for(lambda: finished(sim_state, job_id), timeout=120, what="the valid job")
    assert state == "completed"
    capture.stop_all()

    producer_text = producer_log.read_text(errors="replace")
    erp_text = erp_log.read_text(errors="replace")
    assert producer_text.count("is not a UUID") >= len(RAW_HOSTILE_IDS)
    assert erp_text.count("message_parked") == len(RAW_HOSTILE_IDS)
    client = redis.Redis.from_url(capture.settings.ledger_url)
    try:
        keys = list(client.scan_iter(count=1000))
    finally:
        client.close()
    assert [key for key in keys if any(bad.encode() in key for bad in RAW_HOSTILE_IDS)] == []
    allowed = {
        f"/v3/export-jobs/{job_id}",
        f"/v3/export-jobs/{job_id}/items",
        "/v3/export-job-events",
        "/v3/export-items",
    }
    assert {call.path for call in sim_state.calls} <= allowed
    forged = [line for line in producer_text.splitlines() if line.startswith("[forged]")]
    assert forged == [], "a job id's newline forged a log line"


def test_the_leak_detector_sees_every_spelling() -> None:
    """The scan itself can fail: headers, URLs and encodings carrying a secret are all caught."""
    basic = base64.b64encode(f"{API_KEY}:".encode()).decode()
    assert leaks_in(f"Authorization: Basic {basic}".encode()) == ["API key"]
    assert leaks_in(f"Authorization: Bearer {API_TOKEN}".encode()) == ["API token"]
    assert leaks_in(f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0".encode()) == ["Redis password"]
    assert leaks_in(WEBHOOK_SECRET.removeprefix("whsec_").encode()) == ["webhook secret"]
    assert leaks_in(b"key=" + WEBHOOK_KEY) == ["webhook secret"]
    assert leaks_in(b"redis://:***@127.0.0.1:6379/0 job_id=" + uuid.uuid4().hex.encode()) == []
