"""The PostgreSQL journal for worker tests: a database URL, read-only access to it, clean tables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url

from consumers.erp import ERPUnavailable
from consumers.erp_sql import SqlJournal
from contract.settings import redact_url
from tests.conftest import need_service

PG_URL = os.environ.get("POSTGRES_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def empty_journal(url: str = PG_URL) -> Iterator[str]:
    """``url`` with the journal's tables created empty, and dropped again afterwards."""
    with SqlJournal(url) as journal:
        try:
            journal.drop_tables()
        except ERPUnavailable:
            need_service(f"PostgreSQL at {redact_url(url)}")
        journal.entries_count()  # creates the tables: a read-only session could not
        try:
            yield url
        finally:
            journal.drop_tables()


def read_only(url: str) -> str:
    """``url`` as a read-only replica would serve it: every transaction refuses to write."""
    parsed = make_url(url)
    options = {**parsed.query, "options": "-c default_transaction_read_only=on"}
    return parsed.set(query=options).render_as_string(hide_password=False)


def via(url: str, port: int) -> str:
    """``url`` reached through 127.0.0.1:``port`` (a forwarder) instead of its own host."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
