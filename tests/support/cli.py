"""``pleo-export`` called in this process through click's CliRunner: the same entry point, no
interpreter start.

For the many inputs of one behaviour; each behaviour keeps at least one real subprocess (the
``cli`` fixture) for what only a real process shows: its exit status and its stderr as written.
"""

from __future__ import annotations

import os

from click.testing import CliRunner, Result

from contract.settings import Settings
from producer.cli import main
from tests.conftest import env_for

_OWN_PREFIXES = ("PLEO_", "CELERY_", "ERP_")


def invoke(settings: Settings, *args: str, **extra: str) -> Result:
    """Run ``pleo-export ARGS`` in-process with the environment ``cli`` would give a subprocess."""
    env: dict[str, str | None] = dict(env_for(settings, **extra))
    # Settings read the environment: unset what this process has and the subprocess would not.
    env.update(
        {key: None for key in os.environ if key.startswith(_OWN_PREFIXES) and key not in env}
    )
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
