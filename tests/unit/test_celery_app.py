"""The Celery apps read their settings when first used, never at import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contract.celery_app import erp_worker_config, make_app
from contract.errors import BadInput
from contract.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_task_modules_reads_no_setting() -> None:
    """A bad setting does not break ``import``: it is refused when the app is first used."""
    code = (
        "import producer.tasks, consumers.tasks\n"
        "from contract.errors import BadInput\n"
        "assert not producer.tasks.app.configured and not consumers.tasks.app.configured\n"
        "try:\n"
        "    producer.tasks.app.conf.broker_url\n"
        "except BadInput as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PLEO_PAGE_SIZE": "many"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "PLEO_PAGE_SIZE must be a whole number, not 'many'."


def test_an_app_runs_with_the_settings_it_is_given() -> None:
    """``make_app(settings)`` and ``app.use(settings)`` configure Celery from those settings."""
    given = Settings(broker_url="redis://127.0.0.1:6379/13", page_size=7)
    assert make_app(given).conf.broker_url == "redis://127.0.0.1:6379/13"
    app = make_app(main="consumers")
    app.use(given)
    assert app.settings().page_size == 7
    assert app.conf.broker_url == "redis://127.0.0.1:6379/13"
    with pytest.raises(RuntimeError, match="already configured"):
        app.use(Settings())


def test_quorum_queues_are_declared_only_on_rabbitmq_and_only_when_asked() -> None:
    """``PLEO_RABBITMQ_QUEUE_TYPE=quorum``: quorum queues on topic exchanges; else as before."""
    amqp = "amqp://guest:guest@127.0.0.1:5672//"
    quorum = make_app(Settings(broker_url=amqp, rabbitmq_queue_type="quorum")).conf.task_queues
    assert {q.queue_arguments["x-queue-type"] for q in quorum} == {"quorum"}
    assert {q.exchange.type for q in quorum} == {"topic"}
    assert all(q.exchange.name == q.name == q.routing_key for q in quorum)
    for classic in (
        Settings(broker_url=amqp),
        Settings(broker_url="redis://127.0.0.1:6379/13", rabbitmq_queue_type="quorum"),
    ):
        queues = make_app(classic).conf.task_queues
        assert {q.queue_arguments for q in queues} == {None}
        assert {q.exchange.type for q in queues} == {"direct"}


def test_erp_workers_prefetch_their_own_multiplier_and_the_producer_one() -> None:
    """``ERP_PREFETCH_MULTIPLIER`` is the ERP workers' prefetch; the producer's stays 1."""
    given = Settings(erp_prefetch_multiplier=5)
    erp = make_app(given, main="consumers", worker_config=erp_worker_config)
    assert erp.conf.worker_prefetch_multiplier == 5
    assert make_app(given).conf.worker_prefetch_multiplier == 1
    env = {"ERP_PREFETCH_MULTIPLIER": "0"}
    with pytest.raises(BadInput, match="ERP_PREFETCH_MULTIPLIER"):
        Settings.from_env(env)
