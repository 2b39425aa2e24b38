"""A cloud read from MAAS, as the topology a topology file describes.

MAAS API 2.0 gives the machines (their tags and interfaces, each interface's links to subnets),
the subnets and the spaces; Sunbeam's `deployments.yaml` gives which space carries which
network. This module turns that JSON into the mapping a topology file holds and checks it with
the topology file's own checks, so that `plan` shows a MAAS cloud exactly as it shows the same
cloud written as a file.

Pure code: it reads the JSON and YAML it is given and no network; `maas_api` talks to MAAS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from .base import Received
from .model import NETWORK_NAMES, NETWORKS, Network
from .planner import InterfaceKind
from .topology import Topology, TopologyError, read_file, topology_from_dict, validation_error

# Sunbeam's MAAS role tags and the role each gives here: canonical/snap-openstack,
# sunbeam-python/sunbeam/provider/maas/deployment.py, `RoleTags`. Sunbeam takes a machine's
# roles from its `tag_names` (client.py, `_convert_raw_machine`); Juju endpoint names take
# dashes, hence `region-controller`.
SUNBEAM_ROLE_TAGS: Mapping[str, str] = {
    "control": "control",
    "compute": "compute",
    "storage": "storage",
    "network": "network",
    "juju-controller": "juju-controller",
    "sunbeam": "sunbeam",
    "region_controller": "region-controller",
}

# The netplan section MAAS writes each kind of interface in (API 2.0 interface `type`).
INTERFACE_KINDS: Mapping[str, InterfaceKind] = {
    "physical": "ethernets",
    "bond": "bonds",
    "vlan": "vlans",
    "bridge": "bridges",
}

# MAAS's name for the VLANs and subnets that are in no space.
NO_SPACE = "undefined"

# The tags are Sunbeam's, so is the role table, unless `--config role-table=...` says otherwise.
DEFAULT_CONFIG: Mapping[str, str] = {"role-table": "sunbeam"}


class MaasVlan(Received):
    """A VLAN as embedded in a subnet: since MAAS 2.4 a space holds VLANs."""

    space: str | None = None


class MaasSubnet(Received):
    """A subnet: its CIDR, its gateway and its space (the space of its VLAN)."""

    cidr: str
    gateway_ip: str | None = None
    space: str | None = None
    vlan: MaasVlan | None = None

    @property
    def space_name(self) -> str | None:
        """The subnet's space, None when it is in none."""
        name = self.space or (self.vlan.space if self.vlan else None)
        return None if name in (None, "", NO_SPACE) else name


class MaasLink(Received):
    """One address of an interface; `auto` links get theirs at deployment, `link_up` none."""

    mode: str = ""
    ip_address: str | None = None
    subnet: MaasSubnet | None = None

    def address(self) -> str | None:
        """The address with its subnet's prefix length, as a netplan file writes it."""
        if not self.ip_address:
            return None
        if self.subnet is None:
            return self.ip_address
        return f"{self.ip_address}/{self.subnet.cidr.rpartition('/')[2]}"


class MaasInterface(Received):
    """A machine's interface: its name, its kind and its links."""

    name: str
    type: str
    enabled: bool = True
    links: tuple[MaasLink, ...] = ()


class MaasMachine(Received):
    """A machine: its hostname, its tags and its interfaces."""

    hostname: str
    tag_names: tuple[str, ...] = ()
    interface_set: tuple[MaasInterface, ...] = ()

    def roles(self) -> list[str]:
        """The roles its Sunbeam role tags give, sorted."""
        return sorted({SUNBEAM_ROLE_TAGS[t] for t in self.tag_names if t in SUNBEAM_ROLE_TAGS})


class MaasSpace(Received):
    """A space; MAAS lists the subnets in no space under a space named `undefined`."""

    name: str


class MaasCloud(Received):
    """What `plan` reads from MAAS: `machines read`, `subnets read` and `spaces read`.

    A saved dump (`--maas-json`) is one JSON object with these three keys, each holding what
    MAAS answered.
    """

    machines: tuple[MaasMachine, ...]
    subnets: tuple[MaasSubnet, ...]
    spaces: tuple[MaasSpace, ...]


class SunbeamDeployment(Received):
    """One deployment of Sunbeam's `deployments.yaml` (its `MaasDeployment`, in part).

    canonical/snap-openstack, sunbeam-python/sunbeam/provider/maas/deployment.py: a MAAS
    deployment has `type: maas` and `network_mapping` (network to space, None when unmapped);
    its machines carry the tag `openstack-<name>` (`resource_tag`).
    """

    name: str
    type: str
    network_mapping: dict[str, str | None] = {}

    @property
    def resource_tag(self) -> str:
        """The tag Sunbeam puts on every machine of the deployment."""
        return f"openstack-{self.name}"


class SunbeamDeployments(Received):
    """Sunbeam's `deployments.yaml` (sunbeam-python/sunbeam/core/deployments.py)."""

    active: str | None = None
    deployments: tuple[SunbeamDeployment, ...] = ()


_Model = TypeVar("_Model", bound=pydantic.BaseModel)


def _validated(model: type[_Model], raw: Any, source: str) -> _Model:
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as e:
        raise validation_error(source, e) from None


def cloud_from_json(raw: Any, source: str) -> MaasCloud:
    """The three collections, checked for the fields `plan` reads."""
    if not isinstance(raw, dict):
        raise TopologyError(source, "", "expected an object with machines, subnets and spaces")
    return _validated(MaasCloud, raw, source)


def load_dump(path: Path) -> MaasCloud:
    """Read a saved MAAS dump (`--maas-json`)."""
    return cloud_from_json(read_file(path, json.loads), str(path))


def active_deployment(raw: Any, source: str) -> SunbeamDeployment:
    """The active deployment of a `deployments.yaml`, which must be a MAAS one."""
    deployments = _validated(SunbeamDeployments, raw or {}, source)
    found = [d for d in deployments.deployments if d.name == deployments.active]
    if deployments.active is None or not found:
        raise TopologyError(source, "active", "no active deployment")
    if found[0].type != "maas":
        raise TopologyError(
            source, "active", f"deployment '{found[0].name}' is not a MAAS deployment"
        )
    return found[0]


def load_deployment(path: Path) -> SunbeamDeployment:
    """Read Sunbeam's `deployments.yaml` and return its active MAAS deployment."""
    return active_deployment(read_file(path, yaml.safe_load), str(path))


def _network(name: str, source: str, where: str) -> Network:
    if name not in NETWORK_NAMES:
        known = ", ".join(NETWORK_NAMES)
        raise TopologyError(source, where, f"unknown network '{name}' (known: {known})")
    return Network(name)


def deployment_space_map(deployment: SunbeamDeployment, source: str) -> dict[Network, str]:
    """The networks the deployment maps to a space (unmapped ones are left out)."""
    return {
        _network(name, source, f"network_mapping.{name}"): space
        for name, space in deployment.network_mapping.items()
        if space
    }


def _pairs(entries: Iterable[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for entry in entries:
        key, sign, value = entry.partition("=")
        if not sign or not key.strip() or not value.strip():
            raise TopologyError(option, "", f"expected NAME=VALUE, got '{entry}'")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_space_map(items: Iterable[str]) -> dict[Network, str]:
    """`--space-map network=space,...` (repeatable): each network must be one of the six."""
    option = "--space-map"
    entries = [e for item in items for e in item.split(",")]
    return {_network(name, option, ""): space for name, space in _pairs(entries, option).items()}


def parse_config(items: Iterable[str]) -> dict[str, str]:
    """`--config option=value` (repeatable; a value may hold commas), as `juju config` takes."""
    return _pairs(items, "--config")


def _spaces(cloud: MaasCloud) -> dict[str, dict[str, Any]]:
    """Each space's subnets and their gateways, in the topology file's form."""
    spaces: dict[str, dict[str, Any]] = {
        s.name: {"subnets": [], "gateway": {}} for s in cloud.spaces if s.name != NO_SPACE
    }
    for subnet in cloud.subnets:
        name = subnet.space_name
        if name is None:
            continue
        space = spaces.setdefault(name, {"subnets": [], "gateway": {}})
        space["subnets"].append(subnet.cidr)
        if subnet.gateway_ip:
            space["gateway"][subnet.cidr] = subnet.gateway_ip
    return spaces


def _bindings(
    space_map: Mapping[Network, str], spaces: Mapping[str, Any], source: str
) -> dict[str, str]:
    """Every network's space; a network without one, or on a space MAAS lacks, is refused."""
    for network in NETWORKS:
        space = space_map.get(network)
        if space is None:
            raise TopologyError(
                source,
                "",
                f"network '{network}' maps to no space (map it with --space-map"
                f" {network}=SPACE or `sunbeam deployment space map`)",
            )
        if space not in spaces:
            known = ", ".join(sorted(spaces)) or "none"
            raise TopologyError(
                source,
                "",
                f"network '{network}' maps to space '{space}', which MAAS does not have"
                f" (its spaces: {known})",
            )
    return {n.value: space_map[n] for n in NETWORKS}


def _machine(machine: MaasMachine, source: str) -> dict[str, Any]:
    """A machine in the topology file's form: its roles and its interfaces."""
    roles = machine.roles()
    if not roles:
        tags = ", ".join(SUNBEAM_ROLE_TAGS)
        raise TopologyError(
            source, f"machines.{machine.hostname}", f"no role tag (Sunbeam's role tags: {tags})"
        )
    interfaces = {
        nic.name: {
            "addresses": [a for a in (link.address() for link in nic.links) if a],
            "type": INTERFACE_KINDS[nic.type],
        }
        for nic in machine.interface_set
        if nic.enabled and nic.type in INTERFACE_KINDS
    }
    return {"roles": roles, "interfaces": interfaces}


def topology_from_maas(
    cloud: MaasCloud,
    source: str,
    space_map: Mapping[Network, str],
    config: Mapping[str, str] | None = None,
    resource_tag: str | None = None,
) -> Topology:
    """The topology of a MAAS cloud, checked as a topology file is.

    Only the machines tagged `resource_tag` are taken (Sunbeam's deployment tag), when given.
    MAAS does not know the principals, so the machines list none.
    """
    machines = sorted(
        (m for m in cloud.machines if resource_tag is None or resource_tag in m.tag_names),
        key=lambda m: m.hostname,
    )
    if not machines:
        tagged = f" tagged '{resource_tag}'" if resource_tag else ""
        raise TopologyError(source, "machines", f"no machine{tagged}")
    spaces = _spaces(cloud)
    raw = {
        "spaces": spaces,
        "bindings": _bindings(space_map, spaces, source),
        "config": {**DEFAULT_CONFIG, **(config or {})},
        "machines": {m.hostname: _machine(m, source) for m in machines},
    }
    return topology_from_dict(raw, source)
