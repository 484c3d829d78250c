"""Secrets, OAuth's (chaos item 7, continued from test_secrets.py): no access token, refresh token,
client secret or PLEO_CREDENTIALS_KEY in any log line, CLI output, Redis value (but the Fernet
ciphertext that holds them), repr, metric, message or sentence sent to Pleo.

Both simulators run their OAuth servers with access tokens living 1 s, so every process refreshes
again and again: ``pleo-export auth login`` (Pleo, then ``--erp``) and ``auth status``, a
producer ``run`` and a prefork ERP worker at DEBUG posting through the HTTP adapter with its own
OAuth credential, its ``/metrics`` scraped; then the ERP's grant is revoked mid-job (the job
fails with the refusal's sentence) and Pleo's (the next ``run`` exits 3). Every token either
server issued, both client secrets and the key are then searched for in every captured byte,
every Redis key and value (queued messages decoded), every repr of the credential objects, the
scrape, and every sentence the simulators received.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from cryptography.fernet import Fernet

from consumers.erp_http import from_settings
from contract.credentials import CredentialStore, OAuthAuth, credential_for
from contract.errors import AuthenticationFailed
from contract.names import ITEMS_QUEUE
from contract.oauth import token_set
from contract.settings import Settings
from devtools.oauth_server import OAuthServer
from devtools.processes import signal_group, stop_group
from devtools.simulator import JobSpec, SimState
from tests.chaos.conftest import scale, tally
from tests.conftest import ROOT, env_for, wait_for, with_settings
from tests.support import zygote
from tests.support.local import free_port
from tests.support.metrics import answering, metrics_env, scrape
from tests.support.oauth import CLIENT_ID, CLIENT_SECRET, KEY, oauth_env, pleo_oauth

pytestmark = [pytest.mark.integration, pytest.mark.worker]

ERP_CLIENT_SECRET = "erp-client-secret-Qz7Wk3Nb8"
ITEMS = scale(150, 600)
ENDED = {"completed", "completed_with_errors", "failed"}


def spellings(name: str, secret: str) -> dict[bytes, str]:
    """The forms of ``secret`` that must not appear: as is, URL-encoded, base64 (a header)."""
    return dict.fromkeys(
        (secret.encode(), quote(secret, safe="").encode(), base64.b64encode(secret.encode())), name
    )


def leak_forms(servers: Iterable[OAuthServer]) -> dict[bytes, str]:
    """Every spelling of every OAuth secret of this test, and which secret it spells."""
    forms: dict[bytes, str] = {}
    for server in servers:
        for token in server.issued():
            forms |= spellings("an OAuth token", token)
    for secret in (CLIENT_SECRET, ERP_CLIENT_SECRET):
        forms |= spellings("a client secret", secret)
        # The token endpoint's Basic auth header value.
        forms[base64.b64encode(f"{CLIENT_ID}:{secret}".encode())] = "a client secret"
    forms |= spellings("PLEO_CREDENTIALS_KEY", KEY)
    forms[base64.urlsafe_b64decode(KEY)] = "PLEO_CREDENTIALS_KEY"
    return forms


def leaks(forms: dict[bytes, str], where: str, blob: bytes) -> list[str]:
    return sorted({f"{name} in {where}" for form, name in forms.items() if form in blob})


def redis_values(client: redis.Redis) -> list[tuple[bytes, bytes]]:
    """(key, value) of every key's every value; a kombu envelope's body decoded beside it."""
    found: list[tuple[bytes, bytes]] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "hash":
            values = [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        else:
            continue
        found += [(key, key)] + [(key, value) for value in values]
        found += [(key, body) for value in values for body in _bodies(value)]
    return found


def _bodies(value: bytes) -> list[bytes]:
    """The body of a kombu message envelope (queued, or in ``unacked``), decoded."""
    try:
        envelope = json.loads(value)
    except ValueError:
        return []
    if isinstance(envelope, list) and envelope:
        envelope = envelope[0]
    if isinstance(envelope, dict) and isinstance(envelope.get("body"), str):
        return [base64.b64decode(envelope["body"])]
    return []


class Outputs:
    """What this test's processes wrote, one file each."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.workers: list[subprocess.Popen[bytes]] = []

    def cli(self, name: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = zygote.run_module("producer", ["-vv", *args], self.env, timeout=120)
        (self.folder / f"{name}.out").write_text(done.stdout)
        (self.folder / f"{name}.err").write_text(done.stderr)
        assert done.returncode == code, (name, done.stderr[-2000:])
        return done

    def login(self, name: str, *args: str) -> None:
        """``auth login --no-browser``, the user's consent given by following its URL."""
        with (self.folder / f"{name}.err").open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "producer", "-vv", "auth", "login", "--no-browser", *args],
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            try:
                assert proc.stdout is not None
                url = proc.stdout.readline().strip()
                consent = httpx.get(url, timeout=10)
                assert consent.status_code == 302, consent.text
                assert httpx.get(consent.headers["location"], timeout=10).status_code == 200
                out, _ = proc.communicate(timeout=30)
            finally:
                proc.kill()
        (self.folder / f"{name}.out").write_text(url + "\n" + out)
        assert proc.returncode == 0, (self.folder / f"{name}.err").read_text()[-2000:]

    def worker(self, name: str, **extra: str) -> Path:
        log_path = self.folder / f"{name}.log"
        args = ["-A", "consumers", "worker", "-Q", ITEMS_QUEUE, "-c", "2", "-l", "DEBUG"]
        args += ["--without-mingle", "--without-gossip"]
        self.workers.append(zygote.start_module("celery", args, {**self.env, **extra}, log_path))
        return log_path

    def stop(self) -> None:
        for proc in self.workers:
            signal_group(proc, signal.SIGTERM)
        for proc in self.workers:
            stop_group(proc, grace=15)
        self.workers.clear()


def ended(state: SimState, job_id: str) -> str | None:
    status = state.jobs[job_id].status
    return status if status in ENDED else None


@pytest.mark.timeout(300)
def test_no_oauth_secret_in_any_output_value_repr_metric_or_message(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, erp_sim: Any, tmp_path: Path
) -> None:
    """Logins, status, a run and a DEBUG worker refreshing both sides' tokens every second, both
    grants revoked: no OAuth secret in any byte printed, stored (but encrypted), shown or sent."""
    erp = erp_sim(latency=0.01)
    erp.state.oauth = OAuthServer(CLIENT_ID, ERP_CLIENT_SECRET, access_lifetime=1.0)
    oauth = pleo_oauth(settings, sim_state, lifetime=1.0, ahead=0.4)
    oauth = with_settings(
        oauth,
        page_size=25,
        erp_oauth_client_id=CLIENT_ID,
        erp_oauth_client_secret=ERP_CLIENT_SECRET,
        erp_oauth_authorize_url=f"{erp.url}/oauth/authorize",
        erp_oauth_token_url=f"{erp.url}/oauth/token",
        erp_http_url=erp.url,
    )
    pleo_server = sim_state.oauth
    assert pleo_server is not None
    sim_state.latency = 0.01
    folder = tmp_path / "capture"
    folder.mkdir()
    env = env_for(
        oauth,
        **oauth_env(oauth),
        ERP_ADAPTER="consumers.erp_http:from_settings",
        ERP_HTTP_URL=erp.url,
        PLEO_CLOSE_INTERVAL="3600",
    )
    out = Outputs(folder, env)
    try:
        out.login("login-pleo")
        out.login("login-erp", "--erp")
        out.cli("status-text", "auth", "status")
        out.cli("status-json", "auth", "status", "--json")
        completed = sim_state.add_job(JobSpec(items=ITEMS, item_statuses={"pending": 1.0}))
        out.cli("run", "run", completed, "--json")
        queued = redis_values(rdb)  # the messages, before any worker takes them
        port = free_port()
        out.worker("erp-worker", **metrics_env(tmp_path, "erp", port))
        wait_for(lambda: answering(port), timeout=60, what="the worker's /metrics")
        status = wait_for(lambda: ended(sim_state, completed), timeout=120, what="job 1")
        assert status == "completed"

        # The ERP's grant withdrawn mid-job: the job fails, its reason a sentence sent to Pleo.
        revoked = sim_state.add_job(JobSpec(items=ITEMS, item_statuses={"pending": 1.0}, seed=2))
        out.cli("run-2", "run", revoked)
        wait_for(lambda: len(erp.state.bookings()) >= ITEMS + 10, timeout=60, what="bookings")
        erp.state.oauth.revoke()
        assert wait_for(lambda: ended(sim_state, revoked), timeout=120, what="job 2") == "failed"
        metrics_text = scrape(port).text.encode()
        # Pleo's grant withdrawn: the next run's refresh is refused, exit 3 and one sentence.
        pleo_server.revoke()
        time.sleep(1.1)  # the access token the CLI would read has expired
        refused = sim_state.add_job(JobSpec(items=5, seed=3))
        out.cli("run-refused", "run", refused, code=3)
    finally:
        out.stop()
    stored = redis_values(rdb)

    # Reprs and errors of every object that holds a secret, built here as the processes do.
    credential = credential_for(oauth, "erp", rdb)
    journal = from_settings(oauth)
    tokens = token_set(pleo_server.issue(), now=time.time())
    shown = " ".join(
        [
            repr(oauth),
            str(oauth),
            repr(credential),
            repr(CredentialStore(rdb, KEY)),
            repr(journal),
            repr(OAuthAuth(credential, refused=lambda error: AuthenticationFailed(error.message))),
            repr(tokens),
            str(tokens),
        ]
    )
    journal.close()

    forms = leak_forms([pleo_server, erp.state.oauth])
    found: list[str] = []
    texts = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    for name, blob in texts.items():
        found += leaks(forms, name, blob)
    for key, value in queued + stored:
        found += leaks(forms, f"Redis {key[:60]!r}", value)
    found += leaks(forms, "a repr", shown.encode())
    found += leaks(forms, "the metrics scrape", metrics_text)
    sentences = [
        *(job.failure_reason or "" for job in sim_state.jobs.values()),
        *(i.failure_reason or "" for job_id in sim_state.jobs for i in sim_state.items(job_id)),
    ]
    found += leaks(forms, "a sentence sent to Pleo", "\n".join(sentences).encode())
    assert found == []

    # The search saw the real thing: tokens issued and refreshed by both sides, the credential
    # stored (encrypted: decrypting it gives a token that was issued), output in volume.
    pleo_counts, erp_counts = dict(pleo_server.counts), dict(erp.state.oauth.counts)
    print(f"oauth secrets: pleo={pleo_counts} erp={erp_counts} forms={len(forms)}")
    assert pleo_counts["refresh_token"] >= 2
    assert erp_counts["refresh_token"] >= 2
    assert erp_counts["refused_refresh"] >= 1
    assert pleo_counts["refused_refresh"] >= 1
    everything = b"\n".join(texts.values())
    assert b"credential_refreshed kind=pleo" in everything
    assert b"credential_refreshed kind=erp" in everything
    assert b"item_booked" in texts["erp-worker.log"]
    assert b"pleo_export_entries_posted_total" in metrics_text
    assert b"Stored the erp credential" in texts["login-erp.err"]
    assert b"auth login" in texts["run-refused.err"]
    assert any(b"accounting system refused" in s.encode() for s in sentences)
    erp_key = b"credentials:erp:" + oauth.erp_connection.encode()
    secrets = [v for k, v in stored if k.endswith(erp_key)]
    plain = [Fernet(KEY.encode()).decrypt(v) for v in secrets if v.startswith(b"gAAAAA")]
    assert plain, "the ERP credential's ciphertext was not in Redis"
    assert any(t.encode() in plain[0] for t in erp.state.oauth.issued())
    assert sum(b"job_id=" in line for line in everything.splitlines()) > ITEMS
    assert len([v for _, v in queued if b'"accounting_entry_id"' in v]) >= ITEMS
    # The detector itself can fail: a bearer header, a Basic one, the key's bytes are caught.
    bearer = f"Authorization: Bearer {erp.state.oauth.issued()[-1]}".encode()
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode())
    assert leaks(forms, "x", bearer) == ["an OAuth token in x"]
    assert leaks(forms, "x", b"Basic " + basic) == ["a client secret in x"]
    assert leaks(forms, "x", b"k=" + base64.urlsafe_b64decode(KEY)) == ["PLEO_CREDENTIALS_KEY in x"]
    tally("OAuth secret spellings searched for", len(forms))
    tally("output bytes scanned for OAuth secrets", len(everything))
