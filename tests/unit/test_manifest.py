"""The audit manifest's pure parts: its JSON form, the report's CSV and table, the sink setting,
and the file sink's atomic replace."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from consumers.audit_sinks import FileManifestSink
from contract.errors import BadInput
from contract.manifest import (
    ENTRY_FIELDS,
    AuditSinkUnavailable,
    Manifest,
    ManifestEntry,
    ManifestHeader,
)
from contract.settings import Settings
from producer.report import csv_text, table_text

JOB = "8c2b6f3e-2f0a-4b8e-9a51-1f2d3c4b5a69"
AWKWARD = 'Account "6010, travel" is closed\nsince [bold]May[/bold]'


def entry(sequence: int, **changes: object) -> ManifestEntry:
    base = ManifestEntry(
        sequence=sequence,
        accounting_entry_id=f"00000000-0000-4000-8000-{sequence:012d}",
        outcome="successful",
        external_id=f"JE-{sequence:06d}",
        external_url=None,
        failure_reason_type=None,
        failure_reason=None,
        booked_at="2026-11-30T10:00:00Z",
        recorded_at="2026-12-01T09:00:00Z",
        exported_at="2026-12-01T09:00:00Z",
        reported=True,
        reported_at="2026-12-01T09:00:02Z",
        report_attempts=1,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def manifest() -> Manifest:
    failed = entry(
        1,
        outcome="failed",
        external_id=None,
        exported_at=None,
        failure_reason_type="missing_configuration",
        failure_reason=AWKWARD,
        report_attempts=3,
    )
    header = ManifestHeader(
        job_id=JOB,
        company_id=None,
        final_event="completed_with_errors",
        final_event_at="2026-12-01T09:00:03.000001Z",
        entries=2,
        successful=1,
        failed=1,
        no_outcome=0,
        reported=2,
        report_dropped=0,
        written_at="2026-12-01T09:00:04Z",
    )
    return Manifest(header=header, entries=(entry(0), failed))


def test_the_json_form_reads_back_and_ignores_fields_a_later_version_adds() -> None:
    """``from_dict(as_dict())`` is the manifest; an unknown field in a stored copy is skipped."""
    data = json.loads(json.dumps(manifest().as_dict()))
    data["job"]["added_later"] = 1
    data["entries"][0]["added_later"] = 1
    assert Manifest.from_dict(data) == manifest()


def test_csv_is_rfc_4180_one_row_per_entry() -> None:
    """CRLF line ends, a header line, fields with commas, quotes or newlines quoted."""
    text = csv_text(manifest())
    assert text.startswith("job_id," + ",".join(ENTRY_FIELDS) + "\r\n")
    assert text.endswith("\r\n")
    assert '"Account ""6010, travel"" is closed\nsince [bold]May[/bold]"' in text
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 3
    assert rows[2][ENTRY_FIELDS.index("failure_reason") + 1] == AWKWARD
    assert rows[1][ENTRY_FIELDS.index("external_url") + 1] == ""
    assert rows[1][ENTRY_FIELDS.index("reported") + 1] == "true"


def test_the_table_prints_reasons_as_written_and_ids_whole() -> None:
    """A reason as written, on its entry's one line; no id is cut; columns line up."""
    text = table_text(manifest())
    lines = text.splitlines()
    assert lines[0] == f"job {JOB} (company -)"
    assert "2 entries: 1 successful, 1 failed, 0 without outcome" in lines[2]
    assert len(lines) == 4 + 2 + 2
    assert " ".join(AWKWARD.split()) in lines[-1]
    assert lines[-1].index("missing_configuration") == lines[4].index("reason type")
    assert all(e.accounting_entry_id in text for e in manifest().entries)
    assert "missing_configuration" in text


@pytest.mark.parametrize("value", ["erp", "file:///var/lib/pleo-audit", "file://localhost/srv/a"])
def test_the_audit_sink_setting_takes_erp_or_a_folder(value: str) -> None:
    """``erp`` and absolute file URLs are kept as given."""
    assert Settings.from_env({"PLEO_AUDIT_SINK": value}).audit_sink == value
    assert Settings.from_env({}).audit_sink == "erp"


@pytest.mark.parametrize(
    "value", ["ERP", "file://relative/dir", "file:///", "s3://bucket/audit", "/var/audit", "file:"]
)
def test_a_bad_audit_sink_is_one_sentence(value: str) -> None:
    """Anything else is bad input naming the setting and what it may be."""
    with pytest.raises(BadInput, match=r"^PLEO_AUDIT_SINK must be 'erp' or a file:///folder URL"):
        Settings.from_env({"PLEO_AUDIT_SINK": value})


def test_the_file_sink_replaces_a_manifest_atomically(tmp_path: Path) -> None:
    """A rewrite leaves one file, the new one, and no temporary file; absent job: None."""
    sink = FileManifestSink(tmp_path)
    first = manifest()
    sink.write(first)
    later = replace(first, header=replace(first.header, written_at="2026-12-02T00:00:00Z"))
    sink.write(later)
    assert [p.name for p in tmp_path.iterdir()] == [f"{JOB}.json"]
    assert sink.read(JOB) == later
    assert sink.read("11111111-2222-4333-8444-555555555555") is None


def test_a_missing_folder_is_unavailable_not_created(tmp_path: Path) -> None:
    """A folder that is not there (an unmounted volume) is a sink to retry, never made."""
    sink = FileManifestSink(tmp_path / "gone")
    with pytest.raises(AuditSinkUnavailable, match="does not exist"):
        sink.write(manifest())
    with pytest.raises(AuditSinkUnavailable, match="does not exist"):
        sink.read(JOB)
    assert not (tmp_path / "gone").exists()
