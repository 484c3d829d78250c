"""``pleo-export simulate-erp``: the ERP simulator (devtools/erp_simulator/) from the command line.

Registered by ``producer/cli.py``, which hands in its error guard; the simulator is imported only
when the command runs, so no production process loads the development tools.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def simulate_erp_command(
    guard: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> click.Command:
    """The ``simulate-erp`` command, its errors turned into sentences by ``guard``."""

    @click.command("simulate-erp")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=8090, show_default=True, type=click.IntRange(0, 65535))
    @click.option(
        "--calls", default=None, type=click.IntRange(1), help="Calls allowed per --period."
    )
    @click.option(
        "--period",
        default=1.0,
        show_default=True,
        type=click.FloatRange(0, min_open=True),
        help="Seconds of the rate limit's sliding window.",
    )
    @click.option(
        "--concurrency", default=None, type=click.IntRange(1), help="Calls in flight at once."
    )
    @click.option(
        "--latency",
        default=0.0,
        show_default=True,
        type=click.FloatRange(0),
        help="Seconds added to every call.",
    )
    @click.option(
        "--key-window",
        default=24 * 3600.0,
        show_default=True,
        type=click.FloatRange(0),
        help="Seconds an Idempotency-Key is remembered.",
    )
    @click.option(
        "--fail-rate",
        default=0.0,
        show_default=True,
        type=click.FloatRange(0, 1),
        help="5xx share.",
    )
    @click.option(
        "--timeout-rate",
        default=0.0,
        show_default=True,
        type=click.FloatRange(0, 1),
        help="Share of calls that hang (30 s) unanswered.",
    )
    @click.option("--seed", default=0, show_default=True, type=int, help="Seeds the faults.")
    @click.option(
        "--token",
        default=None,
        envvar="ERP_SIM_TOKEN",
        help="Bearer token every /journal call must carry (or ERP_SIM_TOKEN).",
    )
    @click.option(
        "--oauth-lifetime",
        default=None,
        type=click.FloatRange(0, min_open=True),
        help="Serve OAuth (/oauth/authorize, /oauth/token; client ERP_OAUTH_CLIENT_ID/SECRET, "
        "default sim-client/sim-secret) and take only its access tokens, living this many s.",
    )
    @guard
    def simulate_erp(
        *,
        host: str,
        port: int,
        calls: int | None,
        period: float,
        concurrency: int | None,
        latency: float,
        key_window: float,
        fail_rate: float,
        timeout_rate: float,
        seed: int,
        token: str | None,
        oauth_lifetime: float | None,
    ) -> None:
        """Run the ERP simulator: a journal with an ERP's limits, idempotency keys and faults."""
        from devtools.erp_simulator import ErpSimConfig, ErpSimState, serve

        config = ErpSimConfig(
            calls=calls,
            period=period,
            concurrency=concurrency,
            latency=latency,
            key_window=key_window,
            fail_rate=fail_rate,
            timeout_rate=timeout_rate,
            seed=seed,
            token=token,
        )
        limit = f"{calls} calls per {period:g} s" if calls else "no rate limit"

        def announce(url: str) -> None:
            click.echo(f"simulated ERP journal at {url} ({limit})", err=True)

        state = ErpSimState(config)
        if oauth_lifetime is not None:
            from contract.settings import Settings
            from devtools.oauth_server import OAuthServer

            settings = Settings.from_env()
            state.oauth = OAuthServer(
                settings.erp_oauth_client_id or "sim-client",
                settings.erp_oauth_client_secret or "sim-secret",
                access_lifetime=oauth_lifetime,
            )
        serve(state, host, port, on_listening=announce)

    return simulate_erp
