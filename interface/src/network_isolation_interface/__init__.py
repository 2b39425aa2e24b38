"""The `network-isolation` interface: principals declare the ports their services listen on.

A principal charm (control, compute, storage, ...) tells the `network-isolation` subordinate on
its machine "I listen on tcp/5672 on the internal network", so that with `strict-ports` the
subordinate's firewall accepts exactly those ports inside each cloud network.

The relation is container-scoped: the principal writes its own unit databag and only the
subordinate unit on the same machine reads it. The data is two keys, each JSON-encoded (as
`ops.Relation.save` writes them):

- `version`: the interface's major version, an integer (`LIBAPI`);
- `ports`: a list of `{"network": ..., "protocol": "tcp"|"udp", "port": N,
  "description": ...}`, where a range of ports is given as `"range": [first, last]` instead of
  `port`.

Within a major version, changes only add optional keys, which older readers ignore. A reader
that meets a newer major version reports it and reads nothing.

The requirer treats everything it reads as untrusted: it validates each entry, caps their
number and never raises out of a hook; it returns the valid declarations and a list of problems.

The package depends only on `ops` and `pydantic`; it is the `network-isolation-interface`
distribution (README.md at the top of the package's project).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import ops
import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from ._version import __version__

__all__ = [
    "DEFAULT_PROVIDER_ENDPOINT",
    "DEFAULT_REQUIRER_ENDPOINT",
    "INTERFACE",
    "LIBAPI",
    "LIBPATCH",
    "MAX_ENTRIES",
    "NETWORKS",
    "Declarations",
    "NetworkIsolationData",
    "NetworkIsolationProvider",
    "NetworkIsolationRequirer",
    "PortDeclaration",
    "PortsChangedEvent",
    "__version__",
    "parse_databag",
]

LIBAPI = 1
"""Major version of the interface: a reader refuses data of a newer major version."""
LIBPATCH = 0
"""Compatible revisions within the major version (the distribution's minor version)."""

INTERFACE = "network-isolation"
DEFAULT_PROVIDER_ENDPOINT = "network-isolation"
DEFAULT_REQUIRER_ENDPOINT = "service-ports"

NETWORKS: tuple[str, ...] = (
    "data",
    "internal",
    "management",
    "public",
    "storage",
    "storage-cluster",
)
"""The MicroStack cloud networks a port can be declared on."""

MAX_ENTRIES = 256
"""The most declarations read from one unit; the rest are reported and ignored."""
MAX_RAW_BYTES = 64 * 1024
"""A `ports` value longer than this is not even parsed."""
MAX_DESCRIPTION = 200

VERSION_KEY = "version"
PORTS_KEY = "ports"

logger = logging.getLogger(__name__)


class PortDeclaration(BaseModel):
    """One port, or range of ports, that a service listens on in one cloud network."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    network: str
    protocol: Literal["tcp", "udp"]
    port: StrictInt | None = None
    port_range: tuple[StrictInt, StrictInt] | None = Field(default=None, alias="range")
    description: str = Field(default="", max_length=MAX_DESCRIPTION)

    @field_validator("network")
    @classmethod
    def _known_network(cls, value: str) -> str:
        if value not in NETWORKS:
            raise ValueError(f"unknown network {value!r} (networks: {', '.join(NETWORKS)})")
        return value

    @model_validator(mode="after")
    def _one_port_or_range(self) -> PortDeclaration:
        if (self.port is None) == (self.port_range is None):
            raise ValueError("give exactly one of 'port' and 'range'")
        first, last = self.first, self.last
        for port in (first, last):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not in 1-65535")
        if last < first:
            raise ValueError(f"range {first}-{last} ends before it starts")
        return self

    @property
    def first(self) -> int:
        """The first port (the port itself when it is a single port)."""
        return self.port if self.port is not None else (self.port_range or (0, 0))[0]

    @property
    def last(self) -> int:
        """The last port (the port itself when it is a single port)."""
        return self.port if self.port is not None else (self.port_range or (0, 0))[1]

    @property
    def triple(self) -> tuple[str, int, int]:
        """(protocol, first, last)."""
        return (self.protocol, self.first, self.last)

    def __str__(self) -> str:
        ports = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.network}:{self.protocol}:{ports}"

    @classmethod
    def tcp(
        cls, network: str, port: int, last: int | None = None, description: str = ""
    ) -> PortDeclaration:
        """A TCP port, or the range port..last, on a network."""
        return cls._make(network, "tcp", port, last, description)

    @classmethod
    def udp(
        cls, network: str, port: int, last: int | None = None, description: str = ""
    ) -> PortDeclaration:
        """A UDP port, or the range port..last, on a network."""
        return cls._make(network, "udp", port, last, description)

    @classmethod
    def _make(
        cls, network: str, protocol: str, port: int, last: int | None, description: str
    ) -> PortDeclaration:
        data: dict[str, Any] = {
            "network": network,
            "protocol": protocol,
            "description": description,
        }
        if last is None or last == port:
            data["port"] = port
        else:
            data["range"] = (port, last)
        return cls.model_validate(data)

    def to_json_dict(self) -> dict[str, Any]:
        """The entry as written in the databag: only the keys that are set."""
        data: dict[str, Any] = {"network": self.network, "protocol": self.protocol}
        if self.port is not None:
            data["port"] = self.port
        else:
            data["range"] = list(self.port_range or ())
        if self.description:
            data["description"] = self.description
        return data


class NetworkIsolationData(BaseModel):
    """The whole unit databag of a principal on this interface."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: StrictInt = LIBAPI
    ports: tuple[PortDeclaration, ...] = ()

    def dump(self) -> dict[str, str]:
        """The databag content: each field JSON-encoded, canonically (sorted and unique)."""
        entries = sorted(
            {
                json.dumps(p.to_json_dict(), sort_keys=True, separators=(",", ":"))
                for p in self.ports
            }
        )
        return {VERSION_KEY: json.dumps(self.version), PORTS_KEY: "[" + ",".join(entries) + "]"}


@dataclass(frozen=True)
class Declarations:
    """What the principals on this machine declared: the valid entries and what was wrong."""

    ports: tuple[PortDeclaration, ...] = ()
    problems: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default=())
    """The units whose data was read (with or without problems)."""

    def by_network(self) -> dict[str, tuple[tuple[str, int, int], ...]]:
        """Declared (protocol, first, last) per network name, sorted and unique."""
        result: dict[str, set[tuple[str, int, int]]] = {}
        for port in self.ports:
            result.setdefault(port.network, set()).add(port.triple)
        return {net: tuple(sorted(triples)) for net, triples in sorted(result.items())}


class PortsChangedEvent(ops.EventBase):
    """The declarations of a principal on this machine may have changed."""


class NetworkIsolationRequirerEvents(ops.ObjectEvents):
    """Events of the requirer."""

    ports_changed = ops.EventSource(PortsChangedEvent)


PortsSource = Iterable[PortDeclaration] | Callable[[], Iterable[PortDeclaration]]


class NetworkIsolationProvider(ops.Object):
    """The principal's side: publish the ports this unit's services listen on.

    Either pass `ports` (a list, or a callable returning one, called on each publish) and let
    the provider publish them whenever a relation on the endpoint is created or changes, or call
    `declare()` yourself, for example from your config-changed handler.
    """

    def __init__(
        self,
        charm: ops.CharmBase,
        endpoint: str = DEFAULT_PROVIDER_ENDPOINT,
        ports: PortsSource | None = None,
    ):
        super().__init__(charm, f"{INTERFACE}-provider-{endpoint}")
        self._charm = charm
        self._endpoint = endpoint
        self._ports = ports
        if ports is not None:
            on = charm.on[endpoint]
            events = (
                on.relation_created,
                on.relation_joined,
                charm.on.config_changed,
                charm.on.upgrade_charm,
            )
            for event in events:
                self.framework.observe(event, self._publish)

    def _publish(self, _: ops.EventBase) -> None:
        ports = self._ports() if callable(self._ports) else self._ports
        self.declare(ports or ())

    def declare(self, ports: Iterable[PortDeclaration]) -> bool:
        """Write the declarations to every relation on the endpoint; True if anything changed.

        Unchanged data is not written again. Raises ValueError on more than MAX_ENTRIES
        entries, as the requirer would drop the rest.
        """
        data = NetworkIsolationData(ports=tuple(ports))
        if len({str(p) for p in data.ports}) > MAX_ENTRIES:
            raise ValueError(f"more than {MAX_ENTRIES} port declarations")
        content = data.dump()
        changed = False
        for relation in self._charm.model.relations[self._endpoint]:
            bag = relation.data[self._charm.unit]
            for key, value in content.items():
                if bag.get(key) != value:
                    bag[key] = value
                    changed = True
        return changed


class NetworkIsolationRequirer(ops.Object):
    """The subordinate's side: read what the principal on this machine declared.

    `declarations()` never raises: malformed data becomes a problem in the result. Observe
    `on.ports_changed` (emitted on the endpoint's relation-changed, -departed and -broken) or
    the endpoint's own relation events, not both.
    """

    on = NetworkIsolationRequirerEvents()

    def __init__(self, charm: ops.CharmBase, endpoint: str = DEFAULT_REQUIRER_ENDPOINT):
        super().__init__(charm, f"{INTERFACE}-requirer-{endpoint}")
        self._charm = charm
        self._endpoint = endpoint
        on = charm.on[endpoint]
        for event in (on.relation_changed, on.relation_departed, on.relation_broken):
            self.framework.observe(event, self._on_relation_event)

    def _on_relation_event(self, _: ops.RelationEvent) -> None:
        self.on.ports_changed.emit()

    def declarations(self) -> Declarations:
        """The valid declarations of the principals on this machine, and the problems."""
        ports: dict[str, PortDeclaration] = {}
        problems: list[str] = []
        sources: list[str] = []
        try:
            relations = self._charm.model.relations[self._endpoint]
        except (KeyError, ops.ModelError) as e:
            return Declarations(problems=(f"cannot list '{self._endpoint}' relations: {e}",))
        # only this machine's principals (the scope is container), in a stable order
        units = sorted(
            ((unit, relation) for relation in relations for unit in relation.units),
            key=lambda pair: pair[0].name,
        )
        for unit, relation in units:
            sources.append(unit.name)
            try:
                raw = dict(relation.data[unit])
                found, errors = parse_databag(raw)
            except Exception as e:  # never out of a hook: untrusted data, any failure
                logger.debug("reading %s failed", unit.name, exc_info=True)
                found, errors = [], [f"cannot read the data: {e}"]
            for port in found:
                ports.setdefault(str(port), port)
            problems += [f"{unit.name}: {error}" for error in errors]
        for problem in problems:
            logger.warning("ignored port declaration from %s", problem)
        return Declarations(
            ports=tuple(sorted(ports.values(), key=lambda p: (p.network, *p.triple))),
            problems=tuple(problems),
            sources=tuple(sources),
        )


def parse_databag(bag: dict[str, str]) -> tuple[list[PortDeclaration], list[str]]:
    """The valid declarations in one unit databag and the problems found; never raises.

    Juju's own keys (private-address, ...) are ignored. A bag with neither key declares
    nothing, which is not a problem.
    """
    raw_version, raw_ports = bag.get(VERSION_KEY), bag.get(PORTS_KEY)
    if raw_version is None and raw_ports is None:
        return [], []
    version_problem = _check_version(raw_version)
    if version_problem:
        return [], [version_problem]
    if raw_ports is None:
        return [], []
    if len(raw_ports) > MAX_RAW_BYTES:
        return [], [f"'{PORTS_KEY}' is larger than {MAX_RAW_BYTES} bytes: not read"]
    try:
        entries = json.loads(raw_ports)
    except (ValueError, RecursionError) as e:
        return [], [f"'{PORTS_KEY}' is not valid JSON ({e})"]
    if not isinstance(entries, list):
        return [], [f"'{PORTS_KEY}' is not a list"]
    problems: list[str] = []
    if len(entries) > MAX_ENTRIES:
        problems.append(
            f"{len(entries)} entries: only the first {MAX_ENTRIES} are read,"
            f" {len(entries) - MAX_ENTRIES} ignored"
        )
        entries = entries[:MAX_ENTRIES]
    found: list[PortDeclaration] = []
    for index, entry in enumerate(entries):
        try:
            found.append(PortDeclaration.model_validate(entry))
        except pydantic.ValidationError as e:
            problems.append(f"entry {index} ignored: {_first_error(e)}")
    return found, problems


def _check_version(raw: str | None) -> str | None:
    if raw is None:
        return f"no '{VERSION_KEY}' key: data not read"
    try:
        version = json.loads(raw)
    except ValueError:
        version = None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"'{VERSION_KEY}' {raw[:20]!r} is not a positive integer: data not read"
    if version > LIBAPI:
        return (
            f"interface version {version} is newer than this reader's {LIBAPI}:"
            " data not read (upgrade the network-isolation charm)"
        )
    return None


def _first_error(error: pydantic.ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
