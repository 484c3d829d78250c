"""``pleo-export simulate``: the Pleo API simulator (devtools/simulator/) from the command line.

Registered by ``producer/cli.py``, which hands in its error guard and its settings loader; the
simulator is imported only when the command runs, so no production process loads the
development tools.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from contract.ids import validate_uuid
from contract.settings import Settings


def simulate_command(
    guard: Callable[[Callable[..., Any]], Callable[..., Any]],
    load_settings: Callable[[], Settings],
) -> click.Command:
    """The ``simulate`` command, its errors turned into sentences by ``guard``."""

    @click.command("simulate")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
    @click.option(
        "--items",
        default=1000,
        show_default=True,
        type=click.IntRange(0, 10_000_000),
        help="Items in the seeded sample job.",
    )
    @click.option("--seed", default=1, show_default=True, type=int)
    @click.option("--max-page-size", default=1000, show_default=True, type=click.IntRange(1))
    @click.option(
        "--latency",
        default=0.0,
        show_default=True,
        type=click.FloatRange(0),
        help="Seconds added to every API request.",
    )
    @click.option(
        "--expires-in",
        default=3600,
        show_default=True,
        type=click.IntRange(1, 2**31 - 1),
        help="The job's expiresIn: seconds without an action before Pleo fails it as job_expired.",
    )
    @click.option(
        "--job-id",
        default=None,
        help="The sample job's id (a UUID); by default one derived from --seed.",
    )
    @click.option(
        "--oauth-lifetime",
        default=None,
        type=click.FloatRange(0, min_open=True),
        help="Serve OAuth (/oauth/authorize, /oauth/token; client "
        "PLEO_OAUTH_CLIENT_ID/SECRET) with access tokens living this many seconds.",
    )
    @guard
    def simulate(
        *,
        host: str,
        port: int,
        items: int,
        seed: int,
        max_page_size: int,
        latency: float,
        expires_in: int,
        job_id: str | None,
        oauth_lifetime: float | None,
    ) -> None:
        """Run the Pleo API simulator with one seeded pending job."""
        from devtools.simulator import JobSpec, SimState, serve

        settings = load_settings()
        state = SimState(
            token=settings.api_token,
            api_key=settings.api_key,
            max_page_size=max_page_size,
            latency=latency,
            seed=seed,
        )
        if oauth_lifetime is not None:
            from devtools.oauth_server import OAuthServer

            state.oauth = OAuthServer(
                settings.pleo_oauth_client_id or "sim-client",
                settings.pleo_oauth_client_secret or "sim-secret",
                access_lifetime=oauth_lifetime,
            )
        given = job_id is not None
        spec = JobSpec(
            items=items,
            seed=seed,
            expires_in=expires_in,
            job_id=validate_uuid(job_id, "Job id") if given else None,
        )
        job_id = state.add_job(spec)
        origin = (
            "the id given"
            if given
            else f"the id comes from --seed {seed}: the same seed gives the same job, whose marks "
            "a ledger may already hold; another seed or --job-id gives a new one"
        )

        def announce(url: str) -> None:
            click.echo(
                f"simulated pending job {job_id} with {items} items at {url} ({origin})", err=True
            )

        serve(state, host, port, on_listening=announce)

    return simulate
