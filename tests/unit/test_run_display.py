"""What ``pleo-export run`` prints of how the layers were read."""

from __future__ import annotations

import json

from producer.run_display import summary_text
from producer.runner import RunSummary

JOB = "8eb6d4a2-6c1f-4f7e-9a53-2f0c4f1d2b10"


def test_a_layer_read_again_by_cursor_is_named_with_why() -> None:
    """Each fallback gets its own line; the JSON carries paging and paging_fallbacks."""
    summary = RunSummary(job_id=JOB, status="enqueued", paging="offset")
    summary.paging_fallbacks.append("data: total moved from 500 to 501 on page 3")
    text = summary_text(summary, as_json=False)
    assert (
        "read again by cursor: data: total moved from 500 to 501 on page 3" in text.splitlines()[-1]
    )
    shown = json.loads(summary_text(summary, as_json=True))
    assert (shown["paging"], shown["paging_fallbacks"]) == (
        "offset",
        ["data: total moved from 500 to 501 on page 3"],
    )


def test_no_fallback_no_line() -> None:
    """A run whose offset walks proved complete prints no fallback line."""
    text = summary_text(RunSummary(job_id=JOB, status="enqueued", paging="offset"), as_json=False)
    assert "read again by cursor" not in text
