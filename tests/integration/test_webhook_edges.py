"""The webhook receiver's rough edges, met as a new user and a hostile client would meet them."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import redis

from contract.errors import BadInput
from contract.names import PRODUCER_QUEUE
from contract.settings import Settings
from devtools.deliveries import export_job_created, signed_headers
from producer.endpoints import BODY_TIMEOUT_SECONDS
from producer.serving import MAX_HEAD_BYTES
from producer.webhook import check_secret, create_app
from tests.conftest import env_for
from tests.support.queues import redis_queue
from tests.support.serving import Served, start_in_thread

pytestmark = pytest.mark.integration

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
JOB = "5d1f2e3a-4b5c-4d6e-8f70-8192a3b4c5d6"


@pytest.fixture
def receiver(settings: Settings) -> Iterator[Served]:
    served = start_in_thread(create_app(replace(settings, webhook_secret=SECRET)))
    yield served
    served.stop()


def raw_request(url: str, data: bytes, *, pause: float = 0.0, then: bytes = b"") -> bytes:
    """Send ``data`` (then, after ``pause`` seconds, ``then``) on a raw socket; the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT_SECONDS + 10) as sock:
        sock.sendall(data)
        if pause:
            time.sleep(pause)
            with contextlib.suppress(OSError):  # the server gave up on us first: as it should
                sock.sendall(then)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_a_delivery_to_the_path_with_a_trailing_slash_is_taken(
    receiver: Served, rdb: redis.Redis
) -> None:
    """``/webhooks/pleo/`` answers 202 and enqueues, as ``/webhooks/pleo`` does: no 307."""
    body = export_job_created({"id": JOB, "status": "pending"})
    answer = httpx.post(
        f"{receiver.url}/webhooks/pleo/", content=body, headers=signed_headers(body, SECRET)
    )
    assert answer.status_code == 202, answer.text
    assert [q.args for q in redis_queue(rdb, PRODUCER_QUEUE)] == [[JOB]]


def test_a_request_head_larger_than_16_kib_is_answered_431(receiver: Served) -> None:
    """A header past the limit gets 431 Request Header Fields Too Large, not a bare 400.

    The client sends a little more than the limit and waits for the answer (a client that goes on
    sending after the server's answer may see its connection reset before it reads it).
    """
    big = b"a" * (MAX_HEAD_BYTES + 4096)
    answer = raw_request(receiver.url, b"POST /webhooks/pleo HTTP/1.1\r\nHost: x\r\nX-Big: " + big)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    # A head within the limit still reaches the app (which refuses the unsigned delivery).
    fits = b"b" * (MAX_HEAD_BYTES - 200)
    answer = raw_request(
        receiver.url,
        b"POST /webhooks/pleo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Fits: "
        + fits
        + b"\r\n\r\n{}",
    )
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:100]


def test_a_body_that_trickles_in_is_cut_off_with_408(receiver: Served, rdb: redis.Redis) -> None:
    """A body not whole within 10 s (the default) is answered 408 and its connection closed."""
    started = time.monotonic()
    answer = raw_request(
        receiver.url,
        b"POST /webhooks/pleo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        pause=BODY_TIMEOUT_SECONDS + 2,
        then=b'"late": 1}',
    )
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert took >= BODY_TIMEOUT_SECONDS - 0.5
    assert redis_queue(rdb, PRODUCER_QUEUE) == []


@pytest.mark.parametrize(
    ("secret", "words"),
    [
        ("whsec_CHANGEME", "placeholder"),
        ("whsec_change-me", "not a whsec_<base64> secret"),
        ("whsec_c2hvcnQ=", "shorter than the 24"),
    ],
)
def test_placeholder_and_short_secrets_are_refused(secret: str, words: str) -> None:
    """The .env.example placeholder and keys shorter than 24 bytes never verify anything."""
    with pytest.raises(BadInput, match=words):
        check_secret(secret)
    assert check_secret(SECRET) == SECRET


def test_the_command_says_where_it_listens(settings: Settings) -> None:
    """``pleo-export webhook`` prints the delivery URL once it listens, then serves there."""
    env = {**env_for(settings), "PLEO_WEBHOOK_SECRET": SECRET}
    with subprocess.Popen(
        [sys.executable, "-m", "producer", "webhook", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert line.startswith("pleo-export: the webhook receiver listens at http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1].strip()
            assert url.endswith("/webhooks/pleo")
            assert httpx.post(url, content=b"{}").status_code == 401  # it serves there
        finally:
            proc.terminate()
            proc.wait(timeout=30)
