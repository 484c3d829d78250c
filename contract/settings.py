"""One frozen Settings object, built from the environment in one place; its repr hides secrets."""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from contract.env_values import connection_name as _connection_name
from contract.env_values import factory_path as _factory_path
from contract.env_values import flag as _flag
from contract.env_values import header_name as _header_name
from contract.env_values import number as _number
from contract.env_values import optional_flag as _optional_flag
from contract.env_values import optional_number as _optional
from contract.errors import BadInput, shown
from contract.message import READS

Ordering = Literal["booked_at", "entry_id"]


_SECRET_FIELDS = frozenset(
    {
        "api_token",
        "api_key",
        "webhook_secret",
        "enqueue_api_token",
        "erp_http_auth",
        # OAuth (contract/credentials.py)
        "credentials_key",
        "pleo_oauth_client_secret",
        "erp_oauth_client_secret",
    }
)
_URL_FIELDS = frozenset(
    {"redis_url", "broker_url", "erp_database_url", "erp_http_url", "erp_http_attachments_url"}
)
_USERINFO = re.compile(r"(//[^/@:]*:)[^/@]*@")
_REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
# Redis broker schemes kombu's Redis transports take (``sentinel``: redis.sentinel discovers it).
_REDIS_BROKER_SCHEMES = frozenset({"redis", "rediss", "unix", "sentinel"})
# Pleo documents no maximum for ``limit``; a page this large is already 25 MB of export items.
MAX_PAGE_SIZE = 10_000
# PLEO_RABBITMQ_QUEUE_TYPE's choices (contract/celery_app.py declares the queues with it).
QUEUE_TYPES = ("classic", "quorum")
# ERP_RECEIPT_TYPES' default: what receipts are (Pleo stores PDFs and photos) and ERPs take.
RECEIPT_TYPES = (
    "application/pdf",
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/heic",
    "image/webp",
    "image/tiff",
)
# Pages of one layer in flight at most: each is a connection and a page held in memory.
MAX_CONCURRENCY = 32


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (user names stay: they help).

    A list of Sentinel URLs (``sentinel://a:26379;sentinel://b:26379``) is redacted URL by URL.
    """
    if ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        # Not a URL urlsplit can take apart: hide whatever sits between "//user:" and "@".
        return _USERINFO.sub(r"\1***@", url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the producer and workers are configured by (the README's table)."""

    api_url: str = "https://external.pleo.io"
    api_token: str | None = field(default=None)
    api_key: str | None = field(default=None)
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = "redis://127.0.0.1:6379/0"
    page_size: int = 100
    webhook_secret: str | None = None
    # The bearer token callers of the HTTP enqueue API send (``pleo-export api`` needs one).
    enqueue_api_token: str | None = None
    erp_database_url: str = "sqlite:///erp-journal.sqlite3"
    # The ERP adapter: ``package.module:callable`` taking Settings (consumers/adapters.py).
    erp_adapter: str = "consumers.erp_sql:from_settings"
    ordering: Ordering = "booked_at"
    # HTTP: per-request timeout, and the retry layer's limits (one layer, in the client).
    http_timeout: float = 10.0
    retry_budget: float = 60.0
    retry_attempts: int = 8
    backoff_initial: float = 0.25
    backoff_max: float = 10.0
    retry_after_max: float = 30.0
    # Safety stop for a cursor walk, whatever the API claims.
    max_pages: int = 100_000
    # Ledger: lease lock, how long a second run waits for it, dedup marks' lifetime.
    lease_ttl: float = 10.0
    lease_wait: float = 3.0
    dedup_ttl: int = 30 * 24 * 3600
    publish_batch: int = 500
    # Redis broker: seconds before a message taken by a worker that died is delivered again.
    # Longer than the slowest task (a producer run of a large job), shorter than users' patience.
    visibility_timeout: int = 3600
    # Whole-run retries of the Celery task (after the client's own retries gave up): base delay.
    run_retry_delay: float = 5.0
    # ERP workers: how long results wait before a partial batch is written back to Pleo, how
    # often Pleo may refuse one item's update before we stop offering it, and how long the ERP
    # may stay unreachable before the job is failed with accounting_system_unreachable.
    report_interval: float = 2.0
    report_max_attempts: int = 5
    erp_unreachable_limit: float = 600.0
    erp_retry_delay: float = 5.0
    erp_url_template: str | None = None
    # ERP workers' repair sweep (consumers/repair.py): a published job quiet for this many
    # seconds is searched for messages the Redis transport lost; every this many seconds.
    repair_stall: float = 60.0
    repair_interval: float = 0.0  # 0: a third of repair_stall, between 1 and 60 s
    # Triggers of one job (webhook, cron, CLI) within this many seconds send one producer task.
    trigger_window: float = 60.0
    # The supervisor (contract/supervisor.py, in every worker): how often one worker of the fleet
    # looks at the active jobs, and how long a job may show no sign of a producer run before its
    # run counts as dead and a new producer task is sent.
    supervise_interval: float = 5.0
    dead_run_after: float = 15.0
    # Workers' GET /metrics (contract/metrics_endpoint.py) listens on this port; 0: no endpoint.
    metrics_port: int = 0
    # Start-up check of Redis (contract/redis_check.py): a Redis that keeps nothing on disk is
    # refused unless this says it may be ephemeral: for tests and demos, never in production.
    redis_ephemeral: bool = False
    # The Sentinel master's name (``sentinel monitor <name> ...``): required when REDIS_URL or
    # CELERY_BROKER_URL is a sentinel:// URL, for the ledger's client and the broker alike.
    redis_sentinel_master: str | None = None
    # Where each finished job's audit manifest is kept (consumers/audit_sinks.py): "erp" (tables
    # beside the ERP journal, in ERP_DATABASE_URL) or "file:///folder" (one JSON file per job).
    audit_sink: str = "erp"
    # Retention (consumers/closing.py): seconds a closed job's ids, outcomes and counts stay in
    # Redis after its final event (0: deleted once closed), and how often the ERP workers close
    # finished jobs (one worker of the fleet at a time).
    retention: int = 7 * 24 * 3600
    close_interval: float = 10.0
    # Item message schemas (contract/schemas.py): what producers and the repair sweep write
    # (None: auto, the oldest every live ERP worker reads), and what an ERP worker reads (both
    # by default; "1" plays a worker from before schema 2, for upgrade rehearsals).
    message_schema: int | None = None
    reads_schemas: frozenset[int] = READS
    # ERP governance (consumers/budget.py, consumers/poster.py): the connection's name (budgets,
    # pauses and posting slots are keyed by it and by company), and overrides of what the adapter
    # declares it can take (consumers.erp.ERPLimits; None: as declared).
    erp_connection: str = "default"
    erp_calls: int | None = None
    erp_period: float | None = None
    erp_burst: int | None = None
    erp_concurrency: int | None = None
    erp_batch_size: int | None = None
    erp_ordered: bool | None = None
    # How long the ERP keeps an idempotency key: a post retried after this looks the entry up
    # first. And how long an ordered job waits for the message of its next entry before its
    # poster reads that entry from the job's plan itself.
    erp_key_window: float = 24 * 3600.0
    erp_order_wait: float = 30.0
    # Posters per ERP worker process, each a thread holding one posting slot at a time: calls
    # in flight at once from one process (the connection's concurrency still caps the fleet's).
    erp_poster_threads: int = 4
    # Item messages an ERP worker's main process holds per pool process (Celery's prefetch
    # multiplier). 1, as measured: the main process's own work per message (fetch, ack, task
    # events) is what bounds a worker, and more prefetch did not raise the rate (README).
    erp_prefetch_multiplier: int = 1
    # The HTTP journal (ERP_ADAPTER=consumers.erp_http:from_settings): the ERP's base URL, the
    # auth header's value and name, the idempotency header's name, the ERP's names for the body's
    # fields (a JSON object, checked by the adapter), the per-call timeout, and the entries its
    # batch endpoint takes per call (0 or 1: it has none).
    erp_http_url: str | None = None
    erp_http_auth: str | None = None
    erp_http_auth_header: str = "Authorization"
    erp_http_idempotency_header: str = "Idempotency-Key"
    erp_http_fields: str | None = None
    erp_http_timeout: float = 10.0
    erp_http_batch: int = 0
    # RabbitMQ: the type the two queues are declared with ("classic", or "quorum": replicated,
    # the production choice; a queue's type is fixed when it is first declared).
    rabbitmq_queue_type: str = "classic"
    # Pages of one layer in flight at once (pleo/offset_walk.py): 1 is the cursor walk alone;
    # more reads by ``offset`` and proves the pages complete, else falls back to the cursor walk.
    page_concurrency: int = 4
    # Receipts (consumers/receipts.py): whether booked entries' files go to an adapter that takes
    # attachments; the largest file taken; the media types taken; how long Pleo's file URLs live
    # from the fetch (24 h); one download's timeout. ERP_HTTP_ATTACHMENTS_URL: where the HTTP
    # journal uploads them (unset: that adapter takes none).
    erp_receipts: bool = False
    erp_receipt_max_bytes: int = 10 * 1024 * 1024
    erp_receipt_types: tuple[str, ...] = RECEIPT_TYPES
    pleo_file_url_lifetime: float = 24 * 3600.0
    erp_receipt_timeout: float = 30.0
    erp_http_attachments_url: str | None = None
    # OAuth credentials (contract/credentials.py, producer/auth_cli.py): the Fernet key(s) the
    # stored tokens are encrypted with; Pleo's OAuth client and endpoints, and the company whose
    # stored credential this process uses (when no PLEO_API_TOKEN/KEY is set and a client id is);
    # the ERP's, for the HTTP adapter (when no ERP_HTTP_AUTH is set and a client id is); how long
    # before its expiry an access token is refreshed.
    credentials_key: str | None = None
    pleo_oauth_client_id: str | None = None
    pleo_oauth_client_secret: str | None = None
    pleo_oauth_authorize_url: str = "https://auth.pleo.io/oauth/authorize"
    pleo_oauth_token_url: str = "https://auth.pleo.io/oauth/token"  # noqa: S105 - a URL
    pleo_oauth_scope: str = "export-jobs:read export-jobs:write export-items:read"
    pleo_oauth_company: str = "default"
    erp_oauth_client_id: str | None = None
    erp_oauth_client_secret: str | None = None
    erp_oauth_authorize_url: str | None = None
    erp_oauth_token_url: str | None = None
    erp_oauth_scope: str = ""
    token_refresh_ahead: float = 60.0

    @property
    def pleo_uses_oauth(self) -> bool:
        """Pleo is called with stored OAuth tokens: a client id, and no static token or key."""
        return self.pleo_oauth_client_id is not None and not (self.api_token or self.api_key)

    @property
    def erp_uses_oauth(self) -> bool:
        """The HTTP adapter sends stored OAuth tokens: a client id is set, and no ERP_HTTP_AUTH."""
        return self.erp_oauth_client_id is not None and self.erp_http_auth is None

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value is not None:
                value = "***"
            elif f.name in _URL_FIELDS and value is not None:
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def uses_redis_broker(self) -> bool:
        """True when the Celery broker is Redis, so publishing can be one Redis transaction."""
        return urlsplit(self.broker_url).scheme in _REDIS_BROKER_SCHEMES

    @property
    def ledger_url(self) -> str:
        """Where the ledger lives: the broker's Redis when the broker is Redis, else REDIS_URL.

        Marks and messages must share one Redis for the publish to be a single transaction.
        """
        return self.broker_url if self.uses_redis_broker else self.redis_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build Settings from ``env`` (default ``os.environ``); a bad value raises BadInput."""
        env = os.environ if env is None else env
        d = cls()
        redis_url = _url(env, "REDIS_URL", d.redis_url, _REDIS_SCHEMES, "Redis")
        broker_url = _url(
            env,
            "CELERY_BROKER_URL",
            redis_url,
            _broker_schemes(),
            "broker",
            examples=("redis", "amqp"),
        )
        ordering = env.get("PLEO_ORDERING", "booked_at")
        if ordering not in ("booked_at", "entry_id"):
            raise BadInput(
                f"PLEO_ORDERING must be 'booked_at' or 'entry_id', not {shown(ordering)}."
            )
        api_url = _url(env, "PLEO_API_URL", d.api_url, ("http", "https"), "http(s)").rstrip("/")
        return cls(
            api_url=api_url,
            api_token=env.get("PLEO_API_TOKEN") or None,
            api_key=env.get("PLEO_API_KEY") or None,
            redis_url=redis_url,
            broker_url=broker_url,
            page_size=_number(env, "PLEO_PAGE_SIZE", d.page_size, int, low=1, high=MAX_PAGE_SIZE),
            webhook_secret=env.get("PLEO_WEBHOOK_SECRET") or None,
            enqueue_api_token=env.get("PLEO_ENQUEUE_API_TOKEN") or None,
            erp_database_url=env.get("ERP_DATABASE_URL") or d.erp_database_url,
            erp_adapter=_factory_path(env, "ERP_ADAPTER", d.erp_adapter),
            ordering=ordering,  # type: ignore[arg-type]  # checked just above
            http_timeout=_number(env, "PLEO_HTTP_TIMEOUT", d.http_timeout, float, low=0.1),
            retry_budget=_number(env, "PLEO_RETRY_BUDGET", d.retry_budget, float, low=0),
            retry_attempts=_number(env, "PLEO_RETRY_ATTEMPTS", d.retry_attempts, int, low=1),
            backoff_initial=_number(env, "PLEO_BACKOFF_INITIAL", d.backoff_initial, float, low=0),
            backoff_max=_number(env, "PLEO_BACKOFF_MAX", d.backoff_max, float, low=0),
            retry_after_max=_number(env, "PLEO_RETRY_AFTER_MAX", d.retry_after_max, float, low=0),
            max_pages=_number(env, "PLEO_MAX_PAGES", d.max_pages, int, low=1),
            lease_ttl=_number(env, "PLEO_LEASE_TTL", d.lease_ttl, float, low=1),
            lease_wait=_number(env, "PLEO_LEASE_WAIT", d.lease_wait, float, low=0),
            dedup_ttl=_number(env, "PLEO_DEDUP_TTL", d.dedup_ttl, int, low=3600),
            publish_batch=_number(env, "PLEO_PUBLISH_BATCH", d.publish_batch, int, low=1),
            visibility_timeout=_number(
                env, "PLEO_VISIBILITY_TIMEOUT", d.visibility_timeout, int, low=1
            ),
            run_retry_delay=_number(env, "PLEO_RUN_RETRY_DELAY", d.run_retry_delay, float, low=0),
            report_interval=_number(
                env, "PLEO_REPORT_INTERVAL", d.report_interval, float, low=0.05
            ),
            report_max_attempts=_number(
                env, "PLEO_REPORT_MAX_ATTEMPTS", d.report_max_attempts, int, low=1
            ),
            erp_unreachable_limit=_number(
                env, "ERP_UNREACHABLE_LIMIT", d.erp_unreachable_limit, float, low=0
            ),
            erp_retry_delay=_number(env, "ERP_RETRY_DELAY", d.erp_retry_delay, float, low=0),
            erp_url_template=env.get("ERP_EXTERNAL_URL_TEMPLATE") or None,
            repair_stall=_number(env, "ERP_REPAIR_STALL", d.repair_stall, float, low=0.1),
            repair_interval=_number(env, "ERP_REPAIR_INTERVAL", d.repair_interval, float, low=0),
            trigger_window=_number(env, "PLEO_TRIGGER_WINDOW", d.trigger_window, float, low=0.001),
            supervise_interval=_number(
                env, "PLEO_SUPERVISE_INTERVAL", d.supervise_interval, float, low=0.1
            ),
            dead_run_after=_number(env, "PLEO_DEAD_RUN_AFTER", d.dead_run_after, float, low=1),
            metrics_port=_number(env, "PLEO_METRICS_PORT", d.metrics_port, int, low=0, high=65535),
            redis_ephemeral=_flag(env, "PLEO_REDIS_EPHEMERAL", d.redis_ephemeral),
            redis_sentinel_master=_sentinel_master(env, redis_url, broker_url),
            audit_sink=_audit_sink(env, "PLEO_AUDIT_SINK", d.audit_sink),
            retention=_number(env, "PLEO_RETENTION", d.retention, int, low=0),
            close_interval=_number(env, "PLEO_CLOSE_INTERVAL", d.close_interval, float, low=0.1),
            message_schema=_message_schema(env),
            reads_schemas=_schemas_read(env),
            erp_connection=_connection_name(env),
            erp_calls=_optional(env, "ERP_CALLS", int, low=1),
            erp_period=_optional(env, "ERP_PERIOD", float, low=0.001),
            erp_burst=_optional(env, "ERP_BURST", int, low=1),
            erp_concurrency=_optional(env, "ERP_CONCURRENCY", int, low=1, high=1000),
            erp_batch_size=_optional(env, "ERP_BATCH_SIZE", int, low=1, high=10_000),
            erp_ordered=_optional_flag(env, "ERP_ORDERED"),
            erp_key_window=_number(env, "ERP_KEY_WINDOW", d.erp_key_window, float, low=0),
            erp_order_wait=_number(env, "ERP_ORDER_WAIT", d.erp_order_wait, float, low=0.1),
            erp_poster_threads=_number(
                env, "ERP_POSTER_THREADS", d.erp_poster_threads, int, low=1, high=64
            ),
            erp_prefetch_multiplier=_number(
                env, "ERP_PREFETCH_MULTIPLIER", d.erp_prefetch_multiplier, int, low=1, high=1000
            ),
            erp_http_url=_optional_url(env, "ERP_HTTP_URL"),
            erp_http_auth=env.get("ERP_HTTP_AUTH") or None,
            erp_http_auth_header=_header_name(env, "ERP_HTTP_AUTH_HEADER", d.erp_http_auth_header),
            erp_http_idempotency_header=_header_name(
                env, "ERP_HTTP_IDEMPOTENCY_HEADER", d.erp_http_idempotency_header
            ),
            erp_http_fields=(env.get("ERP_HTTP_FIELDS") or "").strip() or None,
            erp_http_timeout=_number(env, "ERP_HTTP_TIMEOUT", d.erp_http_timeout, float, low=0.1),
            erp_http_batch=_number(
                env, "ERP_HTTP_BATCH", d.erp_http_batch, int, low=0, high=10_000
            ),
            rabbitmq_queue_type=_queue_type(env),
            page_concurrency=_number(
                env, "PLEO_PAGE_CONCURRENCY", d.page_concurrency, int, low=1, high=MAX_CONCURRENCY
            ),
            erp_receipts=_flag(env, "ERP_RECEIPTS", d.erp_receipts),
            erp_receipt_max_bytes=_number(
                env, "ERP_RECEIPT_MAX_BYTES", d.erp_receipt_max_bytes, int, low=1
            ),
            erp_receipt_types=_media_types(env, "ERP_RECEIPT_TYPES", d.erp_receipt_types),
            pleo_file_url_lifetime=_number(
                env, "PLEO_FILE_URL_LIFETIME", d.pleo_file_url_lifetime, float, low=1
            ),
            erp_receipt_timeout=_number(
                env, "ERP_RECEIPT_TIMEOUT", d.erp_receipt_timeout, float, low=0.1
            ),
            erp_http_attachments_url=_optional_url(env, "ERP_HTTP_ATTACHMENTS_URL"),
            **_oauth(env, d),
        )


_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


def _media_types(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """The setting ``name``: comma-separated media types (``application/pdf,image/png``)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    types = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",") if part.strip()))
    wrong = [t for t in types if not _MEDIA_TYPE.fullmatch(t)]
    if not types or wrong:
        raise BadInput(
            f"{name} must list media types separated by commas (application/pdf,image/png), "
            f"not {shown(raw)}."
        )
    return types


def _oauth(env: Mapping[str, str], d: Settings) -> dict[str, Any]:
    """The OAuth settings (contract/credentials.py); a client id needs PLEO_CREDENTIALS_KEY."""

    def text(name: str) -> str | None:
        return (env.get(name) or "").strip() or None

    found: dict[str, Any] = {
        "credentials_key": text("PLEO_CREDENTIALS_KEY"),
        "pleo_oauth_client_id": text("PLEO_OAUTH_CLIENT_ID"),
        "pleo_oauth_client_secret": text("PLEO_OAUTH_CLIENT_SECRET"),
        "pleo_oauth_authorize_url": _optional_url(env, "PLEO_OAUTH_AUTHORIZE_URL")
        or d.pleo_oauth_authorize_url,
        "pleo_oauth_token_url": _optional_url(env, "PLEO_OAUTH_TOKEN_URL")
        or d.pleo_oauth_token_url,
        "pleo_oauth_scope": text("PLEO_OAUTH_SCOPE") or d.pleo_oauth_scope,
        "pleo_oauth_company": text("PLEO_OAUTH_COMPANY") or d.pleo_oauth_company,
        "erp_oauth_client_id": text("ERP_OAUTH_CLIENT_ID"),
        "erp_oauth_client_secret": text("ERP_OAUTH_CLIENT_SECRET"),
        "erp_oauth_authorize_url": _optional_url(env, "ERP_OAUTH_AUTHORIZE_URL"),
        "erp_oauth_token_url": _optional_url(env, "ERP_OAUTH_TOKEN_URL"),
        "erp_oauth_scope": text("ERP_OAUTH_SCOPE") or d.erp_oauth_scope,
        "token_refresh_ahead": _number(
            env, "PLEO_TOKEN_REFRESH_AHEAD", d.token_refresh_ahead, float, low=0
        ),
    }
    for side in ("PLEO", "ERP"):
        if text(f"{side}_OAUTH_CLIENT_ID") and not found["credentials_key"]:
            raise BadInput(
                f"{side}_OAUTH_CLIENT_ID needs PLEO_CREDENTIALS_KEY, the key the stored tokens "
                "are encrypted with (make one with 'pleo-export auth new-key')."
            )
    if found["erp_oauth_client_id"] and not found["erp_oauth_token_url"]:
        raise BadInput("ERP_OAUTH_CLIENT_ID needs ERP_OAUTH_TOKEN_URL, the ERP's token endpoint.")
    if found["credentials_key"]:
        from contract.credentials import cipher

        cipher(str(found["credentials_key"]))  # a bad key is refused now, in one sentence
    return found


def _message_schema(env: Mapping[str, str]) -> int | None:
    """``PLEO_MESSAGE_SCHEMA``: ``auto`` (None) or a schema number this code writes."""
    raw = (env.get("PLEO_MESSAGE_SCHEMA") or "auto").strip()
    if raw == "auto":
        return None
    if raw not in {str(n) for n in READS}:
        choices = ", ".join(f"'{n}'" for n in sorted(READS))
        raise BadInput(f"PLEO_MESSAGE_SCHEMA must be 'auto', {choices}, not {shown(raw)}.")
    return int(raw)


def _queue_type(env: Mapping[str, str]) -> str:
    """``PLEO_RABBITMQ_QUEUE_TYPE``: ``classic`` (default) or ``quorum``."""
    raw = (env.get("PLEO_RABBITMQ_QUEUE_TYPE") or "classic").strip()
    if raw not in QUEUE_TYPES:
        raise BadInput(f"PLEO_RABBITMQ_QUEUE_TYPE must be 'classic' or 'quorum', not {shown(raw)}.")
    return raw


def _schemas_read(env: Mapping[str, str]) -> frozenset[int]:
    """``ERP_MESSAGE_SCHEMAS``: the comma-separated schemas an ERP worker reads (default all)."""
    raw = (env.get("ERP_MESSAGE_SCHEMAS") or "").strip()
    if not raw:
        return READS
    parts = {part.strip() for part in raw.split(",")}
    if not parts <= {str(n) for n in READS}:
        listed = " and ".join(str(n) for n in sorted(READS))
        raise BadInput(f"ERP_MESSAGE_SCHEMAS must list schemas {listed}, not {shown(raw)}.")
    return frozenset(int(part) for part in parts)


def _url(
    env: Mapping[str, str],
    name: str,
    default: str,
    schemes: Collection[str],
    kind: str,
    *,
    examples: Collection[str] = (),
) -> str:
    """The setting ``name`` as a URL with one of ``schemes`` (passwords never shown in errors).

    Only Sentinel URLs may come as a list (``sentinel://a:26379;sentinel://b:26379``, as kombu
    takes them); each one is checked.
    """
    raw = (env.get(name) or "").strip() or default
    seen = shown(redact_url(raw))
    if "cluster" in raw.split("://", 1)[0].lower():
        from contract.redis_check import CLUSTER_UNSUPPORTED

        raise BadInput(f"{name} names a Redis Cluster ({seen}), {CLUSTER_UNSUPPORTED}.")
    if ";" in raw:
        if not all(part.startswith("sentinel://") for part in raw.split(";")):
            raise BadInput(f"{name} lists several URLs, which only sentinel:// URLs may: {seen}.")
        for part in raw.split(";"):
            _url({name: part}, name, default, schemes, kind, examples=examples)
        return raw
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise BadInput(f"{name} is not a valid URL ({exc}): {seen}.") from None
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in schemes:
        listed = ", ".join(f"{s}://" for s in (examples or sorted(schemes)))
        listed += ", ..." if examples else ""
        article = "an" if kind[0] in "aeiouh" else "a"
        raise BadInput(f"{name} must be {article} {kind} URL ({listed}), not {seen}.")
    if (
        scheme in {"http", "https", "redis", "rediss", "amqp", "amqps", "sentinel"}
        and not parts.hostname
    ):
        raise BadInput(f"{name} names no host: {seen}.")
    return raw


def _audit_sink(env: Mapping[str, str], name: str, default: str) -> str:
    """The setting ``name``: ``erp``, or a ``file:///folder`` URL with an absolute path."""
    raw = (env.get(name) or "").strip() or default
    if raw == "erp":
        return raw
    try:
        parts = urlsplit(raw)
    except ValueError:
        parts = None
    if (
        parts is not None
        and parts.scheme == "file"
        and parts.netloc in {"", "localhost"}
        and parts.path.startswith("/")
        and parts.path != "/"
        and not parts.query
        and not parts.fragment
    ):
        return raw
    raise BadInput(f"{name} must be 'erp' or a file:///folder URL, not {shown(raw)}.")


def _broker_schemes() -> frozenset[str]:
    """The URL schemes kombu has a transport for."""
    from kombu.transport import TRANSPORT_ALIASES

    return frozenset(TRANSPORT_ALIASES)


def _sentinel_master(env: Mapping[str, str], redis_url: str, broker_url: str) -> str | None:
    """REDIS_SENTINEL_MASTER, required when either Redis URL goes through Sentinel."""
    master = (env.get("REDIS_SENTINEL_MASTER") or "").strip() or None
    via_sentinel = [
        name
        for name, url in (("REDIS_URL", redis_url), ("CELERY_BROKER_URL", broker_url))
        if url.startswith("sentinel://")
    ]
    if via_sentinel and master is None:
        raise BadInput(
            f"{via_sentinel[0]} is a sentinel:// URL, so REDIS_SENTINEL_MASTER must name the "
            "master the Sentinels monitor (the <name> of their 'sentinel monitor <name> ...')."
        )
    return master


def _optional_url(env: Mapping[str, str], name: str) -> str | None:
    """The setting ``name``: an http(s) URL without a trailing slash, or None when unset."""
    if not (env.get(name) or "").strip():
        return None
    return _url(env, name, "", ("http", "https"), "http(s)").rstrip("/")
