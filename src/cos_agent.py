"""The provider side of the `cos_agent` interface: what a COS agent scrapes, alerts on, shows.

A COS agent (opentelemetry-collector, grafana-agent) related over `cos-agent` reads one key of
this unit's databag, `config`: a JSON object with

- `metrics_scrape_jobs`: Prometheus scrape configs (here: the exporter on the management
  address, published by one unit per machine so that it is scraped once);
- `metrics_alert_rules`: Prometheus rule groups, `{"groups": [...]}`, from
  `src/prometheus_alert_rules/`, with the Juju topology added by cosl;
- `dashboards`: Grafana dashboards from `src/grafana_dashboards/`, each JSON compressed with
  LZMA and base64-encoded (cosl's `LZMABase64`), with a stable uid;
- `log_alert_rules` and `log_slots`: none.

Written from the interface's published data format; cosl supplies the topology, rule and
dashboard helpers.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

import ops
from cosl import AlertRules, DashboardPath40UID, JujuTopology, LZMABase64
from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

ENDPOINT = "cos-agent"
DATABAG_KEY = "config"
JOB_NAME = "network_isolation_exporter"
RULES_DIR = Path("src/prometheus_alert_rules")
DASHBOARDS_DIR = Path("src/grafana_dashboards")


class CosAgentUnitData(BaseModel):
    """The `config` value of a provider unit's databag, as COS agents validate it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metrics_alert_rules: dict[str, Any]
    log_alert_rules: dict[str, Any]
    dashboards: list[str]
    metrics_scrape_jobs: list[dict[str, Any]]
    log_slots: list[str]


def scrape_target(address: str, port: int) -> str:
    """`host:port` for a scrape config (IPv6 in brackets)."""
    return (
        f"[{address}]:{port}"
        if ipaddress.ip_address(address).version == 6
        else (f"{address}:{port}")
    )


def scrape_jobs(target: str | None) -> list[dict[str, Any]]:
    """The exporter's scrape job, or none (no exporter, or another unit publishes it)."""
    if target is None:
        return []
    return [
        {
            "job_name": JOB_NAME,
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [target]}],
        }
    ]


class CosAgent(ops.Object):
    """Publishes this unit's scrape job, alert rules and dashboards on every cos-agent relation."""

    def __init__(self, charm: ops.CharmBase, endpoint: str = ENDPOINT):
        super().__init__(charm, endpoint)
        self.charm = charm
        self.endpoint = endpoint

    @property
    def related(self) -> bool:
        """Whether any COS agent is related."""
        return bool(self.model.relations[self.endpoint])

    def publish(self, target: str | None) -> None:
        """Write the databag where it differs (no write, no relation-changed, when equal)."""
        relations = self.model.relations[self.endpoint]
        if not relations:
            return
        content = self.unit_data(target).model_dump_json()
        for relation in relations:
            databag = relation.data[self.model.unit]
            if databag.get(DATABAG_KEY) != content:
                databag[DATABAG_KEY] = content

    def unit_data(self, target: str | None) -> CosAgentUnitData:
        """What this unit publishes: the job (if it owns the exporter), rules, dashboards."""
        return CosAgentUnitData(
            metrics_alert_rules=self.alert_rules(),
            log_alert_rules={},
            dashboards=self.dashboards(),
            metrics_scrape_jobs=scrape_jobs(target),
            log_slots=[],
        )

    def alert_rules(self) -> dict[str, Any]:
        """The rule groups, with the Juju topology in their names and labels."""
        rules = AlertRules(query_type="promql", topology=JujuTopology.from_charm(self.charm))
        rules.add_path(self.charm.charm_dir / RULES_DIR, recursive=False)
        return rules.as_dict()

    def dashboards(self) -> list[str]:
        """Each dashboard with a uid stable across units and upgrades, compressed."""
        encoded: list[str] = []
        for path in sorted((self.charm.charm_dir / DASHBOARDS_DIR).glob("*.json")):
            dashboard = json.loads(path.read_text())
            relative = str(path.relative_to(self.charm.charm_dir))
            dashboard["uid"] = DashboardPath40UID.generate(self.charm.meta.name, relative)
            tag = f"charm: {self.charm.meta.name}"
            dashboard["tags"] = [*dashboard.get("tags", []), tag]
            encoded.append(LZMABase64.compress(json.dumps(dashboard, sort_keys=True)))
        return encoded
