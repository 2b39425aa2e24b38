"""compute-1 of the example cloud, in network namespaces: what Juju shows of it, and the bed.

The machine is the namespace `ni-e2e-m-*` (its NIC `enp1s0` at 10.10.0.21/24, default route via
10.10.0.1). A veth joins it to `ni-e2e-p-*`, which holds the gateway (10.10.0.1: nothing on port
22, it answers with a reset), the Juju controller (10.10.0.2:17070, a listener) and storage-1's
storage-cluster address (10.60.0.31, the source of the denied packets). A third namespace,
`ni-e2e-s-*`, only loads a rendered ruleset to compare the kernel's view of it. A foreign
`inet lxd` table is loaded in the machine's namespace first and must stay byte-identical.

Shared by the charm's end-to-end tests: under ops.testing (test_charm_e2e) and as packed
(test_packed_charm).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from network_isolation.model import Network
from network_isolation.peers import MachineRecord, dump

from .conftest import MAAS
from .netns import in_netns, sh

IP = next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/bin/ip") if Path(p).exists()), "ip")
NFT = "/usr/sbin/nft"
SUFFIX = f"{os.getpid()}-{secrets.token_hex(2)}"
MACHINE_NS, PEER_NS, SCRATCH_NS = (f"ni-e2e-{r}-{SUFFIX}" for r in ("m", "p", "s"))
MACHINE_ID = "21"

CLOUD: dict[str, Any] = yaml.safe_load(MAAS.read_text())
MACHINE = "compute-1"
# Addresses in the namespaces, all from the example cloud.
MACHINE_ADDRESS = "10.10.0.21"  # compute-1 on management (enp1s0)
GATEWAY_ADDRESS = "10.10.0.1"  # the management subnet's gateway
CONTROLLER_ADDRESS, CONTROLLER_PORT = "10.10.0.2", 17070
STORAGE_CLUSTER_SOURCE = "10.60.0.31"  # storage-1 on storage-cluster: compute may not hear it
SERVICE_PORT = 8080  # a listener on the machine, the target of the probes below
CONFIG: dict[str, str | int | bool] = {"client-cidrs": CLOUD["config"]["client-cidrs"]}

FOREIGN = """\
table inet lxd {
	set allowed {
		type ipv4_addr
		elements = { 203.0.113.5 }
	}

	chain pstrt {
		type filter hook input priority -10; policy accept;
		ip saddr @allowed accept
	}
}
"""


IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


# -- the example cloud, as Juju would show it to the charm -------------------------------------


def addresses_by_network(machine: str) -> dict[str, list[tuple[str, IPInterface]]]:
    """Binding name -> [(interface, address)] of a machine, from the spaces of its subnets."""
    spaces = CLOUD["spaces"]
    interfaces: dict[str, list[str]] = CLOUD["machines"][machine]["interfaces"]
    found: dict[str, list[tuple[str, IPInterface]]] = {}
    for binding, space in CLOUD["bindings"].items():
        subnets = [ipaddress.ip_network(s) for s in spaces[space]["subnets"]]
        found[binding] = [
            (nic, address)
            for nic, values in interfaces.items()
            for address in map(ipaddress.ip_interface, values)
            if any(address.ip in subnet for subnet in subnets)
        ]
    return found


def peer_record(machine: str, number: int) -> str:
    """What the charm's unit on another machine publishes in the `cluster` relation."""
    return dump(
        MachineRecord(
            machine=f"machine-{number}",
            roles=tuple(CLOUD["machines"][machine]["roles"]),
            subnets={
                Network(net): tuple(sorted({a.network for _, a in found}, key=str))
                for net, found in addresses_by_network(machine).items()
                if found
            },
        )
    )


def cloud_init(machine: str) -> str:
    """What MAAS writes in 50-cloud-init.yaml for a machine of the example cloud."""
    interfaces = CLOUD["machines"][machine]["interfaces"]
    ethernets = {name: {"addresses": list(values)} for name, values in interfaces.items()}
    return yaml.safe_dump({"network": {"version": 2, "ethernets": ethernets}})


# -- namespaces ------------------------------------------------------------------------------


def nft_in(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh(IP, "netns", "exec", namespace, NFT, *args, check=check)


def our_table(namespace: str = MACHINE_NS) -> str | None:
    done = nft_in(namespace, "list", "table", "inet", "network_isolation", check=False)
    return done.stdout if done.returncode == 0 else None


def foreign() -> str:
    """The foreign table with its handles: a delete and re-create would show."""
    return nft_in(MACHINE_NS, "-a", "list", "table", "inet", "lxd").stdout


def _without_handles(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_handles(v) for k, v in value.items() if k != "handle"}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, list):
        return [_without_handles(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
    return value


def table_json(namespace: str) -> list[Any]:
    """`nft -j -s list table` of our table, handles, metainfo and counter values left out.

    `-s` leaves out the state of anonymous counters but not of named ones: a late packet of an
    earlier probe must not make two loads of the same table differ.
    """
    done = nft_in(namespace, "-j", "-s", "list", "table", "inet", "network_isolation")
    items: list[Any] = json.loads(done.stdout)["nftables"]
    return [_stateless(_without_handles(i)) for i in items if "metainfo" not in i]


def _stateless(item: Any) -> Any:
    """A listed item without a named counter's packets and bytes."""
    counter = item.get("counter") if isinstance(item, dict) else None
    if not isinstance(counter, dict):
        return item
    kept = {k: v for k, v in counter.items() if k not in ("packets", "bytes")}  # pyright: ignore[reportUnknownVariableType]
    return {**item, "counter": kept}


def listen(namespace: str, address: str, port: int) -> socket.socket:
    """A TCP listener in a namespace; the kernel completes handshakes without accept()."""

    def make() -> socket.socket:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, port))
        server.listen(256)
        return server

    return in_netns(namespace, make)


def connects(source: str, port: int = SERVICE_PORT, timeout: float = 0.5) -> bool:
    """Whether a TCP connection from `source` (in the peer namespace) to the machine opens."""

    def attempt() -> bool:
        with socket.socket() as client:
            client.settimeout(timeout)
            client.bind((source, 0))
            try:
                client.connect((MACHINE_ADDRESS, port))
            except OSError:
                return False
            return True

    return in_netns(PEER_NS, attempt)


def host_snapshot() -> tuple[str, str]:
    """This machine's own ruleset and policy routing: the test must leave both as they were."""
    return (
        sh(NFT, "-s", "list", "ruleset", check=False).stdout,
        sh(IP, "rule", "show", check=False).stdout,
    )


def build_namespaces() -> None:
    for namespace in (MACHINE_NS, PEER_NS, SCRATCH_NS):
        sh(IP, "netns", "add", namespace)
        sh(IP, "-n", namespace, "link", "set", "lo", "up")
    # Temporary names, made in the namespaces directly: nothing appears on this machine, and a
    # NIC of this machine that is also called enp1s0 is no obstacle.
    machine_end, peer_end = f"nie{SUFFIX[-4:]}m", f"nie{SUFFIX[-4:]}p"
    sh(IP, "link", "add", machine_end, "netns", MACHINE_NS, "type", "veth",
       "peer", "name", peer_end, "netns", PEER_NS)  # fmt: skip
    sh(IP, "-n", MACHINE_NS, "link", "set", machine_end, "name", "enp1s0")
    sh(IP, "-n", MACHINE_NS, "addr", "add", f"{MACHINE_ADDRESS}/24", "dev", "enp1s0")
    sh(IP, "-n", MACHINE_NS, "link", "set", "enp1s0", "up")
    sh(IP, "-n", MACHINE_NS, "route", "add", "default", "via", GATEWAY_ADDRESS)
    for address in (f"{GATEWAY_ADDRESS}/24", f"{CONTROLLER_ADDRESS}/24"):
        sh(IP, "-n", PEER_NS, "addr", "add", address, "dev", peer_end)
    sh(IP, "-n", PEER_NS, "addr", "add", f"{STORAGE_CLUSTER_SOURCE}/32", "dev", peer_end)
    sh(IP, "-n", PEER_NS, "link", "set", peer_end, "up")


def counter_names(nftables: str) -> set[str]:
    return set(re.findall(r"^\tcounter (\w+) \{$", nftables, re.MULTILINE))


def verdicts(table: list[Any], verdict: str) -> list[Any]:
    """The rules of a table (as `table_json` lists it) with a `verdict` (drop, goto...)."""
    return [
        item["rule"]
        for item in table
        if "rule" in item and any(verdict in expr for expr in item["rule"]["expr"])
    ]


def loaded_like(nftables: str, tmp_path: Path) -> list[Any]:
    """The kernel's view of a ruleset loaded alone in the scratch namespace."""
    path = tmp_path / "rendered.nft"
    path.write_text(nftables)
    nft_in(SCRATCH_NS, "-f", str(path))
    return table_json(SCRATCH_NS)


@contextlib.contextmanager
def machine_namespaces(tmp_path: Path) -> Iterator[None]:
    """The three namespaces, the controller's and the machine's listeners, the foreign table.

    Removes them all again, then checks that this machine's own ruleset and policy routing are
    what they were.
    """
    own = host_snapshot()
    sockets: list[socket.socket] = []
    try:
        build_namespaces()
        sockets.append(listen(PEER_NS, CONTROLLER_ADDRESS, CONTROLLER_PORT))
        sockets.append(listen(MACHINE_NS, MACHINE_ADDRESS, SERVICE_PORT))
        foreign_file = tmp_path / "foreign.nft"
        foreign_file.write_text(FOREIGN)
        nft_in(MACHINE_NS, "-f", str(foreign_file))
        yield
    finally:
        for server in sockets:
            server.close()
        for namespace in (MACHINE_NS, PEER_NS, SCRATCH_NS):
            sh(IP, "netns", "del", namespace, check=False)
    assert host_snapshot() == own, "this machine's own ruleset or policy routing changed"
