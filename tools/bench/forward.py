"""The forwarded path: new connections to a Kubernetes VIP that the node DNATs to a pod.

As on Sunbeam's control nodes: the client connects to a VIP on the node's internal NIC; a
table of its own (as kube-proxy keeps) DNATs it in PREROUTING to a pod behind a veth, so the
SYN crosses the forward hook, not the input hook. Measured with the same DNAT under a
conntrack-only forward chain and under our table, side by side with the host path.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from network_isolation.model import Network

from .cloud import NICS, machine_address
from .ruleset import MeasurementError, Namespaces, conntrack_only, must

POD_NET = ipaddress.IPv4Network("10.244.1.0/24")
POD_VETH = "kpod0"  # an interface of no cloud network, as Cilium's lxc* or Calico's cali*

CONNTRACK_FORWARD = conntrack_only("forward")


def vip() -> ipaddress.IPv4Address:
    """The VIP: an address of the measured unit's internal subnet that no machine uses."""
    return machine_address(Network.INTERNAL, 0).network[200]


def dnat_table(pod: ipaddress.IPv4Address) -> str:
    """kube-proxy's part: the VIP DNATed to the pod before routing."""
    return (
        "table ip bench_kube_proxy {\n"
        "\tchain prerouting {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"\t\tip daddr {vip()} dnat to {pod}\n"
        "\t}\n"
        "}\n"
    )


def build_forwarded(
    spaces: Namespaces,
    index: int,
    ruleset: str,
    client_unit: int,
    listener: str,
    port: int,
    cpu: int,
) -> tuple[str, str, str]:
    """Client, node (ruleset + DNAT) and pod; the pod listens. Returns (node, client, VIP)."""
    node_if = machine_address(Network.INTERNAL, 0)
    client_if = machine_address(Network.INTERNAL, client_unit)
    node, client, pod = (spaces.add(f"f{x}{index}") for x in ("n", "c", "k"))
    gateway, pod_ip = POD_NET[1], POD_NET[2]
    nic = NICS[Network.INTERNAL]
    must(["ip", "-n", node, "link", "add", nic, "type", "veth", "peer", "eth0", "netns", client])
    must(["ip", "-n", node, "link", "add", POD_VETH, "type", "veth", "peer", "eth0", "netns", pod])
    for ns, dev, address in (
        (node, nic, str(node_if)),
        (node, nic, f"{vip()}/32"),
        (node, POD_VETH, f"{gateway}/{POD_NET.prefixlen}"),
        (client, "eth0", str(client_if)),
        (pod, "eth0", f"{pod_ip}/{POD_NET.prefixlen}"),
    ):
        must(["ip", "-n", ns, "addr", "add", address, "dev", dev])
    for ns, dev in ((node, nic), (node, POD_VETH), (client, "eth0"), (pod, "eth0"), (pod, "lo")):
        must(["ip", "-n", ns, "link", "set", dev, "up"])
    must(["ip", "-n", node, "route", "add", str(client_if.network), "dev", nic])
    must(["ip", "-n", client, "route", "add", str(node_if.network), "dev", "eth0"])
    must(["ip", "-n", pod, "route", "add", "default", "via", str(gateway)])
    spaces.run(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    spaces.run(pod, "sysctl", "-qw", "net.core.somaxconn=4096")
    spaces.run(client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
    spaces.load(node, dnat_table(pod_ip) + ruleset)
    server = spaces.spawn(pod, sys.executable, "-c", listener, str(pod_ip), str(port))
    if server.stdout is None or server.stdout.readline().strip() != "ready":
        raise MeasurementError(f"the listener in {pod} did not start")
    iperf = spaces.spawn(pod, "iperf3", "-s", "-B", str(pod_ip))
    for process in (server, iperf):
        os.sched_setaffinity(process.pid, {cpu})
    return node, client, str(vip())
