"""Which ERP adapter a worker posts with: the factory ``ERP_ADAPTER`` names, built from Settings.

``ERP_ADAPTER=package.module:callable`` (default ``consumers.erp_sql:from_settings``, the SQL
journal). The callable takes the worker's ``Settings`` and returns an object with the protocol's
``find`` and ``post`` (``consumers/erp.py``), and a ``close`` if it holds connections. Each pool
process builds its own, once; the start-up check (``consumers/adapter_check.py``) builds one first
in the main process and probes it, so a factory that cannot work stops the worker before it takes
a message, with one sentence and exit status 2.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from consumers.erp import ERPAdapter
from contract.errors import BadInput
from contract.settings import Settings

REQUIRED = ("find", "post")


def factory(path: str) -> Callable[[Settings], Any]:
    """The callable ``path`` (``package.module:callable``) names; BadInput if there is none."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(
            f"ERP_ADAPTER names the module {module_name!r}, which cannot be imported ({exc})."
        ) from None
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise BadInput(f"ERP_ADAPTER names {path!r}, but {module_name} has no {attribute}.")
    if not callable(found):
        raise BadInput(f"ERP_ADAPTER names {path!r}, which is not callable.")
    return found  # type: ignore[no-any-return]


def build_adapter(settings: Settings) -> ERPAdapter:
    """The adapter ``settings.erp_adapter`` builds; BadInput if it lacks the protocol's methods."""
    adapter = factory(settings.erp_adapter)(settings)
    missing = [name for name in REQUIRED if not callable(getattr(adapter, name, None))]
    if missing:
        raise BadInput(
            f"ERP_ADAPTER {settings.erp_adapter!r} built a {type(adapter).__name__}, which has no "
            f"{' or '.join(missing)} method (an adapter needs find and post)."
        )
    return adapter  # type: ignore[no-any-return]


def close_adapter(adapter: object) -> None:
    """Release the adapter's connections, if it has a ``close``."""
    close = getattr(adapter, "close", None)
    if callable(close):
        close()
