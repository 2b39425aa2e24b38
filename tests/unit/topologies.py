"""The topologies the render tests plan for: the bundled examples, a hand-written partial cloud.

Besides the examples under examples/, a partly isolated cloud on VLANs, bonds and bridges
(PARTIAL), and the variants the golden cases are made of: a config changed, or one machine per
combination of the guide's roles. `plan_of` is the plan of one of their machines.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

import yaml

from network_isolation.planner import MachinePlan, plan_machine
from network_isolation.topology import Topology

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

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


def partial_topology() -> Topology:
    """The partly isolated cloud of PARTIAL."""
    return Topology.model_validate(yaml.safe_load(PARTIAL))


def configured(topology: Topology, **config: str | bool) -> Topology:
    """The topology with some config options set."""
    return topology.model_copy(update={"config": {**topology.config, **config}})


def role_combination_name(roles: Iterable[str]) -> str:
    """`control+storage`, or `no-role`."""
    return "+".join(roles) or "no-role"


def roles_topology(base: Topology) -> Topology:
    """One machine per combination of the guide's roles, with a NIC on every network."""
    nics = base.machines["hyper-1"].interfaces
    machines = {}
    for n in range(len(GUIDE_ROLES) + 1):
        for roles in combinations(GUIDE_ROLES, n):
            machines[role_combination_name(roles)] = base.machines["hyper-1"].model_copy(
                update={"roles": roles, "interfaces": nics}
            )
    return base.model_copy(update={"machines": machines})


def plan_of(topology: Topology, machine: str) -> MachinePlan:
    """The plan of one machine of a topology."""
    return plan_machine(topology.plan_input(machine))
