"""The cloud-wide view shared over the peer relation, and the checks it must pass.

Each unit publishes what it sees of the networks on its machine; the leader folds those records
into one compact view of every network's subnets in the application databag, which every unit
reads with a single call. Everything that arrives here comes from other units and is untrusted:
it is parsed, bounded (per record, in the fold, in the view) and checked against this machine's
own subnets; a bad record is refused alone and named, never followed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, NamedTuple

import pydantic
from pydantic import BaseModel, Field, StringConstraints

from .base import IPAddress, IPNetwork, Received
from .model import NETWORKS, Network
from .planner import domain_index, group_domains, nested_pairs, unlearnable, within
from .rollout import unit_order

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
UnitName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}/[0-9]{1,6}$")]
# Units that must report a private subnet before the cloud learns it without a declaration.
TEACHERS_NEEDED = 2


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
    """What the leader publishes: every subnet the cloud teaches, and a few neighbours.

    `neighbours` are addresses of machines on each network that a unit probes around its
    apply (those that answered before it must, by majority, answer after it). `teachers`
    names, for each subnet, a unit that taught it, so that a unit that leaves one out can
    say whose it was.
    """

    subnets: dict[Network, tuple[IPNetwork, ...]] = {}
    neighbours: dict[Network, tuple[IPAddress, ...]] = {}
    teachers: dict[Network, dict[str, UnitName]] = {}
    machines: int = 0

    def subnets_of(self, network: Network) -> tuple[IPNetwork, ...]:
        """The subnets known cloud-wide for one network."""
        return self.subnets.get(network, ())

    def neighbours_of(self, network: Network) -> tuple[IPAddress, ...]:
        """A few addresses of machines on one network."""
        return self.neighbours.get(network, ())

    def teacher_of(self, network: Network, subnet: IPNetwork) -> str:
        """The unit that taught a subnet of a network ("" when the view does not say)."""
        return self.teachers.get(network, {}).get(str(subnet), "")


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


class Taught(NamedTuple):
    """The cloud view the leader folded, and the subnets it left out (with whose they were).

    `left_out`: what no honest cloud reports (public space, a clients' subnet): worth a
    warning. `unconfirmed`: private subnets too few units reported yet, which is how a new
    rack starts: named where an operator looks for it (`show-plan`), not in the status.
    """

    view: CloudView
    left_out: tuple[str, ...]
    unconfirmed: tuple[str, ...] = ()


def aggregate(
    records: Mapping[str, MachineRecord],
    declared: Mapping[Network, tuple[IPNetwork, ...]] | None = None,
    clients: Iterable[IPNetwork] = (),
) -> CloudView:
    """The cloud view of the accepted records (see `teach`)."""
    return teach(records, declared, clients).view


def teach(
    records: Mapping[str, MachineRecord],
    declared: Mapping[Network, tuple[IPNetwork, ...]] | None = None,
    clients: Iterable[IPNetwork] = (),
) -> Taught:
    """Fold the accepted records, keyed by Juju unit name, into the cloud view.

    A subnet is taught when it lies inside what the operator declared for its network
    (`declared`: `network-cidrs`), or when it is private address space reported by at least
    `TEACHERS_NEEDED` units, counted by Juju's unit names, never by the machine a record
    claims. One that overlaps `clients` (`client-cidrs`) outside management is left out: it
    would put client machines in a cloud network. Every subnet left out is named with its
    units. Order-independent and deduplicated.

    Neighbours: per network, the address of a few units chosen by a digest of their unit
    name, which no unit can choose.
    """
    declared = declared or {}
    clients = tuple(clients)
    reported: dict[Network, dict[IPNetwork, set[str]]] = {}
    for unit, record in records.items():
        for network, subnets in record.subnets.items():
            for subnet in subnets:
                reported.setdefault(network, {}).setdefault(subnet, set()).add(unit)
    taught: dict[Network, dict[IPNetwork, str]] = {}
    left_out: list[str] = []
    unconfirmed: list[str] = []
    for network in NETWORKS:
        for subnet, units in sorted(reported.get(network, {}).items(), key=lambda i: _key(i[0])):
            names = sorted(units, key=unit_order)
            why = _not_taught(network, subnet, declared.get(network, ()), clients)
            if why:
                left_out.append(f"left out {subnet} on {network} from {names[0]}: {why}")
            elif len(names) < TEACHERS_NEEDED and not _declared(subnet, declared.get(network)):
                unconfirmed.append(
                    f"not yet taught: {subnet} on {network}, reported by {names[0]} alone;"
                    f" it takes {TEACHERS_NEEDED} units, or network-cidrs"
                )
            else:
                taught.setdefault(network, {})[subnet] = names[0]
    neighbours = _neighbours(records, taught)
    view = CloudView(
        subnets={net: tuple(sorted(taught[net], key=_key)) for net in NETWORKS if net in taught},
        neighbours={net: tuple(neighbours[net]) for net in NETWORKS if neighbours.get(net)},
        teachers={
            net: {str(s): unit for s, unit in taught[net].items()}
            for net in NETWORKS
            if net in taught
        },
        machines=len({r.machine for r in records.values()}),
    )
    return Taught(view, tuple(left_out), tuple(unconfirmed))


def _neighbours(
    records: Mapping[str, MachineRecord], taught: Mapping[Network, Mapping[IPNetwork, str]]
) -> dict[Network, list[IPAddress]]:
    """A few addresses per network, of units in the order of a digest of their names.

    No unit can choose its place in that order (Juju names it), whatever addresses it
    publishes; only addresses inside taught subnets count.
    """
    neighbours: dict[Network, list[IPAddress]] = {}
    for unit in sorted(records, key=_digest_of):
        for network, addresses in records[unit].addresses.items():
            inside = [a for a in addresses if any(a in s for s in taught.get(network, {}))]
            chosen = neighbours.setdefault(network, [])
            first = min(inside, key=_key) if inside else None
            if first is not None and first not in chosen and len(chosen) < NEIGHBOURS_PER_NETWORK:
                chosen.append(first)
    return neighbours


def _not_taught(
    network: Network,
    subnet: IPNetwork,
    declared: Iterable[IPNetwork],
    clients: Iterable[IPNetwork],
) -> str:
    """Why a reported subnet may not be taught, however many report it ("" when it may).

    Management's bound is each machine's own (its subnets and `client-cidrs`): every unit's
    planner judges it.
    """
    if network == Network.MANAGEMENT:
        return ""
    return unlearnable(subnet, declared, clients)


def _declared(subnet: IPNetwork, declared: Iterable[IPNetwork] | None) -> bool:
    return any(within(subnet, d) for d in declared or ())


def _digest_of(unit: str) -> str:
    return hashlib.sha256(unit.encode()).hexdigest()


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
    for network, teachers in view.teachers.items():
        if len(teachers) > MAX_SUBNETS_PER_NETWORK:
            raise PeerError(f"more than {MAX_SUBNETS_PER_NETWORK} teachers on {network}")
    return view


def dump(model: BaseModel) -> str:
    """Compact, canonical JSON, so unchanged data writes an unchanged databag."""
    data: Any = model.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
