"""Helpers of the render tests: golden cases, the real tools in throwaway namespaces, MAAS files.

Everything that runs `nft` does so in a fresh network namespace (`unshare -n` as root, else
`unshare -rn`): this machine's own ruleset and network are never touched. `netplan
generate` only ever runs with `--root-dir` on a temporary copy.

`python tools/regen_dumps.py` rewrites the golden files from `golden_files()`.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

from network_isolation.model import NETWORKS, Network
from network_isolation.planner import Domain, MachinePlan, PlanInput, plan_machine
from network_isolation.ports import PortRange, machine_ports
from network_isolation.render import (
    NETPLAN_FILE_NAME,
    TABLE_FAMILY,
    TABLE_NAME,
    FirewallView,
    render,
)
from network_isolation.render.nft import NftRule
from network_isolation.topology import Topology, load_topology

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DUMPS = Path(__file__).resolve().parent / "dumps"
REGEN_COMMAND = "python tools/regen_dumps.py"
NFTABLES_FILE = "nftables.conf"
NETPLAN_FILE = "netplan.yaml"

# command -> the Debian package that provides it
TOOL_PACKAGES = {"nft": "nftables", "netplan": "netplan.io", "unshare": "util-linux"}
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


# ---------------------------------------------------------------------------------------------
# The real tools


def find_tool(command: str) -> str | None:
    """The tool's path; sbin directories count even when they are not on PATH."""
    for directory in SBIN:
        path = Path(directory, command)
        if path.exists():
            return str(path)
    return shutil.which(command)


def missing_tool(command: str) -> None:
    """Skip (or fail under CI=true) naming the Debian package that provides the tool."""
    message = (
        f"'{command}' is not installed: install the Debian package"
        f" '{TOOL_PACKAGES.get(command, command)}' (apt-get install"
        f" {TOOL_PACKAGES.get(command, command)})"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(command: str) -> str:
    """The tool's path, or skip/fail the test."""
    path = find_tool(command)
    if path is None:
        missing_tool(command)
        raise AssertionError("unreachable")  # pragma: no cover
    return path


@functools.cache
def _netns_prefix() -> tuple[str, ...] | None:
    unshare = find_tool("unshare")
    if unshare is None:
        return None
    # As root, a plain new network namespace: nft can then size its netlink socket for big
    # batches (in a user namespace, sets of ~10,000 subnets fail with "Message too long").
    candidates = [(unshare, "-n"), (unshare, "-rn")] if os.geteuid() == 0 else [(unshare, "-rn")]
    for prefix in candidates:
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return prefix
    return None


def netns_prefix() -> tuple[str, ...]:
    """How to run a command in a new, empty network namespace (or skip/fail)."""
    require_tool("unshare")
    require_tool("nft")
    prefix = _netns_prefix()
    if prefix is None:
        message = "cannot create a network namespace here (`unshare -rn` and `unshare -n` fail)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return prefix


def run_in_netns(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a fresh network namespace that disappears with it."""
    return subprocess.run(
        [*netns_prefix(), "sh", "-euc", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def nft_exercise(ruleset: str, off: str | None = None, interfaces: Iterable[str] = ()) -> None:
    """Check and load a ruleset for real in a fresh namespace, where another table exists.

    `nft -c -f`, then `nft -f` twice (the second load replaces an existing table), then the
    `off` ruleset removes our table and only ours; loading `off` again works without it.
    """
    nft = require_tool("nft")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "nftables.conf")
        path.write_text(ruleset)
        lines = [
            f"{nft} add table inet other",
            f"{nft} 'add chain inet other input {{ type filter hook input priority 0; }}'",
        ]
        for n, name in enumerate(sorted(set(interfaces))):
            lines.append(f"ip link add '{name}' type veth peer name nip{n}")
        lines += [f"{nft} -c -f {path}", f"{nft} -f {path}", f"{nft} -f {path}"]
        if f"table {TABLE_FAMILY} {TABLE_NAME} {{" in ruleset:
            lines.append(f"{nft} list table {TABLE_FAMILY} {TABLE_NAME} >/dev/null")
        else:  # the `off` ruleset: nothing of ours remains
            lines.append(f"! {nft} list table {TABLE_FAMILY} {TABLE_NAME} 2>/dev/null")
        if off is not None:
            off_path = Path(tmp, "off.conf")
            off_path.write_text(off)
            lines += [
                f"{nft} -f {off_path}",
                f"! {nft} list table {TABLE_FAMILY} {TABLE_NAME} 2>/dev/null",
                f"{nft} -f {off_path}",
            ]
        lines.append(f"{nft} list table inet other >/dev/null")
        result = run_in_netns("\n".join(lines))
    assert result.returncode == 0, f"nft refused the ruleset:\n{result.stderr}\n{ruleset}"


def nft_rule_count(ruleset: str) -> int:
    """The number of rules the kernel holds in our table after loading the ruleset."""
    nft = require_tool("nft")
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write(ruleset)
        f.flush()
        result = run_in_netns(
            f"{nft} -f {f.name}\n{nft} -j list table {TABLE_FAMILY} {TABLE_NAME}"
        )
    if "Message too long" in result.stderr and "-rn" in netns_prefix():
        message = (
            "nft cannot size its netlink socket for this batch in a user namespace"
            " (`unshare -rn`): run the tests as root"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    assert result.returncode == 0, result.stderr
    return sum(1 for item in json.loads(result.stdout)["nftables"] if "rule" in item)


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


# ---------------------------------------------------------------------------------------------
# MAAS-style netplan


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


def net_within(inner: Net, outer: Net) -> bool:
    """Whether a subnet lies inside another (never across families)."""
    return (
        inner.version == outer.version
        and int(outer.network_address) <= int(inner.network_address)
        and int(inner.broadcast_address) <= int(outer.broadcast_address)
    )


def net_overlap(first: Net, second: Net) -> bool:
    """Whether two subnets share an address (never across families)."""
    return (
        first.version == second.version
        and int(first.network_address) <= int(second.broadcast_address)
        and int(second.network_address) <= int(first.broadcast_address)
    )


# ---------------------------------------------------------------------------------------------
# A first-match reading of the firewall view, for checks against the issue's semantics


PORT_MATCH = re.compile(r"(tcp|udp) dport (?:(\d+)|@(\S+)|\{ ([\d, ]+) \})")
OUTSIDE_SET = re.compile(r"iifname != @(\S+) oifname != @(\S+)")


@dataclass(frozen=True)
class Packet:
    """The first packet of a new connection, as the rules see it."""

    interface: str  # input interface (for output: the output interface)
    address: ipaddress.IPv4Address | ipaddress.IPv6Address  # source (output: destination)
    protocol: str
    port: int | None
    out_interface: str | None = None  # forward: where it leaves, and to which address
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


def _extra_matches(view: FirewallView, extra: str | None, packet: Packet) -> bool:
    if extra is None:
        return True
    if extra in ('iifname "lo"', 'oifname "lo"'):
        return packet.interface == "lo"
    if extra.startswith(("icmp type", "icmpv6 type")) or "ct " in extra:
        return False  # the first packet of a new connection: no ct state, not a reply
    outside = OUTSIDE_SET.fullmatch(extra)
    if outside:
        inside = view.set(outside.group(1)).elements
        return packet.interface not in inside and packet.out_interface not in inside
    match = PORT_MATCH.fullmatch(extra)
    if match:
        if packet.protocol != match.group(1) or packet.port is None:
            return False
        if match.group(2):
            return packet.port == int(match.group(2))
        if match.group(4):
            return packet.port in {int(p) for p in match.group(4).split(", ")}
        ranges = view.set(match.group(3)).ports()
        return any(first <= packet.port <= last for first, last in ranges)
    raise AssertionError(f"unknown match '{extra}'")


def _rule_matches(view: FirewallView, rule: NftRule, packet: Packet, output: bool) -> bool:
    """Whether a rule's interface, address and other matches all hold."""
    outbound = output or rule.side == "out"
    interface = packet.interface if output or not outbound else packet.out_interface
    address = packet.address if output or not outbound else packet.destination
    if rule.interfaces and interface not in view.set(rule.interfaces).elements:
        return False
    if rule.addresses and (
        address is None or not any(address in n for n in view.set(rule.addresses).networks())
    ):
        return False
    return _extra_matches(view, rule.extra, packet)


def _walk(view: FirewallView, name: str, packet: Packet, output: bool) -> str | None:
    """A chain's verdict (accept or drop), or None when the packet returns from it.

    An audit chain's log rule counts as the drop it stands for.
    """
    chain = view.chain(name)
    assert chain is not None, f"no chain {name}"
    for rule in chain.rules:
        if rule.vmap is not None:
            target = view.map(rule.vmap).target(packet.interface)
            if target is None:
                continue
            how, called = target.split()
            result = _walk(view, called, packet, output)
            if result is not None or how == "goto":
                return result
            continue
        if not _rule_matches(view, rule, packet, output):
            continue
        if rule.verdict == "jump":
            assert rule.target is not None
            result = _walk(view, rule.target, packet, output)
            if result is not None:
                return result
            continue
        if rule.verdict == "return":
            return None
        if rule.verdict == "log":
            return "drop"
        return "drop" if rule.verdict == "drop" else "accept"
    return None


def verdict(
    view: FirewallView,
    chain: str,
    interface: str,
    address: str,
    port: int | None = None,
    protocol: str = "tcp",
    out_interface: str | None = None,
    destination: str | None = None,
) -> str:
    """What a base chain decides for the first packet of a new connection (policy accept).

    Input: `interface` and `address` are where the packet comes from; output: where it goes;
    forward: where it comes from, and `out_interface` and `destination` where it goes.
    """
    if view.chain(chain) is None:
        return "accept"
    packet = Packet(
        interface,
        ipaddress.ip_address(address),
        protocol,
        port,
        out_interface,
        ipaddress.ip_address(destination) if destination else None,
    )
    return _walk(view, chain, packet, output=chain == "output") or "accept"


# ---------------------------------------------------------------------------------------------
# The issue's rules restated from the plan, without reading the rendered rules


def listed_ports(
    plan: MachinePlan, interface: str, ports: Mapping[Network, Iterable[PortRange]] | None = None
) -> list[PortRange] | None:
    """strict-ports: the ranges an interface accepts (every allowed network it carries).

    None without strict-ports. `ports` defaults to what the machine's roles and `extra-ports`
    give (`machine_ports(plan)`); only networks the machine may use count.
    """
    if not plan.config.strict_ports:
        return None
    given = machine_ports(plan) if ports is None else ports
    return [
        r
        for d in plan.domains
        if d.allowed and interface in d.interfaces
        for n in d.networks
        if plan.networks[n].access
        for r in given.get(n, ())
    ]


def _domain_of_source(plan: MachinePlan, address: str) -> Domain | None | bool:
    """The domain whose subnets hold the address; None in none; False when ambiguous."""
    ip = ipaddress.ip_address(address)
    found = [d for d in plan.domains if any(ip in s for s in d.subnets)]
    if len(found) > 1:
        return False
    return found[0] if found else None


def expected_input(
    plan: MachinePlan,
    interface: str,
    address: str,
    protocol: str,
    port: int,
    ports: Mapping[Network, Iterable[PortRange]] | None = None,
) -> str | None:
    """The firewall's input rules (and strict-ports) for a new connection, or None.

    None when the source is in subnets of several domains (the plan is blocked: ambiguous).
    """
    ip = ipaddress.ip_address(address)
    if plan.config.enforcement == "off":
        return "accept"
    failsafe = [*plan.domain_of(Network.MANAGEMENT).subnets, *plan.config.client_cidrs]
    if protocol == "tcp" and port == 22 and any(ip in s for s in failsafe):
        return "accept"  # 3. failsafe
    source = _domain_of_source(plan, address)
    if source is False:
        return None
    if isinstance(source, Domain) and not source.allowed:
        return "drop"  # 4. from a denied network, on any interface
    if interface in plan.denied_interfaces:
        return "drop"  # 5. on a denied network's interface
    carried = [d for d in plan.domains if d.allowed and interface in d.interfaces]
    if not carried:
        return "accept"  # 7. an interface of no cloud network
    networks = {n for d in carried for n in d.networks}
    if isinstance(source, Domain):
        accepted = source in carried  # 6. own subnets; another cloud network's: drop
    elif Network.PUBLIC in networks:
        accepted = True  # 6. public API users
    else:
        client = any(ip in c for c in plan.config.client_cidrs)
        accepted = client and Network.MANAGEMENT in networks  # 6. client-cidrs on management
    listed = listed_ports(plan, interface, ports)
    if accepted and listed is not None:
        accepted = any(r.protocol == protocol and r.first <= port <= r.last for r in listed)
    return "accept" if accepted else "drop"


def address_conflicts(view: FirewallView, interfaces: Iterable[str]) -> list[str]:
    """Subnets both accepted and dropped (or handed back) for the same input interface.

    Accepted: the address rules of the chain the interface map sends the interface to;
    dropped: the input chain's address drops and the `return` rules of that chain.
    """
    chain = view.chain("input")
    if chain is None:
        return []
    problems: list[str] = []
    for interface in [*interfaces, "ni-unknown0"]:
        decided: dict[str, list[Net]] = {"accept": [], "drop": []}
        rules = [r for r in chain.rules if r.vmap is None]
        for lookup in (r for r in chain.rules if r.vmap == "by_interface"):
            target = view.map(lookup.vmap or "").target(interface)
            called = view.chain(target.split()[1]) if target else None
            rules += list(called.rules) if called else []
        for rule in rules:
            if rule.addresses is None or rule.extra is not None:
                continue  # catch-all rules and port rules are not about subnets
            if rule.interfaces and interface not in view.set(rule.interfaces).elements:
                continue
            kind = "accept" if rule.verdict == "accept" else "drop"
            decided[kind] += view.set(rule.addresses).networks()
        problems += [
            f"{interface}: {a} accepted, {d} dropped"
            for a in decided["accept"]
            for d in decided["drop"]
            if net_overlap(a, d)
        ]
    return problems


# ---------------------------------------------------------------------------------------------
# Golden cases

GUIDE_ROLES = ("juju-controller", "control", "compute", "storage")

# A partly isolated cloud on VLANs, bonds and bridges: storage and storage-cluster share one
# space, internal and public another; the tenant space has a second rack without a gateway.
PARTIAL = """
spaces:
  oam:
    subnets: [10.1.0.0/24, 'fd00:1::/64']
    gateway: {10.1.0.0/24: 10.1.0.1, 'fd00:1::/64': 'fd00:1::1'}
  api:
    subnets: [10.2.0.0/24, 'fd00:2::/64']
    gateway: {10.2.0.0/24: 10.2.0.1}
  tenant:
    subnets: [10.4.0.0/24, 10.4.1.0/24]
  ceph:
    subnets: [10.5.0.0/24, 10.5.1.0/24]
    gateway: {10.5.0.0/24: 10.5.0.1, 10.5.1.0/24: 10.5.1.1}
bindings:
  management: oam
  internal: api
  public: api
  data: tenant
  storage: ceph
  storage-cluster: ceph
config:
  client-cidrs: "192.0.2.0/24 10.1.0.128/25 2001:db8::/64"
machines:
  control-1:
    roles: [control]
    interfaces:
      bond0: {type: bonds, addresses: [10.1.0.11/24, 'fd00:1::11/64']}
      bond0.20: {type: vlans, addresses: [10.2.0.11/24, 'fd00:2::11/64']}
      bond0.50: {type: vlans, addresses: [10.5.0.11/24]}
  compute-1:
    roles: [compute]
    interfaces:
      enp1s0: [10.1.0.21/24]
      br-tenant: {type: bridges, addresses: [10.4.1.21/24]}
      enp1s0.50: {type: vlans, addresses: [10.5.1.21/24]}
  storage-1:
    roles: [storage]
    interfaces:
      enp1s0: [10.1.0.31/24]
      enp2s0: [10.5.0.31/24]
      enp3s0: [10.4.0.31/24]
  storage-2:
    roles: [storage]
    interfaces:
      enp1s0: [10.1.0.32/24]
      enp2s0: [10.5.0.32/24]
      enp3s0: [10.5.1.32/24]
  edge-1:
    roles: [control]
    interfaces:
      enp1s0: [10.1.0.51/24, 10.2.0.51/24]
      enp2s0: [10.5.0.51/24]
  juju-1:
    roles: [juju-controller]
    interfaces:
      enp1s0: [10.1.0.41/24, 10.2.0.41/24]
"""

VARIANT_MACHINES = ("juju-1", "control-1", "storage-3", "hyper-1")


# extra-ports for the strict-ports variant: on networks the four machines use, and on some
# they do not (not opened there).
EXTRA_PORTS = "management=tcp:9100,udp:161 internal=tcp:8080-8089 public=tcp:8443 data=udp:4789"


def _configured(topology: Topology, **config: str | bool) -> Topology:
    return topology.model_copy(update={"config": {**topology.config, **config}})


def _variant(topology: Topology, **config: str | bool) -> Topology:
    return _configured(topology, **config).model_copy(
        update={"machines": {m: topology.machines[m] for m in VARIANT_MACHINES}}
    )


def role_combination_name(roles: Iterable[str]) -> str:
    """`control+storage`, or `no-role`."""
    return "+".join(roles) or "no-role"


def _roles_topology(base: Topology) -> Topology:
    """One machine per combination of the guide's roles, with a NIC on every network."""
    nics = base.machines["hyper-1"].interfaces
    machines = {}
    for n in range(len(GUIDE_ROLES) + 1):
        for roles in combinations(GUIDE_ROLES, n):
            machines[role_combination_name(roles)] = base.machines["hyper-1"].model_copy(
                update={"roles": roles, "interfaces": nics}
            )
    return base.model_copy(update={"machines": machines})


def partial_topology() -> Topology:
    """The partly isolated cloud of PARTIAL."""
    return Topology.model_validate(yaml.safe_load(PARTIAL))


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
        "roles": _roles_topology(maas),
        "partial": partial_topology(),
        "audit": _variant(maas, enforcement="audit"),
        "off": _variant(maas, enforcement="off"),
        "no-routing": _variant(maas, **{"manage-routing": False}),
        "strict-microstack-maas": _configured(maas, **strict),
        "strict-single-space": _configured(single, **strict),
        "strict-extra-ports": _variant(maas, **strict, **{"extra-ports": EXTRA_PORTS}),
        "sunbeam-maas": sunbeam,
        "strict-sunbeam-maas": _configured(sunbeam, **strict),
    }


@functools.cache
def golden_plans() -> dict[str, tuple[Topology, str, MachinePlan]]:
    """`case/machine` -> (topology, machine, plan)."""
    return {
        f"{case}/{machine}": (topology, machine, plan_machine(topology.plan_input(machine)))
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


# ---------------------------------------------------------------------------------------------
# Short spellings of the tests


def plan_of(topology: Topology, machine: str) -> MachinePlan:
    """The plan of one machine of a topology."""
    return plan_machine(topology.plan_input(machine))


def net(text: str) -> Net:
    """A subnet from its text."""
    return ipaddress.ip_network(text)


def iface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An interface address from its text."""
    return ipaddress.ip_interface(text)
