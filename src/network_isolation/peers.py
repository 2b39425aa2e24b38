"""The cloud-wide view shared over the peer relation, and the checks it must pass.

Each unit publishes what it sees of the networks on its machine; the leader folds those records
into one compact view of every network's subnets in the application databag, which every unit
reads with a single call. Everything that arrives here comes from other units and is untrusted:
it is parsed, bounded (per record, in the fold, in the view) and checked against this machine's
own subnets; a bad record is refused alone and named, never followed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, Field, StringConstraints

from .base import IPAddress, IPNetwork, Received
from .model import NETWORKS, Network
from .planner import domain_index, group_domains, nested_pairs

UNIT_KEY = "machine"
CLOUD_KEY = "cloud"
# A machine sits on a few subnets per network; the cloud on at most this many per network.
MAX_RECORD_BYTES = 4096
MAX_RECORD_SUBNETS = 8
MAX_RECORD_ADDRESSES = 4
MAX_SUBNETS_PER_NETWORK = 512
MAX_VIEW_BYTES = 256 * 1024
NEIGHBOURS_PER_NETWORK = 3

RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,30}$")]
MachineName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9/_.-]{0,63}$")]
Digest = Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{16})?$")]


class PeerError(ValueError):
    """A peer record that cannot be used, with the reason."""


class MachineRecord(Received):
    """What one unit publishes: its machine, roles, subnets and addresses per network.

    `inputs` digests what else decides this machine's ruleset (the ports its principal
    declares), so the leader starts a rollout when it changes.
    """

    machine: MachineName
    roles: tuple[RoleName, ...] = Field(default=(), max_length=16)
    subnets: dict[Network, tuple[IPNetwork, ...]] = {}
    addresses: dict[Network, tuple[IPAddress, ...]] = {}
    inputs: Digest = ""


class CloudView(Received):
    """What the leader publishes: every known subnet of every network, and a few neighbours.

    `neighbours` are addresses of machines on each network that a unit probes around its
    apply (those that answered before it must answer after it).
    """

    subnets: dict[Network, tuple[IPNetwork, ...]] = {}
    neighbours: dict[Network, tuple[IPAddress, ...]] = {}
    machines: int = 0

    def subnets_of(self, network: Network) -> tuple[IPNetwork, ...]:
        """The subnets known cloud-wide for one network."""
        return self.subnets.get(network, ())

    def neighbours_of(self, network: Network) -> tuple[IPAddress, ...]:
        """A few addresses of machines on one network."""
        return self.neighbours.get(network, ())


def check_subnet(subnet: IPNetwork, min_prefix: Mapping[int, int]) -> None:
    """Refuse a subnet wider than the configured minimum prefix for its IP version."""
    if subnet.prefixlen < min_prefix[subnet.version]:
        raise PeerError(
            f"{subnet} is wider than the allowed /{min_prefix[subnet.version]}"
            f" for IPv{subnet.version}"
        )


def _validated(raw: str, model: type[Received], what: str, limit: int) -> Any:
    if len(raw) > limit:
        raise PeerError(f"{what} of {len(raw)} bytes exceeds the {limit}-byte limit")
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or what
        raise PeerError(f"malformed {what} at {where}: {first['msg']}") from None


def parse_record(raw: str | None, min_prefix: Mapping[int, int]) -> MachineRecord | None:
    """A peer's record from its databag; None when it has published nothing yet."""
    if not raw:
        return None
    record: MachineRecord = _validated(raw, MachineRecord, "record", MAX_RECORD_BYTES)
    for network, subnets in record.subnets.items():
        if len(subnets) > MAX_RECORD_SUBNETS:
            raise PeerError(f"more than {MAX_RECORD_SUBNETS} subnets on {network}")
        for subnet in subnets:
            check_subnet(subnet, min_prefix)
    for network, addresses in record.addresses.items():
        if len(addresses) > MAX_RECORD_ADDRESSES:
            raise PeerError(f"more than {MAX_RECORD_ADDRESSES} addresses on {network}")
        for address in addresses:
            if not any(address in s for s in record.subnets.get(network, ())):
                raise PeerError(f"address {address} is in none of its subnets on {network}")
    return record


def admit(
    record: MachineRecord,
    others: Iterable[MachineRecord],
    own: Mapping[Network, tuple[IPNetwork, ...]],
) -> None:
    """Refuse a record that conflicts with this machine's own subnets or the accepted records.

    Only networks whose subnets this machine knows itself are judged: a subnet of one that
    overlaps a subnet of another domain, or networks of one space that disagree, refuse the
    record. The view is bounded: a record that would push a network past the limit is refused.
    """
    domains = group_domains(own)
    index = domain_index(domains)
    known = [net for net in NETWORKS if own[net]]
    for group in domains:
        listed = [net for net in group if own[net] and net in record.subnets]
        if any(set(record.subnets[n]) != set(record.subnets[listed[0]]) for n in listed):
            names = ", ".join(str(n) for n in listed)
            raise PeerError(f"networks of one space disagree on their subnets: {names}")
    union: dict[Network, set[IPNetwork]] = {net: set() for net in NETWORKS}
    for other in others:
        for net, subnets in other.subnets.items():
            union[net].update(subnets)
    for net, subnets in record.subnets.items():
        if len(union[net] | set(subnets)) > MAX_SUBNETS_PER_NETWORK:
            raise PeerError(f"the cloud view already holds {MAX_SUBNETS_PER_NETWORK} on {net}")
    entries = [(s, index[n], 0) for n in known for s in own[n]]
    entries += [(s, index[n], 1) for n in known for s in union[n]]
    entries += [(s, index[n], 2) for n in known for s in record.subnets.get(n, ())]
    for outer, inner in nested_pairs(entries):
        if outer[1] != inner[1] and 2 in (outer[2], inner[2]) and outer[2] != inner[2]:
            mine, theirs = (outer, inner) if outer[2] == 2 else (inner, outer)
            source = "own" if theirs[2] == 0 else "a peer's"
            raise PeerError(
                f"{mine[0]} for {domains[mine[1]][0]} overlaps {source} {theirs[0]}"
                f" of {domains[theirs[1]][0]}"
            )


def _key(address: IPNetwork | IPAddress) -> tuple[int, int]:
    if isinstance(address, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return address.version, int(address.network_address)
    return address.version, int(address)


def aggregate(records: Mapping[str, MachineRecord]) -> CloudView:
    """Fold the accepted records into the cloud view (order-independent, deduplicated).

    Neighbours: per network, the first few addresses of distinct machines in address order.
    """
    merged: dict[Network, set[IPNetwork]] = {}
    neighbours: dict[Network, dict[str, IPAddress]] = {}
    for record in records.values():
        for network, subnets in record.subnets.items():
            merged.setdefault(network, set()).update(subnets)
        for network, addresses in record.addresses.items():
            if addresses:
                seen = neighbours.setdefault(network, {})
                first = min(addresses, key=_key)
                if record.machine not in seen or _key(first) < _key(seen[record.machine]):
                    seen[record.machine] = first
    return CloudView(
        subnets={net: tuple(sorted(merged[net], key=_key)) for net in NETWORKS if net in merged},
        neighbours={
            net: tuple(sorted(neighbours[net].values(), key=_key)[:NEIGHBOURS_PER_NETWORK])
            for net in NETWORKS
            if net in neighbours
        },
        machines=len({r.machine for r in records.values()}),
    )


def parse_cloud_view(raw: str | None, min_prefix: Mapping[int, int]) -> CloudView:
    """The leader's view from the application databag, checked like any peer data."""
    if not raw:
        return CloudView()
    view: CloudView = _validated(raw, CloudView, "cloud view", MAX_VIEW_BYTES)
    for network, subnets in view.subnets.items():
        if len(subnets) > MAX_SUBNETS_PER_NETWORK:
            raise PeerError(f"more than {MAX_SUBNETS_PER_NETWORK} subnets on {network}")
        for subnet in subnets:
            check_subnet(subnet, min_prefix)
    for network, addresses in view.neighbours.items():
        if len(addresses) > NEIGHBOURS_PER_NETWORK:
            raise PeerError(f"more than {NEIGHBOURS_PER_NETWORK} neighbours on {network}")
    return view


def dump(model: BaseModel) -> str:
    """Compact, canonical JSON, so unchanged data writes an unchanged databag."""
    data: Any = model.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
