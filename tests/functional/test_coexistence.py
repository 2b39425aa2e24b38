"""Our table lives beside Docker's and LXD's.

Loading, replacing and removing ours leaves theirs byte-for-byte as they were, handles
included (so they were not deleted and re-created either).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from network_isolation.topology import load_topology

from .conftest import MAAS
from .testbed import Bed, cloud_of, running_bed

MACHINE = "compute-1"
OURS = "inet network_isolation"

# What Docker (iptables-nft) leaves in `table ip filter`: a forward chain with policy drop.
DOCKER = """
table ip filter {
	chain DOCKER {
	}
	chain DOCKER-ISOLATION-STAGE-1 {
		iifname "docker0" oifname != "docker0" counter jump DOCKER-ISOLATION-STAGE-2
		counter return
	}
	chain DOCKER-ISOLATION-STAGE-2 {
		oifname "docker0" counter drop
		counter return
	}
	chain DOCKER-USER {
		counter return
	}
	chain FORWARD {
		type filter hook forward priority filter; policy drop;
		counter jump DOCKER-USER
		counter jump DOCKER-ISOLATION-STAGE-1
		oifname "docker0" ct state related,established counter accept
		oifname "docker0" counter jump DOCKER
		iifname "docker0" oifname != "docker0" counter accept
		iifname "docker0" oifname "docker0" counter accept
	}
}
"""

# What LXD's nftables driver keeps for a managed bridge: NAT, forward, input and output.
LXD = """
table inet lxd {
	chain pstrt.lxdbr0 {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.161.77.0/24 ip daddr != 10.161.77.0/24 masquerade
		ip6 saddr fd42:161:77::/64 ip6 daddr != fd42:161:77::/64 masquerade
	}
	chain fwd.lxdbr0 {
		type filter hook forward priority filter; policy accept;
		meta nfproto ipv4 oifname "lxdbr0" accept
		meta nfproto ipv4 iifname "lxdbr0" accept
		meta nfproto ipv6 oifname "lxdbr0" accept
		meta nfproto ipv6 iifname "lxdbr0" accept
	}
	chain in.lxdbr0 {
		type filter hook input priority filter; policy accept;
		iifname "lxdbr0" tcp dport 53 accept
		iifname "lxdbr0" udp dport 53 accept
		iifname "lxdbr0" icmp type { destination-unreachable, time-exceeded } accept
		iifname "lxdbr0" icmp type parameter-problem accept
		iifname "lxdbr0" udp dport 67 accept
		iifname "lxdbr0" icmpv6 type { destination-unreachable, packet-too-big } accept
		iifname "lxdbr0" icmpv6 type { time-exceeded, parameter-problem } accept
		iifname "lxdbr0" icmpv6 type { nd-router-solicit, nd-neighbor-solicit } accept
		iifname "lxdbr0" icmpv6 type { nd-neighbor-advert, mld2-listener-report } accept
		iifname "lxdbr0" udp dport 547 accept
	}
	chain out.lxdbr0 {
		type filter hook output priority filter; policy accept;
		oifname "lxdbr0" tcp sport 53 accept
		oifname "lxdbr0" udp sport 53 accept
		oifname "lxdbr0" udp sport 67 accept
		oifname "lxdbr0" udp sport 547 accept
	}
}
"""
FOREIGN = ("ip filter", "inet lxd")


def snapshot(bed: Bed) -> dict[str, str]:
    """The foreign tables as nft lists them, with handles ("" for a missing one)."""
    return {t: bed.nft(MACHINE, "-a", "list", "table", *t.split(), check=False) for t in FOREIGN}


def tables(bed: Bed) -> list[str]:
    """`nft list tables`, one `family name` per entry."""
    return [
        line.removeprefix("table ") for line in bed.nft(MACHINE, "list", "tables").splitlines()
    ]


def test_coexistence(renders: Callable[..., Path], prerequisites: None) -> None:
    """Load ours, replace it (same and audit), remove it (enforcement=off), twice."""
    enforce = renders(MAAS) / MACHINE / "nftables.conf"
    audit = renders(MAAS, enforcement="audit") / MACHINE / "nftables.conf"
    off = renders(MAAS, enforcement="off") / MACHINE / "nftables.conf"
    cloud = cloud_of(load_topology(MAAS))
    with running_bed(cloud, machines=[MACHINE]) as bed:
        bed.load(MACHINE, DOCKER + LXD)
        before = snapshot(bed)
        ruleset_before = bed.nft(MACHINE, "-a", "list", "ruleset")
        assert "policy drop" in before["ip filter"]

        steps = [("load", enforce, True), ("replace", enforce, True), ("audit", audit, True)]
        steps += [("remove", off, False), ("remove again", off, False), ("reload", enforce, True)]
        steps += [("remove", off, False)]
        for step, path, present in steps:
            bed.load(MACHINE, path.read_text())
            assert (OURS in tables(bed)) == present, step
            assert snapshot(bed) == before, f"a foreign table changed after '{step}'"
            assert sorted(set(tables(bed)) - {OURS}) == sorted(FOREIGN), step

        assert bed.nft(MACHINE, "-a", "list", "ruleset") == ruleset_before

        # The comparison has teeth: a ruleset that starts with `flush ruleset` is caught.
        bed.load(MACHINE, "flush ruleset\n" + enforce.read_text())
        assert snapshot(bed) != before
