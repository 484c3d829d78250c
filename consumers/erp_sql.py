"""The reference ERP adapter: a journal of entries and their lines in SQLite or PostgreSQL.

One SQLAlchemy Core codebase serves both. ``journal_entries.accounting_entry_id`` is UNIQUE and
``post`` writes an entry with all its lines in one transaction, so the database itself decides a
race: when two workers post the same entry at once, one insert wins and the other hits the
constraint, rolls back, and returns the winner's row. Every entry is in the journal at most once.

Receipts (``attach``) go to ``journal_attachments`` (``consumers/erp_sql_attachments.py``), their
bytes in the row, UNIQUE per (entry, content sha256): a replay, or two workers attaching one file
at once, leaves one row.

Times are stored as the ISO strings Pleo and the worker exchange, which both databases keep
exactly; amounts are integer cents of the wallet currency.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from consumers import erp_sql_attachments as attachments
from consumers.erp import (
    Attachment,
    Entry,
    EntryRejected,
    ERPLimits,
    ERPUnavailable,
    ExternalRef,
)
from consumers.posting import Posting, to_posting
from contract.errors import BadInput
from contract.settings import Settings

log = logging.getLogger(__name__)

# SQLite autoincrements only a column declared exactly INTEGER PRIMARY KEY.
_ID = BigInteger().with_variant(Integer(), "sqlite")
# How long a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_SECONDS = 30.0
# A PostgreSQL host that drops packets must fail fast enough for the worker to retry later.
PG_CONNECT_TIMEOUT_SECONDS = 10
# PostgreSQL advisory lock held while creating the tables (any constant that is ours alone).
_DDL_LOCK_KEY = 0x504C454F_45525001
# Entries posted in one transaction (``post_batch``).
BATCH_SIZE = 500
# Errors that mean "the database is not there now", as opposed to a bug or a constraint.
UNREACHABLE = (OperationalError, InterfaceError, PoolTimeout)

metadata = MetaData()

journal_entries = Table(
    "journal_entries",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("accounting_entry_id", String, nullable=False),
    # Derived from id, so it is written just after the insert, in the same transaction.
    Column("external_id", String, unique=True),
    Column("job_id", String, nullable=False),
    Column("company_id", String),
    Column("sequence", Integer, nullable=False),
    Column("booked_at", String),
    Column("posted_at", String, nullable=False),
    Column("entry_type", String),
    Column("amount_value", BigInteger, nullable=False),
    Column("amount_currency", String, nullable=False),
    Column("payload", Text),
    UniqueConstraint("accounting_entry_id", name="uq_journal_entries_accounting_entry_id"),
    Index("ix_journal_entries_job_id", "job_id"),
)

journal_lines = Table(
    "journal_lines",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("entry_id", _ID, ForeignKey("journal_entries.id", ondelete="CASCADE"), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("accounting_entry_line_id", String),
    Column("account_id", String),
    Column("account_code", String, nullable=False),
    Column("account_name", String),
    Column("line_value", BigInteger, nullable=False),
    Column("net_value", BigInteger, nullable=False),
    Column("tax_value", BigInteger),
    Column("tax_code", String),
    Column("currency", String, nullable=False),
    UniqueConstraint("entry_id", "line_no", name="uq_journal_lines_entry_line"),
)


def engine_url(url: str) -> URL:
    """Parse ``url``, choosing the psycopg 3 driver for PostgreSQL; a bad URL raises BadInput."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # The URL is not echoed: it may hold a password we could not find to mask.
        raise BadInput(
            "ERP_DATABASE_URL is not a database URL (try sqlite:///path or postgresql://...)."
        ) from None
    if parsed.drivername in {"postgres", "postgresql"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers work beside the one writer; SQLite leaves foreign keys off by default."""
    cursor = dbapi_connection.cursor()
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        while True:
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                # Turning a new file to WAL needs it alone for a moment, and SQLite does not wait
                # for that by itself; once the file is WAL (a lasting setting) this never recurs.
                busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)
    finally:
        cursor.close()


class SqlJournal:
    """The reference ERPAdapter: posts each entry and its lines to two SQL tables, once.

    It declares what a database takes: no rate or concurrency limit, batches of ``BATCH_SIZE``
    entries in one transaction, idempotent by key (the UNIQUE accountingEntryId never forgets).
    """

    limits = ERPLimits(batch_size=BATCH_SIZE, idempotency_key=True)

    def __init__(self, url: str, *, url_template: str | None = None) -> None:
        self._url = engine_url(url)
        self._shown = self._url.set(query={}).render_as_string(hide_password=True)
        if url_template is not None:
            try:
                url_template.format(external_id="JE-000001")
            except (KeyError, IndexError, ValueError):
                raise BadInput(
                    f"The ERP URL template {url_template!r} may use only {{external_id}}."
                ) from None
        self._url_template = url_template
        self._sqlite = self._url.get_backend_name() == "sqlite"
        self._engine = journal_engine(self._url)
        # Tables are created on first use, so building a journal needs no database yet.
        self._ready = False

    def __repr__(self) -> str:
        return f"SqlJournal({self._shown!r})"

    def __enter__(self) -> SqlJournal:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def find(self, accounting_entry_id: str) -> ExternalRef | None:
        """The entry's reference if it was posted, else None."""
        query = select(journal_entries.c.external_id, journal_entries.c.posted_at).where(
            journal_entries.c.accounting_entry_id == accounting_entry_id
        )
        with self._reachable(), self._ready_engine().connect() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            return None
        return ExternalRef(row.external_id, self._link(row.external_id), row.posted_at)

    def post(self, entry: Entry) -> ExternalRef:
        """Post ``entry`` and its lines in one transaction; a repeat returns the first ref."""
        existing = self.find(entry.accounting_entry_id)
        if existing is not None:
            log.info(
                "erp_entry_already_posted accounting_entry_id=%s external_id=%s",
                entry.accounting_entry_id,
                existing.external_id,
            )
            return existing
        posting = to_posting(entry)
        posted_at = _utc_now()
        try:
            with self._reachable(), self._ready_engine().begin() as conn:
                external_id = _insert(conn, entry, posting, posted_at)
        except IntegrityError:
            # Another worker posted this entry between our find and our insert: its row stands.
            winner = self.find(entry.accounting_entry_id)
            if winner is None:
                raise
            log.info(
                "erp_entry_post_raced accounting_entry_id=%s external_id=%s",
                entry.accounting_entry_id,
                winner.external_id,
            )
            return winner
        log.info(
            "erp_entry_posted accounting_entry_id=%s job_id=%s external_id=%s lines=%d",
            entry.accounting_entry_id,
            entry.job_id,
            external_id,
            len(posting.lines),
        )
        return ExternalRef(external_id, self._link(external_id), posted_at)

    def post_batch(self, entries: Sequence[Entry]) -> list[ExternalRef | EntryRejected]:
        """Post ``entries`` in one transaction; one outcome each, in order.

        Entries already in the journal come back as their first refs; an entry the checks refuse
        is its own ``EntryRejected`` and the rest are posted. If another worker posts one of them
        at the same moment (the UNIQUE constraint), the transaction is rolled back and each is
        posted alone, which settles every race as ``post`` does.
        """
        ids = [entry.accounting_entry_id for entry in entries]
        query = select(
            journal_entries.c.accounting_entry_id,
            journal_entries.c.external_id,
            journal_entries.c.posted_at,
        ).where(journal_entries.c.accounting_entry_id.in_(ids))
        outcomes: list[ExternalRef | EntryRejected] = []
        posted_at = _utc_now()
        try:
            with self._reachable(), self._ready_engine().begin() as conn:
                known = {row.accounting_entry_id: row for row in conn.execute(query)}
                for entry in entries:
                    row = known.get(entry.accounting_entry_id)
                    if row is not None:
                        link = self._link(row.external_id)
                        outcomes.append(ExternalRef(row.external_id, link, row.posted_at))
                        continue
                    try:
                        posting = to_posting(entry)
                    except EntryRejected as rejected:
                        outcomes.append(rejected)
                        continue
                    external_id = _insert(conn, entry, posting, posted_at)
                    outcomes.append(ExternalRef(external_id, self._link(external_id), posted_at))
        except IntegrityError:
            log.info("erp_batch_raced entries=%d (posted one by one)", len(entries))
            return [self._post_or_rejected(entry) for entry in entries]
        log.info("erp_batch_posted entries=%d", len(entries))
        return outcomes

    def attach(self, attachment: Attachment) -> str:
        """Store the receipt once per (entry, sha256); a repeat returns the first row's id."""
        with self._reachable(), self._ready_engine().connect() as conn:
            existing = attachments.stored_id(conn, attachment)
        if existing is not None:
            return existing
        try:
            with self._reachable(), self._ready_engine().begin() as conn:
                return attachments.insert(conn, attachment)
        except IntegrityError:
            # Another worker stored this file for this entry just now: its row stands.
            with self._reachable(), self._ready_engine().connect() as conn:
                winner = attachments.stored_id(conn, attachment)
            if winner is None:
                raise
            return winner

    def attachments(self) -> list[dict[str, Any]]:
        """Every stored receipt in the order stored, without its bytes."""
        with self._reachable(), self._ready_engine().connect() as conn:
            return attachments.listed(conn)

    def attachment_content(self, accounting_entry_id: str, sha256: str) -> bytes | None:
        """The bytes stored for this entry's file, None if there are none."""
        with self._reachable(), self._ready_engine().connect() as conn:
            return attachments.content(conn, accounting_entry_id, sha256)

    def _post_or_rejected(self, entry: Entry) -> ExternalRef | EntryRejected:
        try:
            return self.post(entry)
        except EntryRejected as rejected:
            return rejected

    def entries_count(self) -> int:
        """How many entries the journal holds."""
        return self._count(journal_entries)

    def lines_count(self) -> int:
        """How many lines the journal holds, over all entries."""
        return self._count(journal_lines)

    def journal(self) -> list[dict[str, Any]]:
        """Every entry in posting order, its payload decoded and its lines under ``lines``."""
        with self._reachable(), self._ready_engine().connect() as conn:
            entries = conn.execute(select(journal_entries).order_by(journal_entries.c.id))
            entry_rows = [dict(row) for row in entries.mappings()]
            lines = conn.execute(
                select(journal_lines).order_by(journal_lines.c.entry_id, journal_lines.c.line_no)
            )
            by_entry: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
            for line in lines.mappings():
                by_entry[line["entry_id"]].append(dict(line))
        for row in entry_rows:
            row["payload"] = json.loads(row["payload"]) if row["payload"] else None
            row["lines"] = by_entry[row["id"]]
        return entry_rows

    def drop_tables(self) -> None:
        """Drop both tables, for tests and demos; the next use creates them again, empty."""
        with self._reachable():
            metadata.drop_all(self._engine)
            attachments.metadata.drop_all(self._engine)
        self._ready = False

    def _count(self, table: Table) -> int:
        with self._reachable(), self._ready_engine().connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()

    def _link(self, external_id: str) -> str | None:
        if self._url_template is None:
            return None
        return self._url_template.format(external_id=external_id)

    def _ready_engine(self) -> Engine:
        """The engine, once the SQLite file's folder and both tables exist."""
        if not self._ready:
            create_tables(self._engine)
            create_tables(self._engine, attachments.metadata)
            self._ready = True
        return self._engine

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Turn "the database is not there" into ERPUnavailable, with the password masked."""
        try:
            yield
        except UNREACHABLE as exc:
            # The database may come back as a fresh one (a new container): look for tables again.
            self._ready = False
            detail = unreachable_detail(exc, self._url)
            raise ERPUnavailable(
                f"The ERP journal at {self._shown} cannot be reached now ({detail})."
            ) from exc


def unreachable_detail(exc: BaseException, url: URL) -> str:
    """The first line of why the database at ``url`` cannot be reached, its password masked."""
    cause = str(getattr(exc, "orig", None) or exc).strip()
    detail = cause.splitlines()[0] if cause else type(exc).__name__
    if url.password:
        detail = detail.replace(str(url.password), "***")
    return detail


def journal_engine(url: URL) -> Engine:
    """An engine for the journal's database ``url`` (SQLite: bounded lock waits, WAL, foreign keys;
    PostgreSQL: a bounded connect); also for other tables kept beside the journal."""
    if url.get_backend_name() == "sqlite":
        engine = _engine(url, {"timeout": SQLITE_BUSY_SECONDS})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return _engine(url, {"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS})


def _engine(url: URL, connect_args: dict[str, Any]) -> Engine:
    """An engine for ``url``; a dialect or driver this machine lacks raises BadInput.

    ``hide_parameters``: a database error's message names the statement, never the values bound
    to it (the entry's payload), so no traceback of one puts export data in a log.
    """
    try:
        return create_engine(
            url, pool_pre_ping=True, connect_args=connect_args, hide_parameters=True
        )
    except NoSuchModuleError:
        raise BadInput(
            f"ERP_DATABASE_URL names the database kind {url.drivername!r}, which SQLAlchemy has "
            "no dialect for (try sqlite:///path or postgresql://...)."
        ) from None
    except ImportError as missing:
        # The dialect is known but its DBAPI driver is not installed here.
        module = f"the Python module {missing.name!r}" if missing.name else "a driver module"
        # postgres:// and postgresql:// get psycopg 3, which the package's extra installs.
        hint = (
            " (pip install 'pleo-export-producer[postgres]')"
            if url.drivername == "postgresql+psycopg"
            else ""
        )
        raise BadInput(
            f"ERP_DATABASE_URL needs {module} for {url.drivername}, which is not installed{hint}."
        ) from None


def create_tables(engine: Engine, tables: MetaData = metadata) -> None:
    """Create ``tables`` (the journal's two) if absent, one process at a time: concurrent
    CREATEs would collide. A SQLite file's folder is made first."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    with engine.connect() as conn:
        # Take the lock before looking, so a second process waits, then finds the tables made.
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_DDL_LOCK_KEY)))
        tables.create_all(conn)
        conn.commit()


def _insert(conn: Connection, entry: Entry, posting: Posting, posted_at: str) -> str:
    """Insert the entry and its lines on ``conn``; returns the entry's external id."""
    row_id = conn.execute(
        journal_entries.insert()
        .values(
            accounting_entry_id=entry.accounting_entry_id,
            job_id=entry.job_id,
            company_id=entry.company_id,
            sequence=entry.sequence,
            booked_at=entry.booked_at,
            posted_at=posted_at,
            entry_type=posting.entry_type,
            amount_value=posting.amount_value,
            amount_currency=posting.currency,
            payload=json.dumps(entry.export_item, sort_keys=True, separators=(",", ":")),
        )
        .returning(journal_entries.c.id)
    ).scalar_one()
    external_id = f"JE-{row_id:06d}"
    conn.execute(
        journal_entries.update()
        .where(journal_entries.c.id == row_id)
        .values(external_id=external_id)
    )
    conn.execute(
        journal_lines.insert(),
        [
            {
                "entry_id": row_id,
                "line_no": line.line_no,
                "accounting_entry_line_id": line.line_id,
                "account_id": line.account_id,
                "account_code": line.account_code,
                "account_name": line.account_name,
                "line_value": line.line_value,
                "net_value": line.net_value,
                "tax_value": line.tax_value,
                "tax_code": line.tax_code,
                "currency": line.currency,
            }
            for line in posting.lines
        ],
    )
    return external_id


def from_settings(settings: Settings) -> SqlJournal:
    """The SQL journal ``ERP_DATABASE_URL`` names (the default ``ERP_ADAPTER``)."""
    return SqlJournal(settings.erp_database_url, url_template=settings.erp_url_template)
