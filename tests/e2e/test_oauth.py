"""OAuth end to end: tokens that expire mid-job, refresh tokens revoked mid-job.

Real Redis, the Pleo and ERP simulators over HTTP with their OAuth servers on, a producer run in
this process and real ``celery -A consumers worker`` processes. What is checked is what the
simulators counted: refreshes granted, refresh tokens presented twice, 401s, the job's end.
"""

from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from contract.celery_app import make_app
from contract.errors import AuthenticationFailed
from contract.keys import outbox_key, results_key, sending_key
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.oauth_server import OAuthServer
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from producer.status import job_status
from tests.conftest import wait_for, with_settings
from tests.support.local import journal_ids, worker_log
from tests.support.oauth import CLIENT_ID, CLIENT_SECRET, KEY, oauth_env, pleo_oauth, seed

pytestmark = [pytest.mark.integration, pytest.mark.worker]

ENDED = {"completed", "completed_with_errors", "failed"}
_REFRESHED = re.compile(r"credential_refreshed kind=pleo")
_ENDING_WAITED = re.compile(r"erp_ending_waited job_id=\S+ posts=(\d+) seconds=([\d.]+)")


def ended(state: SimState, job_id: str) -> str | None:
    status = state.jobs[job_id].status
    return status if status in ENDED else None


def test_tokens_expiring_mid_job_one_refresh_per_expiry(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, tmp_path: Path
) -> None:
    """Access tokens living 1 s (refreshed 0.4 s ahead) through a whole job: the producer and
    four worker processes never stop, and the fleet makes one refresh per token lifetime, never
    presenting a rotated refresh token again."""
    lifetime, ahead = 1.0, 0.4
    oauth = pleo_oauth(settings, sim_state, lifetime=lifetime, ahead=ahead)
    assert sim_state.oauth is not None
    seed(rdb, sim_state.oauth)
    sim_state.latency = 0.03
    job_id = sim_state.add_job(JobSpec(items=1500, item_statuses={"pending": 1.0}))
    for _ in range(4):
        start_worker("consumers", ITEMS_QUEUE, settings_=oauth, **oauth_env(oauth))
    # Timed from when all four consume: the whole job then makes Pleo calls.
    wait_for(
        lambda: all(" ready." in worker_log(tmp_path, i) for i in range(4)),
        timeout=60,
        what="four workers ready",
    )
    started = time.monotonic()
    produce(job_id, settings=oauth, app=make_app(oauth))
    status = wait_for(
        lambda: ended(sim_state, job_id),
        timeout=120,
        what="the job to end",
        explain=lambda: (job_status(rdb, job_id), dict(sim_state.oauth.counts)),  # type: ignore[union-attr]
    )
    took = time.monotonic() - started
    counts = dict(sim_state.oauth.counts)
    assert status == "completed"
    assert len(journal_ids(oauth)) == 1500
    assert counts.get("reused_refresh", 0) == 0
    assert counts.get("refused_refresh", 0) == 0
    # A token is refreshed once it is within `ahead` of its expiry, by one process: one refresh
    # per (lifetime - ahead) seconds at most (fewer while the fleet makes no Pleo call: workers
    # starting, posting between write-backs).
    refreshes = counts["refresh_token"]
    assert 3 <= refreshes <= math.ceil(took / (lifetime - ahead)) + 1
    # Refreshed ahead of expiry, so no request should go out with an expired token; one held up
    # longer than `ahead` on its way (a loaded machine) is answered 401, refreshed and retried.
    assert counts.get("expired_or_unknown_token", 0) <= 2
    by_worker = [len(_REFRESHED.findall(worker_log(tmp_path, i))) for i in range(4)]
    print(f"oauth_mid_job took={took:.1f}s refreshes={refreshes} by_worker={by_worker}")
    assert sum(by_worker) <= refreshes
    secrets = [*sim_state.oauth.issued(), KEY, CLIENT_SECRET]
    assert len(secrets) >= 2 * refreshes + 2
    for index in range(4):
        text = worker_log(tmp_path, index)
        assert not [s for s in secrets if s in text], f"a secret in worker-{index}.log"
    stored = b" ".join(
        part
        for key in rdb.scan_iter(count=1000)
        if rdb.type(key) == b"hash"
        for pair in rdb.hgetall(key).items()
        for part in pair
    )
    assert stored  # the job's records and the credential are there to be searched
    assert not [s for s in secrets if s.encode() in stored], "a secret in a Redis hash"


def test_pleo_refresh_revoked_mid_run_fails_the_job_with_authentication_failure(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """The grant is withdrawn once the run has claimed the job: the refresh ahead of expiry is
    refused, the run fails, and the token still alive carries its `failed` event to Pleo."""
    oauth = pleo_oauth(settings, sim_state, lifetime=2.0, ahead=1.0)
    oauth = with_settings(oauth, page_size=10, page_concurrency=1)
    assert sim_state.oauth is not None
    seed(rdb, sim_state.oauth)
    sim_state.latency = 0.05
    job_id = sim_state.add_job(JobSpec(items=400, item_statuses={"pending": 1.0}))
    server = sim_state.oauth

    def withdraw_once_claimed() -> None:
        wait_for(lambda: sim_state.jobs[job_id].status == "in_progress", timeout=10, what="claim")
        server.revoke(access=False)

    watcher = threading.Thread(target=withdraw_once_claimed)
    watcher.start()
    with pytest.raises(AuthenticationFailed) as failed:
        produce(job_id, settings=oauth, app=make_app(oauth))
    watcher.join()
    assert failed.value.exit_code == 3
    job = sim_state.jobs[job_id]
    assert job.status == "failed"
    assert job.failure_reason_type == "authentication_failure"
    assert "invalid_grant" in (job.failure_reason or "")
    assert job_status(rdb, job_id)["state"] == "failed"
    assert server.counts["refused_refresh"] >= 1
    assert rdb.llen(ITEMS_QUEUE) == 0  # nothing published from a run that failed


GOVERNED = {"ERP_CALLS": "400", "ERP_PERIOD": "1", "ERP_CONCURRENCY": "2"}


@pytest.mark.parametrize(
    ("workers", "latency", "limits", "receipts"),
    [
        pytest.param(2, 0.01, GOVERNED, False, id="governed"),
        # Two processes of two pool processes each, and posts that take 1 s once past the
        # ERP's auth check: when the grant goes, posts of other processes are in flight.
        pytest.param(2, 1.0, {}, False, id="plain"),
        # Receipts on: the refusal may meet an entry's upload, after the ERP booked it.
        pytest.param(2, 0.01, GOVERNED, True, id="governed-receipts"),
        pytest.param(2, 0.5, {}, True, id="plain-receipts"),
    ],
)
def test_erp_refresh_revoked_mid_job_ends_it_and_reports_every_booking(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Any,
    erp_sim: Any,
    tmp_path: Path,
    workers: int,
    latency: float,
    limits: dict[str, str],
    receipts: bool,
) -> None:
    """The ERP's grant revoked mid-job, several workers posting: the job ends `failed` with
    accounting_system_authentication_failure exactly once, after every entry the ERP booked
    (those in flight at the revocation too, those whose receipt upload met the refusal) is
    reported; nothing is left in the outbox."""
    erp = erp_sim(latency=latency)
    erp.state.oauth = OAuthServer(CLIENT_ID, CLIENT_SECRET, access_lifetime=600)
    erp_settings = with_settings(
        settings,
        credentials_key=KEY,
        erp_oauth_client_id=CLIENT_ID,
        erp_oauth_client_secret=CLIENT_SECRET,
        erp_oauth_token_url=f"{erp.url}/oauth/token",
    )
    seed(rdb, erp.state.oauth, kind="erp", name=settings.erp_connection)
    job_id = sim_state.add_job(JobSpec(items=600, item_statuses={"pending": 1.0}))
    env = {
        **oauth_env(erp_settings),
        "ERP_ADAPTER": "consumers.erp_http:from_settings",
        "ERP_HTTP_URL": erp.url,
        "PLEO_CLOSE_INTERVAL": "3600",
        **limits,
    }
    if receipts:
        sim_state.receipts.configure(size=1024)
        env.update(ERP_RECEIPTS="1", ERP_HTTP_ATTACHMENTS_URL=f"{erp.url}/journal/attachments")
    produce(job_id, settings=settings, app=make_app(settings))
    for _ in range(workers):
        start_worker("consumers", ITEMS_QUEUE, concurrency=2, **env)
    wait_for(lambda: len(erp.state.bookings()) >= 12, timeout=60, what="12 bookings")
    revoked_at = time.monotonic()
    erp.state.oauth.revoke()
    booked_at_revocation = len(erp.state.bookings())
    status = wait_for(
        lambda: ended(sim_state, job_id),
        timeout=90,
        what="the job to end",
        explain=lambda: job_status(rdb, job_id),
    )
    ended_after = time.monotonic() - revoked_at
    time.sleep(2.0)  # a post still on its way would land by now (1 s each)
    job = sim_state.jobs[job_id]
    assert status == "failed"
    assert job.failure_reason_type == "accounting_system_authentication_failure"
    finals = [e for e in sim_state.events(job_id) if e.event != "started" and e.accepted]
    assert [(e.event, e.failure_reason_type) for e in finals] == [
        ("failed", "accounting_system_authentication_failure")
    ]
    booked = {b.accounting_entry_id for b in erp.state.bookings()}
    items = sim_state.items(job_id)
    successful = {i.accounting_entry_id for i in items if i.status == "successful"}
    # A booked entry whose receipt met the refusal is reported with that receipt's reason.
    unattached = {
        i.accounting_entry_id
        for i in items
        if i.status == "failed" and i.failure_reason_type == "receipt_upload_failure"
    }
    assert 12 <= len(booked) < 600
    assert successful | unattached == booked  # every booking reported, nothing else claimed
    if receipts:
        attached = {a.accounting_entry_id for a in erp.state.attachments.stored()}
        assert successful <= attached
    else:
        assert not unattached
    assert rdb.hlen(outbox_key(job_id)) == 0
    assert rdb.scard(sending_key(job_id)) == 0
    assert rdb.hlen(results_key(job_id)) == len(booked)
    counts = dict(erp.state.oauth.counts)
    assert counts["refused_refresh"] >= 1
    # On the plain connection each worker that met the refusal waited for the posts in flight
    # (consumers/ending.py): what they saw, from their logs.
    waits = [
        (int(posts), float(seconds))
        for index in range(workers)
        for posts, seconds in _ENDING_WAITED.findall(worker_log(tmp_path, index))
    ]
    if not limits:
        assert waits, "no worker ended the job"
        # Four pool processes post back to back: when one meets the refusal, others are mid-post.
        assert max(posts for posts, _ in waits) >= 1
    print(
        f"oauth_erp_revoked booked_at_revocation={booked_at_revocation} booked={len(booked)} "
        f"reported={len(successful)}+{len(unattached)} ended_after={ended_after:.1f}s "
        f"waits={waits} "
        f"counts={counts}"
    )


def test_pleo_grant_revoked_mid_job_keeps_every_result_until_login(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """Pleo's grant revoked while workers report: posting goes on, the results wait in the
    outbox (nothing dropped, the job not failed), and once tokens are stored again (a new login)
    every entry is reported once and the job completes."""
    oauth = pleo_oauth(settings, sim_state, lifetime=600)
    server = sim_state.oauth
    assert server is not None
    seed(rdb, server)
    job_id = sim_state.add_job(JobSpec(items=600, item_statuses={"pending": 1.0}))
    produce(job_id, settings=oauth, app=make_app(oauth))
    # Write-backs of 0.2 s each: the revocation below lands before the job's last PUT (on a
    # loaded machine the six PUTs once went by before the poll below saw the first).
    sim_state.latency = 0.2
    for _ in range(2):
        start_worker("consumers", ITEMS_QUEUE, settings_=oauth, **oauth_env(oauth))

    def reported() -> int:
        return sum(1 for i in sim_state.items(job_id) if i.status == "successful")

    wait_for(lambda: reported() >= 50, timeout=60, what="50 entries reported")
    server.revoke()
    wait_for(lambda: len(journal_ids(oauth)) == 600, timeout=60, what="every entry posted")
    time.sleep(1.0)  # write-backs tried and refused meanwhile
    waiting = rdb.hlen(outbox_key(job_id))
    assert waiting > 0
    assert sim_state.jobs[job_id].status == "in_progress"
    assert reported() + waiting + rdb.scard(sending_key(job_id)) >= 600 - 100
    # What `pleo-export status` shows meanwhile: why the results wait, and what to do.
    stuck = wait_for(
        lambda: (view := job_status(rdb, job_id)).get("credentials_refused") and view,
        timeout=30,
        what="the refusal noted for status",
    )
    assert "pleo-export auth login" in stuck["credentials_refused"]
    assert "pleo-export auth login" in stuck["action"]
    assert "results wait" in stuck["action"]
    seed(rdb, server)  # 'pleo-export auth login' again
    status = wait_for(
        lambda: ended(sim_state, job_id),
        timeout=90,
        what="the job to complete after the new login",
        explain=lambda: job_status(rdb, job_id),
    )
    assert status == "completed"
    assert reported() == 600
    assert set(sim_state.update_counts(job_id).values()) == {1}
    assert rdb.hlen(outbox_key(job_id)) == 0
    assert server.counts["refused_refresh"] >= 1
    done = job_status(rdb, job_id)
    assert "credentials_refused" not in done
    assert "action" not in done
    print(f"oauth_pleo_revoked waiting_at_revocation={waiting} counts={dict(server.counts)}")


def test_pleo_grant_revoked_outright_leaves_status_saying_what_to_do(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Pleo revokes the grant and its access tokens once the run claimed the job: the `failed`
    event cannot be sent (inherent), and the log and `pleo-export status` say so and name
    `pleo-export auth login`."""
    oauth = pleo_oauth(settings, sim_state, lifetime=600)
    oauth = with_settings(oauth, page_size=10, page_concurrency=1)
    server = sim_state.oauth
    assert server is not None
    seed(rdb, server)
    sim_state.latency = 0.05
    job_id = sim_state.add_job(JobSpec(items=400, item_statuses={"pending": 1.0}))

    def revoke_once_paging() -> None:
        # Once the run pages (the claim is behind it): the run then knows the job in_progress.
        wait_for(
            lambda: any(c.path.endswith("/items") for c in sim_state.calls),
            timeout=10,
            what="the first page",
        )
        server.revoke()

    watcher = threading.Thread(target=revoke_once_paging)
    watcher.start()
    with pytest.raises(AuthenticationFailed):
        produce(job_id, settings=oauth, app=make_app(oauth))
    watcher.join()
    assert sim_state.jobs[job_id].status == "in_progress"  # Pleo could not be told
    assert [e.event for e in sim_state.events(job_id) if e.accepted] == ["started"]
    view = job_status(rdb, job_id)
    assert view["state"] == "failed"
    assert "pleo-export auth login" in view["final_event_unsent"]
    assert "Pleo was not told" in view["action"]
    assert "pleo-export auth login" in view["action"]
    unsent = [r.getMessage() for r in caplog.records if "final_event_unsent" in r.getMessage()]
    assert len(unsent) == 1
    assert "auth login" in unsent[0]
    # As the action says: sign in again and run the job again; it is published this time.
    seed(rdb, server)
    rerun = produce(job_id, settings=oauth, app=make_app(oauth))
    assert rerun.status == "enqueued"
    assert rerun.enqueued == 400
    assert "action" not in job_status(rdb, job_id)
    print(f"oauth_pleo_revoked_outright action={view['action']!r} counts={dict(server.counts)}")
