"""The cloud-wide view shared over the peer relation, and the checks it must pass.

Each unit publishes what it sees of the networks on its machine; the leader folds those records
into one compact view of every network's subnets in the application databag, which every unit
reads with a single call. Everything that arrives here comes from other units and is untrusted:
it is parsed, bounded and narrowed, and a bad record is reported, never followed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from .config import IPNetwork
from .model import NETWORKS, Network

UNIT_KEY = "machine"
CLOUD_KEY = "cloud"
MAX_SUBNETS_PER_NETWORK = 4096


class PeerError(ValueError):
    """A peer record that cannot be used, with the reason."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class MachineRecord(_Frozen):
    """What one unit publishes: its machine, roles and the subnets it sits on, per network."""

    machine: str = Field(max_length=64)
    roles: tuple[str, ...] = Field(default=(), max_length=16)
    subnets: dict[Network, tuple[IPNetwork, ...]] = {}


class CloudView(_Frozen):
    """What the leader publishes: every known subnet of every network, cloud-wide."""

    subnets: dict[Network, tuple[IPNetwork, ...]] = {}
    machines: int = 0

    def subnets_of(self, network: Network) -> tuple[IPNetwork, ...]:
        """The subnets known cloud-wide for one network."""
        return self.subnets.get(network, ())


def check_subnet(subnet: IPNetwork, min_prefix: Mapping[int, int]) -> None:
    """Refuse a subnet wider than the configured minimum prefix for its IP version."""
    if subnet.prefixlen < min_prefix[subnet.version]:
        raise PeerError(
            f"{subnet} is wider than the allowed /{min_prefix[subnet.version]}"
            f" for IPv{subnet.version}"
        )


def parse_record(raw: str | None, min_prefix: Mapping[int, int]) -> MachineRecord | None:
    """A peer's record from its databag; None when it has published nothing yet."""
    if not raw:
        return None
    try:
        record = MachineRecord.model_validate_json(raw)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise PeerError(f"malformed record at {where}: {first['msg']}") from None
    for subnets in record.subnets.values():
        if len(subnets) > MAX_SUBNETS_PER_NETWORK:
            raise PeerError(f"more than {MAX_SUBNETS_PER_NETWORK} subnets on one network")
        for subnet in subnets:
            check_subnet(subnet, min_prefix)
    return record


def aggregate(records: Mapping[str, MachineRecord]) -> CloudView:
    """Fold every unit's record into the cloud view (order-independent, deduplicated)."""
    merged: dict[Network, set[IPNetwork]] = {}
    for record in records.values():
        for network, subnets in record.subnets.items():
            merged.setdefault(network, set()).update(subnets)
    return CloudView(
        subnets={
            net: tuple(sorted(merged[net], key=lambda n: (n.version, int(n.network_address))))
            for net in NETWORKS
            if net in merged
        },
        machines=len({r.machine for r in records.values()}),
    )


def parse_cloud_view(raw: str | None, min_prefix: Mapping[int, int]) -> CloudView:
    """The leader's view from the application databag, checked like any peer data."""
    if not raw:
        return CloudView()
    try:
        view = CloudView.model_validate_json(raw)
    except pydantic.ValidationError as e:
        raise PeerError(f"malformed cloud view: {e.errors()[0]['msg']}") from None
    for subnets in view.subnets.values():
        for subnet in subnets:
            check_subnet(subnet, min_prefix)
    return view


def dump(model: BaseModel) -> str:
    """Compact, canonical JSON, so unchanged data writes an unchanged databag."""
    data: Any = model.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
