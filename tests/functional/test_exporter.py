"""The exporter service against a real table in a namespace, scraped over the management network.

The bed is compute-1 of examples/microstack-maas.yaml in network namespaces (`machine.py`, the
charm's end-to-end bed): its NIC `enp1s0` at 10.10.0.21/24 on management, joined to a peer
namespace with a management neighbour (10.10.0.1) and storage-1's storage-cluster address
(10.60.0.31), a network compute-1 may not hear. The ruleset the planner renders for it is
loaded with the real nft.

The exporter runs as the service runs it (`python -m network_isolation.host.metrics`) inside the
machine's namespace, so it reads the table through the real `Host.counters()` there. A probe
from storage-cluster is dropped; a scrape (an HTTP client, then a real Prometheus when it is
installed) shows the drop counter grow to exactly what `Host.counters()` (`show-counters`)
reports. This machine's own ruleset is never touched: `machine_namespaces` checks it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from network_isolation.host import Host, Result, fingerprint
from network_isolation.host.metrics import drop_labels
from network_isolation.observed import HISTORY_FILE, PLAN_SUMMARY_FILE, ApplyHistory, PlanSummary
from network_isolation.planner import plan_machine
from network_isolation.render import render
from network_isolation.topology import load_topology

from .conftest import MAAS, ROOT, need, need_tool
from .machine import (
    GATEWAY_ADDRESS,
    IP,
    MACHINE,
    MACHINE_ADDRESS,
    MACHINE_NS,
    NFT,
    PEER_NS,
    SERVICE_PORT,
    STORAGE_CLUSTER_SOURCE,
    connects,
    machine_namespaces,
    nft_in,
)
from .netns import in_netns

NEIGHBOUR = GATEWAY_ADDRESS  # a scraper on the management network
DENIED_SOURCE = STORAGE_CLUSTER_SOURCE
METRICS_PORT, PROMETHEUS_PORT = 9479, 9090
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class NetnsRunner:
    """`Host`'s runner with every command in the machine's namespace (what the service sees)."""

    def run(self, argv: Sequence[str]) -> Result:
        done = subprocess.run(
            [IP, "netns", "exec", MACHINE_NS, *argv], capture_output=True, text=True, check=False
        )
        return Result(done.returncode, done.stdout, done.stderr)


@dataclass
class Bed:
    state: Path
    host: Host  # show-counters' code, in the machine's namespace
    exporter: subprocess.Popen[str]


def load_planned_ruleset(state: Path) -> None:
    """compute-1's plan rendered and loaded; the state files the charm and Host keep.

    Without policy routing: the exporter's Host reads our netplan file from this machine's
    /etc/netplan, where there is none.
    """
    planned = load_topology(MAAS).plan_input(MACHINE)
    config = planned.config.model_copy(update={"manage_routing": False})
    plan = plan_machine(planned.model_copy(update={"config": config}))
    artefacts = render(plan)
    assert artefacts.netplan is None
    assert not Path("/etc/netplan/90-network-isolation.yaml").exists()
    state.mkdir(parents=True)
    ruleset = state / "ruleset.nft"
    ruleset.write_text(artefacts.nftables)
    nft_in(MACHINE_NS, "-f", str(ruleset))
    (state / PLAN_SUMMARY_FILE).write_text(
        PlanSummary.of(plan, fingerprint(artefacts)).model_dump_json()
    )
    (state / HISTORY_FILE).write_text(ApplyHistory().applied(1_700_000_000.0).model_dump_json())


def wait_listening(exporter: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if exporter.poll() is not None:
            pytest.fail(f"the exporter exited {exporter.returncode}: {exporter.stderr}")
        if connects(NEIGHBOUR, METRICS_PORT, 0.3):
            return
        time.sleep(0.1)
    pytest.fail(f"the exporter does not listen on {MACHINE_ADDRESS}:{METRICS_PORT}")


def start_exporter(state: Path) -> subprocess.Popen[str]:
    """The service's command, in the machine's namespace."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "network_isolation.host.metrics",
               "--address", MACHINE_ADDRESS, "--port", str(METRICS_PORT),
               "--state-dir", str(state)]  # fmt: skip
    return subprocess.Popen(
        [IP, "netns", "exec", MACHINE_NS, *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """One machine for the module's tests, in file order (the last one deletes the table)."""
    if os.geteuid() != 0:
        need("the exporter test needs root to create network namespaces (ip netns)")
    for tool in (NFT, IP):
        if not Path(tool).exists():
            need(f"missing {tool}: apt-get install nftables iproute2")
    base = tmp_path_factory.mktemp("exporter")
    with machine_namespaces(base):
        load_planned_ruleset(base / "state")
        exporter = start_exporter(base / "state")
        try:
            wait_listening(exporter)
            yield Bed(base / "state", Host(runner=NetnsRunner(), state=base / "state"), exporter)
        finally:
            exporter.terminate()
            exporter.communicate(timeout=10)


def scrape(source: str = NEIGHBOUR) -> Samples:
    """GET /metrics from the peer namespace, as a scraper on management does."""

    def get() -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"http://{MACHINE_ADDRESS}:{METRICS_PORT}/metrics"
        with opener.open(url, timeout=5) as response:
            return response.read().decode()

    text = in_netns(PEER_NS, get)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def drops(samples: Samples, network: str, what: str = "packets") -> float:
    key = (
        f"network_isolation_dropped_{what}_total",
        (("direction", "in"), ("network", network)),
    )
    return samples[key]


def test_scrape_shows_real_drops_as_show_counters_does(bed: Bed) -> None:
    before = scrape()
    assert before[("network_isolation_table_present", ())] == 1
    assert before[("network_isolation_ruleset_planned", ())] == 1
    assert before[("network_isolation_enforcement_mode", (("mode", "enforce"),))] == 1
    assert before[("network_isolation_network_allowed", (("network", "storage-cluster"),))] == 0
    assert before[("network_isolation_last_apply_timestamp_seconds", ())] == 1_700_000_000.0
    assert drops(before, "storage-cluster") == 0

    assert not connects(DENIED_SOURCE, SERVICE_PORT)  # dropped
    assert connects(NEIGHBOUR, SERVICE_PORT)  # management: accepted

    after = scrape()
    counters = bed.host.counters()  # what show-counters answers
    assert drops(after, "storage-cluster") >= 1
    assert drops(after, "storage-cluster") == counters["drop_in_storage_cluster"]["packets"]
    assert drops(after, "storage-cluster", "bytes") == counters["drop_in_storage_cluster"]["bytes"]
    for name, counter in counters.items():
        found = drop_labels(name)
        assert found is not None, f"the exporter does not report {name}"
        network, direction = found
        key = (
            "network_isolation_dropped_packets_total",
            (("direction", direction), ("network", network)),
        )
        assert after[key] == counter["packets"], name


def test_scrape_duration_is_printed(bed: Bed) -> None:
    """What one scrape costs (nft listing and state files): printed, not asserted."""
    started = time.perf_counter()
    for _ in range(20):
        assert scrape()[("network_isolation_table_present", ())] == 1
    took = (time.perf_counter() - started) / 20
    print(f"exporter: one scrape of compute-1's table takes {took * 1000:.1f} ms")


def test_only_the_management_network_reaches_the_exporter(bed: Bed) -> None:
    assert connects(NEIGHBOUR, METRICS_PORT)
    assert not connects(DENIED_SOURCE, METRICS_PORT)
    # it listens on the management address only, not on every address of the machine
    assert not in_netns(MACHINE_NS, lambda: connects_locally("127.0.0.1", METRICS_PORT))


def test_a_real_prometheus_scrapes_the_counters(bed: Bed, tmp_path: Path) -> None:
    prometheus = need_tool("prometheus", "prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ROOT / "src/prometheus_alert_rules/network_isolation.rules")],
                "scrape_configs": [
                    {
                        "job_name": "network_isolation_exporter",
                        "static_configs": [{"targets": [f"{MACHINE_ADDRESS}:{METRICS_PORT}"]}],
                    }
                ],
            }
        )
    )
    assert not connects(DENIED_SOURCE, SERVICE_PORT)
    expected = bed.host.counters()["drop_in_storage_cluster"]["packets"]
    server = subprocess.Popen(
        [
            IP,
            "netns",
            "exec",
            PEER_NS,
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={NEIGHBOUR}:{PROMETHEUS_PORT}",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        query = (
            'network_isolation_dropped_packets_total{network="storage-cluster", direction="in"}'
        )
        found = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and found is None:
            time.sleep(0.5)
            found = prometheus_value(query)
        assert found == expected
        assert prometheus_value('up{job="network_isolation_exporter"}') == 1
        rules = prometheus_api("rules")["data"]["groups"][0]["rules"]
        assert {r["name"] for r in rules} >= {"NetworkIsolationExporterDown"}
        assert all(r["health"] == "ok" for r in rules), rules
    finally:
        server.terminate()
        server.communicate(timeout=20)


def prometheus_api(path: str, **params: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://{NEIGHBOUR}:{PROMETHEUS_PORT}/api/v1/{path}{query}"
        with opener.open(url, timeout=5) as response:
            return json.loads(response.read())

    return in_netns(PEER_NS, get)


def prometheus_value(query: str) -> float | None:
    try:
        answer = prometheus_api("query", query=query)
    except urllib.error.HTTPError as e:  # up, not ready yet: its answer holds a socket
        e.close()
        return None
    except OSError:
        return None  # not up yet
    results = answer["data"]["result"]
    return float(results[0]["value"][1]) if results else None


def connects_locally(address: str, port: int) -> bool:
    """A TCP connect from inside the machine itself."""
    with socket.socket() as client:
        client.settimeout(0.5)
        try:
            client.connect((address, port))
        except OSError:
            return False
        return True


def test_a_missing_table_shows(bed: Bed) -> None:
    nft_in(MACHINE_NS, "delete", "table", "inet", "network_isolation")
    samples = scrape()
    assert samples[("network_isolation_table_present", ())] == 0
    assert samples[("network_isolation_ruleset_planned", ())] == 1  # the files say so
    assert not any(name == "network_isolation_dropped_packets_total" for name, _ in samples)
