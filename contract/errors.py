"""The error tree: every failure the system raises on purpose, grouped by what the caller does next.

    PleoExportError                      root; ``exit_code`` is what the CLI returns
    ├── BadInput                         reject the input, exit 2 (bad job id, bad setting)
    │   └── SignatureInvalid             a webhook that fails verification (signature.py): 401
    ├── UpstreamError                    Pleo answered badly; carries status, url, job_id
    │   ├── PermanentUpstreamError       give up at once, exit 3 (401/403/404/422, other 4xx)
    │   │   ├── AuthenticationFailed     401/403, or Pleo's OAuth refresh refused
    │   │   ├── GrantRefused             an OAuth token endpoint refused a grant (contract/oauth.py)
    │   │   ├── JobNotFound              404
    │   │   └── Unprocessable            422 (e.g. INVALID_EXPORT_JOB_STATUS_CHANGE)
    │   ├── TransientUpstreamError       retry (5xx, timeouts, bad JSON), exit 4 once exhausted
    │   │   └── RateLimited              429, with the server's Retry-After if it sent one
    │   └── ContractViolation            a page that breaks the spec, a cursor loop, a lying total:
    │                                    stop, publish nothing, exit 1
    ├── BrokerUnavailable                Redis or the broker is unreachable: retry later, exit 4
    ├── LeaseHeld                        a live run owns the job: not a failure, exit 0
    ├── LeaseLost                        our lease expired and was taken over mid-run: stop, retry
    └── RunInterrupted                   SIGTERM/SIGINT (or a worker's warm shutdown) stopped the
                                         run: lease released, job handed back; exit 128 + signal

Every error keeps its ``__cause__`` (raise ... from ...) and never mentions a secret.
"""

from __future__ import annotations

import signal


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error sentence, cut short: input is never echoed whole."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value))} characters)"


def cause(exc: BaseException) -> str:
    """An underlying error as the end of one of our sentences: its text without a final period."""
    return str(exc).rstrip(". ")


class PleoExportError(Exception):
    """Root of every error the producer raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id


class BadInput(PleoExportError):
    """The caller gave something unusable (a job id that is not a UUID, a bad setting)."""

    exit_code = 2


class UpstreamError(PleoExportError):
    """Pleo's API answered in a way we cannot use as it is."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        status: int | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.status = status
        self.url = url


class PermanentUpstreamError(UpstreamError):
    """Pleo refused the request for good: retrying cannot help."""

    exit_code = 3


class AuthenticationFailed(PermanentUpstreamError):
    """401 or 403: the token or API key is missing, wrong or lacks a scope."""


class JobNotFound(PermanentUpstreamError):
    """404: Pleo has no such export job (or this credential cannot see it)."""


class Unprocessable(PermanentUpstreamError):
    """422: the request is valid but the job's state forbids it."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        status: int | None = 422,
        url: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, status=status, url=url)
        self.error_type = error_type


class TransientUpstreamError(UpstreamError):
    """A failure that may pass: 5xx, a timeout, a connection reset, a truncated body.

    ``maybe_applied``: the request reached Pleo and may have taken effect although no usable
    answer came back (an answer that timed out or broke off, a 500, 502 or 504, a cut-off body).
    Sending a write again after such an error may apply it twice; a refused connection, a 429
    or a 503 did not apply it.
    """

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        status: int | None = None,
        url: str | None = None,
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message, job_id=job_id, status=status, url=url)
        self.maybe_applied = maybe_applied


class RateLimited(TransientUpstreamError):
    """429: Pleo asks us to slow down, for ``retry_after`` seconds when it says so."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        status: int | None = 429,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, status=status, url=url)
        self.retry_after = retry_after


class ContractViolation(UpstreamError):
    """Pleo sent something the spec forbids (bad page, cursor loop, lying total)."""

    exit_code = 1


class BrokerUnavailable(PleoExportError):
    """Redis or the Celery broker could not be reached or refused a write."""

    exit_code = 4


class LeaseHeld(PleoExportError):
    """Another run holds this job's lease; this run steps aside."""

    exit_code = 0


class LeaseLost(PleoExportError):
    """This run's lease expired and another run took the job over (fencing token moved on)."""

    exit_code = 4


class RunInterrupted(PleoExportError):
    """A signal stopped the run between two steps; its lease is released and the job handed back."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"The run was interrupted by {name}; the job is handed back.")
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple[type[RunInterrupted], tuple[int]]:
        # Pool processes hand errors to the main process pickled: rebuild from the signal.
        return type(self), (self.signum,)
