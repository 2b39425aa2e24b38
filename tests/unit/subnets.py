"""Subnets and interface addresses for the render tests: short spellings, and how two relate.

The relations are written out here, apart from the renderer's own subnet arithmetic
(`network_isolation.render.subnets`): the tests take no expected values from the code under test.
"""

from __future__ import annotations

import ipaddress

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def net(text: str) -> Net:
    """A subnet from its text."""
    return ipaddress.ip_network(text)


def iface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An interface address from its text."""
    return ipaddress.ip_interface(text)


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
