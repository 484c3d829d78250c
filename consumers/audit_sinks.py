"""Where audit manifests are kept: the ERP journal's database (default) or a folder of JSON files.

``PLEO_AUDIT_SINK`` chooses: ``erp`` (tables beside the journal, ``consumers/audit_sql.py``) or
``file:///folder`` (one ``<job id>.json`` per job, written atomically: a temporary file in the same
folder, fsynced, renamed over the old one, and the folder fsynced). The folder must exist: one
that does not is an unmounted volume as often as a typo, and writing elsewhere would hide that.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from contract.ids import validate_job_id
from contract.manifest import AuditSinkUnavailable, Manifest
from contract.settings import Settings


class ManifestSink(Protocol):
    """A store of manifests, one per job: ``write`` replaces, ``read`` gives None when absent."""

    where: str

    def write(self, manifest: Manifest) -> None:
        """Store ``manifest`` in place of any earlier one of its job."""

    def read(self, job_id: str) -> Manifest | None:
        """The job's manifest, or None if none was written."""

    def close(self) -> None:
        """Release connections."""


def open_sink(settings: Settings) -> ManifestSink:
    """The sink ``settings.audit_sink`` names (checked by Settings: ``erp`` or ``file:///...``)."""
    if settings.audit_sink == "erp":
        from consumers.audit_sql import SqlManifestSink

        return SqlManifestSink(settings.erp_database_url)
    return FileManifestSink(Path(unquote(urlsplit(settings.audit_sink).path)))


class FileManifestSink:
    """Manifests as ``<folder>/<job id>.json``, each replaced atomically."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self.where = f"file://{folder}"

    def __repr__(self) -> str:
        return f"FileManifestSink({str(self._folder)!r})"

    def write(self, manifest: Manifest) -> None:
        """Write the manifest to a temporary file, fsync it, rename it into place."""
        target = self._path(manifest.header.job_id)
        body = json.dumps(manifest.as_dict(), sort_keys=True, separators=(",", ":")).encode()
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{target.stem}.", dir=self._folder)
        except OSError as exc:
            raise self._unavailable(exc) from exc
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
            # The rename itself is durable only once the folder's entry is on disk.
            folder = os.open(self._folder, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise self._unavailable(exc) from exc

    def read(self, job_id: str) -> Manifest | None:
        """The job's manifest file, decoded; None when the folder holds none for it."""
        path = self._path(job_id)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            if not self._folder.is_dir():
                raise self._unavailable(None) from None
            return None
        except OSError as exc:
            raise self._unavailable(exc) from exc
        return Manifest.from_dict(json.loads(body))

    def close(self) -> None:
        """Nothing to release."""

    def _path(self, job_id: str) -> Path:
        # A UUID (checked), so the name can never leave the folder.
        return self._folder / f"{validate_job_id(job_id)}.json"

    def _unavailable(self, exc: OSError | None) -> AuditSinkUnavailable:
        if exc is None or isinstance(exc, FileNotFoundError):
            detail = "it does not exist; create it or mount its volume"
        else:
            detail = exc.strerror or type(exc).__name__
        return AuditSinkUnavailable(f"The audit folder {self._folder} cannot be used ({detail}).")
