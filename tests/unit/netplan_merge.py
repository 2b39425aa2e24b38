"""Our netplan file beside MAAS's: what MAAS would write for a machine, and `netplan generate`.

The render tests check that our file merges into the one MAAS (cloud-init) writes, with the
real `netplan generate`. It only ever runs with `--root-dir` on a temporary copy: this machine's
own netplan configuration is never read or written.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from tools_available import require_tool

from network_isolation.model import NETWORKS, Network
from network_isolation.planner import PlanInput
from network_isolation.render import NETPLAN_FILE_NAME


def maas_netplan(plan_input: PlanInput) -> str:
    """What MAAS (cloud-init) would write for the machine: addresses, default routes.

    Interface keys and types are the machine's own, so our file must merge into it.
    """
    addresses: dict[str, list[str]] = {}
    for net in NETWORKS:
        for item in plan_input.networks[net].interfaces:
            listed = addresses.setdefault(item.name, [])
            if str(item.address) not in listed:
                listed.append(str(item.address))
    sections: dict[str, dict[str, dict[str, Any]]] = {}
    for name, listed in addresses.items():
        kind = plan_input.interface_kinds.get(name, "ethernets")
        sections.setdefault(kind, {})[name] = _maas_entry(plan_input, name, kind, sections)
        sections[kind][name]["addresses"] = listed
    # MAAS puts the default gateway (one per family) on the management interface.
    management = plan_input.networks[Network.MANAGEMENT]
    families: set[int] = set()
    for item in management.interfaces:
        for subnet, gateway in sorted(management.gateways.items(), key=str):
            if item.address.ip in subnet and gateway.version not in families:
                families.add(gateway.version)
                kind = plan_input.interface_kinds.get(item.name, "ethernets")
                routes = sections[kind][item.name].setdefault("routes", [])
                routes.append({"to": "default", "via": str(gateway)})
    return yaml.safe_dump({"network": {"version": 2, **sections}}, sort_keys=False)


def _maas_entry(
    plan_input: PlanInput, name: str, kind: str, sections: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, Any]:
    """The device part of an interface's definition: VLAN id and link, bond/bridge members."""
    if kind == "vlans":
        parent, _, vid = name.rpartition(".")
        if not parent or not vid.isdigit():
            parent, vid = "nivlanlink", "100"
        if parent not in plan_input.interface_kinds:
            sections.setdefault("ethernets", {}).setdefault(parent, {})
        return {"id": int(vid), "link": parent}
    if kind in ("bonds", "bridges"):
        return {"interfaces": []}
    return {}


def netplan_generate(maas: str, ours: str | None) -> dict[str, str]:
    """`netplan generate --root-dir` over MAAS's file and ours; the networkd files it wrote."""
    netplan = require_tool("netplan")
    with tempfile.TemporaryDirectory() as tmp:
        etc = Path(tmp, "etc", "netplan")
        etc.mkdir(parents=True)
        files = {"50-cloud-init.yaml": maas}
        if ours is not None:
            files[NETPLAN_FILE_NAME] = ours
        for name, text in files.items():
            path = etc / name
            path.write_text(text)
            path.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if k != "SNAP"}
        result = subprocess.run(
            [netplan, "generate", "--root-dir", tmp],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=60,
        )
        assert result.returncode == 0, f"netplan refused:\n{result.stderr}\n{ours}"
        assert not result.stderr.strip(), f"netplan warned:\n{result.stderr}"
        out = Path(tmp, "run", "systemd", "network")
        return {p.name: p.read_text() for p in sorted(out.glob("*"))} if out.exists() else {}
