"""A job's audit manifest as ``pleo-export report`` prints it: a table, or CSV (RFC 4180)."""

from __future__ import annotations

import csv
import io

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from contract.manifest import ENTRY_FIELDS, Manifest

# The table's columns: manifest field, heading.
_COLUMNS = (
    ("sequence", "#"),
    ("accounting_entry_id", "entry"),
    ("outcome", "outcome"),
    ("external_id", "ERP id"),
    ("failure_reason_type", "reason type"),
    ("failure_reason", "reason"),
    ("recorded_at", "recorded"),
    ("reported_at", "reported to Pleo"),
    ("report_attempts", "attempts"),
)


def csv_text(manifest: Manifest) -> str:
    """A header line, then one row per entry in plan order; CRLF line ends, quoted as needed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("job_id", *ENTRY_FIELDS))
    job_id = manifest.header.job_id
    for entry in manifest.entries:
        writer.writerow((job_id, *(_cell(getattr(entry, name)) for name in ENTRY_FIELDS)))
    return out.getvalue()


def table_text(manifest: Manifest) -> str:
    """The job's header as lines, then its entries as a table, as plain text."""
    head = manifest.header
    lines = [
        f"job {head.job_id} (company {head.company_id or '-'})",
        f"final event {head.final_event} at {head.final_event_at or '-'}; "
        f"manifest written {head.written_at}",
        f"{head.entries} entries: {head.successful} successful, {head.failed} failed, "
        f"{head.no_outcome} without outcome; {head.reported} reported to Pleo, "
        f"{head.report_dropped} dropped after refusals",
    ]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for _field, heading in _COLUMNS:
        table.add_column(heading, overflow="fold")
    for entry in manifest.entries:
        # Text, not markup: a reason with "[...]" in it is printed as it is.
        table.add_row(*(Text(_shown(getattr(entry, name))) for name, _heading in _COLUMNS))
    # Wide enough that no column is ever cut: the reader's pager or file scrolls, ids stay whole.
    buffer = io.StringIO()
    console = Console(file=buffer, width=10_000, color_system=None, highlight=False, emoji=False)
    console.print(table)
    rendered = [line.rstrip() for line in buffer.getvalue().splitlines()]
    return "\n".join([*lines, "", *rendered]).rstrip()


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _shown(value: object) -> str:
    return "-" if value is None else _cell(value)
