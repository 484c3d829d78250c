"""`pleo-export` as a user runs it: exit codes, one-sentence errors, nothing enqueued on failure."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from subprocess import CompletedProcess

import httpx
import pytest
import redis
from click.testing import Result

from contract.celery_app import make_app
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings
from devtools.simulator import FaultRule, JobSpec, SimState
from producer.components import produce
from tests.conftest import TEST_TOKEN, env_for, wait_for, with_settings
from tests.support.queues import redis_queue

pytestmark = pytest.mark.integration
Cli = Callable[..., CompletedProcess[str]]
InProcess = Callable[..., Result]


def assert_one_sentence_error(proc: CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_run_json_summary(cli: Cli, sim_state: SimState, rdb: redis.Redis) -> None:
    """`run --json` prints one JSON object with the contract's keys and exits 0."""
    job_id = sim_state.add_job(JobSpec(items=120, item_statuses={"pending": 1.0}))
    proc = cli("run", job_id, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for key in (
        "job_id",
        "status",
        "pages",
        "items_seen",
        "planned",
        "enqueued",
        "already_enqueued",
    ):
        assert key in summary
    assert (summary["status"], summary["planned"], summary["enqueued"]) == ("enqueued", 120, 120)
    assert summary["pages"] == 4  # page size 100: two pages per layer
    assert len(redis_queue(rdb)) == 120


def test_status_reports_the_recorded_run(
    cli: Cli, cli_in_process: InProcess, settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """`status --json` shows what the run recorded; an unknown job reports state unknown."""
    job_id = sim_state.add_job(JobSpec(items=30, item_statuses={"pending": 1.0}))
    # The run is this test's setup (test_run_json_summary runs the command): done in-process.
    assert produce(job_id, settings=settings, app=make_app(settings)).status == "enqueued"
    view = json.loads(cli("status", job_id, "--json").stdout)
    assert view["state"] == "enqueued"
    assert (view["planned"], view["enqueued"], view["published_total"]) == (30, 30, 30)
    assert view["job_status"] == "in_progress"
    unknown = cli_in_process("status", str(uuid.uuid4()), "--json")
    assert unknown.exit_code == 0, unknown.stderr
    assert json.loads(unknown.stdout)["state"] == "unknown"


def test_text_output_of_a_second_run(
    cli: Cli, settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A rerun says it enqueued nothing new and counts what was already queued."""
    job_id = sim_state.add_job(JobSpec(items=40, item_statuses={"pending": 1.0}))
    assert produce(job_id, settings=settings, app=make_app(settings)).enqueued == 40
    proc = cli("run", job_id)
    assert proc.returncode == 0
    assert (
        "enqueued 0 new messages (40 were already queued by an earlier run of this job) "
        "of 40 planned"
    ) in proc.stdout


def test_not_a_uuid_is_bad_input(
    cli: Cli, cli_in_process: InProcess, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A job id that is not a UUID exits 2 before any request, from every command taking one."""
    assert_one_sentence_error(cli("run", "42; DROP"), 2, "not a UUID")
    # The same guard in the other commands: their exit code and stderr, without a subprocess each.
    for command in ("enqueue", "status"):
        result = cli_in_process(command, "42; DROP")
        assert_one_sentence_error(
            CompletedProcess([command], result.exit_code, result.stdout, result.stderr),
            2,
            "not a UUID",
        )
    assert sim_state.calls == []
    assert rdb.dbsize() == 0


def test_bad_setting_is_bad_input(cli: Cli, sim_state: SimState) -> None:
    """An unusable setting exits 2 naming the variable."""
    proc = cli("run", str(uuid.uuid4()), PLEO_PAGE_SIZE="lots")
    assert_one_sentence_error(proc, 2, "PLEO_PAGE_SIZE")


def test_unknown_job_is_a_permanent_refusal(cli: Cli, rdb: redis.Redis) -> None:
    """A job Pleo does not know exits 3 and enqueues nothing."""
    job_id = str(uuid.uuid4())
    assert_one_sentence_error(cli("run", job_id), 3, "404", job_id)
    assert rdb.llen(ITEMS_QUEUE) == 0


def test_bad_credentials_are_a_permanent_refusal(
    cli: Cli, settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A wrong token exits 3, and the token never appears in the output."""
    job_id = sim_state.add_job(JobSpec(items=10))
    wrong = "wrong-secret-token-123"
    proc = cli("run", job_id, settings_=with_settings(settings, api_token=wrong))
    assert_one_sentence_error(proc, 3, "401")
    assert wrong not in proc.stderr + proc.stdout
    assert TEST_TOKEN not in proc.stderr + proc.stdout


def test_exhausted_retries_exit_4_and_publish_nothing(
    cli: Cli, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A page that keeps failing with 503 past the budget exits 4; earlier pages publish nothing."""
    job_id = sim_state.add_job(JobSpec(items=500))
    sim_state.add_fault(FaultRule(endpoint="job_items", kind="status", status=503, after=2))
    proc = cli("run", job_id, PLEO_RETRY_BUDGET="1")
    assert_one_sentence_error(proc, 4, "503")
    assert rdb.llen(ITEMS_QUEUE) == 0


@pytest.mark.parametrize("kind", ["schema", "cursor_loop", "total_lie"])
def test_lying_pages_stop_the_run_and_publish_nothing(
    cli: Cli, sim_state: SimState, rdb: redis.Redis, kind: str
) -> None:
    """A page that breaks the spec, a cursor loop or a lying total exits 1 with nothing queued.

    A cursor loop is the cursor walk's lie (``PLEO_PAGE_CONCURRENCY=1``): the offset walk reads
    no cursor, so whether it notices one depends on which page the loop lands on (the last, whose
    ``hasNextPage`` it checks, or a middle one, whose ``endCursor`` it ignores rightly), which the
    order its concurrent requests arrive in decides.
    """
    job_id = sim_state.add_job(JobSpec(items=500))
    sim_state.add_fault(FaultRule(endpoint="job_items", kind=kind, after=2))
    walk = {"PLEO_PAGE_CONCURRENCY": "1"} if kind == "cursor_loop" else {}
    proc = cli("run", job_id, **walk)
    assert_one_sentence_error(proc, 1)
    assert rdb.llen(ITEMS_QUEUE) == 0


def test_unreachable_redis_exits_4(cli: Cli, sim_state: SimState) -> None:
    """With Redis down the run exits 4 in one sentence."""
    job_id = sim_state.add_job(JobSpec(items=10))
    proc = cli("run", job_id, REDIS_URL="redis://127.0.0.1:1/0", CELERY_BROKER_URL="")
    assert_one_sentence_error(proc, 4, "Redis")


def test_enqueue_sends_the_producer_task(cli: Cli, rdb: redis.Redis) -> None:
    """`enqueue` puts one producer.enqueue_export_job message on pleo-export-producer."""
    job_id = str(uuid.uuid4())
    proc = cli("enqueue", job_id)
    assert proc.returncode == 0, proc.stderr
    queued = redis_queue(rdb, PRODUCER_QUEUE)
    assert len(queued) == 1
    assert queued[0].task == "producer.enqueue_export_job"
    assert queued[0].args == [job_id]


def test_enqueue_with_broker_down_exits_4(cli: Cli) -> None:
    """`enqueue` against an unreachable broker exits 4 in one sentence."""
    proc = cli("enqueue", str(uuid.uuid4()), CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    assert_one_sentence_error(proc, 4)


def test_python_api_enqueue_shares_the_trigger_dedupe(
    cli: Cli, redis_url: str, rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`producer.enqueue(job_id)` sends one task; the CLI right after sends nothing more."""
    import producer

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    job_id = str(uuid.uuid4())
    result = producer.enqueue(job_id)
    assert not result.deduplicated
    proc = cli("enqueue", job_id)
    assert proc.returncode == 0, proc.stderr
    assert "nothing more sent" in proc.stdout
    queued = redis_queue(rdb, PRODUCER_QUEUE)
    assert [q.task_id for q in queued] == [result.task_id]


@pytest.mark.parametrize(
    ("token", "words"),
    [("", "is not set"), ("replace-with-a-long-random-enqueue-api-token", "placeholder")],
)
def test_api_refuses_to_start_without_a_strong_token(cli: Cli, token: str, words: str) -> None:
    """`api` with no token, or an obvious placeholder, exits 2 in one sentence naming it."""
    proc = cli("api", "--port", "0", PLEO_ENQUEUE_API_TOKEN=token)
    assert_one_sentence_error(proc, 2, "PLEO_ENQUEUE_API_TOKEN", words)
    if token:
        assert token not in proc.stderr


def test_api_serves_enqueue_until_sigterm(settings: Settings, rdb: redis.Redis) -> None:
    """`api --port P` answers POST /v1/enqueue with the token; SIGTERM stops it cleanly."""
    token = "3f9c2a7e41b8d6059e1c7a4b2d8f6e03"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer", "api", "--port", str(port)],
        env=env_for(settings, PLEO_ENQUEUE_API_TOKEN=token),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/healthz"), timeout=20, what="pleo-export api")
        job_id = str(uuid.uuid4())
        response = httpx.post(
            f"{url}/v1/enqueue",
            json={"job_id": job_id},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 202, response.text
        assert [m.args for m in redis_queue(rdb, PRODUCER_QUEUE)] == [[job_id]]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: the shell sees 143.
    assert proc.returncode == -signal.SIGTERM, stderr
    assert "Traceback" not in stderr


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
