"""The item message on the wire: Celery's task message as kombu's Redis transport writes it.

- ``task_id_for``: an entry's Celery task id, a pure function of (job, entry).
- ``celery_message``: Celery's task message for ``consumers.export_item`` (as ``send_task``).
- ``MessageEncoder`` asks Celery and kombu themselves for the bytes: a kombu Redis channel whose
  last step, ``_put``, hands back the string it would ``LPUSH`` instead of sending it. It is the
  reference (the producer's fast ``MessageTemplate`` must agree with it byte for byte) and what the
  repair sweep rebuilds a lost message with.
- ``AmqpEncoder`` does the same for kombu's AMQP transport (RabbitMQ): the ``amqp.Message``,
  exchange and routing key its channel would ``basic_publish``, kept instead of sent. It is the
  reference the RabbitMQ path's ``producer/amqp_template.py`` must agree with.
- The kombu keys these bytes live under are in ``contract/keys.py`` (``kombu_*``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from celery import Celery
from kombu import Connection, Producer
from kombu.transport import pyamqp as kombu_pyamqp
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from contract.errors import BrokerUnavailable, cause
from contract.names import ITEM_TASK, ITEMS_QUEUE

# Task ids are uuid5(namespace, "job_id:entry_id"): the same on every run and retry.
TASK_ID_NAMESPACE = uuid.UUID("6f1c3f4e-2b8a-5d7e-9c41-8e0b5a7d3c21")


def task_id_for(job_id: str, accounting_entry_id: str) -> str:
    """The Celery task id of an entry's message: a pure function of (job, entry)."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{job_id}:{accounting_entry_id}"))


def celery_message(app: Celery, task_id: str, kwargs: dict[str, Any]) -> Any:
    """Celery's task message for ``consumers.export_item``, as ``app.send_task`` would build it.

    Two departures, both for speed and legibility: no ``task-sent`` event per message (Flower still
    sees every task received, started and finished from the workers), and a short ``kwargsrepr``
    naming the entry instead of Celery's repr of the whole payload, which cost 1.5 ms per message.
    """
    return app.amqp.as_task_v2(
        task_id,
        ITEM_TASK,
        args=(),
        kwargs=kwargs,
        reply_to=app.thread_oid,
        create_sent_event=False,
        ignore_result=None,
        argsrepr="()",
        kwargsrepr=short_repr(kwargs),
    )


def short_repr(kwargs: Mapping[str, Any]) -> str:
    """What Flower shows for an item message: the ids and position, not the payload."""
    # ``get``: a parked message put back (contract/dead_letters.py) may lack any of them.
    shown = {k: kwargs.get(k) for k in ("job_id", "accounting_entry_id", "sequence", "total")}
    return repr(shown)


def send_message(app: Celery, producer: Any, message: Any) -> None:
    """Hand one Celery task message to a kombu producer, as ``send_task`` does."""
    app.amqp.send_task_message(
        producer, ITEM_TASK, message, queue=ITEMS_QUEUE, declare=[], retry=False
    )


class _CapturingChannel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, stopped at its last step: the LPUSH it would send is kept instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.captured: list[tuple[str, str]] = []

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        priority = self._get_message_priority(message, reverse=False)
        self.captured.append((self._q_for_pri(queue, priority), dumps(message)))


class _CapturingSentinelChannel(_CapturingChannel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """The same, on kombu's Sentinel channel: connected to the master the Sentinels name."""


class _CapturingTransport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = _CapturingChannel


class _CapturingSentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = _CapturingSentinelChannel


class MessageEncoder:
    """Builds item messages with Celery and kombu, returning (Redis list key, bytes to LPUSH)."""

    def __init__(self, app: Celery, broker_url: str) -> None:
        self._app = app
        sentinel = broker_url.startswith("sentinel://")
        self._connection = Connection(
            broker_url,
            transport=_CapturingSentinelTransport if sentinel else _CapturingTransport,
            # The app's options name the Sentinel master (contract/celery_app.py).
            transport_options=dict(app.conf.broker_transport_options or {}) if sentinel else {},
        )
        try:
            self._channel = self._connection.default_channel
        except Exception as exc:
            raise BrokerUnavailable(
                f"The Redis broker could not be reached: {cause(exc)}."
            ) from exc
        self._producer = Producer(self._channel, auto_declare=False)

    def encode(self, message: Any) -> tuple[str, str]:
        """The (list key, bytes) kombu's Redis transport would LPUSH for a Celery task message."""
        send_message(self._app, self._producer, message)
        return self._channel.captured.pop()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Release the channel's Redis connection."""
        self._connection.release()


class _CapturingAmqpChannel(kombu_pyamqp.Channel):  # type: ignore[misc]
    """kombu's AMQP channel, stopped at its last step: the publish it would send is kept instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.captured: list[tuple[Any, str, str]] = []

    def basic_publish(
        self, msg: Any, exchange: str = "", routing_key: str = "", *args: Any, **kwargs: Any
    ) -> None:
        self.captured.append((msg, exchange, routing_key))


class AmqpEncoder:
    """Builds item messages with Celery and kombu: the (message, exchange, routing key) to publish.

    Its channel lives on ``connection`` (a kombu AMQP connection, already connected) but never
    sends a message: kombu's ``basic_publish`` is where it stops.
    """

    def __init__(self, app: Celery, connection: Connection) -> None:
        self._app = app
        self._channel = _CapturingAmqpChannel(connection.connection)
        self._channel.open()
        self._producer = Producer(self._channel, auto_declare=False)

    def encode(self, message: Any) -> tuple[Any, str, str]:
        """What kombu's AMQP transport would ``basic_publish`` for a Celery task message."""
        send_message(self._app, self._producer, message)
        return self._channel.captured.pop()

    def close(self) -> None:
        """Close the (idle) channel."""
        self._channel.close()
