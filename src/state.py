"""The charm's per-hook state: everything a hook decides from, read once, then frozen.

A hook reads Juju (config, the principals' relations, the six bindings, the peer relation
through the hook's one `Cluster`) and the machine (the registry of co-located units, the
netplan sections MAAS wrote) here, once; the plan and the configured form's artefacts are
computed from that by the pure code in `network_isolation`. What the hook then decides is
`network_isolation.turn`'s; this module reads and nothing else.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import ops
import pydantic
from network_isolation_interface import NetworkIsolationRequirer

from cluster import NO_PEER, Cluster, Woken
from network_isolation.base import IPNetwork
from network_isolation.config import CharmConfig, config_error
from network_isolation.host import Host, MachineRegistry
from network_isolation.model import NETWORKS, ROLE_ENDPOINTS, Network
from network_isolation.peers import CloudView, MachineRecord
from network_isolation.planner import (
    InterfaceAddress,
    IPAddress,
    MachinePlan,
    NetworkView,
    PlanInput,
    known_subnets,
    plan_machine,
)
from network_isolation.ports import (
    MachinePorts,
    PortRange,
    denied_ports,
    machine_ports,
    registered_ports,
)
from network_isolation.render import Artefacts, RenderError, render
from network_isolation.rollout import generation
from network_isolation.spaces import alpha_bindings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HookState:
    """What one hook knows: its inputs and what pure code made of them."""

    unit: str
    config: CharmConfig
    related_roles: frozenset[str]  # from the principals related to this unit
    networks: Mapping[Network, NetworkView]  # this machine's bindings, with the cloud's subnets
    own_subnets: Mapping[Network, tuple[IPNetwork, ...]]  # from bindings and network-cidrs
    record: MachineRecord  # what this unit tells its peers
    cloud: CloudView
    aggregated: bool  # this leader folded the cloud view from every peer: it publishes it
    own_ports: Mapping[str, tuple[str, ...]] | None  # the principal's declarations (None: unread)
    declared: Mapping[Network, tuple[PortRange, ...]] | None  # strict-ports: every principal's
    plan: MachinePlan
    ports: MachinePorts | None  # strict-ports: what each network accepts, to the host and through
    artefacts: Artefacts | None  # None: not rendered (plan not active, not asked, or an error)
    render_error: str | None
    problems: tuple[str, ...]  # untrusted input that was ignored, in the order it was read
    notes: tuple[str, ...]  # a leader's subnets not taught yet (too few units report them)
    binding_warnings: tuple[str, ...]  # bindings that look left on the alpha space

    @property
    def principal_warnings(self) -> tuple[str, ...]:
        """Networks the machine's principals need and lack, denied as `accept-denials` allows."""
        return self.plan.warnings

    @property
    def roles(self) -> frozenset[str]:
        """The roles this unit records for the machine: its principals' and configured ones."""
        return self.related_roles | self.config.roles


def read_config(charm: ops.CharmBase) -> CharmConfig:
    """The charm's config; raises ConfigError naming the option and the problem."""
    try:
        return charm.load_config(CharmConfig, errors="raise")
    except pydantic.ValidationError as e:
        raise config_error(e) from None


def related_roles(charm: ops.CharmBase) -> frozenset[str]:
    """Roles given by principals related on this machine (skipping other machines')."""
    return frozenset(
        role
        for endpoint, role in ROLE_ENDPOINTS.items()
        if any(relation.units for relation in charm.model.relations[endpoint])
    )


def principals(charm: ops.CharmBase) -> frozenset[str]:
    """Application names of this unit's principal (from its relations and Juju's context)."""
    apps = {
        relation.app.name
        for endpoint in ROLE_ENDPOINTS
        for relation in charm.model.relations[endpoint]
        if relation.units
    }
    principal_unit = ops.JujuContext.from_environ().principal_unit
    if principal_unit:
        apps.add(principal_unit.split("/")[0])
    return frozenset(apps)


@dataclass(frozen=True)
class Sources:
    """Where a hook reads besides the charm's own model: the principals' ports, the machine."""

    service_ports: NetworkIsolationRequirer
    registry: MachineRegistry
    host: Host


def read_state(
    charm: ops.CharmBase,
    sources: Sources,
    cluster: Cluster,
    *,
    woken: Woken = NO_PEER,
    declarations: bool = False,
    artefacts: bool = False,
) -> HookState:
    """Read the hook's inputs and plan; raises ConfigError on invalid config.

    `woken`: which peers a leader reads into its fold (none, the one whose change woke the
    hook, or all); `declarations`: read the principal's declared ports even without
    strict-ports (reconciling hooks record them for the other units of the machine);
    `artefacts`: render them. Only what a hook asks for is read: a hook-tool call each.
    """
    config = read_config(charm)
    unit = charm.unit.name
    roles = related_roles(charm)
    gateways = sources.host.interface_gateways()
    bindings = {net: _binding_view(charm, net, gateways) for net in NETWORKS}
    binding_warnings = alpha_bindings(bindings)
    for warning in binding_warnings:
        logger.warning(warning)
    problems: list[str] = []
    own_ports: dict[str, tuple[str, ...]] | None = None
    if declarations or (artefacts and config.strict_ports):
        found = sources.service_ports.declarations()
        problems += found.problems
        own_ports = {
            network: tuple(str(PortRange.of(triple)) for triple in triples)
            for network, triples in found.by_network().items()
        }
    record = _record(charm, roles, bindings, own_ports if config.strict_ports else None)
    own = known_subnets(bindings, config)
    cloud = cluster.read(record, own, config, woken)
    problems += cloud.problems
    networks = {
        net: view.model_copy(
            update={
                "learnt": cloud.view.subnets_of(net),
                "teachers": {s: cloud.view.teacher_of(net, s) for s in cloud.view.subnets_of(net)},
            }
        )
        for net, view in bindings.items()
    }
    plan = plan_machine(
        PlanInput(
            machine=record.machine,
            roles=roles | sources.registry.roles_except(unit),
            networks=networks,
            config=config,
            interface_kinds=sources.host.interface_kinds(),
            principals=principals(charm) | sources.registry.principals_except(unit),
        )
    )
    problems += plan.ignored  # learnt subnets this machine leaves out, and whose they were
    declared = None
    if config.strict_ports and own_ports is not None:
        declared = registered_ports(own_ports, sources.registry.ports_except(unit))
    ports = machine_ports(plan, declared) if declared is not None else None
    rendered, render_error = None, None
    if artefacts and plan.status == "active":
        if declared is not None:
            # extra-ports is application-wide: only a principal's own misfit is news here
            problems += denied_ports(plan, declared, "declared")
        try:
            rendered = render(plan, ports)
        except RenderError as e:
            render_error = f"cannot render: {e}"
    return HookState(
        unit=unit,
        config=config,
        related_roles=roles,
        networks=networks,
        own_subnets=own,
        record=record,
        cloud=cloud.view,
        aggregated=cloud.aggregated,
        own_ports=own_ports,
        declared=declared,
        plan=plan,
        ports=ports,
        artefacts=rendered,
        render_error=render_error,
        problems=tuple(problems),
        notes=cloud.notes,
        binding_warnings=binding_warnings,
    )


def _record(
    charm: ops.CharmBase,
    roles: frozenset[str],
    bindings: Mapping[Network, NetworkView],
    ports: Mapping[str, tuple[str, ...]] | None,
) -> MachineRecord:
    """What this unit tells its peers: machine, roles, subnets and addresses per network.

    With strict-ports, a digest of the ports its principal declares: they decide this
    machine's ruleset, so a change of them is a change to roll out.
    """
    present = {net: view for net, view in bindings.items() if view.interfaces}
    return MachineRecord(
        machine=_machine_name(charm),
        roles=tuple(sorted(roles)),
        subnets={
            net: tuple(sorted({i.address.network for i in view.interfaces}, key=str))
            for net, view in present.items()
        },
        addresses={
            net: tuple(sorted({i.address.ip for i in view.interfaces}, key=str))
            for net, view in present.items()
        },
        inputs=generation(json.dumps(ports, sort_keys=True)) if ports is not None else "",
    )


def _machine_name(charm: ops.CharmBase) -> str:
    machine_id = ops.JujuContext.from_environ().machine_id
    return f"machine-{machine_id}" if machine_id else charm.unit.name


def _binding_view(
    charm: ops.CharmBase, network: Network, gateways: Mapping[str, tuple[IPAddress, ...]]
) -> NetworkView:
    """This machine's addresses on one network (`network-get`), and their subnets' gateways.

    Juju does not tell a subnet's gateway: the host's netplan files do, as a route `via` an
    address of the subnet on the interface that holds it.
    """
    try:
        binding = charm.model.get_binding(network.value)
        interfaces = binding.network.interfaces if binding else []
    except ops.ModelError as e:
        logger.warning("no binding information for %s: %s", network, e)
        interfaces = []
    addresses = tuple(
        InterfaceAddress(
            name=i.name,
            address=ipaddress.ip_interface(f"{i.address}/{i.subnet.prefixlen}"),
        )
        for i in interfaces
        if i.name and i.address and i.subnet
    )
    return NetworkView(
        interfaces=addresses,
        gateways={
            a.address.network: gateway
            for a in addresses
            for gateway in reversed(gateways.get(a.name, ()))  # the first listed wins
            if gateway in a.address.network and gateway != a.address.ip
        },
    )
