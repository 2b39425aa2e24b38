"""Subnet arithmetic: containment, the sorted subnets nft accepts, and subtraction."""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable

from ..config import IPNetwork


def split_families(nets: Iterable[IPNetwork]) -> tuple[list[IPNetwork], list[IPNetwork]]:
    """The IPv4 and the IPv6 subnets, apart."""
    v4: list[IPNetwork] = [n for n in nets if n.version == 4]
    v6: list[IPNetwork] = [n for n in nets if n.version == 6]
    return v4, v6


def _key(net: IPNetwork) -> tuple[int, int]:
    return net.version, int(net.network_address)


def within(inner: IPNetwork, outer: IPNetwork) -> bool:
    """Whether `inner` lies in `outer` (False across address families)."""
    return (
        inner.version == outer.version
        and int(outer.network_address) <= int(inner.network_address)
        and int(inner.broadcast_address) <= int(outer.broadcast_address)
    )


def overlap(first: IPNetwork, second: IPNetwork) -> bool:
    """Whether two subnets share an address (False across address families)."""
    return within(first, second) or within(second, first)


def normalize(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Subnets sorted (IPv4 first), without those inside another: nft refuses overlaps.

    Adjacent subnets are kept apart, so the sets show the subnets the cloud defines.
    """
    ordered = sorted(set(nets), key=lambda n: (*_key(n), n.prefixlen))
    kept: list[IPNetwork] = []
    for net in ordered:
        if kept and within(net, kept[-1]):
            continue
        kept.append(net)
    return tuple(kept)


def _minus(net: IPNetwork, gone: IPNetwork) -> list[IPNetwork]:
    if not overlap(net, gone):
        return [net]
    if within(net, gone):
        return []
    if isinstance(net, ipaddress.IPv4Network) and isinstance(gone, ipaddress.IPv4Network):
        return list(net.address_exclude(gone))
    if isinstance(net, ipaddress.IPv6Network) and isinstance(gone, ipaddress.IPv6Network):
        return list(net.address_exclude(gone))
    raise AssertionError("unreachable: overlapping subnets of different families")


def exclude(nets: Iterable[IPNetwork], remove: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """The addresses of `nets` that are not in `remove`, as normalized subnets."""
    gone = normalize(remove)
    starts = [_key(g) for g in gone]
    result: list[IPNetwork] = []
    for net in normalize(nets):
        first, last = _key(net), (net.version, int(net.broadcast_address))
        before = bisect.bisect_right(starts, first) - 1
        if before >= 0 and not _minus(net, gone[before]):
            continue  # inside a removed subnet
        pieces = [net]
        # CIDR blocks nest or are disjoint: the removed ones starting inside `net` lie in it.
        for inner in gone[bisect.bisect_left(starts, first) : bisect.bisect_right(starts, last)]:
            pieces = [p for piece in pieces for p in _minus(piece, inner)]
        result += pieces
    return normalize(result)
