"""RabbitMQ publisher confirms on one channel, read as they come instead of one per publish.

In confirm mode (``confirm.select``) RabbitMQ numbers a channel's publishes 1, 2, 3 ... and
answers each with ``basic.ack`` (or ``basic.nack``), often one frame for many: ``multiple``
covers every number up to the one it names. ``Confirms`` counts what was published, keeps the
highest number below which everything was acknowledged, and ``wait(n)`` reads the connection's
frames until publish ``n`` and all before it are; py-amqp's own ``confirm_publish`` instead waits
for each publish's acknowledgement before the next (one round trip, and one broker flush, each).
"""

from __future__ import annotations

import time
from typing import Any

from contract.errors import BrokerUnavailable


class Confirms:
    """Which of a confirming channel's publishes RabbitMQ has acknowledged so far."""

    def __init__(self, connection: Any, channel: Any, *, timeout: float) -> None:
        """Put ``channel`` (kombu's AMQP channel on ``connection``) in confirm mode."""
        self._connection = connection
        self._timeout = timeout
        self._sent = 0
        # Every publish numbered up to _floor is acknowledged; _above: single acks past it.
        self._floor = 0
        self._above: set[int] = set()
        self._refused = 0
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)

    @property
    def acknowledged(self) -> int:
        """The highest publish number up to which RabbitMQ acknowledged every one."""
        return self._floor

    def published(self, count: int) -> int:
        """Count ``count`` more publishes on the channel; return the last one's number."""
        self._sent += count
        return self._sent

    def wait(self, number: int) -> None:
        """Return once publishes 1..``number`` are all acknowledged.

        Raises BrokerUnavailable when RabbitMQ refused one (``basic.nack``: nothing says which
        were kept) or acknowledged nothing more for the timeout.
        """
        deadline = time.monotonic() + self._timeout
        while self._floor < number and not self._refused:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnavailable(
                    f"RabbitMQ confirmed {self._floor} of {number} messages and then nothing "
                    f"for {self._timeout:.0f} s."
                )
            try:
                self._connection.drain_events(timeout=left)
            except TimeoutError:
                continue
        if self._refused:
            raise BrokerUnavailable(
                f"RabbitMQ refused a publish (basic.nack) after confirming {self._floor}; the "
                "batches not yet marked stay reserved and the next run sends them again."
            )

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._floor = max(self._floor, tag)
            self._above = {t for t in self._above if t > self._floor}
        elif tag > self._floor:
            self._above.add(tag)
        while self._floor + 1 in self._above:
            self._floor += 1
            self._above.discard(self._floor)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._refused += max(1, tag - self._floor) if multiple else 1
        self._on_ack(tag, multiple)
