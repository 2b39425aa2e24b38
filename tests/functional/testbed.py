"""A MAAS cloud replayed in network namespaces, from a topology file of the `plan` command.

- `Cloud` is what the bed builds, worked out from the topology alone: one segment (bridge) per
  space, every machine's interfaces and addresses, the router's address in every subnet (the
  topology's gateway, else the subnet's first host), each machine's default gateways (those of
  its management subnet), a client in the first `client-cidrs` subnets, and an outsider (an
  API user on the internet: in no cloud subnet and not in client-cidrs).
- `Sandbox` runs the bed's agent (agent.py) in a namespace of its own: a user+network+mount
  namespace made by `unshare` where the kernel allows it (no root needed; the host's network
  cannot even be seen), else a network+mount namespace as root, else (root, no `unshare`)
  uniquely named `ip netns` namespaces that are deleted however the test ends.
- `Bed` builds the cloud in the sandbox: a `switch` namespace holding one bridge per space, a
  `router` namespace with a leg on every bridge that forwards IPv4 and IPv6, one namespace per
  machine with its interfaces named as in the file, and `client` and `outsider` namespaces,
  each on a link of its own to the router.
  It loads rulesets, starts echo servers and sends probes.

Nothing here reads the ruleset under test.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from network_isolation.topology import Topology

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

AGENT = Path(__file__).with_name("agent.py")
MODES = ("userns", "netns", "host")
MODE_ENV = "NI_TESTBED_MODE"
NETNS_PREFIX = "nitb"
CLIENT = "client"
OUTSIDER = "outsider"
# Documentation ranges (RFC 5737, RFC 3849) for the outsider, unless the cloud uses them.
OUTSIDER_SUBNETS = ("203.0.113.0/24", "2001:db8:113::/64")
INSTALL_HINT = (
    "install the Debian packages nftables and iproute2 (apt-get install nftables iproute2)"
)


COMMON_SYSCTLS = {
    "net.ipv6.conf.all.accept_dad": 0,
    "net.ipv6.conf.default.accept_dad": 0,
    "net.ipv6.conf.all.accept_ra": 0,
    "net.ipv6.conf.default.accept_ra": 0,
    # The bed tests the ruleset, not the kernel's reverse-path filter: off everywhere.
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
}
FORWARDING = {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1}


class BedError(RuntimeError):
    """The bed could not be built or driven (not a verdict of the ruleset under test)."""


# ---------------------------------------------------------------------------------------------
# What to build


@dataclass(frozen=True)
class Iface:
    """A machine's NIC: its name in the topology, addresses and the segment it plugs into."""

    name: str
    addresses: tuple[IPInterface, ...]
    segment: str


@dataclass(frozen=True)
class Host:
    """A machine, or an external host (client, outsider), of the bed."""

    name: str
    roles: tuple[str, ...]
    ifaces: tuple[Iface, ...]
    gateways: Mapping[int, IPAddress]  # IP version -> default gateway

    @property
    def addresses(self) -> tuple[IPInterface, ...]:
        """Every address of the host, in interface order."""
        return tuple(a for i in self.ifaces for a in i.addresses)

    def iface_of(self, address: IPAddress) -> Iface:
        """The interface that holds an address of this host."""
        return next(i for i in self.ifaces if any(a.ip == address for a in i.addresses))

    def egress(self, dst: IPAddress) -> Iface | None:
        """The interface a packet to dst leaves by: a connected subnet, else the default route."""
        connected = [
            (a.network.prefixlen, i)
            for i in self.ifaces
            for a in i.addresses
            if a.version == dst.version and dst in a.network
        ]
        if connected:
            return max(connected, key=lambda c: c[0])[1]
        gateway = self.gateways.get(dst.version)
        if gateway is None:
            return None
        return next(
            i
            for i in self.ifaces
            for a in i.addresses
            if a.version == gateway.version
            if gateway in a.network
        )


@dataclass(frozen=True)
class Segment:
    """One L2 segment (a space): its subnets and the router's address in each."""

    name: str
    subnets: tuple[IPNetwork, ...]
    router: Mapping[IPNetwork, IPAddress]


@dataclass(frozen=True)
class External:
    """A host outside the cloud, on a link of its own to the router."""

    host: Host
    router: tuple[IPInterface, ...]  # the router's end of the link


@dataclass(frozen=True)
class Cloud:
    """Everything the bed builds, derived from a topology file."""

    topology: Topology
    segments: Mapping[str, Segment]
    machines: Mapping[str, Host]
    externals: Mapping[str, External]

    @property
    def hosts(self) -> dict[str, Host]:
        """Machines and external hosts, by name."""
        return {**self.machines, **{n: e.host for n, e in self.externals.items()}}

    @property
    def client(self) -> Host | None:
        """The client, when the topology has client-cidrs."""
        return self.externals[CLIENT].host if CLIENT in self.externals else None

    def management_space(self) -> str:
        """The space the management network is bound to."""
        return space_of(self.topology, "management")

    def representatives(self) -> list[str]:
        """One machine per kind (same roles on the same subnets), in file order.

        The hyperconverged machine is a kind of its own, and so is a machine of a known role
        in another rack (other subnets).
        """
        seen: set[tuple[tuple[str, ...], frozenset[IPNetwork]]] = set()
        chosen = []
        for name, host in self.machines.items():
            kind = (tuple(sorted(host.roles)), frozenset(a.network for a in host.addresses))
            if kind not in seen:
                seen.add(kind)
                chosen.append(name)
        return chosen


def _first_host(subnet: IPNetwork) -> IPAddress:
    return subnet.network_address + 1


def space_of(topology: Topology, network: str) -> str:
    """The space a cloud network is bound to (its binding, else the default space)."""
    space = {str(k): v for k, v in topology.bindings.items()}.get(network, topology.default_space)
    if space is None:
        raise BedError(f"the topology binds no space to the {network} network")
    return space


def _segment_of(segments: dict[str, Segment], where: str, addresses: Sequence[IPInterface]) -> str:
    """The segment of a NIC: its space's.

    A NIC on subnets of no space (a provider network, say) gets a segment of its own,
    routed like the others.
    """
    found = {
        seg.name
        for a in addresses
        for seg in segments.values()
        if any(a.ip in s for s in seg.subnets)
    }
    outside = [
        a.network
        for a in addresses
        if not any(a.ip in s for g in segments.values() for s in g.subnets)
    ]
    if len(found) > 1 or (found and outside):
        raise BedError(f"{where}: addresses in several spaces ({sorted(found)}, {outside})")
    if found:
        return found.pop()
    name = f"~{outside[0]}"
    segments[name] = Segment(name, tuple(outside), {n: _first_host(n) for n in outside})
    return name


def _host(
    name: str,
    roles: tuple[str, ...],
    ifaces: list[Iface],
    segments: Mapping[str, Segment],
    mgmt: str,
) -> Host:
    """A machine; its default gateways are the router's addresses in its management subnets."""
    gateways: dict[int, IPAddress] = {}
    for iface in (i for i in ifaces if i.segment == mgmt):
        for address in iface.addresses:
            subnet = next(s for s in segments[iface.segment].subnets if address.ip in s)
            gateways.setdefault(address.version, segments[iface.segment].router[subnet])
    return Host(name, roles, tuple(ifaces), gateways)


def cloud_of(topology: Topology) -> Cloud:
    """What to build for a topology; every inconsistency is a BedError naming the place."""
    segments = {
        name: Segment(
            name=name,
            subnets=tuple(space.subnets),
            router={s: space.gateway.get(s, _first_host(s)) for s in space.subnets},
        )
        for name, space in topology.spaces.items()
    }
    mgmt = space_of(topology, "management")
    machines: dict[str, Host] = {}
    for mname, machine in topology.machines.items():
        ifaces = []
        for iname, spec in machine.interfaces.items():
            segment = _segment_of(segments, f"{mname}.{iname}", spec.addresses)
            ifaces.append(Iface(name=iname, addresses=tuple(spec.addresses), segment=segment))
        machines[mname] = _host(mname, tuple(machine.roles), ifaces, segments, mgmt)
    taken = {a.ip: h.name for h in machines.values() for a in h.addresses}
    for seg in segments.values():
        for subnet, router in seg.router.items():
            if router in taken:
                raise BedError(f"{taken[router]} uses {router}, the router's address in {subnet}")
    text = str(topology.config.get("client-cidrs", ""))
    cidrs = [ipaddress.ip_network(c) for c in text.replace(",", " ").split()]
    clients = [c for c in (next((c for c in cidrs if c.version == v), None) for v in (4, 6)) if c]
    taken_nets = [s for seg in segments.values() for s in seg.subnets]
    for subnet in clients:
        clash = [s for s in taken_nets if s.version == subnet.version and s.overlaps(subnet)]
        if clash:
            raise BedError(f"client-cidrs {subnet} overlaps the cloud's {clash[0]}")
    outside = [ipaddress.ip_network(s) for s in OUTSIDER_SUBNETS]
    outside = [
        s
        for s in outside
        if not any(s.version == t.version and s.overlaps(t) for t in [*taken_nets, *cidrs])
    ]
    externals = {
        name: _external(name, subnets)
        for name, subnets in ((CLIENT, clients), (OUTSIDER, outside))
        if subnets
    }
    return Cloud(topology, segments, machines, externals)


def _external(name: str, subnets: Sequence[IPNetwork]) -> External:
    """A host at .2 of its subnets, behind the router's .1."""
    addresses = tuple(
        ipaddress.ip_interface(f"{s.network_address + 2}/{s.prefixlen}") for s in subnets
    )
    router = tuple(
        ipaddress.ip_interface(f"{s.network_address + 1}/{s.prefixlen}") for s in subnets
    )
    iface = Iface(name="eth0", addresses=addresses, segment=f"~{name}")
    gateways = {r.version: r.ip for r in router}
    return External(Host(name, (), (iface,), gateways), router)


# ---------------------------------------------------------------------------------------------
# Prerequisites and the sandbox


def missing_prerequisites() -> str | None:
    """Why the bed cannot run here, with what to install; None when it can."""
    missing = [t for t in ("nft", "ip", "nsenter") if not _which(t)]
    if missing:
        return f"missing {', '.join(missing)}: {INSTALL_HINT} (nsenter: util-linux)"
    if choose_mode() is None:
        return (
            "cannot make network namespaces: run as root, or allow unprivileged user namespaces"
            " (`unshare --user --map-root-user --net true` must work; util-linux)"
        )
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d, tool)).exists()), None
    )


def _userns_works() -> bool:
    unshare = _which("unshare")
    if not unshare:
        return False
    argv = [unshare, "--user", "--map-root-user", "--net", "--mount", "true"]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def choose_mode() -> str | None:
    """Userns where it works, else netns (root + unshare), else host (root); env overrides."""
    forced = os.environ.get(MODE_ENV)
    if forced:
        if forced not in MODES:
            raise BedError(f"{MODE_ENV}={forced}: expected one of {', '.join(MODES)}")
        return forced
    if _userns_works():
        return "userns"
    if os.geteuid() == 0:
        return "netns" if _which("unshare") else "host"
    return None


class Sandbox:
    """The agent process, in a namespace of its own; every request goes through it."""

    def __init__(self, mode: str):
        self.mode = mode
        self.prefix = f"{NETNS_PREFIX}{os.getpid()}x{next(_counter)}"
        self.created: list[str] = []
        self._lock = threading.Lock()
        python = sys.executable
        if mode == "host":
            argv = [python, str(AGENT)]
        else:
            unshare = _which("unshare")
            assert unshare
            flags = ["--net", "--mount", "--propagation", "private"]
            if mode == "userns":
                flags = ["--user", "--map-root-user", *flags]
            # A tmpfs on /run (in the private mount namespace only) holds the `ip netns` files.
            script = 'mount -t tmpfs nitb /run && exec "$0" "$@"'
            argv = [unshare, *flags, "--", "sh", "-c", script, python, str(AGENT)]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        try:
            self.request("ping")
        except BedError:
            self.close()
            raise

    def request(self, op: str, **kwargs: Any) -> dict[str, Any]:
        """One request to the agent; an exception in the agent is a BedError here."""
        assert self._proc.stdin and self._proc.stdout
        if self._proc.stdin.closed or self._proc.poll() is not None:
            raise BedError(f"the bed's agent ({self.mode}) has ended")
        with self._lock:
            try:
                self._proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
                self._proc.stdin.flush()
                line = self._proc.stdout.readline()
            except (BrokenPipeError, OSError) as e:
                line = ""
                err = str(e)
            else:
                err = ""
        if not line:
            stderr = self._proc.stderr.read() if self._proc.stderr and self._proc.poll() else ""
            raise BedError(f"the bed's agent ({self.mode}) died: {err} {stderr}".strip())
        answer = json.loads(line)
        if "exception" in answer:
            raise BedError(f"agent {op}: {answer['exception']}")
        return answer

    def run(self, argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
        """Run a command in the sandbox; its stdout, or a BedError when it fails."""
        answer = self.request("run", argv=list(argv), input=stdin)
        if check and answer["rc"] != 0:
            raise BedError(f"{' '.join(argv)}: exit {answer['rc']}: {answer['err'].strip()}")
        return answer["out"]

    def close(self) -> None:
        """Delete what was made (host mode) and end the agent; safe to call twice."""
        if self.mode == "host" and self._proc.poll() is None:
            try:
                for name in reversed(self.created):
                    self.run(["ip", "netns", "del", name], check=False)
                self.created.clear()
            except BedError:
                pass  # the agent died on the way: deleted below
        self._end_agent()
        for name in self.created if self.mode == "host" else ():
            # Whatever the agent could not delete (a test may have crashed it).
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)

    def _end_agent(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream:
                stream.close()


_counter = itertools.count()


# ---------------------------------------------------------------------------------------------
# The bed


@dataclass
class ProbeResult:
    """What one probe saw: pass, drop, error (or sent, for one-way probes), and why."""

    got: str
    detail: str = ""
    token: str = ""
    ms: int = 0


@dataclass
class Bed:
    """A built cloud: namespaces, links, addresses, routes, servers and rulesets."""

    cloud: Cloud
    sandbox: Sandbox
    ns: dict[str, str] = field(default_factory=dict)  # host name (or switch/router) -> netns
    extra: dict[str, Host] = field(default_factory=dict)  # pods, instances: not machines
    bridges: dict[str, str] = field(default_factory=dict)  # segment -> its bridge in the switch

    # -- building ----------------------------------------------------------------------------

    def ip_batch(self, ns: str | None, lines: Iterable[str]) -> None:
        """Many `ip` commands in one process, inside a namespace (None: the sandbox's)."""
        text = "\n".join(lines) + "\n"
        if text.strip():
            self.sandbox.run(["ip", *(["-n", ns] if ns else []), "-batch", "-"], stdin=text)

    def build(self, machines: Iterable[str] | None = None) -> None:
        """Make every namespace, link, address and route; machines limits which ones."""
        names = list(self.cloud.machines) if machines is None else list(machines)
        hosts = [self.cloud.machines[n] for n in names]
        hosts += [e.host for e in self.cloud.externals.values()]
        self._namespaces(hosts)
        segments = sorted(
            {i.segment for h in hosts for i in h.ifaces if h.name not in self.cloud.externals}
        )
        index = {s: k for k, s in enumerate(segments)}
        self.bridges = {s: f"b{k}" for s, k in index.items()}
        sw = self.ns["switch"]
        self.ip_batch(
            sw,
            (
                f"link add b{k} type bridge mcast_snooping 0\nlink set b{k} up"
                for k in index.values()
            ),
        )
        self.ip_batch(self.ns["router"], self._router_lines(index))
        attach = [f"link set r{k} master b{k} up" for k in index.values()]
        for h, host in enumerate(hosts):
            lines = ["link set lo up"]
            for j, iface in enumerate(host.ifaces):
                if host.name not in self.cloud.externals:
                    peer = f"m{h}e{j}"
                    lines.append(f"link add {iface.name} type veth peer name {peer} netns {sw}")
                    attach.append(f"link set {peer} master b{index[iface.segment]} up")
                lines += [f"addr add {a} dev {iface.name}{_nodad(a.ip)}" for a in iface.addresses]
                lines.append(f"link set {iface.name} up")
            lines += [f"route add default via {gw}" for _, gw in sorted(host.gateways.items())]
            self.ip_batch(self.ns[host.name], lines)
        self.ip_batch(sw, attach)

    def _namespaces(self, hosts: Sequence[Host]) -> None:
        """A namespace per host plus switch and router, with the bed's sysctls set."""
        p = self.sandbox.prefix
        self.ns = {"switch": f"{p}sw", "router": f"{p}rt"}
        for i, host in enumerate(hosts):
            self.ns[host.name] = (
                f"{p}{host.name[:2] if host.name in self.cloud.externals else f'm{i}'}"
            )
        self._make(self.ns)
        self.set_sysctls("router", FORWARDING)

    def _make(self, namespaces: Mapping[str, str]) -> None:
        self.sandbox.created.extend(namespaces.values())
        self.ip_batch(None, (f"netns add {n}" for n in namespaces.values()))
        for role in namespaces:
            self.set_sysctls(role, COMMON_SYSCTLS)

    def add_hosts(self, hosts: Iterable[Host]) -> None:
        """Namespaces for hosts that are not machines of the topology (pods, instances)."""
        made = {}
        for host in hosts:
            made[host.name] = f"{self.sandbox.prefix}x{len(self.extra)}"
            self.extra[host.name] = host
        self.ns.update(made)
        self._make(made)

    def plug(self, hosts: Iterable[Host], routes: Mapping[str, Sequence[str]]) -> None:
        """Hosts that are not machines, each NIC on its segment's bridge, with their routes.

        `routes`: host name -> `ip route add` arguments ("10.10.0.11/32 via 10.30.0.11").
        """
        hosts = list(hosts)
        self.add_hosts(hosts)
        sw = self.ns["switch"]
        attach = []
        for host in hosts:
            k = list(self.extra).index(host.name)
            lines = ["link set lo up"]
            for j, iface in enumerate(host.ifaces):
                peer = f"x{k}e{j}"
                lines.append(f"link add {iface.name} type veth peer name {peer} netns {sw}")
                attach.append(f"link set {peer} master {self.bridges[iface.segment]} up")
                lines += [f"addr add {a} dev {iface.name}{_nodad(a.ip)}" for a in iface.addresses]
                lines.append(f"link set {iface.name} up")
            lines += [f"route add {r}" for r in routes.get(host.name, ())]
            self.ip_batch(self.ns[host.name], lines)
        self.ip_batch(sw, attach)

    def set_sysctls(self, host: str, settings: Mapping[str, int]) -> None:
        """Write /proc/sys/net settings in a host's namespace."""
        self.sandbox.request("sysctl", ns=self.ns[host], settings=dict(settings))

    def _router_lines(self, index: Mapping[str, int]) -> list[str]:
        """A leg on every bridge with the router's address in each subnet; one per external."""
        lines = ["link set lo up"]
        for seg, k in index.items():
            lines.append(f"link add r{k} type veth peer name r{k} netns {self.ns['switch']}")
            for subnet, address in self.cloud.segments[seg].router.items():
                lines.append(f"addr add {address}/{subnet.prefixlen} dev r{k}{_nodad(address)}")
            lines.append(f"link set r{k} up")
        for k, (name, external) in enumerate(self.cloud.externals.items()):
            lines.append(f"link add x{k} type veth peer name eth0 netns {self.ns[name]}")
            lines += [f"addr add {a} dev x{k}{_nodad(a.ip)}" for a in external.router]
            lines.append(f"link set x{k} up")
        return lines

    # -- rulesets ----------------------------------------------------------------------------

    def nft(self, host: str, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Run nft inside a host's namespace (never the sandbox's or the host's own)."""
        argv = ["nsenter", f"--net=/run/netns/{self.ns[host]}", "nft", *args]
        return self.sandbox.run(argv, stdin=stdin, check=check)

    def load(self, host: str, ruleset: str) -> None:
        """Load a ruleset file's text with `nft -f` in the host's namespace."""
        self.nft(host, "-f", "/dev/stdin", stdin=ruleset)

    def load_dir(self, render_dir: Path, machines: Iterable[str] | None = None) -> None:
        """Load DIR/<machine>/nftables.conf into each machine of the bed."""
        for name in machines if machines is not None else self.built_machines():
            self.load(name, (render_dir / name / "nftables.conf").read_text())

    def host(self, name: str) -> Host:
        """A machine, external host, pod or instance of the bed, by name."""
        return self.extra[name] if name in self.extra else self.cloud.hosts[name]

    def built_machines(self) -> list[str]:
        """Machines that have a namespace in this bed."""
        return [n for n in self.cloud.machines if n in self.ns]

    # -- traffic -----------------------------------------------------------------------------

    def listen(self, hosts: Iterable[str], tcp: Sequence[int], udp: Sequence[int]) -> None:
        """Echo servers on every address of the hosts."""
        for name in hosts:
            host = self.host(name)
            addresses = [str(a.ip) for a in host.addresses]
            answer = self.sandbox.request(
                "listen", ns=self.ns[name], addresses=addresses, tcp=list(tcp), udp=list(udp)
            )
            if not answer["ok"]:
                raise BedError(f"{name}: cannot listen: {'; '.join(answer['errors'])}")

    def probe(self, probes: Sequence[dict[str, Any]], workers: int = 256) -> list[ProbeResult]:
        """Send probes in parallel; each is {host, src, dst, proto, port, timeout, ...}."""
        wire = [
            {**{k: v for k, v in p.items() if k != "host"}, "id": i, "ns": self.ns[p["host"]]}
            for i, p in enumerate(probes)
        ]
        answer = self.sandbox.request("probe", probes=wire, workers=workers)
        return [
            ProbeResult(r["got"], r.get("detail", ""), r.get("token", ""), r.get("ms", 0))
            for r in answer["results"]
        ]

    def forget_neighbours(self) -> None:
        """Flush every neighbour cache.

        A resolution left pending by earlier probes (retried only every second) must not
        delay the next probes past their timeout.
        """
        for ns in self.ns.values():
            self.ip_batch(ns, ["neigh flush all"])

    def seen(self, tokens: Sequence[str]) -> set[str]:
        """The tokens that reached some echo server."""
        return set(self.sandbox.request("seen", tokens=list(tokens))["seen"])


def _nodad(address: IPAddress) -> str:
    return " nodad" if address.version == 6 else ""


@contextmanager
def running_bed(cloud: Cloud, machines: Iterable[str] | None = None) -> Iterator[Bed]:
    """A built bed, torn down at the end however the body ends."""
    mode = choose_mode()
    if mode is None:
        raise BedError(missing_prerequisites() or "no way to make namespaces")
    sandbox = Sandbox(mode)
    try:
        bed = Bed(cloud, sandbox)
        bed.build(machines)
        yield bed
    finally:
        sandbox.close()
