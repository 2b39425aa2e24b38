"""A Juju controller's agents connect from every subnet of the cloud, not only its own.

The controller of the example cloud knows one management subnet (its peers are the other
controllers only), while the agents it serves live in every rack. Its rendered ruleset is
loaded into a namespace that plays the controller (`enp1s0`, 10.10.0.5/24); a second namespace
plays agents in its own subnet, in another rack's management subnet (10.10.1.0/24, unknown to
the controller) and on a denied network's subnet, an operator in client-cidrs (10.99.0.0/24)
and a host that is neither (198.51.100.0/24). Real TCP connections, real counters.

The API (tcp/17070) takes any source arriving on the management NIC; SSH (22) and the
controller's SSH server (17022) serve operators: the management subnets it knows and
client-cidrs only.

Needs root, nft and ip: skipped with a message without them, failed under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from network_isolation.planner import plan_machine
from network_isolation.render import render
from network_isolation.topology import load_topology

from .conftest import MAAS, need
from .netns import in_netns, sh

NFT, IP = "/usr/sbin/nft", "/usr/sbin/ip"
PID = os.getpid()
CONTROLLER_NS, AGENTS_NS = f"ni-jc-{PID}", f"ni-ag-{PID}"
CONTROLLER = "10.10.0.5"
SAME_SUBNET, OTHER_RACK, DENIED_NETWORK = "10.10.0.20", "10.10.1.20", "10.20.0.20"
CLIENT, OUTSIDE = "10.99.0.20", "198.51.100.20"  # in client-cidrs; in no subnet of the cloud
API_PORT = 17070
OPERATOR_PORTS = (22, 17022)
AGENT_PORTS = (*OPERATOR_PORTS, API_PORT)
DROP_TIMEOUT = 1.0  # a connection that passes takes milliseconds
OTHER_PORT = 8080  # no agent port: still dropped from outside the known subnets


def listen(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((CONTROLLER, port))
    server.listen(16)
    return server


def serve(server: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            connection, _ = server.accept()
            connection.close()


def connects(source: str, port: int, timeout: float = 2.0) -> bool:
    def attempt() -> bool:
        with socket.socket() as client:
            client.settimeout(timeout)
            client.bind((source, 0))
            try:
                client.connect((CONTROLLER, port))
            except OSError:
                return False
            return True

    return in_netns(AGENTS_NS, attempt)


def dropped(counter: str) -> int:
    done = sh(IP, "netns", "exec", CONTROLLER_NS, NFT, "list", "counter", "inet",
              "network_isolation", counter)  # fmt: skip
    return int(done.stdout.split("packets ")[1].split()[0])


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if os.geteuid() != 0:
        need("the controller test needs root to create network namespaces (ip netns)")
    for tool in (NFT, IP):
        if not Path(tool).exists():
            need(f"missing {tool}: apt-get install nftables iproute2")
    servers: list[socket.socket] = []
    try:
        connect_namespaces()
        ruleset = tmp_path_factory.mktemp("controller") / "ruleset.nft"
        ruleset.write_text(render(plan_machine(load_topology(MAAS).plan_input("juju-1"))).nftables)
        sh(IP, "netns", "exec", CONTROLLER_NS, NFT, "-f", str(ruleset))
        servers = in_netns(CONTROLLER_NS, lambda: [listen(p) for p in (*AGENT_PORTS, OTHER_PORT)])
        for server in servers:
            threading.Thread(target=serve, args=(server,), daemon=True).start()
        yield
    finally:
        for server in servers:
            server.close()
        for namespace in (CONTROLLER_NS, AGENTS_NS):
            sh(IP, "netns", "del", namespace, check=False)


def connect_namespaces() -> None:
    """The controller's enp1s0 and the agents' link, each side routing the other's subnets."""
    for namespace in (CONTROLLER_NS, AGENTS_NS):
        sh(IP, "netns", "add", namespace)
        sh(IP, "-n", namespace, "link", "set", "lo", "up")
    sh(IP, "link", "add", "enp1s0", "netns", CONTROLLER_NS, "type", "veth",
       "peer", "name", "agents0", "netns", AGENTS_NS)  # fmt: skip
    sh(IP, "-n", CONTROLLER_NS, "addr", "add", f"{CONTROLLER}/24", "dev", "enp1s0")
    for address in (SAME_SUBNET, OTHER_RACK, DENIED_NETWORK, CLIENT, OUTSIDE):
        sh(IP, "-n", AGENTS_NS, "addr", "add", f"{address}/24", "dev", "agents0")
    for namespace, device in ((CONTROLLER_NS, "enp1s0"), (AGENTS_NS, "agents0")):
        sh(IP, "-n", namespace, "link", "set", device, "up")
    # The racks' router is left out: both ends route the other subnets on the link.
    for subnet in ("10.10.1.0/24", "10.20.0.0/24", "10.99.0.0/24", "198.51.100.0/24"):
        sh(IP, "-n", CONTROLLER_NS, "route", "add", subnet, "dev", "enp1s0")


def all_drops() -> int:
    return sum(
        dropped(c) for c in ("drop_in_management", "drop_in_internal", "drop_in_misdirected")
    )


@pytest.mark.parametrize("source", [SAME_SUBNET, OTHER_RACK, DENIED_NETWORK, CLIENT, OUTSIDE])
def test_every_agent_reaches_the_api_wherever_it_is(controller: None, source: str):
    before = all_drops()
    assert connects(source, API_PORT), f"{source} cannot reach the controller's tcp/{API_PORT}"
    assert all_drops() == before


@pytest.mark.parametrize("source", [SAME_SUBNET, CLIENT])
def test_operators_reach_ssh(controller: None, source: str):
    before = all_drops()
    for port in OPERATOR_PORTS:
        assert connects(source, port), f"{source} cannot reach the controller's tcp/{port}"
    assert all_drops() == before


@pytest.mark.parametrize(
    ("source", "counter"),
    [
        (OTHER_RACK, "drop_in_management"),
        (OUTSIDE, "drop_in_management"),
        (DENIED_NETWORK, "drop_in_internal"),
    ],
)
def test_ssh_is_closed_to_everyone_else(controller: None, source: str, counter: str):
    """Agents need the API only: SSH from outside the known subnets and clients is dropped."""
    before = dropped(counter)
    for port in OPERATOR_PORTS:
        assert not connects(source, port, DROP_TIMEOUT), f"{source} reaches tcp/{port}"
    assert dropped(counter) > before


def test_other_ports_stay_closed_to_unknown_subnets(controller: None):
    assert connects(SAME_SUBNET, OTHER_PORT)
    before = dropped("drop_in_management")
    assert not connects(OTHER_RACK, OTHER_PORT, DROP_TIMEOUT)
    assert dropped("drop_in_management") > before
