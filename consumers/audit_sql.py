"""Manifests in the ERP journal's database: a header row per job, a row per entry in plan order.

Two tables beside the journal's (created the same way, on first use, one process at a time):
``pleo_export_manifest_jobs`` (one row per job) and ``pleo_export_manifest`` (one row per entry,
``position`` its place in the manifest). A write deletes the job's rows and inserts the new ones
in one transaction, so a manifest written twice is stored once and a reader never sees half of
one; on PostgreSQL two writers of one job take turns on an advisory lock of its id.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from types import TracebackType

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
)

from consumers.erp_sql import (
    UNREACHABLE,
    create_tables,
    engine_url,
    journal_engine,
    unreachable_detail,
)
from contract.ids import validate_job_id
from contract.manifest import (
    ENTRY_FIELDS,
    HEADER_FIELDS,
    AuditSinkUnavailable,
    Manifest,
    ManifestEntry,
    ManifestHeader,
)

tables = MetaData()

manifest_jobs = Table(
    "pleo_export_manifest_jobs",
    tables,
    Column("job_id", String, primary_key=True),
    Column("company_id", String),
    Column("final_event", String, nullable=False),
    Column("final_event_at", String),
    Column("entries", Integer, nullable=False),
    Column("successful", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("no_outcome", Integer, nullable=False),
    Column("reported", Integer, nullable=False),
    Column("report_dropped", Integer, nullable=False),
    Column("written_at", String, nullable=False),
    Column("version", Integer, nullable=False),
)

manifest_entries = Table(
    "pleo_export_manifest",
    tables,
    Column(
        "job_id",
        String,
        ForeignKey("pleo_export_manifest_jobs.job_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),
    Column("sequence", Integer, nullable=False),
    Column("accounting_entry_id", String, nullable=False),
    Column("outcome", String, nullable=False),
    Column("external_id", String),
    Column("external_url", Text),
    Column("failure_reason_type", String),
    Column("failure_reason", Text),
    Column("booked_at", String),
    Column("recorded_at", String),
    Column("exported_at", String),
    Column("reported", Boolean, nullable=False),
    Column("reported_at", String),
    Column("report_attempts", Integer, nullable=False),
    Column("erp_attempts", Integer),
)

# Rows per INSERT statement: a 100,000-entry manifest goes in bounded pieces.
_CHUNK = 2000


class SqlManifestSink:
    """The manifests kept in the journal's database (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self._url = engine_url(url)
        self.where = self._url.set(query={}).render_as_string(hide_password=True)
        self._engine = journal_engine(self._url)
        self._ready = False

    def __repr__(self) -> str:
        return f"SqlManifestSink({self.where!r})"

    def __enter__(self) -> SqlManifestSink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def write(self, manifest: Manifest) -> None:
        """Replace the job's manifest rows with ``manifest``'s, in one transaction."""
        job_id = manifest.header.job_id
        rows = [
            {"job_id": job_id, "position": position, **asdict(entry)}
            for position, entry in enumerate(manifest.entries)
        ]
        with self._reachable():
            self._ensure_tables()
            with self._engine.begin() as conn:
                if self._engine.dialect.name == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(job_id))))
                conn.execute(manifest_entries.delete().where(manifest_entries.c.job_id == job_id))
                conn.execute(manifest_jobs.delete().where(manifest_jobs.c.job_id == job_id))
                conn.execute(manifest_jobs.insert().values(**asdict(manifest.header)))
                for start in range(0, len(rows), _CHUNK):
                    conn.execute(manifest_entries.insert(), rows[start : start + _CHUNK])

    def read(self, job_id: str) -> Manifest | None:
        """The job's manifest, or None if none was written."""
        job_id = validate_job_id(job_id)
        with self._reachable(), self._engine.connect() as conn:
            # Looked for, not created: a reader may hold a read-only grant.
            if not inspect(conn).has_table(manifest_jobs.name):
                return None
            header = conn.execute(
                select(manifest_jobs).where(manifest_jobs.c.job_id == job_id)
            ).one_or_none()
            if header is None:
                return None
            entries = conn.execute(
                select(manifest_entries)
                .where(manifest_entries.c.job_id == job_id)
                .order_by(manifest_entries.c.position)
            ).mappings()
            kept = tuple(
                ManifestEntry(**{name: row[name] for name in ENTRY_FIELDS}) for row in entries
            )
        values = header._mapping
        return Manifest(
            header=ManifestHeader(**{name: values[name] for name in HEADER_FIELDS}),
            entries=kept,
        )

    def drop_tables(self) -> None:
        """Drop both tables, for tests; the next use creates them again, empty."""
        with self._reachable():
            tables.drop_all(self._engine)
        self._ready = False

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def _ensure_tables(self) -> None:
        if not self._ready:
            create_tables(self._engine, tables)
            self._ready = True

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Turn "the database is not there" into AuditSinkUnavailable, password masked."""
        try:
            yield
        except UNREACHABLE as exc:
            self._ready = False
            detail = unreachable_detail(exc, self._url)
            raise AuditSinkUnavailable(
                f"The audit manifests at {self.where} cannot be reached now ({detail})."
            ) from exc
