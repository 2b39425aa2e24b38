"""The golden cases of the render tests, and the files under dumps/ that store what they render.

Every case is a topology (a directory of dumps/), every machine of it one plan, and each plan
the nftables file and netplan file the CLI would write for it. `python tools/regen_dumps.py`
rewrites the stored files from `golden_files()`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from netplan_merge import maas_netplan
from topologies import EXAMPLES, configured, partial_topology, plan_of, roles_topology

from network_isolation.planner import MachinePlan
from network_isolation.render import render
from network_isolation.topology import Topology, load_topology

DUMPS = Path(__file__).resolve().parent / "dumps"
REGEN_COMMAND = "python tools/regen_dumps.py"
NFTABLES_FILE = "nftables.conf"
NETPLAN_FILE = "netplan.yaml"

VARIANT_MACHINES = ("juju-1", "control-1", "storage-3", "hyper-1")

# extra-ports for the strict-ports variant: on networks the four machines use, and on some
# they do not (not opened there).
EXTRA_PORTS = "management=tcp:9100,udp:161 internal=tcp:8080-8089 public=tcp:8443 data=udp:4789"


def _variant(topology: Topology, **config: str | bool) -> Topology:
    """Four machines of the topology (VARIANT_MACHINES), with some config options set."""
    return configured(topology, **config).model_copy(
        update={"machines": {m: topology.machines[m] for m in VARIANT_MACHINES}}
    )


@functools.cache
def golden_topologies() -> Mapping[str, Topology]:
    """Every golden case: a directory of dumps/ per topology, one per machine inside."""
    maas = load_topology(EXAMPLES / "microstack-maas.yaml")
    single = load_topology(EXAMPLES / "single-space.yaml")
    sunbeam = load_topology(EXAMPLES / "sunbeam-maas.yaml")
    strict: dict[str, str | bool] = {"strict-ports": True}
    return {
        "microstack-maas": maas,
        "single-space": single,
        "roles": roles_topology(maas),
        "partial": partial_topology(),
        "audit": _variant(maas, enforcement="audit"),
        "off": _variant(maas, enforcement="off"),
        "no-routing": _variant(maas, **{"manage-routing": False}),
        "strict-microstack-maas": configured(maas, **strict),
        "strict-single-space": configured(single, **strict),
        "strict-extra-ports": _variant(maas, **strict, **{"extra-ports": EXTRA_PORTS}),
        "sunbeam-maas": sunbeam,
        "strict-sunbeam-maas": configured(sunbeam, **strict),
    }


@functools.cache
def golden_plans() -> dict[str, tuple[Topology, str, MachinePlan]]:
    """`case/machine` -> (topology, machine, plan)."""
    return {
        f"{case}/{machine}": (topology, machine, plan_of(topology, machine))
        for case, topology in golden_topologies().items()
        for machine in topology.machines
    }


@functools.cache
def golden_files() -> dict[str, str]:
    """Relative path under dumps/ -> expected content, exactly as the CLI writes it."""
    files: dict[str, str] = {}
    for key, (_, _, plan) in golden_plans().items():
        artefacts = render(plan)
        files[f"{key}/{NFTABLES_FILE}"] = artefacts.nftables
        if artefacts.netplan is not None:
            files[f"{key}/{NETPLAN_FILE}"] = artefacts.netplan
    return files


def netplan_cases() -> list[str]:
    """Netplan golden files, each (MAAS file, ours) pair once: variants share most of them."""
    golden, plans = golden_files(), golden_plans()
    seen: set[tuple[str, str]] = set()
    cases = []
    for path in sorted(k for k in golden if k.endswith("/netplan.yaml")):
        topology, machine, _ = plans[path.removesuffix("/netplan.yaml")]
        key = (maas_netplan(topology.plan_input(machine)), golden[path])
        if key not in seen:
            seen.add(key)
            cases.append(path)
    return cases


def stored_files() -> dict[str, str]:
    """The golden files as stored under dumps/."""
    return {
        str(p.relative_to(DUMPS)): p.read_text()
        for p in sorted(DUMPS.rglob("*"))
        if p.is_file() and p.name != "README.md"
    }
