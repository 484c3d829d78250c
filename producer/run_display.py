"""What ``pleo-export run`` shows: progress bars on a TTY while it runs, then its summary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the run's parts load only for the commands that run one: a fast --help
    from producer.runner import Observer, RunSummary


def summary_text(summary: RunSummary, *, as_json: bool) -> str:
    """The run's summary: one JSON object, or a headline and one line per figure."""
    data = summary.as_dict()
    if as_json:
        return json.dumps(data, sort_keys=True)
    already = f"{summary.already_enqueued} were already queued"
    if summary.already_enqueued and not summary.enqueued:
        # Every entry was published before: by an earlier run of this job id, maybe days ago
        # (marks live PLEO_DEDUP_TTL), which is what a simulator restarted with its seed gives.
        already += " by an earlier run of this job"
    headline = {
        "enqueued": f"enqueued {summary.enqueued} new messages ({already}) "
        f"of {summary.planned} planned",
        "nothing_to_do": "nothing to do: no pending or in_progress items",
        "skipped": f"nothing to do: {summary.reason}",
        "locked": f"{summary.reason or 'a live run holds this job'}",
    }.get(summary.status, summary.status)
    figures = (
        "job_status",
        "recovery",
        "pages",
        "items_seen",
        "duplicates",
        "not_actionable",
        "missing_export_items",
        "seconds",
    )
    lines = [f"job {summary.job_id}: {headline}", *(f"{key:>22}: {data[key]}" for key in figures)]
    lines += [f"{'read again by cursor':>22}: {why}" for why in summary.paging_fallbacks]
    return "\n".join(lines)


@contextmanager
def progress_bars(*, enabled: bool) -> Iterator[Observer | None]:
    """An Observer drawing one bar per layer read and one for the messages, on stderr."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from producer.runner import Observer

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bars:
        # One bar per layer read (entry_id ordering reads one), each with the total Pleo's pages
        # give; a total that the items outgrow is the bar's no longer.
        names = {"control": "job items read", "data": "export items read"}
        layers: dict[str, TaskID] = {}
        items = bars.add_task("items enqueued", total=None)

        def on_layer(layer: str, seen: int, total: int | None) -> None:
            if layer not in layers:
                layers[layer] = bars.add_task(names[layer], total=None)
            bars.update(layers[layer], completed=seen, total=max(total, seen) if total else None)

        def on_publish(done: int, total: int) -> None:
            bars.update(items, completed=done, total=total)

        yield Observer(on_layer=on_layer, on_publish=on_publish)
