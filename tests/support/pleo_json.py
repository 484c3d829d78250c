"""Export-item payloads as Pleo might write them, and messages decoded as a stock worker does.

The producer passes each payload on as the bytes Pleo sent, so the message-format tests feed it
payloads in several JSON spellings (spacing, escapes, key order, integers past 64 bits), including
objects kombu's JSON decoder acts on (``__type__``/``__value__``), and compare what a stock
Celery worker decodes from our message with what it decodes from kombu's own.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st
from kombu.transport.virtual import Message as VirtualMessage
from kombu.utils.json import loads as kombu_loads

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**80)
    | st.integers(min_value=-(2**80), max_value=-(2**63))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
# Objects kombu.utils.json.object_hook turns into datetimes, bytes, Decimals, UUIDs, or refuses.
KOMBU_TYPES = st.sampled_from(["datetime", "date", "time", "decimal", "uuid", "bytes", "nope"])


def _specials(inner: Any) -> Any:
    return st.fixed_dictionaries(
        {"__type__": KOMBU_TYPES | st.text(max_size=5), "__value__": inner}
    ) | st.fixed_dictionaries({"__pleo_escaped__": inner})


JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | _specials(inner)
    ),
    max_leaves=16,
)

# How Pleo's JSON might be spelled: each a json.dumps of the same value.
SPELLINGS = {
    "compact, UTF-8": {"ensure_ascii": False, "separators": (",", ":")},
    "indented, ASCII escapes": {"ensure_ascii": True, "indent": 2},
    "sorted, spaced": {"ensure_ascii": False, "sort_keys": True, "separators": (" , ", " : ")},
}


def pleo_bytes(payload: Any, spelling: str) -> bytes:
    """``payload`` as Pleo might have sent it."""
    return json.dumps(payload, **SPELLINGS[spelling]).encode()  # type: ignore[arg-type]


def redis_kwargs(channel: Any, raw: bytes) -> dict[str, Any]:
    """The kwargs a stock worker decodes from ``raw``, the bytes LPUSHed to a Redis queue.

    As kombu's Redis channel reads a message (``loads`` of the list item, then its ``Message``,
    which undoes the body encoding and runs the serializer the content type names).
    """
    envelope = kombu_loads(raw)
    message = VirtualMessage(envelope, channel=channel)
    args, kwargs, _embed = message.decode()
    assert args == []
    assert isinstance(kwargs, dict)
    return kwargs


def body_of(raw: bytes) -> bytes:
    """The task body (``[args, kwargs, embed]`` JSON) inside a Redis queue message."""
    return base64.b64decode(json.loads(raw)["body"])
