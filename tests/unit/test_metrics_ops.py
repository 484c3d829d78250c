"""The metrics keep Prometheus's conventions, and ops/ queries only metrics the code exposes.

Pure reading: the dashboard JSON, the alert rules and the scrape config are loaded as Grafana and
Prometheus would; every ``pleo_export_*`` name in a query must be a sample the code registers
(``contract/metrics.py``) or the scrape-time collector describes (``contract/job_gauges.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.core import Metric

from contract import metrics
from contract.job_gauges import ActiveJobsCollector

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
NAME = re.compile(r"\bpleo_export_[a-z0-9_]+\b")
# Grouping and matching labels a query uses: ``by (a, b)``, ``{a="x"}``.
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"\{([^}]*)\}")
UNBOUNDED = {"job_id", "task_id", "hostname", "host", "pid", "entry", "accounting_entry_id"}


def families() -> list[Metric]:
    """Every family the code exposes: counters and histograms, then the scrape-time gauges."""
    found = [f for m in (*metrics.COUNTERS, *metrics.HISTOGRAMS) for f in m.describe()]
    return found + list(ActiveJobsCollector(None).describe())  # type: ignore[arg-type]


def exposed() -> dict[str, set[str]]:
    """Sample name -> the labels it may carry."""
    samples: dict[str, set[str]] = {}
    for metric in (*metrics.COUNTERS, *metrics.HISTOGRAMS):
        labels = set(metric._labelnames)
        for family in metric.describe():
            extra = {"le"} if family.type == "histogram" else set()
            for suffix in metrics.SAMPLE_SUFFIXES[family.type]:
                samples[family.name + suffix] = labels | extra
    for family in ActiveJobsCollector(None).describe():  # type: ignore[arg-type]
        samples[family.name] = {"state"} if family.name == "pleo_export_active_jobs" else set()
    return samples


def queries() -> list[tuple[str, str]]:
    """(where, expression) of every Grafana target and every alert rule."""
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    found += [
        (f"alert {rule['alert']}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]
    return found


def test_names_follow_the_conventions() -> None:
    """Prefix pleo_export_, counters _total, durations in seconds, no unbounded label."""
    assert metrics.exposed_names() <= set(exposed())
    for family in families():
        assert family.name.startswith("pleo_export_"), family.name
        words = set(family.name.split("_"))
        if words & {"duration", "age", "idle", "expiry"}:
            assert family.name.endswith("_seconds"), family.name
    for metric in metrics.COUNTERS:
        (family,) = metric.describe()
        assert family.type == "counter"
        assert not set(metric._labelnames) & UNBOUNDED, family.name
    counted = {name for name in metrics.exposed_names() if "_seconds" not in name}
    assert all(name.endswith("_total") for name in counted)


def test_the_ops_files_hold_a_dashboard_and_three_alerts() -> None:
    """The dashboard has panels with queries; the rules are the stuck, expiry and ERP alerts."""
    where = [w for w, _ in queries()]
    assert sum(w.startswith("panel") for w in where) >= 10
    assert sorted(w for w in where if w.startswith("alert")) == [
        "alert PleoExportERPRefusing",
        "alert PleoExportJobNearExpiry",
        "alert PleoExportJobStuck",
    ]


@pytest.mark.parametrize(("where", "expr"), queries())
def test_every_query_names_only_exposed_metrics_and_labels(where: str, expr: str) -> None:
    """Each metric a query reads is one we expose, and each label it groups or matches by too."""
    known = exposed()
    names = set(NAME.findall(expr))
    assert names, f"{where}: no pleo_export_ metric in {expr!r}"
    unknown = names - set(known)
    assert not unknown, f"{where}: {sorted(unknown)} are not exposed"
    labels = set().union(*(known[name] for name in names))
    used = {label.strip() for group in BY.findall(expr) for label in group.split(",")}
    used |= {
        m.split("=")[0].strip(" !~")
        for group in MATCHER.findall(expr)
        for m in group.split(",")
        if "=" in m
    }
    assert used - {""} <= labels, f"{where}: labels {sorted(used - labels)} do not exist"


def test_the_scrape_config_targets_the_compose_endpoints() -> None:
    """ops/prometheus.yml scrapes each service at the port docker-compose.yml gives its metrics."""
    config: dict[str, Any] = yaml.safe_load((OPS / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert config["rule_files"] == ["alerts.yml"]
    targets = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets |= {f"{name}:{dns['port']}" for name in dns["names"]}
    expected = {"webhook:8000"} | {
        f"{name}:{spec['environment']['PLEO_METRICS_PORT']}"
        for name, spec in compose.items()
        if "PLEO_METRICS_PORT" in spec.get("environment", {})
    }
    assert targets == expected
