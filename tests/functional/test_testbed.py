"""The bed and the checker themselves: they must be right before they judge a ruleset."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from network_isolation.topology import load_topology

from . import conftest
from .conftest import MAAS, need
from .matrix import UDP_PORT, Matrix, check, flows_between
from .oracle import Flow, Oracle
from .testbed import (
    NETNS_PREFIX,
    Bed,
    BedError,
    Sandbox,
    choose_mode,
    cloud_of,
    missing_prerequisites,
    running_bed,
)

ip = ipaddress.ip_address
CLOUD = cloud_of(load_topology(MAAS))


@pytest.fixture(scope="module")
def bare_bed(prerequisites: None) -> Iterator[Bed]:
    """The example cloud with no ruleset anywhere."""
    reps = CLOUD.representatives()
    with running_bed(CLOUD) as bed:
        bed.listen(reps, tcp=[22, 7000], udp=[UDP_PORT])
        yield bed


def test_representatives() -> None:
    """One machine per kind: each role, the other rack, and the hyperconverged machine."""
    assert CLOUD.representatives() == [
        "juju-1",
        "control-1",
        "compute-1",
        "storage-1",
        "storage-3",
        "hyper-1",
    ]


def test_oracle_spot_checks() -> None:
    """Verdicts written by hand from the guide's role table and the firewall's rules."""
    oracle = Oracle(CLOUD)

    def verdict(src: str, a: str, dst: str, b: str, proto: str = "tcp", port: int = 7000) -> str:
        return oracle.expect(Flow(src, ip(a), dst, ip(b), proto, port)).verdict

    # storage-cluster is for storage nodes only; it spans two racks.
    assert verdict("compute-1", "10.10.0.21", "storage-1", "10.60.0.31") == "drop"
    assert verdict("storage-1", "10.60.0.31", "storage-3", "10.60.1.33") == "pass"
    assert verdict("storage-1", "fd00:60::31", "hyper-1", "fd00:60::41") == "pass"
    # Traffic stays on its network: a storage source may not reach a management address.
    assert verdict("storage-1", "10.50.0.31", "control-1", "10.10.0.11") == "drop"
    assert verdict("compute-1", "10.40.0.21", "hyper-1", "10.40.0.41", "udp", 6081) == "pass"
    # control nodes have no data network; juju controllers only management.
    assert verdict("compute-1", "10.40.0.21", "control-1", "10.20.0.11") == "drop"
    assert verdict("control-1", "10.20.0.11", "juju-1", "10.10.0.5") == "drop"
    assert verdict("control-1", "10.10.0.11", "juju-1", "10.10.0.5") == "pass"
    # The client: public and management, nothing else; SSH always.
    assert verdict("client", "10.99.0.2", "control-1", "10.30.0.11") == "pass"
    assert verdict("client", "10.99.0.2", "control-1", "10.10.0.11") == "pass"
    assert verdict("client", "10.99.0.2", "control-1", "10.20.0.11") == "drop"
    assert verdict("client", "fd00:99::2", "control-1", "fd00:20::11", port=22) == "pass"
    # The failsafe is for management and clients only.
    assert verdict("storage-3", "10.10.0.33", "storage-1", "10.60.0.31", port=22) == "pass"
    assert verdict("storage-3", "10.10.0.33", "storage-1", "10.60.0.31") == "drop"
    assert verdict("client", "10.99.0.2", "compute-1", "10.40.0.21", port=22) == "pass"
    # Anyone else (the internet) gets the public APIs only, and no SSH.
    assert verdict("outsider", "203.0.113.2", "control-1", "10.30.0.11") == "pass"
    assert verdict("outsider", "203.0.113.2", "control-1", "10.10.0.11") == "drop"
    assert verdict("outsider", "2001:db8:113::2", "control-1", "fd00:10::11", port=22) == "drop"
    # ... and it opens the input only: a compute node still may not send to storage-cluster.
    assert verdict("compute-1", "10.10.0.21", "storage-1", "10.60.0.31", port=22) == "drop"
    assert verdict("compute-1", "10.40.0.21", "control-1", "10.10.0.11", port=22) == "drop"


def test_bare_bed_passes_everything(bare_bed: Bed, report: Callable[[Matrix], None]) -> None:
    """Without rulesets every flow must pass: the bed's routing, servers and probes work."""
    machines = CLOUD.representatives()
    oracle = Oracle(CLOUD, modes=dict.fromkeys(CLOUD.machines, "off"))
    matrix = check(bare_bed, oracle, flows_between(CLOUD, machines), "bare bed (no ruleset)")
    report(matrix)
    assert matrix.counts()["drop"] == 0
    assert not matrix.mismatches, matrix.table(only_mismatches=True)


def test_checker_catches_a_handwritten_drop(bare_bed: Bed) -> None:
    """A rule the oracle does not expect shows up as mismatches, and only its flows do."""
    rule = "table inet handwritten { chain input { type filter hook input priority 0;"
    rule += " ip saddr 10.40.0.0/24 udp dport 6081 drop; }; }"
    oracle = Oracle(CLOUD, modes=dict.fromkeys(CLOUD.machines, "off"))
    flows = flows_between(CLOUD, ["compute-1", "control-1", "hyper-1"], externals=False)
    bare_bed.load("control-1", rule)
    try:
        matrix = check(bare_bed, oracle, flows, "handwritten drop on control-1")
    finally:
        bare_bed.nft("control-1", "delete", "table", "inet", "handwritten")
    wrong = {(r.flow.src_addr, r.flow.dst_addr, r.flow.proto) for r in matrix.mismatches}
    meant = {
        (f.src_addr, f.dst_addr, f.proto)
        for f in flows
        if f.dst == "control-1"
        and f.proto == "udp"
        and f.src_addr in ipaddress.ip_network("10.40.0.0/24")
    }
    assert meant and wrong == meant
    assert all(r.got.got == "drop" and r.expected.verdict == "pass" for r in matrix.mismatches)
    assert "<-- MISMATCH" in matrix.table()


def test_teardown_even_on_failure(prerequisites: None) -> None:
    """However the body ends, nothing of the bed is left behind."""
    cloud = cloud_of(load_topology(MAAS))
    sandbox: Sandbox | None = None
    with pytest.raises(RuntimeError, match="boom"), running_bed(cloud, machines=["juju-1"]) as bed:
        sandbox = bed.sandbox
        assert bed.nft("juju-1", "list", "ruleset") == ""
        raise RuntimeError("boom")
    assert sandbox is not None
    with pytest.raises(BedError):
        sandbox.request("ping")
    # Read-only look at the host: none of our namespace names (host mode) may remain.
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    assert sandbox.prefix not in names.stdout
    assert choose_mode() in ("userns", "netns", "host")
    assert sandbox.prefix.startswith(NETNS_PREFIX)


def test_missing_tools_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nft and ip: a skip naming the Debian packages; under CI=true, a failure."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("functional.testbed._which", lambda tool: None)
    problem = missing_prerequisites()
    assert problem and "nftables" in problem and "iproute2" in problem
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        need(problem)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="nftables"):
        need(problem)


def test_missing_renderer_skips_or_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without render.py the ruleset tests skip, saying so; under CI=true they fail."""
    monkeypatch.setattr(conftest, "render_available", lambda: False)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="render.py is missing"):
        conftest.render_dir(MAAS, tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="render.py is missing"):
        conftest.render_dir(MAAS, tmp_path)
