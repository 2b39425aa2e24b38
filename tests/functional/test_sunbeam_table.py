"""Sunbeam's role table (`role-table: sunbeam`) with real packets.

The cloud is examples/sunbeam-maas.yaml cut down to five machines: a control node (with a NIC
on data), a compute node, a storage node (with a NIC on internal), a network node and an infra
machine (the `sunbeam` role, which runs clusterd). The oracle takes its table from its own copy
of Sunbeam's ROLE_NETWORK_MAPPING, never from the charm.

What it shows: each role gets exactly its networks; the flows that the guide's table breaks on
a Sunbeam cloud (cinder-volume on a storage node reaching internal, Geneve to and from a
control node's chassis) pass with Sunbeam's table and are dropped when the guide's table is
loaded on the same machines; with strict-ports, the network node's and the infra machine's
own services pass and clusterd is closed everywhere else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from network_isolation.topology import load_topology

from .conftest import EXAMPLES, variant
from .matrix import (
    TCP_PORT,
    UDP_PORT,
    Matrix,
    assert_matches,
    check,
    flows_between,
    flows_on_ports,
    got,
)
from .oracle import FAILSAFE_PORT, Oracle
from .testbed import Bed, Cloud, cloud_of, running_bed

SUNBEAM = EXAMPLES / "sunbeam-maas.yaml"
MACHINES = ("control-1", "compute-1", "storage-1", "network-1", "infra-1")
# The machines whose roles the guide's table knows.
GUIDE_MACHINES = ("control-1", "compute-1", "storage-1")
STRICT_PORTS = [("tcp", 7000), ("tcp", 6686), ("udp", 6081), ("tcp", 6641), ("tcp", 5899)]
TIMEOUT = 0.5
Report = Callable[[Matrix], None]
Renders = Callable[..., Path]
ip = ipaddress.ip_address


@dataclass
class SunbeamBed:
    """The bed of the Sunbeam cloud, and its topology files and renders."""

    cloud: Cloud
    bed: Bed
    render: Path
    directory: Path


def cut(path: Path, machines: tuple[str, ...], **config: str | bool) -> Path:
    """The Sunbeam example with only some machines, some options set."""
    return variant(SUNBEAM, path, machines=machines, **config)


@pytest.fixture(scope="module")
def sunbeam(
    tmp_path_factory: pytest.TempPathFactory, renders: Renders, prerequisites: None
) -> Iterator[SunbeamBed]:
    """The bed, built once, with echo servers on every probed port of every machine."""
    directory = tmp_path_factory.mktemp("sunbeam")
    topology = cut(directory / "sunbeam.yaml", MACHINES)
    cloud = cloud_of(load_topology(topology))
    tcp = {FAILSAFE_PORT, TCP_PORT, *(p for proto, p in STRICT_PORTS if proto == "tcp")}
    udp = {UDP_PORT, *(p for proto, p in STRICT_PORTS if proto == "udp")}
    with running_bed(cloud) as bed:
        bed.listen(MACHINES, tcp=sorted(tcp), udp=sorted(udp))
        yield SunbeamBed(cloud, bed, renders(topology), directory)


def test_sunbeam_table(sunbeam: SunbeamBed, report: Report) -> None:
    """Every flow between the five machines, clients and outsiders is what the table says."""
    bed, cloud = sunbeam.bed, sunbeam.cloud
    bed.load_dir(sunbeam.render)
    flows = flows_between(cloud, MACHINES)
    matrix = check(bed, Oracle(cloud), flows, "role-table sunbeam (five machines)", TIMEOUT)
    report(matrix)
    assert_matches(matrix)
    # By hand: what the guide's table would break now passes...
    assert got(matrix, "10.20.0.31", "10.20.0.11", "tcp", TCP_PORT) == "pass"  # cinder-volume
    assert got(matrix, "fd00:20::31", "fd00:20::11", "udp", UDP_PORT) == "pass"
    assert got(matrix, "10.40.0.11", "10.40.0.21", "udp", UDP_PORT) == "pass"  # Geneve
    assert got(matrix, "10.40.0.21", "10.40.0.11", "udp", UDP_PORT) == "pass"
    assert got(matrix, "10.40.0.51", "10.40.0.11", "udp", UDP_PORT) == "pass"  # network node
    assert got(matrix, "10.20.0.51", "10.20.0.21", "tcp", TCP_PORT) == "pass"
    # ... and each role still has only its networks.
    assert got(matrix, "10.10.0.6", "10.10.0.11", "tcp", TCP_PORT) == "pass"  # infra: mgmt
    assert got(matrix, "10.10.0.6", "10.20.0.11", "tcp", TCP_PORT) == "drop"  # not internal
    assert got(matrix, "10.10.0.51", "10.30.0.11", "tcp", TCP_PORT) == "drop"  # network: public
    assert got(matrix, "10.10.0.51", "10.50.0.31", "tcp", TCP_PORT) == "drop"  # nor storage
    assert got(matrix, "10.10.0.31", "10.40.0.21", "udp", UDP_PORT) == "drop"  # storage: data
    assert got(matrix, "10.10.0.11", "10.60.0.31", "tcp", TCP_PORT) == "drop"  # control: repl


def test_guide_table_breaks_what_sunbeam_needs(
    sunbeam: SunbeamBed, renders: Renders, report: Report
) -> None:
    """The same machines with the guide's table: storage loses internal, control loses data."""
    bed = sunbeam.bed
    guide = cut(sunbeam.directory / "guide.yaml", GUIDE_MACHINES, **{"role-table": "guide"})
    guide_cloud = cloud_of(load_topology(guide))
    bed.load_dir(renders(guide), GUIDE_MACHINES)
    try:
        flows = flows_between(guide_cloud, GUIDE_MACHINES, externals=False)
        title = "role-table guide on a Sunbeam cloud (three machines)"
        matrix = check(bed, Oracle(guide_cloud), flows, title, TIMEOUT)
    finally:
        bed.load_dir(sunbeam.render, GUIDE_MACHINES)
    report(matrix)
    assert_matches(matrix)
    assert got(matrix, "10.20.0.31", "10.20.0.11", "tcp", TCP_PORT) == "drop"  # cinder-volume
    assert got(matrix, "10.40.0.11", "10.40.0.21", "udp", UDP_PORT) == "drop"  # Geneve
    assert got(matrix, "10.40.0.21", "10.40.0.11", "udp", UDP_PORT) == "drop"
    assert got(matrix, "10.20.0.21", "10.20.0.11", "tcp", TCP_PORT) == "pass"  # unchanged


def test_sunbeam_table_strict_ports(sunbeam: SunbeamBed, renders: Renders, report: Report) -> None:
    """strict-ports on the Sunbeam cloud: the extra roles' services, and only theirs."""
    bed, cloud = sunbeam.bed, sunbeam.cloud
    strict = cut(sunbeam.directory / "strict.yaml", MACHINES, **{"strict-ports": True})
    bed.load_dir(renders(strict))
    try:
        flows = flows_on_ports(cloud, MACHINES, STRICT_PORTS)
        oracle = Oracle(cloud_of(load_topology(strict)))
        matrix = check(bed, oracle, flows, "role-table sunbeam, strict-ports", TIMEOUT)
    finally:
        bed.load_dir(sunbeam.render)
    report(matrix)
    assert_matches(matrix)
    assert got(matrix, "10.10.0.11", "10.10.0.6", "tcp", 7000) == "pass"  # clusterd on infra
    assert got(matrix, "10.99.0.2", "10.10.0.6", "tcp", 7000) == "pass"  # the Sunbeam client
    assert got(matrix, "10.10.0.6", "10.10.0.11", "tcp", 7000) == "drop"  # not on control
    assert got(matrix, "10.10.0.11", "10.10.0.51", "tcp", 6686) == "pass"  # MicroOVN, network
    assert got(matrix, "10.40.0.21", "10.40.0.51", "udp", 6081) == "pass"  # Geneve, network
    assert got(matrix, "10.40.0.51", "10.40.0.11", "udp", 6081) == "pass"  # Geneve, control
    assert got(matrix, "10.10.0.51", "10.10.0.11", "tcp", 6641) == "pass"  # OVN SB, mgmt
    assert got(matrix, "10.20.0.31", "10.20.0.11", "tcp", 6641) == "drop"  # NB: not internal
    assert got(matrix, "10.20.0.11", "10.20.0.31", "tcp", 6641) == "drop"  # not on storage
    assert {r.got.got for r in matrix.rows if r.flow.port == 5899} == {"drop"}
