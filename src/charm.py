#!/usr/bin/env python3
"""Juju glue: gather bindings, roles and config, hand them to the planner, report the result."""

from __future__ import annotations

import ipaddress
import json
import logging

import ops
import pydantic

from network_isolation.config import CharmConfig, ConfigError, config_error
from network_isolation.host import MachineRegistry, state_dir
from network_isolation.model import BUILTIN_ROLES, NETWORKS, Network
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
        reconcile_on = [
            self.on.install,
            self.on.config_changed,
            self.on.upgrade_charm,
            self.on.update_status,
            self.on.leader_elected,
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

    def _reconcile(self, _: ops.EventBase) -> None:
        """Record this unit's roles so co-located units plan for the same union."""
        self.registry.record(self.unit.name, self._related_roles())

    def _on_remove(self, _: ops.RemoveEvent) -> None:
        self.registry.forget(self.unit.name)

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        try:
            plan = self._plan()
        except ConfigError as e:
            event.add_status(ops.BlockedStatus(str(e)))
            return
        status = ops.ActiveStatus if plan.status == "active" else ops.BlockedStatus
        event.add_status(status(plan.message))

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

    def _config(self) -> CharmConfig:
        try:
            return self.load_config(CharmConfig, errors="raise")
        except pydantic.ValidationError as e:
            raise config_error(e) from None

    def _related_roles(self) -> frozenset[str]:
        """Roles given by principals related on this machine (skipping other machines')."""
        return frozenset(
            role
            for endpoint, role in ROLE_ENDPOINTS.items()
            if any(relation.units for relation in self.model.relations[endpoint])
        )

    def _network_view(self, network: Network) -> NetworkView:
        """This machine's addresses on a network, from Juju's binding (`network-get`)."""
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
                if i.address and i.subnet
            )
        )

    def _plan(self) -> MachinePlan:
        """The machine's plan: this unit's and co-located units' roles, bindings, config."""
        roles = self._related_roles() | self.registry.roles_except(self.unit.name)
        machine_id = ops.JujuContext.from_environ().machine_id
        return plan_machine(
            PlanInput(
                machine=f"machine-{machine_id}" if machine_id else self.unit.name,
                roles=roles,
                networks={net: self._network_view(net) for net in NETWORKS},
                config=self._config(),
            )
        )


if __name__ == "__main__":  # pragma: nocover
    ops.main(NetworkIsolationCharm)
