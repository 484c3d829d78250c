"""An ERP worker takes no message before its ERP adapter is built and answers.

Celery's ``worker_init`` signal runs the check in the worker's main process, before the pool forks
and before the consumer connects to the broker, so a worker that could not process a message never
takes one:

- a setting that can never work (a URL SQLAlchemy cannot parse, a dialect or driver that is not
  installed, a bad URL template) stops the worker with one sentence on stderr and a non-zero exit
  status (2 for a bad setting, as the CLI's contract has it; 1 for anything else);
- an adapter that is built but whose database does not answer yet (``ERPUnavailable``) holds the
  worker there, not ready, trying again after the breaker's growing pause until it answers.

The probe is the protocol's own read, ``find`` of an entry that cannot exist, so any adapter has
what it needs; the SQL journal also creates its tables on that first use.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_init

from consumers.adapters import close_adapter
from consumers.erp import ERPAdapter, ERPUnavailable
from contract.errors import PleoExportError
from contract.retrying import BreakerPolicy

log = logging.getLogger(__name__)

# No Pleo entry has this id (UUIDs of version 0 are never issued).
PROBE_ENTRY = "00000000-0000-0000-0000-000000000000"
# The first start-up retry comes within a second, later ones up to the breaker's cap apart.
WAIT_POLICY = BreakerPolicy(threshold=1)
# user:password@ in any URL an unexpected error message might quote.
_URL_CREDENTIALS = re.compile(r"(//[^/\s:@]*:)[^@\s]*@")


class AdapterBroken(PleoExportError):
    """The adapter can never work as configured; the worker must not start."""


def wait_for_adapter(
    build: Callable[[], ERPAdapter],
    *,
    policy: BreakerPolicy = WAIT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
) -> int:
    """Return once ``build()`` gives an adapter whose ``find`` answers (the attempts it took).

    Raises AdapterBroken, with one sentence and an exit code, if the adapter cannot be built or
    fails in any way other than "not reachable now".
    """
    attempt = 1
    while True:
        try:
            adapter = build()
            try:
                adapter.find(PROBE_ENTRY)
            finally:
                # Let go of it: the pool's processes build their own.
                close_adapter(adapter)
            return attempt
        except ERPUnavailable as down:
            pause = policy.pause(attempt, jitter())
            log.warning(
                "erp_adapter_waiting attempt=%d pause=%.1f error=%s", attempt, pause, down.message
            )
            sleep(pause)
            attempt += 1
        except PleoExportError as exc:
            broken = AdapterBroken(exc.message)
            broken.exit_code = exc.exit_code
            raise broken from exc
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [""])[0][:300]
            detail = _URL_CREDENTIALS.sub(r"\1***@", detail)
            raise AdapterBroken(
                f"The ERP adapter failed its start-up check with {type(exc).__name__}"
                + (f": {detail.rstrip('.')}." if detail else ".")
            ) from exc


def guard_worker_start(app: Celery, build: Callable[[], ERPAdapter]) -> None:
    """Make every worker of ``app`` wait for its adapter before consuming, or refuse to start."""

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return  # a worker of another app that happens to live in this process
        try:
            wait_for_adapter(build)
        except AdapterBroken as broken:
            # Logging is not set up yet at worker_init, and the sentence is the whole story.
            sys.stderr.write(f"ERP worker not started: {broken.message}\n")
            sys.stderr.flush()
            raise SystemExit(broken.exit_code) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    # Held strongly: the receiver is a closure nothing else keeps alive.
    worker_init.connect(on_worker_init, weak=False)
