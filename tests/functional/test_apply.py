"""Host.apply against the real nft, inside network namespaces that the test makes.

Two namespaces joined by a veth pair: `ni-apply-<pid>` plays the machine the charm runs on
(our table, plus foreign `inet lxd` and `ip filter` tables loaded first), `ni-ctl-<pid>` plays
its Juju controller (a TCP listener on 17070) and its gateway (nothing on port 22: it answers
with a reset). Every `nft` runs in the machine's namespace; the probe's sockets are made there
too. Files live under a temporary root; `netplan generate` is the real one (it only writes
under its --root-dir), `netplan apply`, `systemctl` and `systemd-run` are faked at the boundary
(they would touch this machine). This machine's own network and ruleset are never touched: the
test checks that its ruleset is the same at the end.

Needs root, nft, ip and netplan: skipped with a message without them, failed under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from network_isolation.host import (
    REMOVAL_RULESET,
    ApplyError,
    Host,
    InvalidArtefactsError,
    ProbeTarget,
    RejectedError,
    Result,
    RolledBackError,
    Tools,
    gateway_target,
    nftables,
    tcp_probe,
)

from .conftest import need
from .machine import FOREIGN as LXD_TABLE
from .netns import in_netns, sh

NFT, NETPLAN, IP = "/usr/sbin/nft", "/usr/sbin/netplan", "/usr/sbin/ip"
SYSTEMCTL, SYSTEMD_RUN = Tools().systemctl, Tools().systemd_run
PID = os.getpid()
MACHINE_NS, CONTROLLER_NS = f"ni-apply-{PID}", f"ni-ctl-{PID}"
NEIGHBOUR_NS = f"ni-nbr-{PID}"
# Documentation addresses (RFC 5737), only ever inside the two namespaces.
MACHINE_ADDRESS, CONTROLLER_ADDRESS = "198.51.100.1", "198.51.100.2"
CONTROLLER_PORT = 17070
CONTROLLER = ProbeTarget(CONTROLLER_ADDRESS, CONTROLLER_PORT, label="juju controller")
GATEWAY = gateway_target(CONTROLLER_ADDRESS)
TARGETS = [CONTROLLER, GATEWAY]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples/microstack-maas.yaml"

# the same foreign `inet lxd` table as the charm's end-to-end tests, and a Docker-like one
FOREIGN = (
    LXD_TABLE
    + """\
table ip filter {
	chain INPUT {
		type filter hook input priority filter; policy accept;
		tcp dport 9999 drop
	}
}
"""
)


def ours(body: str) -> str:
    return (
        "table inet network_isolation\n"
        "delete table inet network_isolation\n"
        "table inet network_isolation {\n" + body + "}\n"
    )


# Counts (and drops) TCP to port 9 only: the probes never touch its counters.
A = ours(
    "\tcounter drop_in_discard {\n\t}\n"
    "\tset blocked {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
    "\t\telements = { 192.0.2.0/24 }\n\t}\n"
    "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
    '\t\ttcp dport 9 counter name "drop_in_discard" drop\n'
    "\t\tip saddr @blocked drop\n\t}\n"
)
B = ours(
    "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
    "\t\ttcp dport 10 drop\n\t}\n"
)


def blocking(port: int) -> str:
    """A valid ruleset that cuts the machine off from its controller."""
    return ours(
        "\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n"
        f"\t\tip daddr {CONTROLLER_ADDRESS} tcp dport {port} drop\n\t}}\n"
    )


NETPLAN_A = "network:\n  version: 2\n  ethernets:\n    enp1s0:\n      routes: []\n"
NETPLAN_B = (
    "network:\n  version: 2\n  ethernets:\n    enp1s0:\n      routing-policy:\n"
    "        - {from: 10.10.0.11, table: 102, priority: 9000}\n"
)


HISTORY = "var/lib/network-isolation/history.json"


def rollbacks(history: bytes) -> int:
    """The rollbacks the apply history counts (what the exporter reports)."""
    return json.loads(history)["rollbacks"]


@dataclass(frozen=True)
class Art:
    nftables: str
    netplan: str | None


class Killed(BaseException):
    """The hook dies: no Python cleanup runs."""


T = TypeVar("T")

# -- namespaces --------------------------------------------------------------------------------


def nft_in(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh(IP, "netns", "exec", MACHINE_NS, NFT, *args, check=check)


def table() -> str | None:
    """`nft list table inet network_isolation` in the machine's namespace (None: absent)."""
    done = nft_in("list", "table", "inet", "network_isolation", check=False)
    return done.stdout if done.returncode == 0 else None


def load_foreign(scratch: Path) -> None:
    """Load the foreign tables, as their own tools do (at start, after a reboot)."""
    path = scratch / "foreign.nft"
    path.write_text(FOREIGN)
    nft_in("-f", str(path))
    path.unlink()


def foreign() -> str:
    return (
        nft_in("list", "table", "inet", "lxd").stdout
        + nft_in("list", "table", "ip", "filter").stdout
    )


LISTENER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(64)
print("ready", flush=True)
while True:
    connection, _ = server.accept()
    connection.close()
"""


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if os.geteuid() != 0:
        need("the apply tests need root to create network namespaces (ip netns)")
    for tool in (NFT, IP, NETPLAN):
        if not Path(tool).exists():
            need(f"missing {tool}: apt-get install nftables iproute2 netplan.io")
    own_ruleset = sh(NFT, "-s", "list", "ruleset", check=False).stdout
    listener: subprocess.Popen[str] | None = None
    try:
        for namespace in (MACHINE_NS, CONTROLLER_NS):
            sh(IP, "netns", "add", namespace)
            sh(IP, "-n", namespace, "link", "set", "lo", "up")
        sh(IP, "link", "add", "ni-up", "netns", MACHINE_NS, "type", "veth",
           "peer", "name", "ni-down", "netns", CONTROLLER_NS)  # fmt: skip
        for namespace, device, address in (
            (MACHINE_NS, "ni-up", MACHINE_ADDRESS),
            (CONTROLLER_NS, "ni-down", CONTROLLER_ADDRESS),
        ):
            sh(IP, "-n", namespace, "addr", "add", f"{address}/24", "dev", device)
            sh(IP, "-n", namespace, "link", "set", device, "up")
        listener = subprocess.Popen(
            [IP, "netns", "exec", CONTROLLER_NS, sys.executable, "-c", LISTENER,
             CONTROLLER_ADDRESS, str(CONTROLLER_PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        load_foreign(tmp_path_factory.mktemp("foreign"))
        yield
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
            if listener.stdout is not None:
                listener.stdout.close()
        for namespace in (MACHINE_NS, CONTROLLER_NS):
            sh(IP, "netns", "del", namespace, check=False)
    assert sh(NFT, "-s", "list", "ruleset", check=False).stdout == own_ruleset


# -- the boundary: nft in the namespace, the rest faked ----------------------------------------


class NsRunner:
    """nft runs in the machine's namespace; systemctl and systemd-run are recorded only."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[list[str]] = []
        self.load_fault: Callable[[list[str]], Result] | None = None
        self.dead_man_running = False
        self.on_restore: Callable[[], None] | None = None  # runs as our rollback restores
        self.kill_on_arm = False

    def run(self, argv: Sequence[str]) -> Result:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == SYSTEMD_RUN and self.kill_on_arm:
            self.kill_on_arm = False
            raise Killed
        if argv[0] == NFT:
            if self.on_restore and argv[1] == "-f" and argv[2].endswith("rollback/ruleset.nft"):
                hook, self.on_restore = self.on_restore, None
                hook()
            if self.load_fault and argv[1] == "-f" and argv[2].endswith("pending.nft"):
                fault, self.load_fault = self.load_fault, None
                return fault(argv)
            argv = [IP, "netns", "exec", MACHINE_NS, *argv]
        elif argv[0] in (SYSTEMCTL, SYSTEMD_RUN):
            return self._systemd(argv)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return Result(done.returncode, done.stdout, done.stderr)

    def _systemd(self, argv: list[str]) -> Result:
        wants = self.root / "etc/systemd/system/sysinit.target.wants"
        if argv[1] == "enable":
            wants.mkdir(parents=True, exist_ok=True)
            (wants / argv[2]).unlink(missing_ok=True)
            (wants / argv[2]).symlink_to(f"/etc/systemd/system/{argv[2]}")
        elif argv[1] == "disable":
            (wants / argv[2]).unlink(missing_ok=True)
        elif argv[1] == "is-active":
            return Result(0 if self.dead_man_running else 3)
        return Result(0)


class NsProbe:
    """The real TCP probe, from inside the machine's namespace; can die on a given call."""

    def __init__(self) -> None:
        self.calls = 0
        self.die_on_call: int | None = None
        self.after_call: dict[int, Callable[[], None]] = {}  # e.g. a neighbour goes silent

    def __call__(self, targets: Sequence[ProbeTarget], budget: float) -> Mapping[ProbeTarget, str]:
        self.calls += 1
        if self.calls == self.die_on_call:
            raise Killed
        unreachable = in_netns(
            MACHINE_NS, lambda: tcp_probe(targets, budget, connect_timeout=0.5, interval=0.2)
        )
        if then := self.after_call.pop(self.calls, None):
            then()
        return unreachable


@dataclass
class Bed:
    host: Host
    runner: NsRunner
    probe: NsProbe
    root: Path
    netplan_log: Path

    def netplan_applies(self) -> int:
        return len(self.netplan_log.read_text().splitlines()) if self.netplan_log.exists() else 0

    def files(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.root)): p.read_bytes()
            for p in sorted(self.root.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }


CLOUD_INIT = (
    "network:\n  version: 2\n  ethernets:\n    enp1s0:\n      addresses: [10.10.0.11/24]\n"
)


@pytest.fixture
def bed(namespaces: None, tmp_path: Path) -> Iterator[Bed]:
    root = tmp_path / "root"
    (root / "etc/netplan").mkdir(parents=True)
    (root / "etc/netplan/50-cloud-init.yaml").write_text(CLOUD_INIT)
    (root / "etc/netplan/50-cloud-init.yaml").chmod(0o600)
    log = tmp_path / "netplan-apply.log"
    netplan = tmp_path / "bin/netplan"
    netplan.parent.mkdir()
    netplan.write_text(
        f'#!/bin/sh\n[ "$1 $2" = "generate --root-dir" ] && exec {NETPLAN} "$@"\n'
        f'echo "$*" >> {log}\n[ ! -e {log}.fail ]\n'
    )
    netplan.chmod(0o755)
    runner, probe = NsRunner(root), NsProbe()
    host = Host(
        root,
        runner,
        probe=probe,
        tools=Tools(netplan=str(netplan)),
        rollback_after=120,
        probe_budget=1.5,
        baseline_budget=1.0,
    )
    before = foreign()
    yield Bed(host, runner, probe, root, log)
    assert foreign() == before, "a foreign table changed"
    removal = tmp_path / "removal.nft"
    removal.write_text(REMOVAL_RULESET)
    nft_in("-f", str(removal))


def reachable() -> bool:
    return not in_netns(MACHINE_NS, lambda: tcp_probe([CONTROLLER], 1.0, connect_timeout=0.5))


# -- rendered artefacts of a real machine ------------------------------------------------------


def rendered(tmp_path: Path, machine: str, **config: str) -> Art:
    """The renderer's artefacts for a machine of the example cloud, with config overrides."""
    try:
        from network_isolation.planner import plan_machine
        from network_isolation.render import render
        from network_isolation.topology import load_topology
    except ImportError as e:
        need(f"the renderer is not importable yet: {e}")
        raise
    data = yaml.safe_load(EXAMPLE.read_text())
    data.setdefault("config", {}).update(config)
    path = tmp_path / f"topology-{len(list(tmp_path.glob('topology-*')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    artefacts = render(plan_machine(load_topology(path).plan_input(machine)))
    return Art(artefacts.nftables, artefacts.netplan)


def cloud_init_of(machine: str) -> str:
    """What MAAS would write in 50-cloud-init.yaml for a machine of the example cloud."""
    interfaces = yaml.safe_load(EXAMPLE.read_text())["machines"][machine]["interfaces"]
    ethernets = {name: {"addresses": list(addresses)} for name, addresses in interfaces.items()}
    return yaml.safe_dump({"network": {"version": 2, "ethernets": ethernets}})


# -- the life of a machine ---------------------------------------------------------------------


def test_apply_reapply_change_audit_off_remove_with_rendered_artefacts(bed: Bed, tmp_path: Path):
    cloud_init = bed.root / "etc/netplan/50-cloud-init.yaml"
    cloud_init.write_text(cloud_init_of("hyper-1"))
    enforce = rendered(tmp_path, "hyper-1")
    audit = rendered(tmp_path, "hyper-1", enforcement="audit")
    off = rendered(tmp_path, "hyper-1", enforcement="off")
    other = rendered(tmp_path, "hyper-1", **{"client-cidrs": "10.98.0.0/24"})
    assert len({enforce, audit, off, other}) == 4
    start = bed.files()
    timings: dict[str, float] = {}

    def timed(step: str, work: Callable[[], T]) -> T:
        began = time.monotonic()
        result = work()
        timings[step] = time.monotonic() - began
        return result

    # apply
    result = timed("apply", lambda: bed.host.apply(enforce, TARGETS))
    assert result.changed and result.netplan_applied and result.skipped_targets == ()
    live = table()
    assert live is not None and "drop_in_data" in live
    assert bed.host.drift() is None
    declared = set(re.findall(r"^\tcounter (\w+) \{$", enforce.nftables, re.MULTILINE))
    assert declared and set(bed.host.counters()) == declared
    assert reachable()

    # re-apply: nothing written, nothing run
    calls, files, applies = len(bed.runner.calls), bed.files(), bed.netplan_applies()
    assert not timed("no-op", lambda: bed.host.apply(enforce, TARGETS)).changed
    assert len(bed.runner.calls) == calls and bed.files() == files
    assert bed.netplan_applies() == applies and bed.probe.calls == 2

    # change: another client subnet, same routing: the ruleset only
    result = timed("change", lambda: bed.host.apply(other, TARGETS))
    assert result.changed and not result.netplan_applied
    assert "10.98.0.0/24" in (table() or "")

    # audit
    assert timed("audit", lambda: bed.host.apply(audit, TARGETS)).changed
    assert "log prefix" in (table() or "")
    assert bed.host.drift() is None

    # off: our table goes, the charm stays (its boot unit loads a ruleset that removes it)
    result = timed("off", lambda: bed.host.apply(off, TARGETS))
    assert result.changed
    assert table() is None
    assert bed.host.drift() is None
    sh(IP, "netns", "exec", MACHINE_NS, *bed.host.boot_command())
    assert table() is None

    # removal: nothing of ours is left
    timed("remove", bed.host.remove)
    assert table() is None
    assert bed.files() == start
    assert not (bed.root / "var/lib/network-isolation").exists()
    assert not list(bed.root.rglob("*network-isolation*"))
    print("timings:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})


def test_hand_written_lifecycle_and_reboot(bed: Bed):
    assert bed.host.apply(Art(A, NETPLAN_A), TARGETS).changed
    applied = table()
    assert applied is not None

    # reboot: the kernel forgets every table; systemd runs our unit's ExecStart
    unit = (bed.root / "etc/systemd/system/network-isolation.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv == bed.host.boot_command()
    before = foreign()
    nft_in("flush", "ruleset")
    assert table() is None
    done = sh(IP, "netns", "exec", MACHINE_NS, *argv)
    assert done.returncode == 0
    assert table() == applied
    assert bed.host.drift() is None
    # (the foreign tables belong to their own tools, which reload them after a reboot)
    load_foreign(bed.root)
    assert foreign() == before


def test_drift_is_seen_and_repaired(bed: Bed):
    bed.host.apply(Art(A, None), TARGETS)
    assert bed.host.drift() is None
    nft_in("add", "rule", "inet", "network_isolation", "input", "tcp", "dport", "11", "drop")
    assert bed.host.drift() == "table inet network_isolation differs from the applied ruleset"
    before = bed.runner.calls[:]
    assert bed.host.repair_drift(TARGETS) == (
        "table inet network_isolation differs from the applied ruleset"
    )
    assert "tcp dport 11" not in (table() or "")
    assert len(bed.runner.calls) > len(before) + 3
    nft_in("delete", "table", "inet", "network_isolation")
    assert bed.host.drift() == "table inet network_isolation is missing"
    assert bed.host.apply(Art(A, None), TARGETS, force=True).changed
    assert bed.host.drift() is None
    assert bed.host.repair_drift(TARGETS) is None


def test_counters_count_real_packets(bed: Bed):
    bed.host.apply(Art(A, None), TARGETS)
    assert bed.host.counters() == {"drop_in_discard": {"packets": 0, "bytes": 0}}

    def knock() -> None:
        for _ in range(3):
            try:
                tcp_probe([ProbeTarget(MACHINE_ADDRESS, 9)], 0.1, connect_timeout=0.1)
            except OSError:
                pass

    in_netns(CONTROLLER_NS, knock)
    counted = bed.host.counters()["drop_in_discard"]
    assert counted["packets"] >= 3 and counted["bytes"] >= 3 * 40


def test_invalid_artefacts_change_nothing(bed: Bed):
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    before, files = table(), bed.files()

    with pytest.raises(InvalidArtefactsError) as raised:
        bed.host.apply(Art(A.replace("tcp dport 9", "tcp dport nine"), NETPLAN_A), TARGETS)
    assert raised.value.stage == "validate-nftables"
    assert str(raised.value).startswith("nftables ruleset rejected: ruleset.nft:")

    bad_netplan = "network:\n  version: 2\n  ethernets:\n    enp1s0:\n      routes: [{to: x}]\n"
    with pytest.raises(InvalidArtefactsError) as raised:
        bed.host.apply(Art(B, bad_netplan), TARGETS)
    assert raised.value.stage == "validate-netplan"
    assert str(raised.value) == (
        "netplan rejected: /etc/netplan/90-network-isolation.yaml:5:21: "
        "Error in network definition: invalid IP family '-1'"
    )
    assert table() == before and bed.files() == files


# -- faults: each ends with the previous ruleset byte-identical --------------------------------


def test_nft_failing_midway_leaves_the_previous_table(bed: Bed, tmp_path: Path):
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    before, files, applies = table(), bed.files(), bed.netplan_applies()

    def fail_midway(argv: list[str]) -> Result:
        # the batch: our table replaced, then a line the kernel refuses (an element that
        # exists): nft aborts the whole transaction
        broken = tmp_path / "broken.nft"
        broken.write_text(
            Path(argv[2]).read_text()
            + "add element inet network_isolation blocked { 192.0.2.0/24 }\n"
            + "create element inet network_isolation blocked { 192.0.2.0/24 }\n"
        )
        done = nft_in("-f", str(broken), check=False)
        assert done.returncode != 0 and "File exists" in done.stderr
        return Result(done.returncode, done.stdout, done.stderr)

    bed.runner.load_fault = fail_midway
    wanted = Art(A.replace("192.0.2.0/24 }", "192.0.2.0/24, 203.0.113.0/24 }"), NETPLAN_B)
    with pytest.raises(RolledBackError) as raised:
        bed.host.apply(wanted, TARGETS)
    assert raised.value.stage == "load"
    assert "File exists" in str(raised.value)
    assert table() == before
    assert bed.netplan_applies() == applies
    after = bed.files()
    assert after.pop("var/lib/network-isolation/rejected.json")
    assert rollbacks(after.pop(HISTORY)) == rollbacks(files.pop(HISTORY)) + 1
    assert after == files

    # a load that dies without a word (killed nft): same outcome
    bed.runner.load_fault = lambda argv: Result(137, "", "")
    with pytest.raises(RolledBackError):
        bed.host.apply(Art(B, NETPLAN_A), TARGETS)
    assert table() == before


def test_a_change_that_cuts_the_controller_off_is_rolled_back(bed: Bed):
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    before, files, applies = table(), bed.files(), bed.netplan_applies()

    began = time.monotonic()
    with pytest.raises(RolledBackError) as raised:
        bed.host.apply(Art(blocking(CONTROLLER_PORT), NETPLAN_B), TARGETS)
    took = time.monotonic() - began
    assert raised.value.stage == "probe"
    assert f"juju controller {CONTROLLER_ADDRESS}:{CONTROLLER_PORT}" in str(raised.value)
    assert "gateway" not in str(raised.value)  # the gateway stayed reachable
    assert table() == before
    assert bed.netplan_applies() == applies + 2  # the bad netplan, then the previous one
    after = bed.files()
    assert after.pop("var/lib/network-isolation/rejected.json")
    assert rollbacks(after.pop(HISTORY)) == rollbacks(files.pop(HISTORY)) + 1
    assert after == files
    assert reachable()
    assert took < 5.0

    # not retried while the inputs are the same: no command at all
    calls = len(bed.runner.calls)
    with pytest.raises(RejectedError):
        bed.host.apply(Art(blocking(CONTROLLER_PORT), NETPLAN_B), TARGETS)
    assert len(bed.runner.calls) == calls
    # new inputs are tried (and this one fails again, for the same reason)
    with pytest.raises(RolledBackError):
        bed.host.apply(Art(blocking(CONTROLLER_PORT) + "# v2\n", NETPLAN_B), TARGETS)
    assert table() == before and reachable()


@pytest.fixture
def neighbours(namespaces: None) -> Iterator[list[ProbeTarget]]:
    """Three storage neighbours (RFC 5737 addresses) in a namespace of their own.

    Nothing listens on their tcp/22: they answer with a reset, as most machines do.
    """
    addresses = [f"203.0.113.{i}" for i in (2, 3, 4)]
    try:
        sh(IP, "netns", "add", NEIGHBOUR_NS)
        sh(IP, "link", "add", "ni-storage", "netns", MACHINE_NS, "type", "veth",
           "peer", "name", "ni-nbr", "netns", NEIGHBOUR_NS)  # fmt: skip
        sh(IP, "-n", MACHINE_NS, "addr", "add", "203.0.113.1/24", "dev", "ni-storage")
        for address in addresses:
            sh(IP, "-n", NEIGHBOUR_NS, "addr", "add", f"{address}/24", "dev", "ni-nbr")
        for namespace, device in ((MACHINE_NS, "ni-storage"), (NEIGHBOUR_NS, "ni-nbr")):
            sh(IP, "-n", namespace, "link", "set", device, "up")
        yield [
            ProbeTarget(a, 22, refused_ok=True, label="storage neighbour", neighbour_on="storage")
            for a in addresses
        ]
    finally:
        sh(IP, "netns", "del", NEIGHBOUR_NS, check=False)  # takes the veth pair with it


def silence(*targets: ProbeTarget) -> None:
    """The neighbours drop the probes from now on, by a rule in their own namespace."""
    rules = "; ".join(
        f"add rule inet silent input ip daddr {t.host} tcp dport 22 drop" for t in targets
    )
    sh(IP, "netns", "exec", NEIGHBOUR_NS, NFT,
       "add table inet silent; add chain inet silent input"
       " { type filter hook input priority filter; policy accept; }; " + rules)  # fmt: skip


def test_one_silent_neighbour_cannot_undo_an_apply_but_most_of_them_can(
    bed: Bed, neighbours: list[ProbeTarget]
):
    targets = [*TARGETS, *neighbours]
    bed.host.apply(Art(A, NETPLAN_A), targets)

    bed.probe.after_call[bed.probe.calls + 1] = lambda: silence(neighbours[0])  # after baseline
    assert bed.host.apply(Art(B, NETPLAN_A), targets).changed
    assert "tcp dport 10 drop" in (table() or "") and bed.host.rejected() is None

    # the silent one answered nothing before the next apply: two of the two left are a majority
    bed.probe.after_call[bed.probe.calls + 1] = lambda: silence(*neighbours[1:])
    with pytest.raises(RolledBackError) as raised:
        bed.host.apply(Art(A, NETPLAN_A), targets)
    assert raised.value.stage == "probe"
    assert "storage neighbour 203.0.113.3:22" in str(raised.value)
    assert "storage neighbour 203.0.113.4:22" in str(raised.value)
    assert "tcp dport 10 drop" in (table() or "") and reachable()


def test_the_dead_man_restores_when_the_hook_dies_before_confirming(bed: Bed):
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    before, files = table(), bed.files()
    bed.probe.die_on_call = bed.probe.calls + 2  # after the baseline: between apply and confirm

    with pytest.raises(Killed):
        bed.host.apply(Art(blocking(CONTROLLER_PORT), NETPLAN_B), TARGETS)
    assert table() != before and not reachable()  # cut off, and nobody left to notice

    # systemd's timer fires: run its command, in the machine's namespace, as systemd would
    arm = next(c for c in bed.runner.calls if c[0] == SYSTEMD_RUN)
    assert "--on-active=120" in arm
    command = arm[-2:]
    assert command == bed.host.rollback_command()
    done = sh(IP, "netns", "exec", MACHINE_NS, *command, check=False)
    assert done.returncode == 0, done.stderr

    assert table() == before
    assert reachable()
    after = bed.files()
    assert after.pop("var/lib/network-isolation/rejected.json")
    assert after.pop("var/lib/network-isolation/pending.nft")  # the next apply clears it
    assert {k: v for k, v in after.items() if "rollback" not in k} == files
    with pytest.raises(RejectedError, match="not confirmed within 120 s"):
        bed.host.apply(Art(blocking(CONTROLLER_PORT), NETPLAN_B), TARGETS)


def test_the_next_hook_restores_when_the_timer_has_not_fired_yet(bed: Bed):
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    before = table()
    bed.probe.die_on_call = bed.probe.calls + 2
    with pytest.raises(Killed):
        bed.host.apply(Art(blocking(CONTROLLER_PORT), NETPLAN_B), TARGETS)
    assert not reachable()

    assert bed.host.apply(Art(B, NETPLAN_A), TARGETS).changed  # recovers first, then applies
    assert reachable()
    assert "tcp dport 10 drop" in (table() or "")
    assert before != table()


@pytest.mark.parametrize(
    "smuggled",
    [
        "table inet network_isolation ; flush ruleset\n",
        " flush ruleset\n",
        "\ttable ip filter\n\tdelete table ip filter\n",
        "table inet network_isolation { } ; delete table inet lxd\n",
        'table inet network_isolation {\n\tinclude "/etc/nftables.conf"\n}\n',
    ],
)
def test_a_ruleset_that_reaches_beyond_our_table_is_refused(bed: Bed, smuggled: str):
    bed.host.apply(Art(A, None), TARGETS)
    before, files = table(), bed.files()
    with pytest.raises(InvalidArtefactsError) as raised:
        bed.host.apply(Art(A + smuggled, None), TARGETS)
    assert raised.value.stage == "validate-nftables"
    assert "reaches beyond table inet network_isolation" in str(raised.value)
    assert table() == before and bed.files() == files  # the fixture checks the foreign tables


def test_drift_repair_does_not_reload_a_tampered_ruleset(bed: Bed):
    bed.host.apply(Art(A, None), TARGETS)
    saved = bed.root / "var/lib/network-isolation/ruleset.nft"
    saved.write_text(A + "table inet network_isolation ; flush ruleset\n")
    nft_in("add", "rule", "inet", "network_isolation", "input", "tcp", "dport", "11", "drop")
    with pytest.raises(InvalidArtefactsError):
        bed.host.repair_drift(TARGETS)
    assert "tcp dport 11" in (table() or "")  # left as it was; the fixture checks lxd, filter


# -- the dead-man window: reboots and races ----------------------------------------------------


def killed_before_confirming(bed: Bed) -> None:
    """A+NETPLAN_A confirmed, then a change to the blocking ruleset whose hook dies unconfirmed."""
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    bed.probe.die_on_call = bed.probe.calls + 2  # after the baseline: between apply and confirm
    with pytest.raises(Killed):
        bed.host.apply(Art(blocking(CONTROLLER_PORT), NETPLAN_B), TARGETS)
    assert not reachable()


def test_a_reboot_inside_the_dead_man_window_boots_into_the_previous_state(bed: Bed):
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    before, foreign_before = table(), foreign()
    killed_before_confirming(bed)
    ours = bed.root / "etc/netplan/90-network-isolation.yaml"
    assert ours.read_text() == NETPLAN_B

    # reboot: the kernel forgets every table and the transient timer is gone; systemd runs
    # our unit's ExecStart before any network is up
    unit = (bed.root / "etc/systemd/system/network-isolation.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv == bed.host.boot_command()
    nft_in("flush", "ruleset")
    done = sh(IP, "netns", "exec", MACHINE_NS, *argv, check=False)
    assert done.returncode == 0, done.stderr

    assert table() == before and reachable()
    assert ours.read_text() == NETPLAN_A  # never-confirmed routing is not what boots
    assert bed.netplan_log.read_text().splitlines()[-1] == "generate"  # networkd not up yet
    assert not bed.host.guard.is_armed()
    with pytest.raises(RejectedError, match="not confirmed within"):
        bed.host.apply(Art(blocking(CONTROLLER_PORT), NETPLAN_B), TARGETS)
    load_foreign(bed.root)
    assert foreign() == foreign_before


def test_the_dead_man_firing_during_our_rollback_does_not_restore_twice(bed: Bed):
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    before, applies = table(), bed.netplan_applies()
    fired: list[subprocess.CompletedProcess[str]] = []
    command = bed.host.rollback_command()
    bed.runner.on_restore = lambda: fired.append(
        sh(IP, "netns", "exec", MACHINE_NS, *command, check=False)
    )

    with pytest.raises(RolledBackError):
        bed.host.apply(Art(blocking(CONTROLLER_PORT), NETPLAN_B), TARGETS)

    assert fired and fired[0].returncode == 0, fired
    assert table() == before and reachable()
    assert bed.netplan_applies() == applies + 2  # the change, then our restore: not the timer's
    assert not bed.host.guard.is_armed()


def test_a_failed_dead_man_restore_is_retried_by_the_next_hook(bed: Bed):
    killed_before_confirming(bed)
    failing = Path(f"{bed.netplan_log}.fail")
    failing.touch()  # netplan apply fails while the timer's script runs
    command = bed.host.rollback_command()
    done = sh(IP, "netns", "exec", MACHINE_NS, *command, check=False)
    failing.unlink()
    assert done.returncode != 0
    assert bed.host.guard.is_armed()  # the failure is left for the next hook

    applies = bed.netplan_applies()
    assert bed.host.apply(Art(B, NETPLAN_A), TARGETS).changed  # recovers first, then applies
    assert bed.netplan_applies() == applies + 1  # the restore's netplan apply, retried
    assert reachable() and "tcp dport 10 drop" in (table() or "")


def test_a_hook_killed_before_changing_anything_does_not_reject_its_artefacts(bed: Bed):
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    before = table()
    bed.runner.kill_on_arm = True  # dies right after writing the marker, before any change
    with pytest.raises(Killed):
        bed.host.apply(Art(B, NETPLAN_A), TARGETS)
    assert table() == before

    assert bed.host.apply(Art(B, NETPLAN_A), TARGETS).changed
    assert bed.host.rejected() is None


def test_a_hook_killed_before_nft_runs_is_neither_restored_nor_rejected(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
):
    """Killed once `pending.nft` is written, before `nft -f` runs: the timer then fires."""
    bed.host.apply(Art(A, NETPLAN_A), TARGETS)
    before, applies = table(), bed.netplan_applies()
    write = nftables.write_atomically

    def write_then_die(path: Path, content: str | bytes, mode: int = 0o644) -> None:
        write(path, content, mode)
        if path == bed.host.table.pending_file:
            raise Killed

    monkeypatch.setattr(nftables, "write_atomically", write_then_die)
    with pytest.raises(Killed):
        bed.host.apply(Art(B, NETPLAN_B), TARGETS)
    monkeypatch.setattr(nftables, "write_atomically", write)
    command = bed.host.rollback_command()
    done = sh(IP, "netns", "exec", MACHINE_NS, *command, check=False)

    assert done.returncode == 0, done.stderr
    assert table() == before and bed.netplan_applies() == applies  # nothing to restore
    assert bed.host.rejected() is None and not bed.host.guard.is_armed()
    assert bed.host.apply(Art(B, NETPLAN_B), TARGETS).changed  # not refused as rejected
    assert "tcp dport 10 drop" in (table() or "") and reachable()


def test_no_apply_while_the_dead_man_restores(bed: Bed):
    killed_before_confirming(bed)
    state = bed.root / "var/lib/network-isolation"
    (state / "armed").rename(state / "fired")  # the timer's script took the marker: it runs
    bed.runner.dead_man_running = True
    bed.host.guard.settle_budget = 1.0
    with pytest.raises(ApplyError, match="still running") as raised:
        bed.host.apply(Art(B, NETPLAN_A), TARGETS)
    assert raised.value.stage == "arm"
    assert (state / "rollback/ruleset.nft").read_text() == A  # its snapshot is left alone

    # the script died halfway (no service any more): the next hook takes its restore over
    bed.runner.dead_man_running = False
    assert bed.host.apply(Art(B, NETPLAN_A), TARGETS).changed
    assert reachable() and "tcp dport 10 drop" in (table() or "")
