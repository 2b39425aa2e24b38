"""Observability under ops.testing: the cos-agent relation and show-plan as a page."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import markupsafe
import pytest
import yaml
from cosl import LZMABase64
from fake_host import FakeHost
from ops import testing

from cos_agent import DATABAG_KEY, JOB_NAME, CosAgentUnitData
from network_isolation.host import MachineRegistry, PortInUseError, fingerprint
from network_isolation.render import Artefacts
from tests.charm_context import context

ROOT = Path(__file__).resolve().parents[2]
Layout = Mapping[str, tuple[str, str] | None]
NetworksFactory = Callable[[Layout], list[testing.Network]]


@pytest.fixture
def charm_root(tmp_path: Path) -> Path:
    """The packed charm's layout: the rules and dashboards under src/."""
    root = tmp_path / "charm"
    (root / "src").mkdir(parents=True)
    for name in ("prometheus_alert_rules", "grafana_dashboards"):
        (root / "src" / name).symlink_to(ROOT / "src" / name)
    return root


def run(
    charm_root: Path,
    networks: list[testing.Network],
    config: dict[str, str | int | bool] | None = None,
    unit_id: int = 0,
) -> dict[str, Any]:
    ctx = context(unit_id, charm_root=charm_root)
    agent = testing.SubordinateRelation("cos-agent", remote_app_name="opentelemetry-collector")
    principal = testing.SubordinateRelation("compute-node", remote_app_name="nova-compute")
    state = testing.State(
        networks=networks, relations=[principal, agent], config=dict(config or {})
    )
    out = ctx.run(ctx.on.relation_joined(agent), state)
    raw = out.get_relation(agent.id).local_unit_data.get(DATABAG_KEY)
    assert raw is not None, "nothing published on cos-agent"
    return json.loads(raw)


def test_relating_a_cos_agent_publishes_job_rules_and_dashboard(
    charm_root: Path, make_networks: NetworksFactory, distinct_layout: Layout
) -> None:
    data = run(charm_root, make_networks(distinct_layout))
    CosAgentUnitData.model_validate(data)  # the interface's shape, nothing more
    assert data["metrics_scrape_jobs"] == [
        {
            "job_name": JOB_NAME,
            "metrics_path": "/metrics",
            "static_configs": [{"targets": ["10.10.0.5:9479"]}],  # management address
        }
    ]
    shipped = yaml.safe_load(
        (ROOT / "src/prometheus_alert_rules/network_isolation.rules").read_text()
    )
    alerts = {r["alert"] for g in data["metrics_alert_rules"]["groups"] for r in g["rules"]}
    assert alerts == {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    for group in data["metrics_alert_rules"]["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["juju_application"] == "network-isolation"
            assert rule["labels"]["juju_model"]
    [encoded] = data["dashboards"]
    dashboard = json.loads(LZMABase64.decompress(encoded))
    assert dashboard["title"] == "Network isolation"
    assert len(dashboard["uid"]) == 40
    assert "charm: network-isolation" in dashboard["tags"]
    assert data["log_alert_rules"] == {} and data["log_slots"] == []


def test_the_charm_runs_the_exporter_and_records_the_plan(
    charm_root: Path,
    make_networks: NetworksFactory,
    distinct_layout: Layout,
    fake_host: type[FakeHost],
) -> None:
    run(charm_root, make_networks(distinct_layout), {"enforcement": "audit"})
    spec = fake_host.exporter
    assert spec is not None
    assert (spec.address, spec.port) == ("10.10.0.5", 9479)
    summary = fake_host.plan_summary
    assert summary is not None
    assert (summary.status, summary.enforcement, summary.isolation) == (
        "active",
        "audit",
        "maximum",
    )
    assert summary.networks["data"] is True and summary.networks["public"] is False
    applied = fake_host.applied_state
    assert applied.nftables is not None
    assert summary.wanted == fingerprint(
        Artefacts(nftables=applied.nftables, netplan=applied.netplan)
    )
    run(charm_root, make_networks(distinct_layout), {"metrics-port": 0})
    assert fake_host.exporter is None


def test_the_metrics_port_option_moves_the_job(
    charm_root: Path, make_networks: NetworksFactory, distinct_layout: Layout
) -> None:
    data = run(charm_root, make_networks(distinct_layout), {"metrics-port": 9100})
    assert data["metrics_scrape_jobs"][0]["static_configs"] == [{"targets": ["10.10.0.5:9100"]}]


def test_metrics_port_0_publishes_rules_but_no_job(
    charm_root: Path, make_networks: NetworksFactory, distinct_layout: Layout
) -> None:
    data = run(charm_root, make_networks(distinct_layout), {"metrics-port": 0})
    assert data["metrics_scrape_jobs"] == []
    assert data["metrics_alert_rules"]["groups"]


def test_one_unit_per_machine_publishes_the_job(
    charm_root: Path, make_networks: NetworksFactory, distinct_layout: Layout, state_dir: Path
) -> None:
    """Two units on one machine: the exporter is scraped once, from the first registered."""
    MachineRegistry(state_dir / "units").record("network-isolation/0", frozenset({"storage"}))
    second = run(charm_root, make_networks(distinct_layout), unit_id=1)
    assert second["metrics_scrape_jobs"] == []
    assert second["dashboards"]
    first = run(charm_root, make_networks(distinct_layout), unit_id=0)
    assert first["metrics_scrape_jobs"]


def test_ipv6_management_address_is_bracketed() -> None:
    from cos_agent import scrape_target

    assert scrape_target("fd00:10::5", 9479) == "[fd00:10::5]:9479"
    assert scrape_target("10.10.0.5", 9479) == "10.10.0.5:9479"


def test_show_plan_html_is_this_machines_page(
    make_networks: NetworksFactory, distinct_layout: Layout
) -> None:
    ctx = context()
    principal = testing.SubordinateRelation("storage-node", remote_app_name="microceph")
    state = testing.State(networks=make_networks(distinct_layout), relations=[principal])
    ctx.run(ctx.on.action("show-plan", params={"format": "html"}), state)
    results = ctx.action_results or {}
    page = results["plan"]
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('class="machine-row') == 1
    cells = re.findall(r'<td class="([\w-]+)" data-network="([\w-]+)"', page)
    states = {network: state for state, network in cells}
    assert states == {
        "management": "allowed",
        "storage": "allowed",
        "storage-cluster": "allowed",
        "data": "denied-nic",  # the test machine has a NIC on every network
        "internal": "denied-nic",
        "public": "denied-nic",
    }
    assert str(markupsafe.escape(results["nftables"])) in page


def test_a_metrics_port_another_process_holds_blocks_and_the_isolation_still_applies(
    charm_root: Path,
    make_networks: NetworksFactory,
    distinct_layout: Layout,
    fake_host: type[FakeHost],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    busy = "metrics-port 9479 is in use by another process on 10.10.0.5"

    def refuse(self: FakeHost, spec: object) -> bool:
        raise PortInUseError(busy)

    monkeypatch.setattr(fake_host, "ensure_exporter", refuse)
    ctx = context(charm_root=charm_root)
    principal = testing.SubordinateRelation("compute-node", remote_app_name="nova-compute")
    out = ctx.run(
        ctx.on.config_changed(),
        testing.State(networks=make_networks(distinct_layout), relations=[principal]),
    )
    assert out.unit_status == testing.BlockedStatus(busy)
    assert fake_host.applied_state.nftables is not None, "the isolation does not wait for it"
