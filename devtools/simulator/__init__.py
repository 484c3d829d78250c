"""A Pleo Export API v3 simulator: a real HTTP server, faithful to the specs, with fault injection.

    state = SimState(token=None, api_key=None, max_page_size=1000, latency=0.0, seed=0)
    job_id = state.add_job(JobSpec(items=2000, missing_export_items=3, seed=1))
    state.add_fault(FaultRule(endpoint="job_items", kind="status", status=503, every=3, times=5))
    with start_in_thread(state) as sim:      # uvicorn on 127.0.0.1:<free port>, in a daemon thread
        ...  # talk to sim.url; inspect state.items(job_id), state.events(job_id), state.calls

It serves ``GET /v3/export-jobs[/{jobId}]``, ``POST /v3/export-job-events``,
``GET|PUT /v3/export-jobs/{jobId}/items`` and ``GET /v3/export-items`` (see ``handlers`` for where
the spec is silent and what the simulator chose), plus a ``/_sim/`` control API for other processes
(``control``), which is not part of Pleo's API. Modules: ``data`` and ``payloads`` (deterministic
jobs), ``records`` and ``enums`` (what is stored, what is valid), ``state`` (shared and locked),
``pages`` (cursors), ``sorting`` (``sorting_keys``), ``faults`` (misbehaviour), ``auth``,
``handlers`` (the endpoints), ``app`` (the request pipeline), ``server`` (uvicorn, threaded or
blocking). Jobs expire ``expiresIn`` seconds after their last action, as read from
``SimState(clock=...)`` on every access (``state``). With ``state.oauth`` set
(``devtools/oauth_server.py``) it also serves ``/oauth/authorize`` and ``/oauth/token``, and a
Bearer token must be a live access token of that server (401 once expired).
"""

from devtools.simulator.app import create_app
from devtools.simulator.data import JobSpec
from devtools.simulator.faults import FaultRule
from devtools.simulator.records import Call, Job, JobEvent, JobItem
from devtools.simulator.server import RunningSimulator, serve, start_in_thread
from devtools.simulator.state import SimState

__all__ = [
    "Call",
    "FaultRule",
    "Job",
    "JobEvent",
    "JobItem",
    "JobSpec",
    "RunningSimulator",
    "SimState",
    "create_app",
    "serve",
    "start_in_thread",
]
