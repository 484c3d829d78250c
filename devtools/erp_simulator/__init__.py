"""A simulated ERP journal: a real HTTP server with an ERP's limits, idempotency keys and faults.

    state = ErpSimState(ErpSimConfig(calls=10, period=1.0, concurrency=4, key_window=60))
    with start_in_thread(state) as erp:       # uvicorn on 127.0.0.1:<free port>, daemon thread
        ...  # post to erp.url; inspect state.bookings(), state.stats(), state.booked_count(id)

The journal (``/journal``; with ``token`` set every call needs ``Authorization: Bearer <token>``,
else 401; with ``state.oauth`` set (``devtools/oauth_server.py``) it needs a live access token
that server issued, served at ``/oauth/authorize`` and ``/oauth/token``):

- ``POST /journal/entries``: one entry (the body ``consumers/erp_http.py`` writes:
  ``accountingEntryId``, ``date``, ``currency``, ``amount``, ``type``, ``lines`` of ``lineNo``,
  ``accountCode``, ``accountName``, ``lineAmount``, ``netAmount``, ``taxAmount``, ``taxCode``...),
  header ``Idempotency-Key`` → 201 ``{id, url, accountingEntryId, bookedAt}``; an entry the
  journal refuses → 422 ``{accountingEntryId, reasonType, reason}`` (``reasonType`` one of Pleo's
  item failure reason types); a body that is no entry → 400.
- ``POST /journal/batch``: ``{"entries": [{..., "idempotencyKey": K}, ...]}``, at most
  ``batch_max`` (else 413) → 200 ``{"results": [{accountingEntryId, status: "booked"|"rejected",
  id, url, bookedAt | reasonType, reason}, ...]}`` in order: one call for the limits, each
  entry idempotent by its own key, partial failures allowed.
- ``GET /journal/entries?accountingEntryId=X``: 200 ``{"data": [booking, ...]}``, oldest first
  (empty: never booked; more than one: double-booked). Counts as a call.

Every ``/journal`` call is counted against the forced pause, the concurrency cap and the
sliding-window rate limit (429 + ``Retry-After``: whole seconds, or fractional with
``fractional_retry_after``), then suffers the latency and seeded faults (``config``). The same
``Idempotency-Key`` within ``key_window`` seconds returns the first answer, status and body, and
books nothing; after it the key is forgotten and a post books again, as a real ERP would: the
duplicate is counted by accountingEntryId.

The control API (``/_sim/``, unauthenticated, see ``control``): ``GET /_sim/bookings`` (in the
order booked: accountingEntryId, id, bookedAt, via), ``GET /_sim/stats`` (calls by endpoint,
answers by status, 429s, the most calls in flight at once, bookings, duplicates, replays),
``GET|PATCH /_sim/config`` (a JSON object of ``ErpSimConfig`` fields), ``POST /_sim/pause``
(``{"retry_after": X, "seconds": Y}``: every call 429 with ``Retry-After: X`` for ``Y`` s),
``POST /_sim/reset`` (bookings, keys, counts and the window forgotten; the config kept).

Modules: ``config`` (what it does), ``journal`` (which entries it books), ``state`` (limits, keys,
bookings, behind a lock), ``app`` (the request pipeline), ``control``, ``server`` (uvicorn).
"""

from devtools.erp_simulator.app import create_app
from devtools.erp_simulator.config import ErpSimConfig
from devtools.erp_simulator.server import RunningErpSimulator, serve, start_in_thread
from devtools.erp_simulator.state import Booking, ErpSimState

__all__ = [
    "Booking",
    "ErpSimConfig",
    "ErpSimState",
    "RunningErpSimulator",
    "create_app",
    "serve",
    "start_in_thread",
]
