"""The Celery apps of both sides, configured from Settings: JSON only, late acks, task events on.

``celery -A producer worker`` imports the task module, which builds its app at import; the app
reads no setting then. Its Settings (and the Celery configuration built from them) are read from
the environment the first time anything needs them (the worker starting, a task running, a
command sending a task), or are the ones it was given (``make_app(settings)``, ``app.use``), so
importing a task module never fails on a bad setting or connects anywhere, and a test or an
embedding service configures the app it imports.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click
from celery import Celery, Task
from celery.signals import celeryd_after_setup
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from contract.errors import BadInput
from contract.names import ITEMS_QUEUE, POLL_TASK, PRODUCER_QUEUE, PRODUCER_TASK
from contract.retrying import BROKER_WAIT
from contract.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the producer and the ERP worker apps."""
    return {
        "broker_url": settings.broker_url,
        # The producer keeps its own records in Redis; task results are not needed downstream.
        "result_backend": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One job at a time per worker process: a producer run is long and holds a lease.
        "worker_prefetch_multiplier": 1,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "task_queues": task_queues(settings),
        "task_routes": {name: {"queue": PRODUCER_QUEUE} for name in (PRODUCER_TASK, POLL_TASK)},
        "task_default_queue": PRODUCER_QUEUE,
        "broker_connection_retry_on_startup": True,
        # A worker keeps reconnecting through a broker outage of any length instead of exiting
        # after 100 attempts (tests/chaos/test_redis_restart.py restarts Redis under workers).
        "broker_connection_max_retries": None,
        # Runs in progress carry on when the broker connection drops: they fail on their own
        # and retry if they needed it. Cancelling them would leave their message in Redis's
        # unacked set until the visibility timeout (Celery 6 changes this default).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Only the Redis transport knows a visibility timeout; AMQP redelivers on disconnect.
        "broker_transport_options": redis_transport_options(settings)
        if settings.uses_redis_broker
        else {},
        "worker_hijack_root_logger": False,
    }


def task_queues(settings: Settings) -> tuple[Queue, ...]:
    """The two queues, each bound to an exchange of its own name.

    Classic (the default): direct exchanges, as Celery's own automatic queues have (messages
    themselves go through the default exchange). Quorum (``PLEO_RABBITMQ_QUEUE_TYPE=quorum``, on
    RabbitMQ): ``x-queue-type: quorum`` queues, bound to topic exchanges, because Celery schedules
    a retry's countdown on quorum queues with RabbitMQ's native delayed delivery, which routes
    through the queue's exchange and cannot use a direct one (a worker would hold the message,
    blocking its prefetch, until the countdown ends). Celery detects the quorum queues itself
    (``worker_detect_quorum_queues``, on by default) and turns global QoS off for them.
    """
    quorum = settings.rabbitmq_queue_type == "quorum" and not settings.uses_redis_broker
    return tuple(
        Queue(
            name,
            Exchange(name, type="topic" if quorum else "direct"),
            routing_key=name,
            queue_arguments={"x-queue-type": "quorum"} if quorum else None,
        )
        for name in (PRODUCER_QUEUE, ITEMS_QUEUE)
    )


def redis_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu Redis options: a dead worker's messages return ``visibility_timeout`` s later.

    kombu sweeps for such messages every ``interval`` seconds but scans Redis only on every
    ``throttle``-th sweep (10 x 10 s by default, so up to 100 s late): one scan per sweep, at
    most 10 s apart, keeps the promise close to the setting for one cheap ZRANGE. Each scan
    takes a Redis mutex that outlives a worker killed while holding it by its expiry (5 min
    by default, blocking every restore meanwhile); the restore itself is a WATCHed transaction,
    so a short expiry is safe. A ``sentinel://`` broker also names its master.
    """
    timeout = settings.visibility_timeout
    options: dict[str, Any] = {
        "visibility_timeout": timeout,
        "unacked_restore_interval": max(1, min(10, timeout // 5)),
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": max(5, min(60, timeout)),
    }
    if settings.broker_url.startswith("sentinel://"):
        # kombu's Sentinel transport asks the Sentinels for this master, as the ledger does.
        options["master_name"] = settings.redis_sentinel_master
    return options


def retry_when_broker_answers(
    task: Task, exc: Exception, countdown: float, **options: Any
) -> Exception:
    """``task.retry``, sent over a fresh connection once the broker answers again.

    A task that failed because Redis restarted sends its retry while Redis may still be down.
    Task.retry alone uses the pooled producer, whose channel died with the old connection, and
    gives up within a second; it then rejects the message without requeue, so the work waits for
    the visibility timeout (an hour) or is lost. A new connection that waits for the broker sends
    the retry as soon as it can; if the broker stays away, Task.retry's reject is the last resort.
    ``options`` go to the retried message (e.g. ``argsrepr``/``kwargsrepr``).
    """
    try:
        with task.app.connection_for_write() as conn:
            conn.ensure_connection(**BROKER_WAIT)
            return task.retry(  # type: ignore[no-any-return]
                exc=exc, countdown=countdown, producer=conn.Producer(), **options
            )
    except OperationalError:
        return task.retry(exc=exc, countdown=countdown, **options)  # type: ignore[no-any-return]


class ExportCelery(Celery):  # type: ignore[misc]
    """A Celery app that also carries the Settings it was configured from."""

    def __init__(
        self,
        main: str,
        *,
        settings: Settings | None = None,
        worker_config: Callable[[Settings], Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(main, **kwargs)
        self._settings = settings
        self._settings_lock = threading.Lock()
        self.config_from_object(_CeleryConfig(self.settings, worker_config))
        celeryd_after_setup.connect(self._declare_quorum_queues)

    def _quorum(self) -> bool:
        """True when this app's queues are RabbitMQ quorum queues (``task_queues``)."""
        settings = self.settings()
        return settings.rabbitmq_queue_type == "quorum" and not settings.uses_redis_broker

    def send_task(
        self,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        countdown: float | None = None,
        *rest: Any,
        **options: Any,
    ) -> Any:
        """Celery's ``send_task``; on quorum queues a countdown is at least one second.

        Celery schedules countdowns there with RabbitMQ's native delayed delivery, in whole
        seconds: one below a second fails to send (kombu's ``calculate_routing_key``).
        """
        if countdown is not None and 0 < countdown < 1 and self._quorum():
            countdown = 1.0
        return super().send_task(name, args, kwargs, countdown, *rest, **options)

    def _declare_quorum_queues(self, sender: Any = None, instance: Any = None, **_: Any) -> None:
        """Before a worker of this app consumes, declare every queue of ``task_queues``.

        On quorum queues Celery binds each of them to its native delayed delivery exchanges as
        the worker starts, and gives up on all if one queue's exchange is missing (the
        producer's, when only ERP workers ran so far on a new vhost).
        """
        if getattr(instance, "app", None) is not self or not self._quorum():
            return
        with self.connection_for_write() as conn:
            conn.ensure_connection(**BROKER_WAIT)
            for queue in self.amqp.queues.values():
                queue(conn.default_channel).declare()

    def settings(self) -> Settings:
        """The settings this app runs with; read from the environment on first use if not given."""
        if self._settings is None:
            with self._settings_lock:
                if self._settings is None:
                    self._settings = Settings.from_env()
        return self._settings

    def use(self, settings: Settings) -> None:
        """Run with ``settings`` instead of the environment's; only before the app is configured."""
        if self.configured:
            raise RuntimeError("the Celery app is already configured; use() it before first use")
        self._settings = settings


class SettingRefused(BadInput, click.ClickException):  # type: ignore[misc]  # both keep .message
    """A bad setting met while Celery reads its configuration (a worker starting, say).

    Still a BadInput to our code; to Celery's command line (click) an error it shows as one line,
    ``Error: <sentence>``, exiting 2, where any other exception would bury it under a traceback.
    """


class _CeleryConfig(Mapping[str, Any]):
    """``celery_config`` of the app's settings, computed when Celery first reads its config."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        worker_config: Callable[[Settings], Mapping[str, Any]] | None = None,
    ) -> None:
        self._settings = settings
        self._worker_config = worker_config
        self._config: dict[str, Any] | None = None

    def _built(self) -> dict[str, Any]:
        if self._config is None:
            try:
                settings = self._settings()
            except BadInput as bad:
                raise SettingRefused(bad.message) from None
            self._config = celery_config(settings)
            if self._worker_config is not None:
                self._config.update(self._worker_config(settings))
        return self._config

    def __getitem__(self, key: str) -> Any:
        return self._built()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


def app_settings(app: Celery) -> Settings:
    """The settings a worker's app runs with (a plain Celery app: the environment's)."""
    return app.settings() if isinstance(app, ExportCelery) else Settings.from_env()


def make_app(
    settings: Settings | None = None,
    *,
    main: str = "producer",
    worker_config: Callable[[Settings], Mapping[str, Any]] | None = None,
) -> ExportCelery:
    """A Celery app configured from ``settings``, or from the environment when first used;
    ``worker_config`` adds one kind of worker's own options to the shared ones."""
    return ExportCelery(main, settings=settings, worker_config=worker_config)


def erp_worker_config(settings: Settings) -> dict[str, Any]:
    """The ERP workers' own Celery options: a prefetch of ``ERP_PREFETCH_MULTIPLIER`` per pool
    process (the producer's stays 1: its runs are long and hold a lease).

    With a prefetch of 1 a pool process that finishes a message waits for its main process to
    ack it and fetch the next (two Redis round trips and a pipe); with more, the next one is
    already there. Measured (``bench/e2e.py --pools``), that wait is not what bounds a worker:
    its main process's CPU per message is, so the default stays 1. What a whole worker killed
    had prefetched stays in kombu's unacked hash and is re-sent by the repair sweep
    (``consumers/repair.py``); a killed pool process loses only the message it was running
    (``reject_on_worker_lost``).
    """
    return {"worker_prefetch_multiplier": settings.erp_prefetch_multiplier}
