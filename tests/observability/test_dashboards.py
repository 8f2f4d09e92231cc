"""The Grafana dashboard and the Prometheus alert rules: valid, and every metric
they query is one the gateway really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest
import yaml

from serving.observability.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "seed-serve-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "seed-serve-alerts.yaml"
_METRIC = re.compile(r"\b(seed_serve_[a-z0-9_]+)")


def exported_series() -> set[str]:
    """Every series name the gateway can export (histograms' _bucket/_sum/_count too)."""
    names: set[str] = set()
    for family in GatewayMetrics().registry.collect():
        base = family.name
        if family.type == "counter":
            names.add(base + "_total")
        elif family.type == "histogram":
            names.update({base + "_bucket", base + "_sum", base + "_count"})
        else:
            names.add(base)
    return names


def _as_promql(expr: str) -> str:
    """Grafana variables replaced by what Prometheus would see."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$model", ".*")
        .replace("$task", ".*")
        .replace("$tenant", ".*")
    )


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def queried_exprs(source: str) -> list[str]:
    if source == "dashboard":
        return dashboard_exprs()
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_dashboard_is_valid_and_complete() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"model", "task", "tenant"} <= set(variables)
    titles = " | ".join(p["title"] for p in board["panels"])
    for needed in (
        "Time to first token p50 / p99",
        "Requests per second",
        "by tenant",
        "queue",
        "Rejections",
        "Replica health",
        "KV-cache",
        "acceptance rate",
        "Speculative decoding",
    ):
        assert needed.lower() in titles.lower(), needed
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert panel["datasource"]["uid"] == "${datasource}"
            promql_parser.parse(_as_promql(target["expr"]))


def test_dashboard_quantiles_use_rate_interval() -> None:
    for expr in dashboard_exprs():
        if "histogram_quantile" in expr:
            assert "rate(" in expr and "[$__rate_interval]" in expr, expr


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_metric_exists(source: str) -> None:
    exprs = queried_exprs(source)
    queried = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert queried, "no metric queried"
    missing = queried - exported_series()
    assert not missing, f"{source} queries metrics the gateway does not export: {sorted(missing)}"


def test_every_queried_engine_metric_is_one_vllm_exports() -> None:
    """The engines' series (relayed at /metrics/engines) by the names the
    installed vLLM declares them with (counters gain ``_total``)."""
    import importlib.util

    queried = {name for expr in dashboard_exprs() for name in re.findall(r"vllm:[a-z0-9_]+", expr)}
    assert {"vllm:spec_decode_num_accepted_tokens_total", "vllm:spec_decode_num_drafts_total"} <= (
        queried
    )
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations
    sources = Path(next(iter(spec.submodule_search_locations))) / "v1"
    declared = " ".join(path.read_text() for path in sources.rglob("*metrics*.py"))
    missing = [n for n in queried if f'"{n.removesuffix("_total")}"' not in declared]
    assert not missing, f"the dashboard queries engine metrics vLLM does not export: {missing}"


def test_alert_rules_parse_and_cover_the_runbook() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    for name in (
        "SeedServeReplicaDown",
        "SeedServeNoReadyReplica",
        "SeedServeCompletionTTFTHigh",
        "SeedServeRateLimitedHigh",
        "SeedServeUnavailableHigh",
        "SeedServeSandboxFailures",
        "SeedServeAuditLogWriteErrors",
    ):
        assert name in alerts, name
    for rule in alerts.values():
        promql_parser.parse(rule["expr"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_metric_names_follow_the_conventions() -> None:
    for family in GatewayMetrics().registry.collect():
        assert family.name.startswith("seed_serve_")
        assert ":" not in family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds") or family.name.endswith("_tokens"), family.name


def exported_labels() -> dict[str, set[str]]:
    """Series name -> the label names the gateway gives it."""
    from prometheus_client.metrics import MetricWrapperBase

    labels: dict[str, set[str]] = {}
    for metric in vars(GatewayMetrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        names = set(metric._labelnames)
        for family in metric.describe():
            for suffix in ("", "_total", "_bucket", "_sum", "_count"):
                labels[family.name + suffix] = names | ({"le"} if suffix == "_bucket" else set())
    return labels


_SELECTOR = re.compile(r"(seed_serve_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_label_queried_exists_on_its_metric(source: str) -> None:
    """A typo in a label (or one a metric lacks) makes a panel silently empty."""
    exprs = queried_exprs(source)
    known = exported_labels()
    for expr in exprs:
        metrics = set(_METRIC.findall(expr))
        available = set().union(*(known[m] for m in metrics)) if metrics else set()
        if "vllm:" in expr:
            available.add("replica")  # the label /metrics/engines gives every engine series
        for metric, matchers in _SELECTOR.findall(expr):
            for label in _MATCHER.findall(matchers):
                assert label in known[metric], f"{metric} has no label {label!r}: {expr}"
        for grouping in _GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                assert label in available, f"no metric in the expression has {label!r}: {expr}"
