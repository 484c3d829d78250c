"""The simulated ERP's state: limits, idempotency keys, bookings and counts, behind one lock.

The server's event loop changes it while tests read it from their own thread, so every method
takes the lock and reads hand back copies. Window arithmetic uses the injected monotonic
``clock``; the times shown on bookings are wall-clock UTC.

The rate limit is a sliding window: a call is admitted while fewer than ``calls`` calls were
admitted in the last ``period`` seconds; a refused call does not count. Its ``Retry-After`` is
the time until the oldest call in the window leaves it. A call over the concurrency cap is told
to retry after ``latency`` seconds (at least 0.05; a whole second unless fractional), about
when one in flight ends.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from devtools.erp_simulator.attachments import AttachmentStore
from devtools.erp_simulator.config import ErpSimConfig
from devtools.erp_simulator.journal import Refusal
from devtools.oauth_server import OAuthServer

Via = Literal["entries", "batch"]
Fault = Literal["fail", "timeout"]


@dataclass(frozen=True, slots=True)
class Booking:
    """One entry booked in the journal (a second booking of one entry is a duplicate)."""

    accounting_entry_id: str
    id: str
    booked_at: str
    via: Via

    def to_json(self, base_url: str) -> dict[str, Any]:
        """The booking as the journal's endpoints answer it."""
        return {
            "id": self.id,
            "url": f"{base_url}/journal/entries/{self.id}",
            "accountingEntryId": self.accounting_entry_id,
            "bookedAt": self.booked_at,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """The journal's answer to one entry: its booking, or why it was refused."""

    accounting_entry_id: str
    booking: Booking | None
    refusal: Refusal | None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a call may go on; ``retry_after`` (seconds) when it may not."""

    admitted: bool
    retry_after: float = 0.0


class ErpSimState:
    """Everything the simulated ERP knows; safe to read from any thread."""

    def __init__(
        self, config: ErpSimConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._config = config or ErpSimConfig()
        # OAuth (devtools/oauth_server.py): set it to serve /oauth/* and require its access tokens.
        self.oauth: OAuthServer | None = None
        self._reset()
        # Receipts uploaded to booked entries (attachments.py): their own lock, keys and faults.
        self.attachments = AttachmentStore()

    def _reset(self) -> None:
        self._window: deque[float] = deque()
        self._in_flight = 0
        self._max_in_flight = 0
        self._pause_until = 0.0
        self._pause_retry_after = 0.0
        self._keys: dict[str, tuple[float, Outcome]] = {}
        self._bookings: list[Booking] = []
        self._booked: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()
        self._statuses: Counter[int] = Counter()
        self._rate_limited = 0
        self._replays = 0
        self._faults: Counter[str] = Counter()
        self._rng = random.Random(self._config.seed)

    @property
    def config(self) -> ErpSimConfig:
        """The config now in force."""
        with self._lock:
            return self._config

    def configure(self, config: ErpSimConfig) -> None:
        """Put ``config`` in force from the next call on (a new seed restarts the fault draws)."""
        with self._lock:
            if config.seed != self._config.seed:
                self._rng = random.Random(config.seed)
            self._config = config

    def reset(self) -> None:
        """Forget bookings, keys, counts, the window and any pause; the config stays."""
        with self._lock:
            self._reset()
        self.attachments.reset()

    def pause(self, retry_after: float, seconds: float) -> None:
        """Answer every call 429 with ``Retry-After: retry_after`` for the next ``seconds``."""
        with self._lock:
            self._pause_until = self._clock() + seconds
            self._pause_retry_after = retry_after

    def called(self, endpoint: str) -> None:
        """Count a call to ``endpoint``, whatever its answer."""
        with self._lock:
            self._calls[endpoint] += 1

    def admit(self) -> Admission:
        """Whether a call may go on: not while paused, then the concurrency, then the rate limit."""
        with self._lock:
            now, config = self._clock(), self._config
            if now < self._pause_until:
                return self._refuse(self._pause_retry_after)
            if config.concurrency is not None and self._in_flight >= config.concurrency:
                return self._refuse(max(config.latency, 0.05))
            if config.calls is not None:
                while self._window and self._window[0] <= now - config.period:
                    self._window.popleft()
                if len(self._window) >= config.calls:
                    return self._refuse(self._window[0] + config.period - now)
                self._window.append(now)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return Admission(True)

    def _refuse(self, retry_after: float) -> Admission:
        self._rate_limited += 1
        return Admission(False, retry_after)

    def release(self) -> None:
        """An admitted call has been answered."""
        with self._lock:
            self._in_flight -= 1

    def answered(self, status: int) -> None:
        """Count an answer by its status."""
        with self._lock:
            self._statuses[status] += 1

    def draw_fault(self) -> Fault | None:
        """The fault this admitted call suffers, if any (one seeded draw per call)."""
        with self._lock:
            draw, config = self._rng.random(), self._config
            fault: Fault | None = None
            if draw < config.fail_rate:
                fault = "fail"
            elif draw < config.fail_rate + config.timeout_rate:
                fault = "timeout"
            if fault is not None:
                self._faults[fault] += 1
            return fault

    def retry_after_header(self, seconds: float) -> str:
        """``Retry-After`` for a wait of ``seconds``: whole seconds rounded up, or fractional."""
        if self.config.fractional_retry_after:
            return f"{max(seconds, 0.001):.3f}"
        return str(max(1, math.ceil(seconds)))

    def post(self, entry_id: str, key: str | None, refusal: Refusal | None, via: Via) -> Outcome:
        """Book the entry (or refuse it), unless ``key`` was seen within the key window."""
        with self._lock:
            now = self._clock()
            if key is not None and key in self._keys:
                seen_at, first = self._keys[key]
                if now - seen_at < self._config.key_window:
                    self._replays += 1
                    return Outcome(first.accounting_entry_id, first.booking, first.refusal, True)
                del self._keys[key]
            booking = None
            if refusal is None:
                booking = Booking(
                    accounting_entry_id=entry_id,
                    id=f"JE-{len(self._bookings) + 1:06d}",
                    booked_at=datetime.now(UTC).isoformat(timespec="microseconds"),
                    via=via,
                )
                self._bookings.append(booking)
                self._booked[entry_id] += 1
            outcome = Outcome(entry_id, booking, refusal)
            if key is not None:
                self._keys[key] = (now, outcome)
            return outcome

    def bookings(self) -> list[Booking]:
        """Every booking, in the order booked (duplicates included)."""
        with self._lock:
            return list(self._bookings)

    def find(self, entry_id: str) -> list[Booking]:
        """The bookings of one entry, oldest first."""
        with self._lock:
            return [b for b in self._bookings if b.accounting_entry_id == entry_id]

    def booked_count(self, entry_id: str) -> int:
        """How many times the entry was booked (more than 1: double-booked)."""
        with self._lock:
            return self._booked[entry_id]

    def stats(self) -> dict[str, Any]:
        """The counts ``GET /_sim/stats`` shows."""
        with self._lock:
            return {
                "calls": dict(self._calls),
                "statuses": {str(status): n for status, n in sorted(self._statuses.items())},
                "rateLimited": self._rate_limited,
                "maxInFlight": self._max_in_flight,
                "inFlight": self._in_flight,
                "bookings": len(self._bookings),
                "entriesBooked": len(self._booked),
                "duplicateBookings": sum(n - 1 for n in self._booked.values()),
                "replays": self._replays,
                "faults": dict(self._faults),
            }
