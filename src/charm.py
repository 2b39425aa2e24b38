#!/usr/bin/env python3
"""Juju glue: gather bindings, roles and config, hand them to the planner, report the result."""

from __future__ import annotations

import ipaddress
import json
import logging

import ops
import pydantic

from cluster import Cluster
from network_isolation.config import CharmConfig, ConfigError, config_error
from network_isolation.host import MachineRegistry, state_dir
from network_isolation.model import BUILTIN_ROLES, NETWORKS, Network
from network_isolation.peers import CloudView, MachineRecord
from network_isolation.planner import (
    InterfaceAddress,
    MachinePlan,
    NetworkView,
    PlanInput,
    plan_machine,
)
from network_isolation.report import machine_dict, machine_text

logger = logging.getLogger(__name__)

# Relating a principal over `<role>-node` gives this machine that role.
ROLE_ENDPOINTS = {f"{role}-node": role for role in BUILTIN_ROLES}


class NetworkIsolationCharm(ops.CharmBase):
    """Subordinate that derives a machine's network access from its node roles."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.registry = MachineRegistry(state_dir() / "units")
        self._views: dict[Network, NetworkView] | None = None
        self._warnings: list[str] = []
        reconcile_on = [
            self.on.install,
            self.on.config_changed,
            self.on.upgrade_charm,
            self.on.update_status,
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
        for event in reconcile_on:
            framework.observe(event, self._reconcile)
        framework.observe(self.on.remove, self._on_remove)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)
        framework.observe(self.on.show_plan_action, self._on_show_plan)

    # Events

    def _reconcile(self, _: ops.EventBase) -> None:
        """Record and publish what this unit brings, so every unit plans the same machine."""
        try:
            config = self._config()
        except ConfigError:
            self.registry.record(self.unit.name, self._related_roles())
            return  # reported by collect-status; nothing is changed
        self.registry.record(self.unit.name, self._related_roles() | config.roles)
        self._cluster(config).publish(
            MachineRecord(
                machine=self._machine_name(),
                roles=tuple(sorted(self._related_roles())),
                subnets={
                    net: tuple(sorted({i.address.network for i in view.interfaces}, key=str))
                    for net, view in self._network_views(CloudView()).items()
                    if view.interfaces
                },
            )
        )

    def _on_remove(self, _: ops.RemoveEvent) -> None:
        self.registry.forget(self.unit.name)

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        try:
            plan = self._plan()
        except ConfigError as e:
            event.add_status(ops.BlockedStatus(str(e)))
            return
        status = ops.ActiveStatus if plan.status == "active" else ops.BlockedStatus
        warning = f"; {self._warnings[0]}" if self._warnings else ""
        event.add_status(status(plan.message + warning))

    def _on_show_plan(self, event: ops.ActionEvent) -> None:
        try:
            plan = self._plan()
        except ConfigError as e:
            event.fail(str(e))
            return
        if event.params.get("format") == "json":
            event.set_results({"plan": json.dumps(machine_dict(plan), sort_keys=True)})
        else:
            event.set_results({"plan": machine_text(plan)})

    # Inputs

    def _config(self) -> CharmConfig:
        try:
            return self.load_config(CharmConfig, errors="raise")
        except pydantic.ValidationError as e:
            raise config_error(e) from None

    def _cluster(self, config: CharmConfig) -> Cluster:
        return Cluster(self, config.peer_min_prefix, self._warnings)

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

    def _plan(self) -> MachinePlan:
        """The machine's plan: this unit's and co-located units' roles, bindings, config."""
        config = self._config()
        roles = self._related_roles() | self.registry.roles_except(self.unit.name)
        return plan_machine(
            PlanInput(
                machine=self._machine_name(),
                roles=roles,
                networks=self._network_views(self._cluster(config).view()),
                config=config,
            )
        )


if __name__ == "__main__":  # pragma: nocover
    ops.main(NetworkIsolationCharm)
