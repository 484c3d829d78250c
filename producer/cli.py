"""The ``pleo-export`` command line (also ``python -m producer``).

Exit status: 0 success (also "nothing to do" and "a live run holds the job"), 2 bad input,
3 a permanent refusal from Pleo, 4 transient failures past the retry budget (or Redis/broker
down), 130 / 143 stopped by SIGINT / SIGTERM (lease released, job handed back), 1 anything else.
Errors are one sentence on stderr, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from contract.errors import BadInput, LeaseHeld, PleoExportError
from contract.ids import is_uuid, validate_job_id, validate_uuid
from contract.names import PRODUCER_QUEUE
from contract.settings import Settings
from producer.auth_cli import auth_group
from producer.erp_sim_command import simulate_erp_command
from producer.sim_command import simulate_command

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _fail(
    message: str,
    code: int,
    report: Callable[[str, int, str], None] | None = None,
    kind: str = "",
) -> None:
    if report is not None:
        report(message, code, kind)
    click.echo(f"pleo-export: {message}", err=True)
    sys.exit(code)


def _json_failure(job_id: object) -> Callable[[str, int, str], None]:
    """Print a failed command's one JSON object: the job, ``status: error``, why, the exit code."""

    def report(message: str, code: int, kind: str) -> None:
        shown_id = job_id if isinstance(job_id, str) and is_uuid(job_id) else None
        failure = {
            "job_id": shown_id,
            "status": "error",
            "error": message,
            "error_type": kind,
            "exit_code": code,
        }
        _out(json.dumps(failure, sort_keys=True))

    return report


def _out(text: str, *, nl: bool = True) -> None:
    """Print a line of the command's output; a reader that went away (``| head``) is no error.

    The rest of the output is dropped and the command ends with its own exit status.
    """
    try:
        click.echo(text, nl=nl)
    except BrokenPipeError:
        # Point stdout at /dev/null so that nothing (the final flush included) writes to the pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _one_sentence(text: str) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith((".", "!", "?")) else text + "."


def guarded(fn: F) -> F:
    """Turn every error into one sentence on stderr and the contract's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # With --json, a failure is one JSON object on stdout too, beside the sentence on stderr.
        report = _json_failure(kwargs.get("job_id")) if kwargs.get("as_json") else None
        try:
            return fn(*args, **kwargs)
        except PleoExportError as exc:
            _fail(_one_sentence(exc.message), exc.exit_code, report, type(exc).__name__)
        except KeyboardInterrupt:
            _fail("Interrupted.", 130, report, "KeyboardInterrupt")
        except Exception as exc:  # the last resort: a sentence, not a traceback
            log.debug("unexpected_error", exc_info=True)
            message = _one_sentence(f"Unexpected error ({type(exc).__name__}): {exc}")
            _fail(message, 1, report, type(exc).__name__)
        return None

    return wrapper  # type: ignore[return-value]


def load_settings() -> Settings:
    """Settings from the environment (a bad value is bad input, exit 2)."""
    return Settings.from_env()


def load_checked_settings() -> Settings:
    """Settings, for a command that writes to Redis: one whose Redis would lose records is refused.

    Exit 2 for a Redis that evicts keys, is a Cluster or keeps nothing on disk (without
    PLEO_REDIS_EPHEMERAL); what cannot be judged is a warning on stderr (contract/redis_check.py).
    """
    from contract.redis_check import check_redis

    settings = load_settings()
    check_redis(settings, warn=lambda text: click.echo(f"pleo-export: warning: {text}", err=True))
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v", "--verbose", count=True, help="Log events to stderr (-v warnings and info, -vv debug)."
)
def main(verbose: int) -> None:
    """Move Pleo export jobs into your ERP: every page, one message per entry, in order, once."""
    # Without -v a command speaks through its output and its one-sentence errors only; the
    # events a run logs on the way (retries, a page total that changed) are for -v.
    level = logging.ERROR if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@guarded
def run(job_id: str, as_json: bool) -> None:
    """Claim, fetch, plan and enqueue JOB_ID in this process (no worker needed)."""
    from contract.celery_app import make_app
    from producer.components import produce
    from producer.interrupt import interruptible
    from producer.run_display import progress_bars, summary_text
    from producer.runner import RunSummary

    settings = load_checked_settings()
    job_id = validate_job_id(job_id)
    app = make_app(settings)
    try:
        with (
            interruptible(),
            progress_bars(enabled=not as_json and sys.stderr.isatty()) as observer,
        ):
            summary = produce(job_id, settings=settings, app=app, observer=observer)
    except LeaseHeld as exc:
        summary = RunSummary(job_id=job_id, status="locked", reason=exc.message)
    _out(summary_text(summary, as_json=as_json))


@main.command()
@click.argument("job_id")
@click.option("--company-id", default=None, help="The job's company, passed to the task.")
@guarded
def enqueue(job_id: str, company_id: str | None) -> None:
    """Send the producer task for JOB_ID to the broker, for a worker to run."""
    from producer.triggers import enqueue as send

    settings = load_checked_settings()
    result = send(job_id, company_id=company_id, settings=settings, source="cli")
    if result.deduplicated:
        _out(
            f"job {result.job_id} was triggered moments ago (task {result.task_id}); "
            "nothing more sent"
        )
        return
    _out(f"enqueued producer task {result.task_id} for job {result.job_id} on {PRODUCER_QUEUE}")


@main.command()
@click.option("--company-id", default=None, help="Only this company's jobs.")
@click.option(
    "--in-progress/--no-in-progress",
    default=True,
    show_default=True,
    help="Also enqueue in_progress jobs (recovery of interrupted runs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@guarded
def poll(company_id: str | None, in_progress: bool, as_json: bool) -> None:
    """Enqueue every pending (and in_progress) job, oldest first: the fallback beside webhooks."""
    from contract.ids import validate_uuid
    from pleo.client import PleoClient, make_http_client
    from producer.poll import poll as poll_jobs

    settings = load_checked_settings()
    if company_id is not None:
        company_id = validate_uuid(company_id, "Company id")
    with make_http_client(settings) as http:
        result = poll_jobs(
            settings,
            client=PleoClient(http, settings),
            include_in_progress=in_progress,
            company_id=company_id,
        )
    if as_json:
        _out(json.dumps(dataclasses.asdict(result), sort_keys=True))
        return
    _out(
        f"found {result.found} jobs: enqueued {result.enqueued}, "
        f"{result.deduplicated} already triggered moments ago"
    )
    for job_id in result.job_ids:
        _out(f"  {job_id}")


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@guarded
def status(job_id: str, as_json: bool) -> None:
    """Show JOB_ID's progress as the producer and the ERP workers recorded it in Redis."""
    from contract.store import ledger_client
    from producer.status import job_status

    settings = load_settings()
    job_id = validate_job_id(job_id)
    view = job_status(ledger_client(settings), job_id)
    if as_json:
        _out(json.dumps(view, sort_keys=True))
        return
    if view["state"] == "unknown" and not view["published_total"]:
        _out(f"No run of job {job_id} is recorded in Redis.")
        return
    for key in sorted(view):
        _out(f"{key:>18}: {view[key]}")


@main.command()
@click.argument("job_id")
@click.option(
    "--url",
    default="http://127.0.0.1:8000/webhooks/pleo",
    show_default=True,
    help="The receiver to deliver to.",
)
@click.option("--company-id", default=None, help="The job's companyId in the delivery.")
@guarded
def deliver(job_id: str, url: str, company_id: str | None) -> None:
    """Send a signed v1.export-job.created for JOB_ID to a webhook receiver, as Pleo would.

    Signed with PLEO_WEBHOOK_SECRET; prints the receiver's answer. For trying a receiver out:
    Pleo sends the real ones.
    """
    import httpx

    from devtools.deliveries import deliver as send

    settings = load_settings()
    job_id = validate_job_id(job_id)
    if company_id is not None:
        company_id = validate_uuid(company_id, "Company id")
    if not settings.webhook_secret:
        raise BadInput("Set PLEO_WEBHOOK_SECRET to the receiver's whsec_ secret to sign with.")
    job = {"id": job_id, "companyId": company_id, "status": "pending", "expiresIn": 3600}
    try:
        answer = send(url, job, settings.webhook_secret)
    except httpx.HTTPError as exc:
        raise PleoExportError(f"Could not deliver to {url}: {type(exc).__name__}.") from exc
    _out(f"{answer.status_code} {answer.text}")
    if not answer.is_success:
        raise PleoExportError(f"The receiver at {url} answered {answer.status_code}, not 2xx.")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@guarded
def webhook(host: str, port: int) -> None:
    """Run the webhook receiver for Pleo's v1.export-job.created (POST /webhooks/pleo)."""
    from producer.webhook import serve

    serve(load_checked_settings(), host, port, on_listening=_listening("webhook receiver"))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8001, show_default=True, type=click.IntRange(0, 65535))
@guarded
def api(host: str, port: int) -> None:
    """Run the HTTP enqueue API for other services (POST /v1/enqueue, PLEO_ENQUEUE_API_TOKEN)."""
    from producer.enqueue_api import serve

    serve(load_checked_settings(), host, port, on_listening=_listening("enqueue API"))


def _listening(what: str) -> Callable[[str], None]:
    """What a server command says once it listens: where to send requests (on stderr)."""

    def say(url: str) -> None:
        click.echo(f"pleo-export: the {what} listens at {url}", err=True)

    return say


@main.command(name="requeue-parked")
@click.option("--job", "job_id", default=None, help="Only this job's parked messages.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@guarded
def requeue_parked(job_id: str | None, as_json: bool) -> None:
    """Put the item messages workers parked (unknown schema) back on the queue, each once."""
    from contract.celery_app import make_app
    from contract.dead_letters import requeue
    from contract.store import ledger_client

    settings = load_settings()
    job_id = None if job_id is None else validate_job_id(job_id)
    moved = requeue(
        ledger_client(settings),
        make_app(settings),
        settings.broker_url,
        redis_broker=settings.uses_redis_broker,
        job_id=job_id,
    )
    if as_json:
        _out(json.dumps({"job_id": job_id, "requeued": moved}, sort_keys=True))
        return
    scope = f"of job {job_id} " if job_id else ""
    _out(f"requeued {moved} parked messages {scope}onto the items queue")


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: a header line, a row per entry.")
@guarded
def report(job_id: str, as_json: bool, as_csv: bool) -> None:
    """Print JOB_ID's audit manifest from the audit sink (never from Redis), for reconciling.

    Exit 3 when the sink holds no manifest of the job, 4 when the sink cannot be reached.
    """
    from consumers.audit_sinks import open_sink
    from contract.manifest import ManifestNotFound
    from producer.report import csv_text, table_text

    if as_json and as_csv:
        raise BadInput("Choose one of --json and --csv.")
    settings = load_settings()
    job_id = validate_job_id(job_id)
    sink = open_sink(settings)
    try:
        manifest = sink.read(job_id)
    finally:
        sink.close()
    if manifest is None:
        raise ManifestNotFound(
            f"No audit manifest of job {job_id} is in {sink.where} (it is written once the job "
            "has its final event).",
            job_id=job_id,
        )
    if as_json:
        _out(json.dumps(manifest.as_dict(), sort_keys=True))
    elif as_csv:
        _out(csv_text(manifest), nl=False)
    else:
        _out(table_text(manifest))


@main.command()
@click.argument("job_id")
@click.option(
    "--force",
    is_flag=True,
    help="Purge a busy job too (active, running, waiting to be closed, or with messages queued): "
    "its queued and unacked messages are deleted as well.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@guarded
def purge(job_id: str, force: bool, as_json: bool) -> None:
    """Remove JOB_ID's data from Redis now (Pleo and the ERP keep theirs)."""
    from producer.purge import purge as purge_from_redis

    purged = purge_from_redis(load_settings(), validate_job_id(job_id), force=force)
    if as_json:
        _out(json.dumps(purged.as_dict(), sort_keys=True))
        return
    _out(
        f"purged export job {job_id}: {purged.keys} keys, {purged.queued} queued, "
        f"{purged.unacked} unacked and {purged.parked} parked messages"
    )


@main.command()
@click.option(
    "--items",
    default=3000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Entries in the sample export job.",
)
@click.option("--no-input", is_flag=True, help="Never wait for Enter at the end.")
@click.option("--erp", type=click.Choice(["sql", "http"]), default="sql", show_default=True)
@click.option("--receipts", is_flag=True, help="Transfer each entry's receipt to the ERP too.")
@guarded
def demo(items: int, no_input: bool, erp: str, receipts: bool) -> None:
    """Run the whole pipeline on this machine: simulator, Redis, webhook, workers, summary.

    --erp http posts to the ERP simulator through the HTTP adapter instead of a SQLite journal.
    """
    from devtools.demo import run_from_cli

    run_from_cli(items=items, no_input=no_input, erp=erp, receipts=receipts)


main.add_command(simulate_command(guarded, load_settings))
main.add_command(simulate_erp_command(guarded))
main.add_command(auth_group(guarded, load_checked_settings))

if __name__ == "__main__":  # pragma: no cover
    main()
