"""A MAAS cloud described in a file, seen machine by machine as the charm would see it.

The file gives MAAS's subnet:space mapping, the space:network bindings, the charm's config and
each machine's roles and interfaces. For each machine it yields the same `PlanInput` that the
charm builds from Juju's `network-get`, so both share one planner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .base import IPNetwork
from .config import CharmConfig, ConfigError, parse_cidr
from .model import NETWORKS, Network
from .planner import (
    InterfaceAddress,
    InterfaceKind,
    IPAddress,
    IPInterface,
    Isolation,
    NetworkView,
    PlanInput,
    client_overlaps,
    isolation_of,
)

INTERFACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,14}$")
# Space and machine names reach the rendered files (comments) and, for machines, the names of
# directories: letters, digits and `_.-`, as MAAS and Juju name them.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _check_names(names: Any, what: str) -> None:
    for name in names:
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(
                f"{name!r} is not a valid {what} name (letters, digits and _.- only,"
                " at most 63 characters)"
            )


class TopologyError(ValueError):
    """A topology file that cannot describe a cloud: where, and what is wrong."""

    def __init__(self, source: str, where: str, problem: str):
        self.source, self.where, self.problem = source, where, problem
        super().__init__(f"{source}: {where}: {problem}" if where else f"{source}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Space(_Strict):
    """A MAAS space: its subnets and, optionally, each subnet's gateway."""

    subnets: tuple[IPNetwork, ...]
    gateway: dict[IPNetwork, IPAddress] = {}

    @field_validator("subnets", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(parse_cidr(str(v)) for v in value)
        return value

    @model_validator(mode="after")
    def _gateways_inside(self) -> Space:
        for subnet, gateway in self.gateway.items():
            if subnet not in self.subnets:
                raise ValueError(f"gateway for {subnet}, which is not a subnet of this space")
            if gateway not in subnet:
                raise ValueError(f"gateway {gateway} is outside its subnet {subnet}")
        return self


class HostInterface(_Strict):
    """A NIC as MAAS configured it: its addresses and its netplan section."""

    addresses: tuple[IPInterface, ...]
    type: InterfaceKind = "ethernets"


class Machine(_Strict):
    """One host: the roles and application names of its related principals, its interfaces."""

    roles: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    interfaces: dict[str, HostInterface] = {}

    @field_validator("interfaces", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for name in value:
            if not isinstance(name, str) or not INTERFACE_NAME.match(name):
                raise ValueError(f"'{name}' is not a valid interface name (at most 15 characters)")
        return {k: {"addresses": v} if isinstance(v, list) else v for k, v in value.items()}


class Topology(_Strict):
    """A whole cloud: spaces, bindings, config and machines."""

    spaces: dict[str, Space]
    default_space: str | None = Field(default=None, alias="default-space")
    bindings: dict[Network, str] = {}
    config: dict[str, str | bool | int] = {}
    machines: dict[str, Machine]

    @field_validator("spaces", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        _check_names(value, "space")
        return {k: {"subnets": v} if isinstance(v, list) else v for k, v in value.items()}

    @field_validator("machines", mode="before")
    @classmethod
    def _machine_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            _check_names(value, "machine")
        return value

    @model_validator(mode="after")
    def _bindings_resolve(self) -> Topology:
        for space in [self.default_space, *self.bindings.values()]:
            if space is not None and space not in self.spaces:
                raise ValueError(f"space '{space}' is bound but not defined under 'spaces'")
        unbound = [n.value for n in NETWORKS if n not in self.bindings]
        if unbound and self.default_space is None:
            raise ValueError(f"networks {', '.join(unbound)} have no binding and no default-space")
        return self

    def space_of(self, network: Network) -> str:
        """The space a network is bound to (its own binding, else the default space)."""
        space = self.bindings.get(network, self.default_space)
        assert space is not None  # checked by _bindings_resolve
        return space

    def charm_config(self) -> CharmConfig:
        """The charm config the file sets, parsed exactly as the charm parses `juju config`."""
        return CharmConfig.from_options(self.config)

    def subnets(self) -> dict[Network, tuple[IPNetwork, ...]]:
        """Each network's subnets cloud-wide: its space's, plus `network-cidrs`."""
        config = self.charm_config()
        return {
            n: tuple(self.spaces[self.space_of(n)].subnets) + config.network_cidrs.get(n, ())
            for n in NETWORKS
        }

    def isolation(self) -> Isolation:
        """The cloud's degree of isolation, from the bindings alone."""
        return isolation_of(self.subnets())

    def plan_input(self, name: str) -> PlanInput:
        """What the charm on this machine would see: `network-get` for every binding."""
        machine = self.machines[name]
        networks: dict[Network, NetworkView] = {}
        for net in NETWORKS:
            space_name = self.space_of(net)
            space = self.spaces[space_name]
            local = tuple(
                InterfaceAddress(name=nic, address=address)
                for nic, spec in machine.interfaces.items()
                for address in spec.addresses
                if any(address.ip in subnet for subnet in space.subnets)
            )
            networks[net] = NetworkView(
                interfaces=local, subnets=space.subnets, space=space_name, gateways=space.gateway
            )
        return PlanInput(
            machine=name,
            roles=frozenset(machine.roles),
            networks=networks,
            config=self.charm_config(),
            interface_kinds={nic: spec.type for nic, spec in machine.interfaces.items()},
            principals=frozenset(machine.principals),
        )


def _is_place(part: str | int) -> bool:
    """Keys and indexes of the file, not pydantic's names for union members and validators."""
    return isinstance(part, int) or not any(c in part for c in "[](")


def load_topology(path: Path) -> Topology:
    """Read and check a topology file; every problem is a TopologyError naming the place."""
    return topology_from_dict(read_file(path, yaml.safe_load), str(path))


def read_file(path: Path, parse: Callable[[str], Any]) -> Any:
    """A file's text parsed (YAML, JSON); unreadable or invalid: a TopologyError naming it."""
    source = str(path)
    try:
        return parse(path.read_text())
    except OSError as e:
        raise TopologyError(source, "", e.strerror or str(e)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TopologyError(
            source, where, f"not valid YAML ({getattr(e, 'problem', e)})"
        ) from None
    except json.JSONDecodeError as e:
        raise TopologyError(source, f"line {e.lineno}", f"not valid JSON ({e.msg})") from None


def topology_from_dict(raw: Any, source: str) -> Topology:
    """Check a cloud given as the file's mapping, whichever way it was read (file or MAAS)."""
    if not isinstance(raw, dict):
        raise TopologyError(source, "", "expected a mapping with spaces, bindings and machines")
    try:
        topology = Topology.model_validate(raw)
    except pydantic.ValidationError as e:
        raise validation_error(source, e) from None
    _check_config(source, topology)
    return topology


def validation_error(source: str, error: pydantic.ValidationError) -> TopologyError:
    """The first problem pydantic found in a source's data, at its place in that data."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if _is_place(p))
    problem = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        problem = "unknown key"
    return TopologyError(source, where, problem)


def _check_config(source: str, topology: Topology) -> None:
    """The config as the charm reads it, against the file's spaces and machines."""
    try:
        config = topology.charm_config()
    except ConfigError as e:
        raise TopologyError(source, f"config.{e.option}", e.problem) from None
    clients = client_overlaps(topology.subnets(), config)
    if clients:
        raise TopologyError(source, f"config.{clients[0].option}", clients[0].problem)
    known = ", ".join(sorted(config.networks_by_role))
    for name, machine in topology.machines.items():
        for role in machine.roles:
            if role not in config.networks_by_role:
                raise TopologyError(
                    source,
                    f"machines.{name}.roles",
                    f"unknown role '{role}' in role table '{config.role_table}' (known: {known})",
                )
