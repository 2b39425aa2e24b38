"""The charm on a real MAAS cloud: a compute node gets its firewall, and denied traffic drops.

`ubuntu` stands in for a compute principal: related over `compute-node`, it makes its machine a
compute node, which may use management, internal, data and storage, and not public nor
storage-cluster. The tests run in order and share one deployment (module-scoped model).

Skipped, with what is needed, where there is no Juju controller (see conftest.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

import jubilant
import pytest

APP = "network-isolation"
PRINCIPAL = "ubuntu"
TABLE = "inet network_isolation"
# Networks a compute node may not use (the guide's role table).
DENIED_TO_COMPUTE = ("public", "storage-cluster")


def subordinate_unit(juju: jubilant.Juju) -> str:
    """The name of our unit (on the principal's machine)."""
    units = juju.status().get_units(APP)
    assert units, f"no {APP} unit"
    return sorted(units)[0]


def settled(status: jubilant.Status) -> bool:
    """Both applications active and no hook running (a config change has been handled)."""
    apps = (PRINCIPAL, APP)
    return jubilant.all_active(status, *apps) and jubilant.all_agents_idle(status, *apps)


def shell(juju: jubilant.Juju, unit: str, command: str) -> tuple[int, str]:
    """Run a command on the unit's machine as root; its exit code and output, never raising."""
    task = juju.exec(f"{{ {command} ; }} 2>&1; echo rc=$?", unit=unit)
    output, _, code = task.stdout.rstrip().rpartition("rc=")
    return int(code), output


def table_loaded(juju: jubilant.Juju, unit: str, expected: bool, timeout: float = 300) -> bool:
    """Wait until our table is (or is no longer) loaded; whether it got there in time."""
    deadline = time.monotonic() + timeout
    while True:
        loaded = shell(juju, unit, f"nft list table {TABLE} >/dev/null")[0] == 0
        if loaded == expected or time.monotonic() > deadline:
            return loaded == expected
        time.sleep(5)


def drop_counters(juju: jubilant.Juju, unit: str) -> dict[str, int]:
    """Packets counted by each of our drop counters."""
    code, output = shell(juju, unit, f"nft -j list counters table {TABLE}")
    assert code == 0, output
    found: dict[str, int] = {}
    for item in json.loads(output).get("nftables", []):
        counter: dict[str, Any] | None = item.get("counter")
        if counter and str(counter.get("name", "")).startswith("drop_"):
            found[counter["name"]] = int(counter.get("packets", 0))
    return found


def denied_target(plan: dict[str, Any]) -> str | None:
    """An address in a network this machine may not use, outside every allowed subnet."""
    if address := os.environ.get("NETWORK_ISOLATION_DENIED_ADDRESS"):
        return address
    networks = plan["networks"]
    allowed = [
        ipaddress.ip_network(s)
        for info in networks.values()
        if info["access"]
        for s in info["subnets"]
    ]
    for name in DENIED_TO_COMPUTE:
        for text in networks[name]["subnets"]:
            subnet = ipaddress.ip_network(text)
            if subnet.version != 4 or subnet.num_addresses < 4:
                continue
            target = subnet.network_address + 1
            if not any(target in a for a in allowed):
                return str(target)
    return None


def test_deploy_as_a_compute_node(
    juju: jubilant.Juju,
    charm_path: Path,
    bind: str,
    compute_constraints: dict[str, str],
    base: str,
):
    juju.deploy(PRINCIPAL, base=base, constraints=compute_constraints)
    juju.deploy(charm_path, APP, bind=bind)
    juju.integrate(f"{PRINCIPAL}:juju-info", f"{APP}:compute-node")
    status = juju.wait(settled, error=jubilant.any_error)

    unit = status.get_units(APP)[subordinate_unit(juju)]
    assert unit.workload_status.current == "active"
    assert unit.workload_status.message.startswith("compute: 4/6 networks allowed")


def test_show_plan_reports_the_compute_role(juju: jubilant.Juju):
    task = juju.run(subordinate_unit(juju), "show-plan", {"format": "json"})
    plan = json.loads(task.results["plan"])
    assert plan["roles"] == ["compute"]
    access = {name: info["access"] for name, info in plan["networks"].items()}
    assert access == {
        "data": True,
        "internal": True,
        "management": True,
        "public": False,
        "storage": True,
        "storage-cluster": False,
    }


def test_firewall_table_is_loaded(juju: jubilant.Juju):
    code, output = shell(juju, subordinate_unit(juju), f"nft list table {TABLE}")
    assert code == 0, output
    assert "chain input" in output
    assert "tcp dport 22" in output  # the failsafe


def test_a_denied_probe_is_dropped(juju: jubilant.Juju):
    unit = subordinate_unit(juju)
    plan = json.loads(juju.run(unit, "show-plan", {"format": "json"}).results["plan"])
    target = denied_target(plan)
    if target is None:
        pytest.skip(
            "no subnet known for public or storage-cluster: bind them to spaces of their own"
            " with subnets, set the charm's network-cidrs, or NETWORK_ISOLATION_DENIED_ADDRESS"
        )
    before = drop_counters(juju, unit)
    address = shlex.quote(target)
    probe = (
        f"nc -z -w2 {address} 22"
        if shell(juju, unit, "command -v nc")[0] == 0
        else f"timeout 3 bash -c 'exec 3<>/dev/tcp/{target}/22'"
    )
    code, output = shell(juju, unit, probe)
    after = drop_counters(juju, unit)

    assert code != 0, f"a connection to {target}, on a denied network, went through: {output}"
    increased = {name for name in after if after[name] > before.get(name, 0)}
    assert increased, f"no drop counter moved for {target}: before {before}, after {after}"


def message_of(status: jubilant.Status, unit: str) -> str:
    """The workload message of one of our units."""
    return status.get_units(APP)[unit].workload_status.message


def test_enforcement_off_removes_the_table_and_enforce_restores_it(juju: jubilant.Juju):
    unit = subordinate_unit(juju)
    juju.config(APP, {"enforcement": "off"})
    juju.wait(
        lambda s: settled(s) and "enforcement off" in message_of(s, unit),
        error=jubilant.any_error,
    )
    assert table_loaded(juju, unit, expected=False), "the table stays with enforcement off"

    juju.config(APP, {"enforcement": "enforce"})
    juju.wait(
        lambda s: settled(s) and "enforcement" not in message_of(s, unit),
        error=jubilant.any_error,
    )
    assert table_loaded(juju, unit, expected=True), "the table did not come back with enforce"
