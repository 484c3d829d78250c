"""The physical limit of a run: what a raw client needs to read a job's pages and queue its bytes.

``bench/run_job.py`` compares the producer's wall time with this, measured in the same process
against the same simulator and Redis: (1) a raw client reads both item layers side by side (two
threads, one keep-alive ``httpx.Client`` each, every page one after the other, the next cursor
taken from the body's tail by a regular expression: bytes only, nothing parsed or checked), then
(2) a raw pipelined ``LPUSH`` of as many byte strings as the producer queued, each as long as one
of its messages, 1,000 to a pipeline. Physical limit = (1) + (2): no producer can do less work
than reading every page and writing every message's bytes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import redis

from bench.common import TOKEN

# The pagination object closes the body (the simulator writes it after the data), so its cursor
# and next-page flag are found in the last few KB without reading the 2.5 MB page before them.
_TAIL = 4_096
_END_CURSOR = re.compile(rb'"endCursor":"([A-Z2-7=~]+)"')
_HAS_NEXT = b'"hasNextPage":true'
LPUSH_BATCH = 1_000
RAW_KEY = "bench:raw-limit"
# The length of each of a list's elements, without sending them: KEYS[1] the list, ARGV the range.
_LENGTHS = """
local r = {}
for i, v in ipairs(redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])) do r[i] = #v end
return r
"""


@dataclass(frozen=True, slots=True)
class RawLimit:
    """One measurement: the raw fetch (both layers side by side) and the raw pipelined LPUSH."""

    fetch_seconds: float
    lpush_seconds: float
    pages: int
    page_bytes: int
    messages: int

    @property
    def seconds(self) -> float:
        """The physical limit: raw fetch + raw LPUSH."""
        return self.fetch_seconds + self.lpush_seconds


def walk_layer(base_url: str, path: str, params: dict[str, str], page_size: int) -> tuple[int, int]:
    """Read every page of one listing by its cursors, one request at a time: pages, bytes."""
    pages = size = 0
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    ) as http:
        query = {**params, "limit": str(page_size)}
        while True:
            response = http.get(path, params=query)
            response.raise_for_status()
            body = response.content
            pages += 1
            size += len(body)
            tail = body[-_TAIL:]
            if _HAS_NEXT not in tail:
                return pages, size
            found = _END_CURSOR.search(tail)
            if found is None:
                raise SystemExit(f"the raw client found no endCursor in a page of {path}")
            query = {**params, "limit": str(page_size), "after": found.group(1).decode()}


def raw_fetch(base_url: str, job_id: str, page_size: int) -> tuple[float, int, int]:
    """Both layers' pages read side by side, a thread each: seconds, pages, bytes."""
    layers = [
        (f"/v3/export-jobs/{job_id}/items", {}),
        ("/v3/export-items", {"job_id": job_id}),
    ]
    with ThreadPoolExecutor(len(layers)) as pool:
        started = time.perf_counter()
        futures = [
            pool.submit(walk_layer, base_url, path, params, page_size) for path, params in layers
        ]
        walked = [future.result() for future in futures]
        seconds = time.perf_counter() - started
    return seconds, sum(pages for pages, _ in walked), sum(size for _, size in walked)


def message_sizes(client: redis.Redis, queue: str, chunk: int = 10_000) -> list[int]:
    """The length of every message in ``queue``, read by a script (the bytes stay in Redis)."""
    lengths = client.register_script(_LENGTHS)
    total = int(client.llen(queue))
    sizes: list[int] = []
    for start in range(0, total, chunk):
        sizes.extend(int(n) for n in lengths(keys=[queue], args=[start, start + chunk - 1]))
    return sizes


def lpush_seconds(client: redis.Redis, key: str, sizes: Sequence[int]) -> float:
    """LPUSH byte strings of ``sizes`` onto ``key``, pipelined ``LPUSH_BATCH`` at a time: the
    seconds it took."""
    # One byte string per distinct length (a million bodies would hold ~5 GB here).
    by_size = {size: b"x" * size for size in set(sizes)}
    bodies = [by_size[size] for size in sizes]
    started = time.perf_counter()
    for start in range(0, len(bodies), LPUSH_BATCH):
        with client.pipeline(transaction=False) as pipe:
            for body in bodies[start : start + LPUSH_BATCH]:
                pipe.lpush(key, body)
            pipe.execute()
    return time.perf_counter() - started


def raw_lpush(client: redis.Redis, sizes: Sequence[int]) -> float:
    """The raw LPUSH of ``sizes`` on a key of its own, checked and removed: the seconds."""
    client.delete(RAW_KEY)
    seconds = lpush_seconds(client, RAW_KEY, sizes)
    queued = int(client.llen(RAW_KEY))
    client.delete(RAW_KEY)
    if queued != len(sizes):
        raise SystemExit(f"the raw LPUSH queued {queued} of {len(sizes)}")
    return seconds


def measure(
    base_url: str, job_id: str, page_size: int, client: redis.Redis, sizes: Sequence[int]
) -> RawLimit:
    """The physical limit for one job: its pages read raw, then its messages' bytes pushed raw."""
    fetch, pages, page_bytes = raw_fetch(base_url, job_id, page_size)
    lpush = raw_lpush(client, sizes)
    return RawLimit(fetch, lpush, pages, page_bytes, len(sizes))
