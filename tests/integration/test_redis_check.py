"""The start-up check of Redis against real ``redis-server`` processes configured each way.

One server per configuration for the module: evicting, keeping nothing on disk, AOF on, RDB on,
a Cluster node, and one that refuses CONFIG as managed services do. Most cases call the check
in-process; the refusals are also shown where operators meet them: a command and real workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.redis_check import RedisUnfit, check_redis
from contract.settings import Settings
from tests.conftest import env_for, wait_for
from tests.support import zygote
from tests.support.local import free_port, worker_log
from tests.support.redis_servers import redis_server

pytestmark = [pytest.mark.integration]

JOB_ID = "0b9f6c1e-2a5d-4f0e-8c3b-7d1e2f3a4b5c"
DISKLESS = ("--save", "", "--appendonly", "no")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Redis URLs by configuration, each its own ``redis-server``."""
    folder = tmp_path_factory.mktemp("redis-check")
    configs = {
        "evicting": ("--maxmemory-policy", "allkeys-lru"),
        "diskless": DISKLESS,
        "aof": ("--appendonly", "yes", "--save", ""),
        "rdb": ("--appendonly", "no", "--save", "3600 1"),
        "cluster": ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
        "managed": (*DISKLESS, "--rename-command", "CONFIG", ""),
    }
    with ExitStack() as stack:
        yield {
            name: f"redis://127.0.0.1:{stack.enter_context(redis_server(folder / name, *opts))}/0"
            for name, opts in configs.items()
        }


def on(url: str, *, ephemeral: bool = False) -> Settings:
    return Settings(redis_url=url, broker_url=url, redis_ephemeral=ephemeral)


def checked(settings: Settings) -> list[str]:
    """The warnings ``check_redis`` gave (it raises if it refuses)."""
    warnings: list[str] = []
    check_redis(settings, warn=warnings.append)
    return warnings


def test_an_evicting_redis_is_refused_by_a_command_with_exit_2(servers: dict[str, str]) -> None:
    """``pleo-export enqueue`` on an allkeys-lru Redis: exit 2, one sentence, nothing written."""
    done = zygote.run_module(
        "producer", ["enqueue", JOB_ID], env_for(on(servers["evicting"])), timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        f"pleo-export: The Redis at {servers['evicting']} evicts keys (maxmemory-policy "
        "allkeys-lru), which would silently drop leases, dedup marks and queued messages; set "
        "maxmemory-policy noeviction.\n"
    )


def test_a_redis_keeping_nothing_on_disk_needs_the_ephemeral_setting(
    servers: dict[str, str],
) -> None:
    """No AOF and no save schedule: refused naming PLEO_REDIS_EPHEMERAL; with it, accepted."""
    with pytest.raises(RedisUnfit, match=r"keeps nothing on disk .* PLEO_REDIS_EPHEMERAL=1") as no:
        checked(on(servers["diskless"]))
    assert no.value.exit_code == 2
    assert checked(on(servers["diskless"], ephemeral=True)) == []


def test_a_redis_with_aof_or_a_save_schedule_starts(servers: dict[str, str]) -> None:
    """AOF on without snapshots passes, and so do snapshots without AOF: no warning either way."""
    assert checked(on(servers["aof"])) == []
    assert checked(on(servers["rdb"])) == []


def test_a_cluster_is_refused_saying_why(servers: dict[str, str]) -> None:
    """A node with cluster-enabled: refused, naming the slots the publish's keys hash to."""
    with pytest.raises(RedisUnfit) as refused:
        checked(on(servers["cluster"], ephemeral=True))
    assert refused.value.message.startswith(f"The Redis at {servers['cluster']} is a Redis Cluster")
    assert "hash to different cluster slots" in refused.value.message
    assert "no cluster mode" in refused.value.message


def test_a_redis_refusing_config_starts_with_a_warning(servers: dict[str, str]) -> None:
    """CONFIG renamed away and AOF off: it may snapshot, so one warning and no refusal."""
    (warning,) = checked(on(servers["managed"]))
    assert "does not let us read whether it keeps its data on disk" in warning


def test_an_unreachable_redis_is_left_to_the_usual_retries() -> None:
    """Nobody listening: the check neither refuses nor warns (the outage is handled as before)."""
    assert checked(on(f"redis://127.0.0.1:{free_port()}/0")) == []


def test_workers_refuse_to_start_on_an_evicting_redis(
    servers: dict[str, str], settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    """Real ``celery worker`` processes (producer and ERP) exit 2 before consuming, saying why."""
    evicting = on(servers["evicting"])
    producer = start_worker("producer", PRODUCER_QUEUE, settings_=evicting)
    erp = start_worker("consumers", ITEMS_QUEUE, settings_=evicting)
    for index, (name, proc) in enumerate((("producer", producer), ("consumers", erp))):
        wait_for(lambda p=proc: p.poll() is not None, timeout=60, what=f"the {name} worker to exit")
        assert proc.returncode == 2, worker_log(tmp_path, index)
        assert (
            f"{name} worker not started: The Redis at {servers['evicting']} evicts keys"
            in worker_log(tmp_path, index)
        )
