"""Small helpers shared by the functional tests that drive `ip netns` namespaces directly."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text."""
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def in_netns(namespace: str, work: Callable[[], T]) -> T:
    """Run work in a thread that has joined a network namespace (threads it starts do too)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {namespace}")
            finally:
                os.close(fd)
            outcome["value"] = work()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def tcp_connects(
    namespace: str, address: str, port: int, *, source: str | None = None, timeout: float = 0.5
) -> bool:
    """Whether a TCP connection from a namespace (from `source`, if given) opens."""

    def attempt() -> bool:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as client:
            client.settimeout(timeout)
            if source is not None:
                client.bind((source, 0))
            try:
                client.connect((address, port))
            except OSError:
                return False
            return True

    return in_netns(namespace, attempt)


def listen(namespace: str, address: str, port: int) -> socket.socket:
    """A TCP listener in a namespace; the kernel completes handshakes without accept()."""

    def make() -> socket.socket:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, port))
        server.listen(256)
        return server

    return in_netns(namespace, make)


def add_namespaces(ip: str, *names: str) -> None:
    """New network namespaces, each with its loopback up."""
    for namespace in names:
        sh(ip, "netns", "add", namespace)
        sh(ip, "-n", namespace, "link", "set", "lo", "up")


def wire_machine(
    ip: str,
    machine_ns: str,
    peer_ns: str,
    *,
    tag: str,
    nic: str,
    address: str,
    gateway: str,
    peer_addresses: list[str],
) -> None:
    """A veth from a machine's namespace to a peer namespace.

    The machine's end is `nic`, with `address` and a default route via `gateway`; the peer's
    end holds `peer_addresses` (CIDR form).

    The ends get temporary names made in the namespaces directly (`tag` keeps them unique):
    nothing appears on this machine, and a NIC of this machine with the same name is no
    obstacle.
    """
    machine_end, peer_end = f"ni{tag}m", f"ni{tag}p"
    sh(ip, "link", "add", machine_end, "netns", machine_ns, "type", "veth",
       "peer", "name", peer_end, "netns", peer_ns)  # fmt: skip
    sh(ip, "-n", machine_ns, "link", "set", machine_end, "name", nic)
    sh(ip, "-n", machine_ns, "addr", "add", address, "dev", nic)
    sh(ip, "-n", machine_ns, "link", "set", nic, "up")
    sh(ip, "-n", machine_ns, "route", "add", "default", "via", gateway)
    for peer_address in peer_addresses:
        sh(ip, "-n", peer_ns, "addr", "add", peer_address, "dev", peer_end)
    sh(ip, "-n", peer_ns, "link", "set", peer_end, "up")
