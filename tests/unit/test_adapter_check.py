"""The start-up check: wait while the adapter's database does not answer, refuse a broken one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consumers.adapter_check import PROBE_ENTRY, AdapterBroken, wait_for_adapter
from consumers.erp import Entry, ERPUnavailable, ExternalRef
from consumers.erp_sql import SqlJournal


class Adapter:
    """An adapter whose ``find`` answers or raises what it is given, and that notes its close."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.looked_up: list[str] = []
        self.closed = False

    def find(self, accounting_entry_id: str) -> ExternalRef | None:
        self.looked_up.append(accounting_entry_id)
        if self.error is not None:
            raise self.error
        return None

    def post(self, entry: Entry) -> ExternalRef:
        raise AssertionError("the check never posts")

    def close(self) -> None:
        self.closed = True


def builder(*adapters: Adapter) -> Callable[[], Adapter]:
    """Builds ``adapters`` one after the other."""
    queue = list(adapters)
    return lambda: queue.pop(0)


def no_sleep(seconds: float) -> None:
    """A broken adapter is refused at once: nothing to wait for."""
    pytest.fail(f"the check waited {seconds} s for an adapter that can never work")


def test_waits_with_growing_pauses_until_the_database_answers() -> None:
    """Two "not reachable now" answers: two pauses, each longer, then it returns; all closed."""
    adapters = [Adapter(ERPUnavailable("down")), Adapter(ERPUnavailable("down")), Adapter()]
    slept: list[float] = []
    attempts = wait_for_adapter(builder(*adapters), sleep=slept.append, jitter=lambda: 1.0)
    assert attempts == 3
    assert slept == [1.0, 2.0]
    assert all(a.closed and a.looked_up == [PROBE_ENTRY] for a in adapters)


def test_an_unknown_database_kind_is_refused_as_a_bad_setting() -> None:
    """garbage://x cannot be built: exit status 2 and a sentence naming the setting."""
    with pytest.raises(AdapterBroken) as caught:
        wait_for_adapter(lambda: SqlJournal("garbage://x"), sleep=no_sleep)
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith("ERP_DATABASE_URL names the database kind 'garbage'")


def test_any_other_failure_is_refused_with_its_type_and_no_password() -> None:
    """An error the check does not know stops the worker (exit 1), credentials in it masked."""
    error = RuntimeError("cannot use postgresql://erp:s3cret@db/erp\nmore detail")
    with pytest.raises(AdapterBroken) as caught:
        wait_for_adapter(builder(Adapter(error)), sleep=no_sleep)
    assert caught.value.exit_code == 1
    assert caught.value.message == (
        "The ERP adapter failed its start-up check with RuntimeError: "
        "cannot use postgresql://erp:***@db/erp."
    )
