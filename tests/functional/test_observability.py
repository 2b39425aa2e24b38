"""The alert rules and the dashboard, checked by the real tools: promtool, and the exporter.

- `promtool check rules` on every rule file the charm publishes;
- `promtool test rules` on the unit tests in tests/promtool/, which cover every alert;
- the dashboard: valid JSON in the shape Grafana loads, every query valid PromQL (promtool
  checks them as recording rules, Grafana's variables filled in) naming only metrics the
  exporter serves.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from network_isolation.host import EXPORTER_UNIT_NAME, ExporterSpec, exporter_unit_text
from network_isolation.host.metrics import Reading, families
from network_isolation.observed import ApplyHistory
from tests.plan_summaries import plan_summary

from .conftest import ROOT, need_tool

RULES = sorted((ROOT / "src/prometheus_alert_rules").glob("*.rules"))
RULE_TESTS = sorted((ROOT / "tests/promtool").glob("*.yaml"))
DASHBOARDS = sorted((ROOT / "src/grafana_dashboards").glob("*.json"))
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$__interval": "1m",
    "$juju_model": ".*",
    "$juju_application": ".*",
    "$instance": ".*",
}


def promtool() -> str:
    return need_tool("promtool", "prometheus")


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, cwd=ROOT
    )


def exported_names() -> set[str]:
    """Every metric name the exporter serves, from a reading with every part present."""
    reading = Reading(
        counters={"drop_in_storage": {"packets": 1, "bytes": 60}},
        drift="changed",
        applied_fingerprint="x",
        summary=plan_summary(networks={"storage": True}, wanted="x"),
        history=ApplyHistory(last_apply=1.0),
    )
    names: set[str] = set()
    for family in families(reading):
        names |= {sample.name for sample in family.samples}
    return names


def metric_names(expr: str) -> set[str]:
    """Our metric names (and `up`) in a PromQL expression, label values left out."""
    return set(re.findall(r"\bnetwork_isolation_\w+|\bup\b", re.sub(r'"[^"]*"', "", expr)))


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_rules_pass_promtool_check() -> None:
    assert RULES
    done = run(promtool(), "check", "rules", *RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_rules_pass_their_promtool_unit_tests() -> None:
    assert RULE_TESTS
    done = run(promtool(), "test", "rules", *RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_test_that_fires_it() -> None:
    alerts = {
        rule["alert"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }
    fired = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == fired


def test_a_broken_rule_fails_promtool(tmp_path: Path) -> None:
    """The checks above can fail: promtool refuses a rule that does not parse."""
    broken = tmp_path / "broken.rules"
    broken.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "rate(up[5m]"}]}]}
        )
    )
    assert run(promtool(), "check", "rules", broken).returncode != 0


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_has_grafanas_shape(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "table", "gauge", "bargauge"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${prometheusds}"
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__range"}
            assert used <= variables, (panel["title"], used - variables)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_queries_are_promql_on_exported_metrics(path: Path, tmp_path: Path) -> None:
    dashboard = json.loads(path.read_text())
    exprs = queries(dashboard)
    served = exported_names()
    for expr in exprs:
        named = metric_names(expr)
        assert named, expr
        assert named <= served, (expr, named - served)
    rules = []
    for number, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query{number}", "expr": expr})
    check = tmp_path / "dashboard.rules"
    check.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(promtool(), "check", "rules", check)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_name_only_exported_metrics() -> None:
    served = exported_names() | {"up"}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                named = metric_names(rule["expr"])
                assert named and named <= served, (rule["alert"], named - served)


def systemd_analyze() -> str:
    return need_tool("systemd-analyze", "systemd")


def verify_unit(directory: Path, text: str) -> subprocess.CompletedProcess[str]:
    unit = directory / EXPORTER_UNIT_NAME
    unit.write_text(text)
    return run(systemd_analyze(), "verify", unit)


def test_the_exporter_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    spec = ExporterSpec(
        address="10.10.0.5",
        port=9479,
        python=sys.executable,
        pythonpath=(str(ROOT / "src"), "/var/lib/juju/agents/unit-network isolation-0/charm/lib"),
        state_dir=Path("/var/lib/network-isolation"),
    )
    done = verify_unit(tmp_path, exporter_unit_text(spec))
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # the check can fail: a bad value is reported
    bad = exporter_unit_text(spec).replace("Restart=always", "Restart=sometimes")
    assert "restart" in verify_unit(tmp_path, bad).stderr.lower()
