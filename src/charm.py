#!/usr/bin/env python3
"""Juju glue: gather bindings, roles and config, plan and render in pure code, apply via Host."""

from __future__ import annotations

import ipaddress
import json
import logging
import os

import ops
import pydantic
from network_isolation_interface import NetworkIsolationRequirer

from cluster import Cluster
from network_isolation.config import CharmConfig, ConfigError, config_error, parse_port_range
from network_isolation.host import (
    ApplyError,
    Host,
    HostError,
    MachineRegistry,
    ProbeTarget,
    controller_targets,
    fingerprint,
    gateway_target,
    state_dir,
)
from network_isolation.model import BUILTIN_ROLES, NETWORKS, Network
from network_isolation.peers import CloudView, MachineRecord
from network_isolation.planner import (
    InterfaceAddress,
    MachinePlan,
    NetworkView,
    PlanInput,
    plan_machine,
)
from network_isolation.ports import PortRange, declared_ports, denied_ports, machine_ports
from network_isolation.render import Artefacts, RenderError, render
from network_isolation.report import machine_dict, machine_text
from network_isolation.rollout import UnitRoll, may_apply, waiting_message

logger = logging.getLogger(__name__)

# Relating a principal over `<role>-node` gives this machine that role.
ROLE_ENDPOINTS = {f"{role}-node": role for role in BUILTIN_ROLES}


class NetworkIsolationCharm(ops.CharmBase):
    """Subordinate that derives a machine's network access from its node roles."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.registry = MachineRegistry(state_dir() / "units")
        self.host = Host(state=state_dir())
        self.service_ports = NetworkIsolationRequirer(self, endpoint="service-ports")
        self._views: dict[Network, NetworkView] | None = None
        self._warnings: list[str] = []
        self._blocked: str | None = None
        self._waiting: str | None = None
        self._own_ports: dict[str, list[str]] | None = None
        self._cluster_cache: Cluster | None = None
        self._plan_cache: MachinePlan | None = None
        reconcile_on = [
            self.on.config_changed,
            self.on.upgrade_charm,
            self.on.leader_elected,
            self.on.cluster_relation_joined,
            self.on.cluster_relation_changed,
            self.on.cluster_relation_departed,
        ]
        for endpoint in ROLE_ENDPOINTS:
            reconcile_on += [
                self.on[endpoint].relation_joined,
                self.on[endpoint].relation_changed,
                self.on[endpoint].relation_departed,
                self.on[endpoint].relation_broken,
            ]
        reconcile_on.append(self.service_ports.on.ports_changed)
        for event in reconcile_on:
            framework.observe(event, self._reconcile)
        framework.observe(self.on.install, self._on_install)
        framework.observe(self.on.update_status, self._on_update_status)
        framework.observe(self.on.remove, self._on_remove)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)
        framework.observe(self.on.show_plan_action, self._on_show_plan)
        framework.observe(self.on.show_counters_action, self._on_show_counters)
        framework.observe(self.on.reapply_action, self._on_reapply)

    # Events

    def _on_install(self, event: ops.InstallEvent) -> None:
        try:
            self.host.install_prerequisites()
        except HostError as e:
            self._blocked = f"cannot install nftables: {e}"
            return
        self._reconcile(event)

    def _on_update_status(self, event: ops.UpdateStatusEvent) -> None:
        """Reconcile, then repair drift: our table changed or removed behind our back."""
        self._reconcile(event)
        if self._blocked or self._waiting:
            return
        try:
            repaired = self.host.repair_drift(self._probe_targets())
        except (ApplyError, HostError) as e:
            self._blocked = f"drift repair failed: {e}"
            return
        if repaired:
            self._warnings.append(f"drift repaired: {repaired}")

    def _reconcile(self, event: ops.EventBase, *, force: bool = False) -> None:
        """Plan this machine, render its artefacts and apply them when it is this unit's turn."""
        try:
            config = self._config()
        except ConfigError:
            self.registry.record(self.unit.name, self._related_roles())
            return  # reported by collect-status; nothing on the host is changed
        self.registry.record(
            self.unit.name, self._related_roles() | config.roles, self._own_declared_ports()
        )
        cluster = self._cluster(config)
        # update-status only repairs drift: the leader re-reads its peers on their own events
        lead = not isinstance(event, ops.UpdateStatusEvent)
        cluster.share(self._machine_record(), lead=lead)
        plan = self._plan()
        artefacts = self._render(plan) if plan.status == "active" else None
        cluster.report(self._roll_state(artefacts), lead=lead)
        if artefacts is None or (not force and self.host.is_applied(artefacts)):
            return
        turn = cluster.roll()
        exempt = force or self.host.applied().nftables is None  # first apply on a new unit
        if not exempt and turn is not None and not may_apply(self.unit.name, turn):
            self._waiting = waiting_message(self.unit.name, turn)
            return
        try:
            result = self.host.apply(artefacts, self._probe_targets(), force=force)
        except (ApplyError, HostError) as e:
            self._blocked = f"apply failed: {e}"
        else:
            logger.info("%s", result.message)
        cluster.report(self._roll_state(artefacts), lead=lead)

    def _on_remove(self, _: ops.RemoveEvent) -> None:
        """Leave the host as it was when the last unit of this charm on it goes."""
        self.registry.forget(self.unit.name)
        if self.registry.entries():
            return
        try:
            self.host.remove()
        except HostError as e:
            logger.error("removal left something behind: %s", e)

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        try:
            plan = self._plan()
        except ConfigError as e:
            event.add_status(ops.BlockedStatus(str(e)))
            return
        warning = f"; {self._warnings[0]}" if self._warnings else ""
        if plan.status == "blocked":
            event.add_status(ops.BlockedStatus(plan.message + warning))
        elif self._blocked:
            event.add_status(ops.BlockedStatus(self._blocked))
        elif self._waiting:
            event.add_status(ops.WaitingStatus(self._waiting))
        else:
            event.add_status(ops.ActiveStatus(plan.message + warning))

    def _on_show_plan(self, event: ops.ActionEvent) -> None:
        try:
            plan = self._plan()
        except ConfigError as e:
            event.fail(str(e))
            return
        results: dict[str, str] = {}
        if event.params.get("format") == "json":
            results["plan"] = json.dumps(machine_dict(plan), sort_keys=True)
        else:
            results["plan"] = machine_text(plan)
        artefacts = self._render(plan) if plan.status == "active" else None
        if artefacts is not None:
            results["nftables"] = artefacts.nftables
            results["netplan"] = artefacts.netplan or "(none: no policy routing to render)"
            results["diff"] = self.host.diff(artefacts) or "(none: this plan is what is applied)"
        event.set_results(results)

    def _on_show_counters(self, event: ops.ActionEvent) -> None:
        try:
            counters = self.host.counters()
        except HostError as e:
            event.fail(f"cannot read the counters: {e}")
            return
        event.set_results({"counters": json.dumps(counters, sort_keys=True)})

    def _on_reapply(self, event: ops.ActionEvent) -> None:
        """Re-render and apply even if nothing changed (drift repair, rejected retry)."""
        self._reconcile(event, force=True)
        if self._blocked:
            event.fail(self._blocked)
        elif self._waiting:
            event.fail(self._waiting)
        else:
            event.set_results({"result": "applied"})

    # Inputs

    def _config(self) -> CharmConfig:
        try:
            return self.load_config(CharmConfig, errors="raise")
        except pydantic.ValidationError as e:
            raise config_error(e) from None

    def _cluster(self, config: CharmConfig) -> Cluster:
        """This hook's view of the peer relation (one per hook: databags are read once)."""
        if self._cluster_cache is None:
            self._cluster_cache = Cluster(self, config.peer_min_prefix, self._warnings)
        return self._cluster_cache

    def _machine_name(self) -> str:
        machine_id = ops.JujuContext.from_environ().machine_id
        return f"machine-{machine_id}" if machine_id else self.unit.name

    def _related_roles(self) -> frozenset[str]:
        """Roles given by principals related on this machine (skipping other machines')."""
        return frozenset(
            role
            for endpoint, role in ROLE_ENDPOINTS.items()
            if any(relation.units for relation in self.model.relations[endpoint])
        )

    def _network_views(self, cloud: CloudView) -> dict[Network, NetworkView]:
        """This machine's addresses per network (`network-get`), plus cloud-wide subnets."""
        if self._views is None:
            self._views = {net: self._binding_view(net) for net in NETWORKS}
        return {
            net: view.model_copy(update={"subnets": cloud.subnets_of(net)})
            for net, view in self._views.items()
        }

    def _binding_view(self, network: Network) -> NetworkView:
        try:
            binding = self.model.get_binding(network.value)
            interfaces = binding.network.interfaces if binding else []
        except ops.ModelError as e:
            logger.warning("no binding information for %s: %s", network, e)
            interfaces = []
        return NetworkView(
            interfaces=tuple(
                InterfaceAddress(
                    name=i.name,
                    address=ipaddress.ip_interface(f"{i.address}/{i.subnet.prefixlen}"),
                )
                for i in interfaces
                if i.name and i.address and i.subnet
            )
        )

    def _machine_record(self) -> MachineRecord:
        """What this unit tells its peers: its machine, roles and subnets per network."""
        return MachineRecord(
            machine=self._machine_name(),
            roles=tuple(sorted(self._related_roles())),
            subnets={
                net: tuple(sorted({i.address.network for i in view.interfaces}, key=str))
                for net, view in self._network_views(CloudView()).items()
                if view.interfaces
            },
        )

    def _own_declared_ports(self) -> dict[str, list[str]]:
        """Ports the principal on this unit declared (untrusted: problems become warnings)."""
        if self._own_ports is None:
            declarations = self.service_ports.declarations()
            self._warnings.extend(declarations.problems)
            self._own_ports = {
                network: [str(PortRange.of(triple)) for triple in triples]
                for network, triples in declarations.by_network().items()
            }
        return self._own_ports

    def _declared_ports(self) -> dict[Network, tuple[PortRange, ...]]:
        """Ports declared by the principals of every unit of this charm on the machine."""
        merged: dict[str, set[str]] = {}
        for network, ports in self._own_declared_ports().items():
            merged.setdefault(network, set()).update(ports)
        for network, ports in self.registry.ports_except(self.unit.name).items():
            merged.setdefault(network, set()).update(ports)
        triples: dict[str, list[tuple[str, int, int]]] = {}
        for network, ports in merged.items():
            for text in ports:
                try:
                    triples.setdefault(network, []).append(parse_port_range(text))
                except ValueError:
                    logger.warning("ignored unreadable registry port %r", text)
        return declared_ports(triples)

    def _probe_targets(self) -> list[ProbeTarget]:
        """What must stay reachable after an apply: the Juju controllers and the gateways."""
        targets = controller_targets(os.environ.get("JUJU_API_ADDRESSES"))
        return targets + [gateway_target(g) for g in self.host.default_gateways()]

    # Pure steps

    def _plan(self) -> MachinePlan:
        """The machine's plan: this unit's and co-located units' roles, bindings, config.

        Planned once per hook (the reconcile and the status share it): its inputs do not
        change after the reconcile has recorded this unit and shared its record.
        """
        if self._plan_cache is None:
            config = self._config()
            roles = self._related_roles() | self.registry.roles_except(self.unit.name)
            self._plan_cache = plan_machine(
                PlanInput(
                    machine=self._machine_name(),
                    roles=roles,
                    networks=self._network_views(self._cluster(config).view()),
                    config=config,
                    interface_kinds=self.host.interface_kinds(),
                )
            )
        return self._plan_cache

    def _render(self, plan: MachinePlan) -> Artefacts | None:
        """The machine's artefacts; with strict-ports, the principals' declared ports too."""
        try:
            declared = self._declared_ports() if plan.config.strict_ports else None
            if declared is not None:
                # extra-ports is application-wide: only a principal's own misfit is news here
                self._warnings.extend(denied_ports(plan, declared, "declared"))
            return render(plan, machine_ports(plan, declared) if declared is not None else None)
        except RenderError as e:
            self._blocked = f"cannot render: {e}"
            return None

    def _roll_state(self, artefacts: Artefacts | None) -> UnitRoll:
        """This unit's part in the rolling apply: what it wants, has applied, has failed."""
        if artefacts is None:
            return UnitRoll()
        wanted = fingerprint(artefacts)
        rejected = self.host.rejected()
        failed = rejected.fingerprint if rejected else None
        return UnitRoll(
            wants=wanted,
            applied=wanted if self.host.is_applied(artefacts) else None,
            failed=failed,
            error=(rejected.reason[:200] if rejected else ""),
        )


if __name__ == "__main__":  # pragma: nocover
    ops.main(NetworkIsolationCharm)
