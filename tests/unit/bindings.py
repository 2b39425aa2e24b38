"""Juju bindings as `network-get` gives them, for the charm tests and the Juju stand-in."""

from __future__ import annotations

import ipaddress

from ops import testing

# The guide's "Cloud networks" table: the six network names.
GUIDE_NETWORKS: tuple[str, ...] = (
    "data",
    "internal",
    "management",
    "public",
    "storage",
    "storage-cluster",
)

# One subnet per network, all disjoint: the guide's "maximum isolation" layout.
DISJOINT_SUBNETS: dict[str, str] = {
    "management": "10.10.0.0/24",
    "internal": "10.20.0.0/24",
    "public": "10.30.0.0/24",
    "data": "10.40.0.0/24",
    "storage": "10.50.0.0/24",
    "storage-cluster": "10.60.0.0/24",
}

# A machine with one NIC per network: network -> its interface.
DISTINCT_NICS: dict[str, str] = {
    "management": "enp1s0",
    "internal": "enp2s0",
    "public": "enp3s0",
    "storage": "enp4s0",
    "data": "enp5s0",
    "storage-cluster": "enp6s0",
}


def binding(name: str, place: tuple[str, str] | None, host: int = 5) -> testing.Network:
    """One binding: the `host`-th address of `place`'s subnet on its interface, or none."""
    if place is None:
        # Declared, but the machine has no address in the network's space.
        return testing.Network(name, bind_addresses=[], ingress_addresses=[], egress_subnets=[])
    interface, cidr = place
    subnet = ipaddress.ip_network(cidr)
    address = str(subnet[host])
    return testing.Network(
        name,
        bind_addresses=[
            testing.BindAddress([testing.Address(address, cidr=cidr)], interface_name=interface)
        ],
        ingress_addresses=[address],
        egress_subnets=[cidr],
    )
