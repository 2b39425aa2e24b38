#!/usr/bin/env python3
"""Benchmark the charm against the number of peers: reconcile cost, rules, nft and packets.

`tox -e bench` runs the full benchmark (a few minutes on two cores); `tox -e bench -- --quick`
a short one. It is a measurement, not a test: it prints what it measured and whether each
target of the issue is met, and exits 0 either way. It exits 1 when a measurement could not
run (a missing tool, no root), except with --quick.

What it measures, for N peers in the `cluster` peer relation:

- the reconcile time of a `config-changed` hook under ops.testing (median of several runs),
  leader and non-leader, on unchanged inputs (the no-op) and on a changed config, with the
  host faked at its boundary (tests/unit/fake_host.py), as the unit tests do;
- the hook-tool calls per hook, counted on ops.testing's model backend (ops caches is-leader
  for the 30 s leadership lease, so only the first is-leader of a hook is counted);
- the writes of the unchanged-input hook: databag writes (relation-set), host applies and
  host file writes;
- the rules and set elements of the rendered nftables table;
- the time of `nft -f` loading the rendered table into a fresh network namespace, and of
  loading it again with one more rack's subnets (the update);
- the packet path between two network namespaces (needs root, iperf3 and nft): new TCP
  connections per second and TCP throughput through no ruleset, a conntrack-only ruleset, the
  rendered table and a naive one-rule-per-peer ruleset, all measured side by side.

Everything runs in namespaces this process creates (named after its pid) and deletes; the
machine's own network and ruleset are never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import ipaddress
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests" / "unit", ROOT / "lib", ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from ops import testing  # noqa: E402

import charm  # noqa: E402
from network_isolation.host import registry as host_module  # noqa: E402
from network_isolation.model import NETWORKS, Network  # noqa: E402
from network_isolation.peers import CloudView, MachineRecord, aggregate, dump  # noqa: E402
from network_isolation.rollout import Roll, UnitRoll  # noqa: E402

APP = "network-isolation"
RACK_SIZE = 20
# One NIC per network on every machine, as MAAS trunks every space's VLAN to every rack.
NICS: dict[Network, str] = {
    Network.MANAGEMENT: "enp1s0",
    Network.INTERNAL: "enp2s0",
    Network.PUBLIC: "enp3s0",
    Network.STORAGE: "enp4s0",
    Network.DATA: "enp5s0",
    Network.STORAGE_CLUSTER: "enp6s0",
}
FULL_PEERS = (1, 10, 100, 1000, 5000)
QUICK_PEERS = (1, 10, 100, 1000)
PACKET_PEERS = (1000, 10000)
CHANGED_CONFIG = {"client-cidrs": "192.0.2.0/24"}
MAX_PRIMING_HOOKS = 4
SKIP_CHECKS_ENV = "SCENARIO_SKIP_CONSISTENCY_CHECKS"

# The performance targets.
RECONCILE_TARGET_PEERS = 1000
RECONCILE_TARGET_SECONDS = 1.0
THROUGHPUT_TARGET = 0.95
CONNECTION_RATE_TARGET = 0.9

# ops' model backend method -> the Juju hook tool it runs.
HOOK_TOOLS: dict[str, str] = {
    "relation_ids": "relation-ids",
    "relation_list": "relation-list",
    "relation_remote_app_name": "relation-list --app",
    "relation_get": "relation-get",
    "relation_set": "relation-set",
    "relation_model_get": "relation-model-get",
    "config_get": "config-get",
    "is_leader": "is-leader",
    "resource_get": "resource-get",
    "status_get": "status-get",
    "status_set": "status-set",
    "storage_list": "storage-list",
    "storage_get": "storage-get",
    "storage_add": "storage-add",
    "action_get": "action-get",
    "action_set": "action-set",
    "action_log": "action-log",
    "action_fail": "action-fail",
    "application_version_set": "application-version-set",
    "juju_log": "juju-log",
    "network_get": "network-get",
    "planned_units": "goal-state",
    "secret_get": "secret-get",
    "secret_info_get": "secret-info-get",
    "secret_set": "secret-set",
    "secret_add": "secret-add",
    "secret_grant": "secret-grant",
    "secret_revoke": "secret-revoke",
    "secret_remove": "secret-remove",
    "open_port": "open-port",
    "close_port": "close-port",
    "opened_ports": "opened-ports",
    "reboot": "juju-reboot",
    "credential_get": "credential-get",
}


# ---------------------------------------------------------------------------------------------
# The cloud: racks of RACK_SIZE machines, one /24 per rack per network


def rack_subnet(network: Network, rack: int) -> ipaddress.IPv4Network:
    """The subnet of one rack on one network: 10.(16 * network + rack / 256).(rack % 256).0/24."""
    if not 0 <= rack < 16 * 256:
        raise ValueError(f"rack {rack} is out of the benchmark's address plan")
    index = NETWORKS.index(network)
    return ipaddress.IPv4Network(f"10.{16 * index + rack // 256}.{rack % 256}.0/24")


def machine_address(network: Network, unit: int) -> ipaddress.IPv4Interface:
    """The address of unit `unit`'s machine on a network (unit 0 is the measured one)."""
    rack, place = divmod(unit, RACK_SIZE)
    subnet = rack_subnet(network, rack)
    return ipaddress.IPv4Interface(f"{subnet[10 + place]}/{subnet.prefixlen}")


def role_of(unit: int) -> str:
    """Per rack: 14 compute nodes, 3 storage nodes, 3 control nodes."""
    place = unit % RACK_SIZE
    return "compute" if place < 14 else "storage" if place < 17 else "control"


def machine_record(unit: int) -> MachineRecord:
    """What unit `unit` publishes in its databag, as the charm builds it."""
    return MachineRecord(
        machine=f"machine-{unit}",
        roles=(role_of(unit),),
        subnets={net: (machine_address(net, unit).network,) for net in NETWORKS},
    )


def _fingerprint(unit: int) -> str:
    return hashlib.sha256(f"ruleset of unit {unit}".encode()).hexdigest()


def peer_databag(unit: int) -> dict[str, str]:
    """A settled peer's unit databag: its record, its applied ruleset and Juju's own keys."""
    address = str(machine_address(Network.MANAGEMENT, unit).ip)
    wanted = _fingerprint(unit)
    return {
        "machine": dump(machine_record(unit)),
        "roll": dump(UnitRoll(wants=wanted, applied=wanted)),
        "private-address": address,
        "ingress-address": address,
        "egress-subnets": f"{address}/32",
    }


def cloud_view(peers: int, extra_racks: int = 0) -> CloudView:
    """The leader's aggregate of the measured unit and its peers (plus extra empty racks)."""
    records = {f"{APP}/{u}": machine_record(u) for u in range(peers + 1)}
    first_new = peers // RACK_SIZE + 1
    for rack in range(first_new, first_new + extra_racks):
        records[f"{APP}/{rack * RACK_SIZE}"] = machine_record(rack * RACK_SIZE)
    return aggregate(records)


def own_networks() -> list[testing.Network]:
    """The measured unit's six bindings, as `network-get` gives them."""
    bindings = []
    for net in NETWORKS:
        address = machine_address(net, 0)
        bindings.append(
            testing.Network(
                net.value,
                bind_addresses=[
                    testing.BindAddress(
                        [testing.Address(str(address.ip), cidr=str(address.network))],
                        interface_name=NICS[net],
                    )
                ],
                ingress_addresses=[str(address.ip)],
                egress_subnets=[str(address.network)],
            )
        )
    return bindings


def hook_state(
    peers: int, leader: bool, config: dict[str, str] | None = None, extra_racks: int = 0
) -> testing.State:
    """The state of a hook on unit 0 of a cloud of `peers` + 1 machines.

    A non-leader finds the leader's aggregate in the application databag; a leader finds it
    empty and builds it from the peers' unit databags.
    """
    app_data: dict[str, str] = {}
    if not leader:
        app_data = {"cloud": dump(cloud_view(peers, extra_racks)), "roll": dump(Roll())}
    cluster = testing.PeerRelation(
        "cluster",
        peers_data={u: peer_databag(u) for u in range(1, peers + 1)},
        local_app_data=app_data,
    )
    principal = testing.SubordinateRelation("compute-node", remote_app_name="openstack-hypervisor")
    return testing.State(
        leader=leader,
        config=dict(config or {}),
        networks=own_networks(),
        relations=[principal, cluster],
    )


# ---------------------------------------------------------------------------------------------
# Counting hook-tool calls and writes


class HookToolCounter:
    """Counts the hook-tool calls the charm makes through ops' model backend.

    Only outermost calls count (a backend method calling another is one hook tool), and only
    the first is-leader of a hook: ops caches it for the leadership lease.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._depth = 0

    def reset(self) -> None:
        """Start counting a new hook."""
        self.calls = Counter()
        self._depth = 0

    @property
    def total(self) -> int:
        """All hook-tool calls counted since the last reset."""
        return sum(self.calls.values())

    def _wrap(self, func: Callable[..., Any], tool: str) -> Callable[..., Any]:
        counter = self

        @functools.wraps(func)
        def counted(backend: Any, *args: Any, **kwargs: Any) -> Any:
            if counter._depth == 0 and not (tool == "is-leader" and counter.calls[tool]):
                counter.calls[tool] += 1
            counter._depth += 1
            try:
                return func(backend, *args, **kwargs)
            finally:
                counter._depth -= 1

        return counted

    @contextlib.contextmanager
    def installed(self, backend_class: type | None = None) -> Iterator[HookToolCounter]:
        """Count the calls of `backend_class` (ops.testing's model backend by default)."""
        cls = backend_class or mock_backend_class()
        saved: dict[str, Any] = {}
        for method, tool in HOOK_TOOLS.items():
            if not hasattr(cls, method):
                continue
            saved[method] = cls.__dict__.get(method)
            setattr(cls, method, self._wrap(getattr(cls, method), tool))
        try:
            yield self
        finally:
            for method, original in saved.items():
                if original is None:
                    delattr(cls, method)
                else:
                    setattr(cls, method, original)


def mock_backend_class() -> type:
    """ops.testing's model backend (scenario's `_MockModelBackend`)."""
    return importlib.import_module("scenario.mocking")._MockModelBackend


@dataclass
class HookRun:
    """One hook: its wall time, hook-tool calls and writes."""

    seconds: float
    calls: Counter[str]
    applies: int
    file_writes: int

    @property
    def databag_writes(self) -> int:
        """relation-set calls."""
        return self.calls["relation-set"]

    @property
    def writes(self) -> int:
        """Everything the hook changed: databags, the host's ruleset, files on the host."""
        return self.databag_writes + self.applies + self.file_writes


@dataclass
class Scenario:
    """Median time and the (deterministic) calls and writes of one kind of hook."""

    runs: list[HookRun]

    @property
    def seconds(self) -> float:
        """The median wall time."""
        return statistics.median(r.seconds for r in self.runs)

    @property
    def last(self) -> HookRun:
        """The last run, for its counts."""
        return self.runs[-1]


@dataclass
class RoleResult:
    """A leader's or a non-leader's hooks at one N."""

    priming_hooks: int
    noop: Scenario
    changed: Scenario
    ruleset: str


class Harness:
    """Runs the charm's hooks under ops.testing with the host faked at its boundary."""

    def __init__(self, fake_host: Any, counter: HookToolCounter):
        self.fake_host = fake_host
        self.counter = counter
        self.file_writes = 0
        self._state_dir: Path | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[Harness]:
        """Patch the charm's Host, count hook tools and host file writes; undo on exit."""
        original_host = charm.Host
        original_write = host_module.write_atomically
        saved_env = {k: os.environ.get(k) for k in (host_module.STATE_DIR_ENV, SKIP_CHECKS_ENV)}

        def counted_write(*args: Any, **kwargs: Any) -> None:
            self.file_writes += 1
            original_write(*args, **kwargs)

        charm.Host = self.fake_host
        host_module.write_atomically = counted_write
        try:
            with self.counter.installed(), tempfile.TemporaryDirectory() as tmp:
                self._state_dir = Path(tmp)
                yield self
        finally:
            charm.Host = original_host
            host_module.write_atomically = original_write
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def new_machine(self) -> None:
        """A fresh machine: nothing applied, an empty state directory."""
        if self._state_dir is None:
            raise RuntimeError("Harness.installed() first")
        self.fake_host.reset()
        directory = Path(tempfile.mkdtemp(dir=self._state_dir))
        os.environ[host_module.STATE_DIR_ENV] = str(directory)

    def run(self, state: testing.State, check: bool = False) -> tuple[testing.State, HookRun]:
        """One config-changed hook on unit 0; `check` runs ops.testing's consistency checks."""
        if check:
            os.environ.pop(SKIP_CHECKS_ENV, None)
        else:
            os.environ[SKIP_CHECKS_ENV] = "1"
        ctx = testing.Context(charm.NetworkIsolationCharm, unit_id=0, machine_id="0")
        self.counter.reset()
        self.fake_host.calls.clear()
        self.file_writes = 0
        start = time.perf_counter()
        out = ctx.run(ctx.on.config_changed(), state)
        seconds = time.perf_counter() - start
        applies = sum(1 for name, _ in self.fake_host.calls if name == "apply")
        return out, HookRun(seconds, Counter(self.counter.calls), applies, self.file_writes)

    def applied(self) -> Any:
        """What the fake host has applied."""
        return self.fake_host.applied_state

    def prime(self, state: testing.State) -> tuple[testing.State, int]:
        """Run hooks until one writes nothing; the settled state and the hooks it took."""
        for hooks in range(1, MAX_PRIMING_HOOKS + 1):
            state, run = self.run(state, check=hooks == 1)
            if run.writes == 0:
                return state, hooks - 1
        raise RuntimeError(f"no unchanged-input hook after {MAX_PRIMING_HOOKS} hooks")

    def scenario(self, state: testing.State, runs: int, applied: Any) -> Scenario:
        """`runs` hooks on the same input, each from the same applied state."""
        results = []
        for _ in range(runs):
            self.fake_host.applied_state = applied
            self.fake_host.rejected_state = None
            results.append(self.run(state)[1])
        self.fake_host.applied_state = applied
        return Scenario(results)

    def role(self, peers: int, leader: bool, runs: int) -> RoleResult:
        """Prime a unit, then time its no-op hook and a hook on a changed config.

        A non-leader applies a change only in its turn (rolling apply): its changed hook is
        timed with the turn granted, so it applies as the leader's does.
        """
        self.new_machine()
        settled, priming = self.prime(hook_state(peers, leader))
        applied = self.applied()
        noop = self.scenario(settled, runs, applied)
        changed_state = dataclasses.replace(settled, config=dict(CHANGED_CONFIG))
        if not leader:
            changed_state = granted_turn(changed_state)
        changed = self.scenario(changed_state, runs, applied)
        return RoleResult(priming, noop, changed, applied.nftables or "")

    def ruleset(self, peers: int, extra_racks: int = 0) -> str:
        """The table a non-leader renders for a cloud of `peers` + 1 machines."""
        self.new_machine()
        self.run(hook_state(peers, leader=False, extra_racks=extra_racks))
        return self.applied().nftables or ""


def granted_turn(state: testing.State) -> testing.State:
    """The state with the leader's apply turn given to unit 0."""
    relations = []
    for relation in state.relations:
        if isinstance(relation, testing.PeerRelation):
            app_data = {**relation.local_app_data, "roll": dump(Roll(turn=f"{APP}/0"))}
            relation = dataclasses.replace(relation, local_app_data=app_data)
        relations.append(relation)
    return dataclasses.replace(state, relations=relations)


def load_fake_host() -> Any:
    """The unit tests' stand-in for Host (tests/unit/fake_host.py)."""
    return importlib.import_module("fake_host").FakeHost


# ---------------------------------------------------------------------------------------------
# Rulesets


def count_rules(ruleset: str) -> int:
    """Rules in the chains of an nft file (not comments, hooks, braces or set elements)."""
    count, in_chain = 0, False
    for line in ruleset.splitlines():
        text = line.strip()
        if text.startswith("chain "):
            in_chain = True
        elif in_chain and text == "}":
            in_chain = False
        elif in_chain and text and not text.startswith(("#", "type ")):
            count += 1
    return count


def count_elements(ruleset: str) -> int:
    """Elements of the sets of an nft file."""
    count, in_elements = 0, False
    for line in ruleset.splitlines():
        text = line.strip()
        if text.startswith("elements = {"):
            in_elements = True
        elif in_elements and text == "}":
            in_elements = False
        elif in_elements and text:
            count += len([e for e in text.split(",") if e.strip()])
    return count


CONNTRACK_ONLY = """\
table inet bench_conntrack {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tct state established,related accept
\t}
}
"""


def naive_ruleset(peers: int) -> str:
    """One accept rule per peer's address, as a linear iptables design has.

    The probe comes from the last peer, so every new connection walks all the rules.
    """
    lines = [
        "table inet bench_naive {",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        "\t\tct state established,related accept",
    ]
    lines += [
        f"\t\tip saddr {machine_address(Network.INTERNAL, u).ip} accept"
        for u in range(1, peers + 1)
    ]
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Network namespaces


class MeasurementError(RuntimeError):
    """A measurement could not run (a tool is missing or failed)."""


def missing_tools(tools: Sequence[str] = ("ip", "nft", "iperf3")) -> list[str]:
    """What the namespace measurements need and is not here (root included)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (ip netns)")
    return missing


class Namespaces:
    """Network namespaces of this process, named after its pid, and processes run in them."""

    def __init__(self, tag: str):
        self.prefix = f"nibench{os.getpid()}{tag}"
        self.names: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def add(self, suffix: str) -> str:
        """Create a namespace with its loopback up."""
        name = f"{self.prefix}{suffix}"
        _must(["ip", "netns", "add", name])
        self.names.append(name)
        _must(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def run(self, ns: str, *argv: str, timeout: float = 120) -> str:
        """Run a command in a namespace; its output, or MeasurementError."""
        return _must(["ip", "netns", "exec", ns, *argv], timeout=timeout)

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        """Start a process in a namespace; stopped by close()."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)
        return process

    def load(self, ns: str, ruleset: str) -> float:
        """Load a ruleset with `nft -f` in a namespace; the seconds it took."""
        with tempfile.NamedTemporaryFile("w", prefix="bench-", suffix=".nft") as f:
            f.write(ruleset)
            f.flush()
            start = time.perf_counter()
            self.run(ns, "nft", "-f", f.name)
            return time.perf_counter() - start

    def close(self) -> None:
        """Stop our processes, delete our namespaces."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.names.clear()


def _must(argv: Sequence[str], timeout: float = 120) -> str:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MeasurementError(f"{' '.join(argv[:6])}: {e}") from None
    if result.returncode != 0:
        raise MeasurementError(f"{' '.join(argv[:6])}: {result.stderr.strip()[:300]}")
    return result.stdout


def nft_times(first: str, update: str, repeats: int) -> tuple[float, float]:
    """Median seconds of loading `first` into a fresh namespace, then `update` over it."""
    loads: list[float] = []
    updates: list[float] = []
    for attempt in range(repeats):
        with Namespaces(f"n{attempt}") as spaces:
            ns = spaces.add("")
            loads.append(spaces.load(ns, first))
            updates.append(spaces.load(ns, update))
    return statistics.median(loads), statistics.median(updates)


# ---------------------------------------------------------------------------------------------
# The packet path

LISTENER = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
print("ready", flush=True)
while True:
    try:
        c, _ = s.accept()
        c.close()
    except OSError:
        pass
"""

# Opens and resets connections as fast as it can: SO_LINGER 0 sends RST on close, so no
# TIME_WAIT exhausts the ports. Every connection is new to conntrack: its SYN walks the rules.
CONNECTOR = """\
import json, os, socket, struct, sys, time
host, port, seconds, workers = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
cpus = [int(sys.argv[5])] if len(sys.argv) > 5 else []
linger = struct.pack("ii", 1, 0)
pipes = []
for _ in range(workers):
    r, w = os.pipe()
    if os.fork() == 0:
        if cpus:
            os.sched_setaffinity(0, cpus)
        ok = failed = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.settimeout(1)
            try:
                s.connect((host, port))
                ok += 1
            except OSError:
                failed += 1
            s.close()
        os.write(w, json.dumps([ok, failed]).encode())
        os._exit(0)
    os.close(w)
    pipes.append(r)
ok = failed = 0
for r in pipes:
    a, b = json.loads(os.read(r, 100))
    ok, failed = ok + a, failed + b
for _ in pipes:
    os.wait()
print(json.dumps({"connections": ok, "failed": failed, "seconds": seconds}))
"""

LISTEN_PORT = 7000


@dataclass
class PacketSettings:
    """How long and how often each packet-path measurement runs."""

    connect_seconds: float = 1.0
    connect_rounds: int = 5
    workers: int = 2
    iperf_seconds: int = 3
    iperf_omit: int = 1
    iperf_rounds: int = 6


def measuring_cpu() -> int:
    """The one CPU every measuring process runs on.

    Clients and servers share one core: the cost of a ruleset is then CPU time taken from the
    same budget, and rounds repeat within 1-2 %. Spread over two cores, the client starves or
    races the server and the same measurement swings by 10-20 %.
    """
    return min(os.sched_getaffinity(0))


@dataclass
class PathResult:
    """One ruleset on the packet path."""

    label: str
    kind: str  # none, conntrack, ours, naive
    peers: int | None
    rules: int
    rates: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)
    failed_connections: int = 0

    @property
    def rate(self) -> float:
        """Median new connections per second."""
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def throughput(self) -> float:
        """Median TCP throughput in bit/s."""
        return statistics.median(self.throughputs) if self.throughputs else 0.0


@dataclass
class Pair:
    """A server namespace (ruleset on its input hook) and a client namespace, on one veth."""

    result: PathResult
    server: str
    client: str
    server_ip: str


def build_pair(
    spaces: Namespaces, index: int, result: PathResult, ruleset: str | None, client_unit: int
) -> Pair:
    """The measured machine (unit 0) as server, a peer of another rack as client."""
    server_if = machine_address(Network.INTERNAL, 0)
    client_if = machine_address(Network.INTERNAL, client_unit)
    server, client = spaces.add(f"s{index}"), spaces.add(f"c{index}")
    nic = NICS[Network.INTERNAL]
    veth = ["type", "veth", "peer", "eth0", "netns", client]
    _must(["ip", "-n", server, "link", "add", nic, *veth])
    for ns, dev, address, other in (
        (server, nic, server_if, client_if),
        (client, "eth0", client_if, server_if),
    ):
        _must(["ip", "-n", ns, "addr", "add", str(address), "dev", dev])
        _must(["ip", "-n", ns, "link", "set", dev, "up"])
        if other.network != address.network:
            _must(["ip", "-n", ns, "route", "add", str(other.network), "dev", dev])
    spaces.run(server, "sysctl", "-qw", "net.core.somaxconn=4096")
    spaces.run(client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
    if ruleset is not None:
        spaces.load(server, ruleset)
    server_ip = str(server_if.ip)
    listener = spaces.spawn(server, sys.executable, "-c", LISTENER, server_ip, str(LISTEN_PORT))
    if listener.stdout is None or listener.stdout.readline().strip() != "ready":
        raise MeasurementError(f"the listener in {server} did not start")
    iperf = spaces.spawn(server, "iperf3", "-s", "-B", server_ip)
    for process in (listener, iperf):
        os.sched_setaffinity(process.pid, {measuring_cpu()})
    return Pair(result, server, client, server_ip)


def measure_rate(spaces: Namespaces, pair: Pair, settings: PacketSettings) -> None:
    """New connections per second from the client to the server's listener."""
    out = spaces.run(
        pair.client,
        sys.executable,
        "-c",
        CONNECTOR,
        pair.server_ip,
        str(LISTEN_PORT),
        str(settings.connect_seconds),
        str(settings.workers),
        str(measuring_cpu()),
    )
    found = json.loads(out)
    if not found["connections"]:
        raise MeasurementError(f"no connection got through {pair.result.label}")
    pair.result.rates.append(found["connections"] / found["seconds"])
    pair.result.failed_connections += found["failed"]


def measure_throughput(spaces: Namespaces, pair: Pair, settings: PacketSettings) -> None:
    """TCP throughput of one established flow (iperf3)."""
    argv = ["iperf3", "-c", pair.server_ip, "-J", "-t", str(settings.iperf_seconds)]
    argv += ["-A", str(measuring_cpu())]
    if settings.iperf_omit:
        argv += ["-O", str(settings.iperf_omit)]
    out = ""
    for attempt in range(3):  # the server may still be starting
        try:
            out = spaces.run(pair.client, *argv, timeout=settings.iperf_seconds + 30)
            break
        except MeasurementError:
            if attempt == 2:
                raise
            time.sleep(0.5)
    report = json.loads(out)
    pair.result.throughputs.append(float(report["end"]["sum_received"]["bits_per_second"]))


def _rotated(pairs: Sequence[Pair], turn: int) -> list[Pair]:
    """Each round starts with another configuration, so drift spreads over all of them."""
    shift = turn % len(pairs)
    return [*pairs[shift:], *pairs[:shift]]


def packet_path(
    rulesets: dict[int, str], settings: PacketSettings, log: Callable[[str], None]
) -> list[PathResult]:
    """Every ruleset side by side: rounds interleave the configurations."""
    largest = max(rulesets)
    configs: list[tuple[PathResult, str | None, int]] = [
        (PathResult("no ruleset", "none", None, 0), None, largest),
        (PathResult("conntrack only", "conntrack", None, 1), CONNTRACK_ONLY, largest),
    ]
    for peers, ours in sorted(rulesets.items()):
        naive = naive_ruleset(peers)
        configs += [
            (PathResult("ours", "ours", peers, count_rules(ours)), ours, peers),
            (PathResult("naive", "naive", peers, count_rules(naive)), naive, peers),
        ]
    with Namespaces("p") as spaces:
        pairs = [
            build_pair(spaces, i, result, ruleset, client)
            for i, (result, ruleset, client) in enumerate(configs)
        ]
        log(f"packet path: {len(pairs)} namespace pairs ready")
        # Throughput first: the connection storms leave conntrack entries whose expiry would
        # take CPU from the flows.
        for turn in range(settings.iperf_rounds):
            for pair in _rotated(pairs, turn):
                measure_throughput(spaces, pair, settings)
        log("packet path: throughput measured")
        for turn in range(settings.connect_rounds):
            for pair in _rotated(pairs, turn):
                measure_rate(spaces, pair, settings)
    return [c[0] for c in configs]


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class PeerResult:
    """Everything measured at one N."""

    peers: int
    leader: RoleResult
    follower: RoleResult
    rules: int
    elements: int
    subnets_per_network: int
    nft_load: float | None = None
    nft_update: float | None = None


@dataclass
class Results:
    """A whole benchmark run."""

    rows: list[PeerResult] = field(default_factory=list)
    paths: list[PathResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def reconcile(harness: Harness, peers: int, runs: int) -> PeerResult:
    """The charm's hooks at one N, leader and non-leader."""
    leader = harness.role(peers, leader=True, runs=runs)
    follower = harness.role(peers, leader=False, runs=runs)
    ruleset = follower.ruleset
    return PeerResult(
        peers=peers,
        leader=leader,
        follower=follower,
        rules=count_rules(ruleset),
        elements=count_elements(ruleset),
        subnets_per_network=len(cloud_view(peers).subnets_of(Network.INTERNAL)),
    )


def machine() -> dict[str, str]:
    """What the benchmark ran on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    if shutil.which("free"):
        rows = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()
        memory = next((" ".join(r.split()[:2]) for r in rows if r.startswith("Mem:")), memory)
    nft = "missing"
    if shutil.which("nft"):
        nft = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "memory": memory.replace("Mem: ", "") + " total",
        "kernel": f"{platform.system()} {platform.release()}",
        "nft": nft,
        "python": platform.python_version(),
    }


def run(args: argparse.Namespace, log: Callable[[str], None]) -> Results:
    """Measure everything the arguments ask for."""
    results = Results()
    start = time.perf_counter()
    harness = Harness(load_fake_host(), HookToolCounter())
    tools_missing = missing_tools()
    if tools_missing:
        results.failures.append(f"nft and packet measurements skipped: missing {tools_missing}")
    rulesets: dict[int, str] = {}
    with harness.installed():
        for peers in args.peers:
            runs = args.runs if args.runs else (3 if args.quick or peers > 1000 else 5)
            row = reconcile(harness, peers, runs)
            results.rows.append(row)
            log(f"reconcile: {peers} peers done ({time.perf_counter() - start:.0f} s)")
            if not tools_missing:
                update = harness.ruleset(peers, extra_racks=1)
                try:
                    row.nft_load, row.nft_update = nft_times(
                        row.follower.ruleset, update, 1 if args.quick else 3
                    )
                except MeasurementError as e:
                    results.failures.append(f"nft at {peers} peers: {e}")
        if not tools_missing and args.packet_peers:
            for peers in args.packet_peers:
                rulesets[peers] = harness.ruleset(peers)
    if rulesets:
        try:
            results.paths = packet_path(rulesets, packet_settings(args.quick), log)
        except MeasurementError as e:
            results.failures.append(f"packet path: {e}")
    results.seconds = time.perf_counter() - start
    return results


def packet_settings(quick: bool) -> PacketSettings:
    """Short runs with --quick."""
    if quick:
        return PacketSettings(connect_rounds=1, iperf_seconds=1, iperf_omit=0, iperf_rounds=1)
    return PacketSettings()


# ---------------------------------------------------------------------------------------------
# Reporting


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def main_table(rows: Sequence[PeerResult]) -> list[str]:
    """The per-N table, in Markdown."""
    lines = [
        "| peers | subnets per network | rules | set elements"
        " | hook ms, leader (no-op / changed) | hook ms, non-leader (no-op / changed)"
        " | hook-tool calls, leader (no-op / changed)"
        " | hook-tool calls, non-leader (no-op / changed)"
        " | writes on no-op (leader / non-leader) | nft -f ms (load / update) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lead, follow = r.leader, r.follower
        lines.append(
            f"| {r.peers:,} | {r.subnets_per_network} | {r.rules} | {r.elements}"
            f" | {_ms(lead.noop.seconds)} / {_ms(lead.changed.seconds)}"
            f" | {_ms(follow.noop.seconds)} / {_ms(follow.changed.seconds)}"
            f" | {lead.noop.last.calls.total()} / {lead.changed.last.calls.total()}"
            f" | {follow.noop.last.calls.total()} / {follow.changed.last.calls.total()}"
            f" | {lead.noop.last.writes} / {follow.noop.last.writes}"
            f" | {_ms(r.nft_load)} / {_ms(r.nft_update)} |"
        )
    return lines


def _baseline(paths: Sequence[PathResult], kind: str) -> PathResult | None:
    return next((p for p in paths if p.kind == kind), None)


def spread(values: Sequence[float]) -> str:
    """Half the range of the rounds, relative to their median: how much they agree."""
    if len(values) < 2 or not statistics.median(values):
        return ""
    return f" ±{(max(values) - min(values)) / 2 / statistics.median(values):.0%}"


def _ratio(value: float, base: PathResult | None, attr: str) -> str:
    reference = getattr(base, attr) if base else 0.0
    return f"{value / reference:.2f}" if reference else "-"


def path_table(paths: Sequence[PathResult]) -> list[str]:
    """The packet-path table, in Markdown."""
    conntrack, bare = _baseline(paths, "conntrack"), _baseline(paths, "none")
    lines = [
        "| ruleset | peers | rules | new connections/s | vs conntrack only"
        " | throughput Gbit/s | vs no ruleset |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in paths:
        peers = f"{p.peers:,}" if p.peers else "-"
        lines.append(
            f"| {p.label} | {peers} | {p.rules} | {p.rate:,.0f}{spread(p.rates)}"
            f" | {_ratio(p.rate, conntrack, 'rate')}"
            f" | {p.throughput / 1e9:.2f}{spread(p.throughputs)}"
            f" | {_ratio(p.throughput, bare, 'throughput')} |"
        )
    return lines


def _constant(values: dict[int, int]) -> bool:
    return len(set(values.values())) == 1


def _fmt_by_n(values: dict[int, int]) -> str:
    return ", ".join(f"{n:,}: {v}" for n, v in values.items())


def targets(results: Results) -> list[tuple[bool, str]]:
    """Each target of the issue: met or not, with what was measured."""
    rows, found = results.rows, []
    rules = {r.peers: r.rules for r in rows}
    found.append((_constant(rules), f"rule count constant in N ({_fmt_by_n(rules)})"))
    for kind in ("noop", "changed"):
        calls = {r.peers: getattr(r.follower, kind).last.calls.total() for r in rows}
        found.append(
            (
                _constant(calls),
                f"non-leader hook-tool calls constant in N, {kind} hook ({_fmt_by_n(calls)})",
            )
        )
    at = next((r for r in rows if r.peers == RECONCILE_TARGET_PEERS), None)
    if at is not None:
        hooks = (at.leader.noop, at.leader.changed, at.follower.noop, at.follower.changed)
        worst = max(h.seconds for h in hooks)
        found.append(
            (
                worst < RECONCILE_TARGET_SECONDS,
                f"reconcile under 1 s at {RECONCILE_TARGET_PEERS:,} peers on"
                f" {len(os.sched_getaffinity(0))} cores (slowest median: {_ms(worst)} ms)",
            )
        )
    writes = {r.peers: r.leader.noop.last.writes + r.follower.noop.last.writes for r in rows}
    found.append(
        (
            not any(writes.values()),
            f"unchanged-input hook does zero writes (leader + non-leader: {_fmt_by_n(writes)})",
        )
    )
    found += _path_targets(results.paths)
    return found


def _path_targets(paths: Sequence[PathResult]) -> list[tuple[bool, str]]:
    conntrack, bare = _baseline(paths, "conntrack"), _baseline(paths, "none")
    found = []
    for p in paths:
        if p.kind != "ours" or not conntrack or not bare:
            continue
        throughput = p.throughput / bare.throughput if bare.throughput else 0.0
        found.append(
            (
                throughput >= THROUGHPUT_TARGET,
                f"established-flow throughput within 5% of no ruleset at {p.peers:,} peers"
                f" ({throughput:.3f})",
            )
        )
        rate = p.rate / conntrack.rate if conntrack.rate else 0.0
        found.append(
            (
                rate >= CONNECTION_RATE_TARGET,
                f"new-connection rate >= 0.9 of conntrack only at {p.peers:,} peers ({rate:.2f})",
            )
        )
    return found


def breakdown(rows: Sequence[PeerResult]) -> list[str]:
    """Hook-tool calls per tool at the largest N, to show which calls grow."""
    if not rows:
        return []
    largest, smallest = rows[-1], rows[0]
    lines = []
    for name, role_of_row in (("leader", "leader"), ("non-leader", "follower")):
        for kind in ("noop", "changed"):
            small = getattr(getattr(smallest, role_of_row), kind).last.calls
            large = getattr(getattr(largest, role_of_row), kind).last.calls
            tools = sorted(set(small) | set(large))
            detail = ", ".join(
                f"{t} {small[t]}" + (f"->{large[t]}" if small[t] != large[t] else "")
                for t in tools
            )
            lines.append(
                f"- {name}, {kind} hook ({smallest.peers:,}->{largest.peers:,}): {detail}"
            )
    priming = ", ".join(
        f"{r.peers:,}: {r.leader.priming_hooks}/{r.follower.priming_hooks}" for r in rows
    )
    lines.append(f"- hooks that still wrote before the first no-op (leader/non-leader): {priming}")
    return lines


def report(results: Results, settings: dict[str, str]) -> list[str]:
    """The whole printed report."""
    lines = ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "## Reconcile, rules and nft", "", *main_table(results.rows), ""]
    lines += ["Hook-tool calls per tool:", "", *breakdown(results.rows), ""]
    if results.paths:
        lines += ["## Packet path", "", *path_table(results.paths), ""]
    lines += ["## Targets", ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {text}" for ok, text in targets(results)]
    for failure in results.failures:
        lines.append(f"- NOT RUN: {failure}")
    lines += ["", f"Run time: {results.seconds:.0f} s"]
    return lines


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    parser.add_argument("--peers", type=_int_list, help="peer counts (default 1,10,100,1000,5000)")
    parser.add_argument(
        "--packet-peers", type=_int_list, help="peer counts of the packet path (1000,10000)"
    )
    parser.add_argument("--runs", type=int, default=0, help="hooks per median")
    parser.add_argument("--json", type=Path, help="also write the raw results there")
    args = parser.parse_args(argv)
    if args.peers is None:
        args.peers = QUICK_PEERS if args.quick else FULL_PEERS
    if args.packet_peers is None:
        args.packet_peers = PACKET_PEERS
    return args


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())


def _raw(results: Results) -> dict[str, Any]:
    def role(r: RoleResult) -> dict[str, Any]:
        return {
            "priming_hooks": r.priming_hooks,
            "noop_seconds": r.noop.seconds,
            "changed_seconds": r.changed.seconds,
            "noop_calls": dict(r.noop.last.calls),
            "changed_calls": dict(r.changed.last.calls),
            "noop_writes": r.noop.last.writes,
        }

    return {
        "rows": [
            {
                "peers": r.peers,
                "rules": r.rules,
                "elements": r.elements,
                "nft_load": r.nft_load,
                "nft_update": r.nft_update,
                "leader": role(r.leader),
                "non_leader": role(r.follower),
            }
            for r in results.rows
        ],
        "paths": [dataclasses.asdict(p) for p in results.paths],
        "failures": results.failures,
        "seconds": results.seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print, and exit 1 only when a measurement could not run (unless --quick)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def log(message: str) -> None:
        print(f"# {message}", file=sys.stderr, flush=True)

    results = run(args, log)
    print("\n".join(report(results, machine())))
    if args.json:
        args.json.write_text(json.dumps(_raw(results), indent=2) + "\n")
    return 1 if results.failures and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
