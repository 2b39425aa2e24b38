"""The MicroStack cloud networks, node roles and isolation degrees.

This is the vocabulary of the whole project, taken from Canonical's "Network traffic
isolation with MAAS" page. It is pure data: no Juju, no host access.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class Network(str, enum.Enum):
    """A MicroStack cloud network: one kind of traffic, bound to one Juju space."""

    DATA = "data"
    INTERNAL = "internal"
    MANAGEMENT = "management"
    PUBLIC = "public"
    STORAGE = "storage"
    STORAGE_CLUSTER = "storage-cluster"

    def __str__(self) -> str:
        return self.value


NETWORKS: tuple[Network, ...] = tuple(Network)
NETWORK_NAMES: tuple[str, ...] = tuple(n.value for n in Network)
# What the drops of a packet addressed to one network but arriving on another's interface are
# named after (`drop_in_misdirected`), where a network's name stands for other drops.
MISDIRECTED = "misdirected"


@dataclass(frozen=True)
class TrafficKind:
    """What travels on a network, for people reading a plan."""

    traffic_type: str
    example: str


NETWORK_TRAFFIC: Mapping[Network, TrafficKind] = {
    Network.DATA: TrafficKind(
        "hypervisor-to-hypervisor (East-West)", "intra-project routing by OVN/OVS"
    ),
    Network.INTERNAL: TrafficKind("control plane", "Nova to RabbitMQ queries"),
    Network.MANAGEMENT: TrafficKind("cloud node management", "Juju"),
    Network.PUBLIC: TrafficKind("service API endpoints", "Identity service via Keystone"),
    Network.STORAGE: TrafficKind("instance-to-storage", "Ceph-based volumes"),
    Network.STORAGE_CLUSTER: TrafficKind("storage-to-storage", "Ceph data rebalancing"),
}

# Instance traffic that maps to no cloud network. It runs over OVN/OVS interfaces that are not
# bound to any space, and this charm never filters it.
OTHER_NETWORKING: Mapping[str, TrafficKind] = {
    "external": TrafficKind(
        "instance-to-external (North-South)", "instance remote access over SSH"
    ),
    "private": TrafficKind("instance-to-openstack", "OpenStack internal"),
}

# The "Node roles" table of Canonical's guide: the default role table.
GUIDE_ROLES: Mapping[str, frozenset[Network]] = {
    "juju-controller": frozenset({Network.MANAGEMENT}),
    "control": frozenset({Network.MANAGEMENT, Network.INTERNAL, Network.PUBLIC, Network.STORAGE}),
    "compute": frozenset({Network.MANAGEMENT, Network.INTERNAL, Network.DATA, Network.STORAGE}),
    "storage": frozenset({Network.MANAGEMENT, Network.STORAGE, Network.STORAGE_CLUSTER}),
}

# What Sunbeam itself checks its MAAS machines against: canonical/snap-openstack,
# sunbeam-python/sunbeam/provider/maas/deployment.py, ROLE_NETWORK_MAPPING (the same on main,
# stable/2025.1 and stable/2024.1). Control adds data (OVN chassis and the Geneve address of
# openstack-network-agents run there), storage adds internal (cinder-volume runs there with
# amqp, database and identity bound to internal). `region-controller` is Sunbeam's MAAS tag
# `region_controller`, spelt like this charm's other roles and its `region-controller-node`
# endpoint; `sunbeam` is the infra machines that run clusterd in the `openstack-infra` model.
SUNBEAM_ROLES: Mapping[str, frozenset[Network]] = {
    "juju-controller": frozenset({Network.MANAGEMENT}),
    "control": frozenset(
        {Network.MANAGEMENT, Network.INTERNAL, Network.PUBLIC, Network.STORAGE, Network.DATA}
    ),
    "compute": frozenset({Network.MANAGEMENT, Network.INTERNAL, Network.DATA, Network.STORAGE}),
    "storage": frozenset(
        {Network.MANAGEMENT, Network.INTERNAL, Network.STORAGE, Network.STORAGE_CLUSTER}
    ),
    "network": frozenset({Network.MANAGEMENT, Network.INTERNAL, Network.DATA}),
    "region-controller": frozenset({Network.MANAGEMENT, Network.INTERNAL, Network.PUBLIC}),
    "sunbeam": frozenset({Network.MANAGEMENT}),
}

# The presets of the `role-table` option, by name; the first is the default.
ROLE_TABLES: Mapping[str, Mapping[str, frozenset[Network]]] = {
    "guide": GUIDE_ROLES,
    "sunbeam": SUNBEAM_ROLES,
}
DEFAULT_ROLE_TABLE = "guide"
# Every role some preset knows: each gets a `<role>-node` endpoint.
PRESET_ROLES: tuple[str, ...] = tuple(dict.fromkeys(r for t in ROLE_TABLES.values() for r in t))
# Relating a principal over `<role>-node` gives its machine that role: the charm reads the
# roles of its machine from these endpoints, `plan --emit-terraform` writes the relations.
ROLE_ENDPOINTS: Mapping[str, str] = {f"{role}-node": role for role in PRESET_ROLES}

# Client machines (operators, API users) need these; external networking too, which is
# instance traffic that this charm never blocks.
CLIENT_NETWORKS: frozenset[Network] = frozenset({Network.MANAGEMENT, Network.PUBLIC})


class IsolationLevel(str, enum.Enum):
    """How far the architect's spaces separate the six networks."""

    NONE = "none"
    PARTIAL = "partial"
    MAXIMUM = "maximum"

    def __str__(self) -> str:
        return self.value


def role_table(
    overrides: Mapping[str, frozenset[Network]], preset: str = DEFAULT_ROLE_TABLE
) -> dict[str, frozenset[Network]]:
    """The role→networks table in force: a preset's rows, each overridable or extendable."""
    table = dict(ROLE_TABLES[preset])
    table.update(overrides)
    return table


def networks_for_roles(
    roles: Iterable[str], table: Mapping[str, frozenset[Network]]
) -> frozenset[Network]:
    """The networks a machine may use: the union of its roles' rows."""
    allowed: set[Network] = set()
    for role in roles:
        allowed |= table[role]
    return frozenset(allowed)


def label_of(networks: Iterable[Network]) -> str:
    """An identifier naming networks, as the ruleset's sets and counters do: `internal_public`."""
    return "_".join(n.value.replace("-", "_") for n in sorted(set(networks), key=NETWORKS.index))
