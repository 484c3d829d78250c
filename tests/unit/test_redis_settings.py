"""The Redis settings: Sentinel URLs and their master, the ephemeral flag, Cluster URLs refused,
and ``judge``'s cases that no real server shows (an INFO without the fields)."""

from __future__ import annotations

import pytest

from contract.celery_app import celery_config
from contract.errors import BadInput
from contract.redis_check import Findings, judge
from contract.settings import Settings, redact_url

SENTINELS = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://:s3cret@10.0.0.2:26379/2"


def test_sentinel_urls_need_their_master_and_then_make_a_redis_broker() -> None:
    """A sentinel:// list is accepted for both URLs once REDIS_SENTINEL_MASTER names the master;
    the broker is then Redis (one-script publish) and kombu is told the master's name."""
    with pytest.raises(
        BadInput, match=r"^REDIS_URL is a sentinel:// URL, so REDIS_SENTINEL_MASTER"
    ):
        Settings.from_env({"REDIS_URL": SENTINELS})
    settings = Settings.from_env({"REDIS_URL": SENTINELS, "REDIS_SENTINEL_MASTER": "ledger"})
    assert settings.broker_url == settings.ledger_url == SENTINELS
    assert settings.uses_redis_broker
    assert celery_config(settings)["broker_transport_options"]["master_name"] == "ledger"


def test_sentinel_passwords_never_show() -> None:
    """Every password of a Sentinel list is masked, in the repr and in a refusal alike."""
    settings = Settings.from_env({"REDIS_URL": SENTINELS, "REDIS_SENTINEL_MASTER": "m"})
    assert "s3cret" not in repr(settings)
    assert redact_url(SENTINELS) == (
        "sentinel://:***@10.0.0.1:26379/2;sentinel://:***@10.0.0.2:26379/2"
    )
    with pytest.raises(BadInput) as refused:
        Settings.from_env({"REDIS_URL": f"{SENTINELS};redis://:s3cret@10.0.0.3:6379"})
    assert "only sentinel:// URLs may" in refused.value.message
    assert "s3cret" not in refused.value.message


def test_a_cluster_url_is_refused_saying_why() -> None:
    """A redis+cluster:// URL is bad configuration, with the reason, before anything connects."""
    with pytest.raises(BadInput, match=r"names a Redis Cluster .* hash to different cluster slots"):
        Settings.from_env({"CELERY_BROKER_URL": "redis+cluster://10.0.0.1:6379/0"})


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_ephemeral_flag_reads_yes_or_no(raw: str, value: bool) -> None:
    """PLEO_REDIS_EPHEMERAL: 1/yes/true or 0/no/false; anything else is bad input."""
    assert Settings.from_env({"PLEO_REDIS_EPHEMERAL": raw}).redis_ephemeral is value
    with pytest.raises(BadInput, match=r"^PLEO_REDIS_EPHEMERAL must be 1 or 0"):
        Settings.from_env({"PLEO_REDIS_EPHEMERAL": "sometimes"})


def test_what_redis_does_not_say_is_a_warning_not_a_refusal() -> None:
    """INFO without maxmemory_policy or aof_enabled: start, with a warning naming what to check."""
    silent = Findings(cluster_enabled=False, maxmemory_policy=None, aof_enabled=None, save="")
    verdict = judge(silent, where="The Redis at x", ephemeral_ok=False)
    assert verdict.refusal is None
    assert verdict.warning is not None
    assert "whether it keeps its data on disk" in verdict.warning
    policy_only = judge(silent, where="The Redis at x", ephemeral_ok=True)
    assert policy_only.warning == (
        "The Redis at x does not show its maxmemory-policy; make sure it is noeviction."
    )
    assert verdict.warning.startswith(policy_only.warning)
