"""The charm's configuration, parsed and checked once for the charm and the `plan` command.

Option values follow the shape of `juju deploy --bind`: whitespace-separated entries, each
`key=value[,value...]`. Every problem is reported against the option's own (dashed) name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from .base import Enforcement, IPNetwork
from .model import DEFAULT_ROLE_TABLE, NETWORK_NAMES, ROLE_TABLES, Network, role_table
from .rollout import Schedule

ROLE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
# A Juju application name: lowercase words of letters and digits joined by dashes, each word
# after the first holding a letter (so `-2` cannot be mistaken for a unit number).
APPLICATION_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]*[a-z][a-z0-9]*)*$")
PORT_ENTRY = re.compile(r"^(tcp|udp):(\d{1,5})(?:-(\d{1,5}))?$")
SSH_PORT = 22  # the firewall keeps it open on every machine, as a failsafe
T = TypeVar("T")


class ConfigError(ValueError):
    """One invalid option, with a message fit for a blocked status or a CLI error."""

    def __init__(self, option: str, problem: str):
        self.option = option
        self.problem = problem
        super().__init__(f"invalid config '{option}': {problem}")


def parse_cidr(text: str) -> IPNetwork:
    """A subnet in CIDR form; host bits must be clear and the prefix must not be /0."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise ValueError(f"'{text}' is not a subnet in CIDR form ({e})") from None
    if net.prefixlen == 0:
        raise ValueError(f"'{text}' covers every address; name the real subnets")
    return net


def _entries(text: str) -> list[tuple[str, list[str]]]:
    """Split `key=a,b key2=c` into [(key, [a, b]), (key2, [c])], refusing repeated keys."""
    seen: set[str] = set()
    entries: list[tuple[str, list[str]]] = []
    for entry in text.split():
        key, sep, values = entry.partition("=")
        if not sep or not key:
            raise ValueError(f"'{entry}' is not of the form key=value[,value...]")
        if key in seen:
            raise ValueError(f"'{key}' is given twice")
        seen.add(key)
        items = [v for v in values.split(",") if v]
        if not items:
            raise ValueError(f"'{entry}' lists no values")
        entries.append((key, items))
    return entries


def _network(name: str, where: str) -> Network:
    if name not in NETWORK_NAMES:
        raise ValueError(
            f"unknown network '{name}' in '{where}' (networks: {', '.join(NETWORK_NAMES)})"
        )
    return Network(name)


def _per_network(text: str, parse: Callable[[str], T]) -> dict[Network, tuple[T, ...]]:
    """`network=a,b network2=c`, each value parsed, keyed by network."""
    return {
        _network(name, f"{name}={','.join(items)}"): tuple(parse(i) for i in items)
        for name, items in _entries(text)
    }


def parse_port_range(text: str) -> tuple[str, int, int]:
    """`tcp:5672` or `udp:6800-7300` as (protocol, first, last)."""
    match = PORT_ENTRY.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a port of the form tcp:N, udp:N or tcp:N-M")
    proto, first, last = match.group(1), int(match.group(2)), int(match.group(3) or match.group(2))
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"'{text}' is not a port range within 1-65535")
    return proto, first, last


def _management_service(port: int) -> str | None:
    """The port catalogue's service on this TCP port of the management network, any role."""
    from .ports import SERVICES, PortRange  # ports imports this module

    for entry in SERVICES:
        for taken in (PortRange.parse(p) for p in entry.ports):
            if (
                entry.network is Network.MANAGEMENT
                and taken.protocol == "tcp"
                and taken.first <= port <= taken.last
            ):
                return f"{entry.service}, {taken}"
    return None


def _covered_addresses(subnets: Sequence[IPNetwork]) -> dict[int, int]:
    """How many addresses of each IP version the subnets cover, overlaps counted once."""
    v4 = ipaddress.collapse_addresses(s for s in subnets if isinstance(s, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(s for s in subnets if isinstance(s, ipaddress.IPv6Network))
    return {4: sum(n.num_addresses for n in v4), 6: sum(n.num_addresses for n in v6)}


def _power_of_two(count: int) -> str:
    """`2^31`, or `over 2^24` for a count between powers: short enough for a status line."""
    exponent = count.bit_length() - 1
    return f"2^{exponent}" if count == 1 << exponent else f"over 2^{exponent}"


class CharmConfig(BaseModel):
    """Every option of the charm, parsed into the structures the planner uses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # role_table and role_networks come first: checking `roles` needs the rows they define.
    role_table: str = DEFAULT_ROLE_TABLE
    role_networks: dict[str, frozenset[Network]] = {}
    roles: frozenset[str] = frozenset()
    network_cidrs: dict[Network, tuple[IPNetwork, ...]] = {}
    # The size bounds come before client_cidrs: checking `client-cidrs` needs them. Never
    # below /2, so no setting lets two /1s (all of a family) through.
    client_cidrs_max_size_v4: int = pydantic.Field(default=8, ge=2, le=32)
    client_cidrs_max_size_v6: int = pydantic.Field(default=32, ge=2, le=128)
    client_cidrs: tuple[IPNetwork, ...] = ()
    enforcement: Enforcement = "enforce"
    strict_ports: pydantic.StrictBool = False
    extra_ports: dict[Network, tuple[tuple[str, int, int], ...]] = {}
    # application -> networks the role table denies it that the operator accepts losing
    accept_denials: dict[str, frozenset[Network]] = {}
    manage_routing: pydantic.StrictBool = True
    # the exporter's TCP port on the management address; 0: no exporter
    metrics_port: int = pydantic.Field(default=9479, ge=0, le=65535)
    peer_min_prefix_v4: int = pydantic.Field(default=16, ge=1, le=32)
    peer_min_prefix_v6: int = pydantic.Field(default=48, ge=1, le=128)
    rolling_wave_size: str = "25%"
    rolling_wave_timeout: int = pydantic.Field(default=900, ge=60, le=86400)
    rolling_canary_window: int = pydantic.Field(default=300, ge=30, le=3600)
    rolling_canary_threshold: int = pydantic.Field(default=20, ge=0, le=1_000_000)

    @property
    def peer_min_prefix(self) -> dict[int, int]:
        """The narrowest-allowed prefix of subnets learnt from peers, per IP version."""
        return {4: self.peer_min_prefix_v4, 6: self.peer_min_prefix_v6}

    @property
    def schedule(self) -> Schedule:
        """The rolling apply's wave sizes and timeout."""
        return Schedule.parse(
            self.rolling_wave_size,
            self.rolling_wave_timeout,
            self.rolling_canary_threshold,
            self.networks_by_role,
        ).with_timing(canary_window=self.rolling_canary_window, hook_interval=0)

    @field_validator("metrics_port")
    @classmethod
    def _check_metrics_port(cls, value: int) -> int:
        """Not a port a management service of the cloud listens on: the two would clash."""
        if value == SSH_PORT:
            raise ValueError(
                f"{value} is SSH's port, which the firewall keeps open on every machine: choose"
                " another (the default is 9479)"
            )
        service = _management_service(value)
        if service:
            raise ValueError(
                f"{value} is taken on the management network by {service}: choose another (the"
                " default is 9479)"
            )
        return value

    @field_validator("rolling_wave_size")
    @classmethod
    def _check_wave_size(cls, value: str) -> str:
        Schedule.parse(value, timeout=0)
        return value

    @field_validator("rolling_canary_window")
    @classmethod
    def _check_canary_window(cls, value: int, info: ValidationInfo) -> int:
        timeout = info.data.get("rolling_wave_timeout")
        if timeout is not None and value >= timeout:
            raise ValueError(
                f"{value} s is not shorter than rolling-wave-timeout ({timeout} s): the"
                " canary's wave would time out before its counters are judged"
            )
        return value

    @field_validator("roles", mode="before")
    @classmethod
    def _parse_roles(cls, value: Any, info: ValidationInfo) -> Any:
        roles = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(roles, (list, tuple, set, frozenset)):
            return value
        preset = ROLE_TABLES.get(info.data.get("role_table", DEFAULT_ROLE_TABLE), {})
        known = set(preset) | set(info.data.get("role_networks", {}))
        for role in roles:
            if role not in known:
                raise ValueError(
                    f"unknown role '{role}' (known: {', '.join(sorted(known))};"
                    " define custom roles in 'role-networks')"
                )
        return frozenset(roles)

    @field_validator("role_table", mode="before")
    @classmethod
    def _parse_role_table(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() not in ROLE_TABLES:
            raise ValueError(f"unknown role table '{value}' (tables: {', '.join(ROLE_TABLES)})")
        return value.strip() if isinstance(value, str) else value

    @field_validator("role_networks", mode="before")
    @classmethod
    def _parse_role_networks(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        table: dict[str, frozenset[Network]] = {}
        for role, names in _entries(value):
            if not ROLE_NAME.match(role):
                raise ValueError(f"'{role}' is not a valid role name")
            table[role] = frozenset(_network(n, f"{role}={','.join(names)}") for n in names)
            if Network.MANAGEMENT not in table[role]:
                raise ValueError(
                    f"role '{role}' must include management: Juju and operators reach every"
                    " machine over it"
                )
        return table

    @field_validator("network_cidrs", mode="before")
    @classmethod
    def _parse_network_cidrs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return _per_network(value, parse_cidr)

    @field_validator("client_cidrs", mode="before")
    @classmethod
    def _parse_client_cidrs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return tuple(parse_cidr(c) for c in value.replace(",", " ").split())

    @field_validator("client_cidrs")
    @classmethod
    def _check_client_cidrs_size(
        cls, value: tuple[IPNetwork, ...], info: ValidationInfo
    ) -> tuple[IPNetwork, ...]:
        """Bound what the entries cover together, however the ranges are spelt.

        The tcp/22 failsafe accepts client-cidrs on every interface before any drop.
        """
        for version, total in _covered_addresses(value).items():
            bound = info.data.get(f"client_cidrs_max_size_v{version}")
            if bound is None:  # the bound itself is invalid and reported on its own name
                continue
            bits = 32 if version == 4 else 128
            if total > 2 ** (bits - bound):
                raise ValueError(
                    f"together they cover {_power_of_two(total)} IPv{version} addresses, more"
                    f" than one /{bound} (client-cidrs-max-size-v{version}): list only the"
                    " clients' own subnets"
                )
        return value

    @field_validator("extra_ports", mode="before")
    @classmethod
    def _parse_extra_ports(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return _per_network(value, parse_port_range)

    @field_validator("accept_denials", mode="before")
    @classmethod
    def _parse_accept_denials(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        accepted: dict[str, frozenset[Network]] = {}
        for app, names in _entries(value):
            if not APPLICATION_NAME.match(app):
                raise ValueError(f"'{app}' is not a valid application name")
            accepted[app] = frozenset(_network(n, f"{app}={','.join(names)}") for n in names)
        return accepted

    @property
    def networks_by_role(self) -> dict[str, frozenset[Network]]:
        """The `role-table` preset with the `role-networks` overrides applied."""
        return role_table(self.role_networks, self.role_table)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CharmConfig:
        """Parse options keyed by their Juju names (dashes), raising ConfigError."""
        try:
            return cls.model_validate({k.replace("-", "_"): v for k, v in options.items()})
        except pydantic.ValidationError as e:
            raise config_error(e) from None


def config_error(error: pydantic.ValidationError) -> ConfigError:
    """The first problem of a validation error, named by the option's Juju name."""
    first = error.errors()[0]
    option = str(first["loc"][0]).replace("_", "-") if first["loc"] else "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "not an option of this charm"
    return ConfigError(option, message)
