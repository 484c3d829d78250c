"""The SQL journal's receipts: ``journal_attachments``, one row per (entry, content sha256).

``SqlJournal.attach`` (``consumers/erp_sql.py``) stores through these functions; the UNIQUE
(accounting_entry_id, sha256) decides a race as the journal's UNIQUE accountingEntryId does: of
two workers attaching one file at once, one insert wins and the other reads the winner's row. The
bytes are kept in the row (``content``), with the file's type, size, index, hash and key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    select,
)

from consumers.erp import Attachment

# Its own MetaData: created and dropped beside the journal's two tables (``SqlJournal``).
metadata = MetaData()
_ID = BigInteger().with_variant(Integer(), "sqlite")

journal_attachments = Table(
    "journal_attachments",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("accounting_entry_id", String, nullable=False),
    Column("external_id", String, nullable=False),
    Column("file_index", Integer, nullable=False),
    Column("content_type", String, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String, nullable=False),
    Column("idempotency_key", String, nullable=False),
    Column("attached_at", String, nullable=False),
    Column("content", LargeBinary, nullable=False),
    UniqueConstraint("accounting_entry_id", "sha256", name="uq_journal_attachments_entry_sha256"),
)


def attachment_ref(row_id: int) -> str:
    """The ERP's id of a stored attachment."""
    return f"AT-{row_id:06d}"


def stored_id(conn: Connection, attachment: Attachment) -> str | None:
    """The id of the row already holding this file for this entry, None if there is none."""
    query = select(journal_attachments.c.id).where(
        journal_attachments.c.accounting_entry_id == attachment.accounting_entry_id,
        journal_attachments.c.sha256 == attachment.sha256,
    )
    found = conn.execute(query).scalar_one_or_none()
    return None if found is None else attachment_ref(found)


def insert(conn: Connection, attachment: Attachment) -> str:
    """Insert the attachment's row (IntegrityError if the entry has this file already)."""
    row = {
        "accounting_entry_id": attachment.accounting_entry_id,
        "external_id": attachment.external_id,
        "file_index": attachment.index,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "sha256": attachment.sha256,
        "idempotency_key": attachment.key,
        "attached_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "content": attachment.content,
    }
    statement = journal_attachments.insert().values(**row).returning(journal_attachments.c.id)
    return attachment_ref(conn.execute(statement).scalar_one())


def listed(conn: Connection) -> list[dict[str, Any]]:
    """Every stored attachment in the order stored, without its bytes."""
    columns = [c for c in journal_attachments.c if c.name != "content"]
    rows = conn.execute(select(*columns).order_by(journal_attachments.c.id))
    return [dict(row) for row in rows.mappings()]


def content(conn: Connection, accounting_entry_id: str, sha256: str) -> bytes | None:
    """The bytes stored for this entry's file, None if there are none."""
    query = select(journal_attachments.c.content).where(
        journal_attachments.c.accounting_entry_id == accounting_entry_id,
        journal_attachments.c.sha256 == sha256,
    )
    found = conn.execute(query).scalar_one_or_none()
    return None if found is None else bytes(found)
