"""Reading metrics in tests: this process's registry (deltas around an act), or a worker's scrape.

``Registry`` reads prometheus-client's default registry of the test process, where the code under
test counts when it runs here; ``scrape`` parses a worker's ``GET /metrics`` with the library's
own parser; ``metrics_env`` gives a worker its endpoint and its own multiprocess directory.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families


class Registry:
    """Sample values of this process's registry, taken now; ``delta`` against a later reading."""

    def __init__(self) -> None:
        self._values = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in REGISTRY.collect()
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        return sum(
            v
            for (n, pairs), v in self._values.items()
            if n == name and labels.items() <= dict(pairs).items()
        )

    def delta(self, name: str, **labels: str) -> float:
        """How much ``name`` (with ``labels``) grew since this reading."""
        return Registry().value(name, **labels) - self.value(name, **labels)


class Scrape:
    """One parsed scrape: sample values by name and labels, summed over any other label."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._samples = [
            s for family in text_string_to_metric_families(text) for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        return sum(
            s.value for s in self._samples if s.name == name and labels.items() <= s.labels.items()
        )

    def names(self) -> set[str]:
        """Every sample name in the scrape."""
        return {s.name for s in self._samples}


def scrape(port: int) -> Scrape:
    """GET /metrics from a worker's endpoint."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    return Scrape(answer.text)


def answering(port: int) -> bool:
    """Whether the endpoint answers yet."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def metrics_env(tmp_path: Path, name: str, port: int) -> dict[str, str]:
    """A worker's endpoint: its port and its own multiprocess directory, empty at start."""
    directory = tmp_path / f"{name}-metrics"
    directory.mkdir()
    return {"PLEO_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
