"""Everything this charm does to the host it runs on; nothing else touches the host.

- `MachineRegistry`: the per-machine registry of this charm's co-located units, through which
  units that share a machine agree on one plan.
- `Host`: validates, applies (idempotent, atomic, confirmed or rolled back), persists across
  reboots, audits (counters, drift) and removes the artefacts rendered for the machine: our
  nftables table, our netplan file and our systemd unit.

`Host` reaches the machine only through an injected boundary: `root`, under which every file
path lives (`/` in production, a temporary directory in tests), a command `Runner` (binaries
called by absolute path) and a `Probe` of connectivity. Tests replace all three.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, get_args

import yaml
from pydantic import BaseModel, ConfigDict
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_fixed

from .planner import InterfaceKind

logger = logging.getLogger(__name__)

STATE_DIR_ENV = "NETWORK_ISOLATION_STATE_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/network-isolation")

# The same names as render.TABLE_FAMILY, render.TABLE_NAME and render.NETPLAN_FILE_NAME (a unit
# test checks it): the host module must not depend on the renderer to remove what it applied.
TABLE_FAMILY, TABLE_NAME = "inet", "network_isolation"
NETPLAN_FILE_NAME = "90-network-isolation.yaml"
NETPLAN_DIRS = ("lib/netplan", "etc/netplan", "run/netplan")
# Replaces our table with nothing, whether or not it exists (nft 1.0.6 has no `destroy`).
REMOVAL_RULESET = f"table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"
UNIT_NAME = "network-isolation.service"
UNIT_WANTED_BY = "sysinit.target"
ROLLBACK_UNIT = "network-isolation-rollback"


def state_dir() -> Path:
    """Where this charm keeps its per-machine state (overridable for tests)."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def write_atomically(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write via a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class UnitEntry(BaseModel):
    """What one unit of this charm brings to its machine: roles and declared ports."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    unit: str
    roles: tuple[str, ...]
    # network -> ports as "tcp:5672" or "udp:6800-7300", as principals declared them
    ports: dict[str, tuple[str, ...]] = {}


class MachineRegistry:
    """One small file per unit of this charm on the machine, naming what it brings.

    A subordinate related to several principals on one machine has one unit per principal;
    the registry lets each of them compute the plan for the union of all their roles and
    declared ports.
    """

    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, unit: str) -> Path:
        return self.directory / (re.sub(r"[^A-Za-z0-9-]", "-", unit) + ".json")

    def record(
        self, unit: str, roles: frozenset[str], ports: Mapping[str, Iterable[str]] | None = None
    ) -> None:
        """Register a unit's roles and ports; a no-op when they are already recorded."""
        entry = {"unit": unit, "roles": sorted(roles)}
        if ports:
            entry["ports"] = {net: sorted(set(p)) for net, p in sorted(ports.items()) if p}
        content = json.dumps(entry, sort_keys=True) + "\n"
        path = self._path(unit)
        try:
            if path.read_text() == content:
                return
        except OSError:
            pass
        write_atomically(path, content)

    def forget(self, unit: str) -> None:
        """Drop a departing unit's entry."""
        self._path(unit).unlink(missing_ok=True)

    def _entries(self) -> list[UnitEntry]:
        entries: list[UnitEntry] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                entries.append(UnitEntry.model_validate_json(path.read_text()))
            except (OSError, ValueError) as e:
                logger.warning("ignoring unreadable registry entry %s: %s", path, e)
        return entries

    def entries(self) -> dict[str, frozenset[str]]:
        """Every registered unit and its roles; an unreadable entry is skipped and logged."""
        return {entry.unit: frozenset(entry.roles) for entry in self._entries()}

    def roles_except(self, unit: str) -> frozenset[str]:
        """The union of the roles of the other units on this machine."""
        return frozenset().union(*(r for u, r in self.entries().items() if u != unit))

    def ports_except(self, unit: str) -> dict[str, frozenset[str]]:
        """The ports the other units' principals declared, per network."""
        merged: dict[str, set[str]] = {}
        for entry in self._entries():
            if entry.unit != unit:
                for network, ports in entry.ports.items():
                    merged.setdefault(network, set()).update(ports)
        return {network: frozenset(ports) for network, ports in merged.items()}


# ---------------------------------------------------------------------------------------------
# The boundary: artefacts in, commands and probes out.


class ArtefactsLike(Protocol):
    """What `Host` needs of `render.Artefacts`: the ruleset and the netplan file (or none)."""

    @property
    def nftables(self) -> str:
        """A ruleset that replaces our table (and nothing else) in one `nft -f` transaction."""
        ...

    @property
    def netplan(self) -> str | None:
        """Our netplan file's content; None when the machine needs no netplan file of ours."""
        ...


@dataclass(frozen=True)
class Result:
    """What a command did: exit status and output."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


class Runner(Protocol):
    """Runs one command (an argv with an absolute binary path) to completion."""

    def run(self, argv: Sequence[str]) -> Result:
        """Run argv; never raises for a non-zero exit status."""
        ...


class SubprocessRunner:
    """The production runner: subprocess, C locale, bounded time."""

    def __init__(self, timeout: float = 120.0):
        self.timeout = timeout

    def run(self, argv: Sequence[str]) -> Result:
        """Run argv; a missing binary or a timeout is a failed result, not an exception."""
        env = {**os.environ, "LC_ALL": "C"}
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: timed out after {self.timeout:g} s")
        except OSError as e:
            return Result(127, "", f"{argv[0]}: {e}")
        return Result(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the binaries `Host` calls."""

    nft: str = "/usr/sbin/nft"
    netplan: str = "/usr/sbin/netplan"
    systemctl: str = "/usr/bin/systemctl"
    systemd_run: str = "/usr/bin/systemd-run"
    sh: str = "/bin/sh"
    ip: str = "/sbin/ip"


@dataclass(frozen=True)
class ProbeTarget:
    """A TCP endpoint that must stay reachable after an apply.

    `refused_ok`: a refused connection (a TCP reset) also proves the path works; use it for a
    gateway that answers but listens on nothing.
    """

    host: str
    port: int
    refused_ok: bool = False
    label: str = ""

    def __str__(self) -> str:
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"{self.label} {where}" if self.label else where


class Probe(Protocol):
    """Checks targets within `budget` seconds; returns the unreachable ones and why."""

    def __call__(self, targets: Sequence[ProbeTarget], budget: float) -> Mapping[ProbeTarget, str]:
        """Probe every target; the result maps each unreachable one to the reason."""
        ...


def controller_targets(api_addresses: str | None) -> list[ProbeTarget]:
    """Probe targets from `JUJU_API_ADDRESSES` (`host:port` separated by spaces or commas)."""
    targets: list[ProbeTarget] = []
    for item in re.split(r"[\s,]+", api_addresses or ""):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host:
            continue
        target = ProbeTarget(host.strip("[]"), int(port), label="juju controller")
        if target not in targets:
            targets.append(target)
    return targets


def gateway_target(address: str, port: int = 22) -> ProbeTarget:
    """A gateway probe: any TCP answer, a reset included, proves the gateway is reachable."""
    return ProbeTarget(address, port, refused_ok=True, label="gateway")


def _probe_one(target: ProbeTarget, deadline: float, connect_timeout: float, interval: float):
    def attempt() -> None:
        timeout = max(0.05, min(connect_timeout, deadline - time.monotonic()))
        try:
            socket.create_connection((target.host, target.port), timeout=timeout).close()
        except ConnectionRefusedError:
            if not target.refused_ok:
                raise

    def out_of_time(_: RetryCallState) -> bool:
        return time.monotonic() + interval >= deadline

    try:
        Retrying(
            stop=out_of_time,
            wait=wait_fixed(interval),
            retry=retry_if_exception_type(OSError),
            reraise=True,
        )(attempt)
    except OSError as e:
        return str(e) or type(e).__name__
    return None


def tcp_probe(
    targets: Sequence[ProbeTarget],
    budget: float,
    *,
    connect_timeout: float = 2.0,
    interval: float = 0.5,
) -> dict[ProbeTarget, str]:
    """TCP-connect to every target in parallel, retrying each until it answers or time is up.

    The whole probe takes at most about `budget` seconds (plus one `interval`), however many
    targets there are and however they fail.
    """
    if not targets:
        return {}
    deadline = time.monotonic() + budget
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        outcomes = list(
            pool.map(lambda t: _probe_one(t, deadline, connect_timeout, interval), targets)
        )
    return {t: why for t, why in zip(targets, outcomes, strict=True) if why is not None}


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages with charmlibs-apt (imported here: only install needs it)."""
    from charmlibs import apt

    try:
        apt.add_package(list(packages))
    except (apt.PackageError, apt.PackageNotFoundError) as e:
        raise HostError(f"cannot install {', '.join(packages)}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Outcomes.


class HostError(RuntimeError):
    """A host operation failed in a way that is not about the artefacts (removal, audit...)."""


class ApplyError(ValueError):
    """The artefacts were not applied; what is running is what ran before.

    `stage` says where it stopped: `validate-nftables`, `validate-netplan`, `validate-routing`,
    `rejected`, `arm`, `load`, `netplan-apply`, `probe`, `confirm`.
    """

    def __init__(self, message: str, *, stage: str):
        super().__init__(message)
        self.stage = stage


class InvalidArtefactsError(ApplyError):
    """Validation failed: nothing on the host changed."""


class RolledBackError(ApplyError):
    """Applied, then failed (load, netplan apply, probe): the previous state was restored.

    The artefacts are remembered as rejected and not tried again until they change (or a
    forced apply).
    """


class RejectedError(ApplyError):
    """The same artefacts failed before; not tried again until the inputs change."""


@dataclass(frozen=True)
class ApplyResult:
    """What `Host.apply` did."""

    changed: bool
    netplan_applied: bool = False
    message: str = "unchanged"
    skipped_targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class RejectedRecord:
    """Artefacts that failed after being applied, and why."""

    fingerprint: str
    stage: str
    reason: str


@dataclass(frozen=True)
class Applied:
    """What is applied now, as recorded on the host (None: nothing of ours)."""

    nftables: str | None
    netplan: str | None


def fingerprint(artefacts: ArtefactsLike) -> str:
    """A stable hash of the artefacts (64 hex digits)."""
    doc = json.dumps({"nftables": artefacts.nftables, "netplan": artefacts.netplan})
    return hashlib.sha256(doc.encode()).hexdigest()


def first_error(output: str, *, strip: Iterable[str] = ()) -> str:
    """The first meaningful line of a tool's output: an error line rather than a warning."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for prefix in strip:
        lines = [line.replace(prefix, "") for line in lines]
    useful = [line for line in lines if "WARNING" not in line]
    errors = [line for line in useful if "error" in line.lower()]
    return (errors or useful or ["no output"])[0][:300]


_OUR_STATEMENT = re.compile(
    r"^(?:(?:add|create|delete|flush|insert|replace|reset)\s+)?"
    r"(?:table|chain|rule|set|map|element|counter|quota|limit|flowtable)\s+"
    rf"{TABLE_FAMILY}\s+{TABLE_NAME}(?:\s|$)"
)


def _foreign_statements(ruleset: str) -> list[str]:
    """Top-level statements that name anything but our table.

    `flush ruleset`, another table, an `include`: the ruleset must replace our table and
    nothing else.
    """
    return [
        line.strip()
        for line in ruleset.splitlines()
        if line.strip()
        and not line[0].isspace()
        and not line.startswith(("#", "}"))
        and not _OUR_STATEMENT.match(line)
    ]


def _routing_problems(netplan: str) -> list[str]:
    """Policy-routing mistakes that netplan accepts silently.

    A rule without a table (useless), table 0 (silently dropped), two rules with one priority.
    """
    try:
        doc: object = yaml.safe_load(netplan)
    except yaml.YAMLError as e:
        return [str(e).splitlines()[0]]
    network = _mapping(_mapping(doc).get("network"))
    problems: list[str] = []
    seen: dict[object, str] = {}
    for kind, devices in network.items():
        for name, device in _mapping(devices).items():
            rules = _mapping(device).get("routing-policy")
            for rule in [_mapping(r) for r in rules] if isinstance(rules, list) else []:
                where = f"{kind}.{name}"
                table = rule.get("table")
                if not isinstance(table, int) or isinstance(table, bool) or table <= 0:
                    problems.append(f"{where}: a routing-policy rule needs a table (not 0)")
                priority = rule.get("priority")
                if priority is not None and priority in seen:
                    problems.append(
                        f"{where}: priority {priority} is also used in {seen[priority]}"
                    )
                elif priority is not None:
                    seen[priority] = where
    return problems


def _mapping(value: object) -> dict[str, object]:
    """A YAML/JSON mapping with string keys, or {} for anything else."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType]


@dataclass(frozen=True)
class _Artefacts:
    """Artefacts read back from the host (what `repair_drift` reloads)."""

    nftables: str
    netplan: str | None


@dataclass
class _Progress:
    """How far an apply got, so a rollback undoes exactly that."""

    loaded: bool = False
    netplan_written: bool = False
    errors: list[str] = field(default_factory=lambda: list[str]())


# ---------------------------------------------------------------------------------------------
# The host.


class Host:
    """Every side effect of the charm on its machine: files, nft, netplan, systemd.

    State kept in the state directory (default `ROOT/var/lib/network-isolation`):

    - `ruleset.nft`: the confirmed ruleset, the one the boot unit loads (0600);
    - `live.nft`: `nft -s list table` right after the last confirmed apply, for drift checks;
    - `rejected.json`: the fingerprint of artefacts that failed, and why;
    - during an apply only: `pending.nft`, `rollback/` (the previous state), `rollback.sh` (the
      dead-man's restore script) and `armed` (whoever removes it first, the charm confirming or
      the dead-man restoring, wins).
    """

    def __init__(
        self,
        root: Path = Path("/"),
        runner: Runner | None = None,
        *,
        probe: Probe = tcp_probe,
        tools: Tools | None = None,
        state: Path | None = None,
        installer: Callable[[Sequence[str]], None] = apt_install,
        rollback_after: int = 300,
        probe_budget: float = 20.0,
        baseline_budget: float = 5.0,
    ):
        self.root = root
        self.runner: Runner = runner or SubprocessRunner()
        self.probe = probe
        self.tools = tools or Tools()
        self.state = state or self._at(DEFAULT_STATE_DIR)
        self.installer = installer
        self.rollback_after = rollback_after
        self.probe_budget = probe_budget
        self.baseline_budget = baseline_budget

        self.netplan_file = self._at(Path("/etc/netplan") / NETPLAN_FILE_NAME)
        self.unit_file = self._at(Path("/etc/systemd/system") / UNIT_NAME)
        self.unit_link = self._at(
            Path("/etc/systemd/system") / f"{UNIT_WANTED_BY}.wants" / UNIT_NAME
        )
        self.ruleset_file = self.state / "ruleset.nft"
        self.live_file = self.state / "live.nft"
        self.rejected_file = self.state / "rejected.json"
        self.pending_file = self.state / "pending.nft"
        self.rollback_dir = self.state / "rollback"
        self.rollback_script = self.state / "rollback.sh"
        self.armed_file = self.state / "armed"

    def _at(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    # -- commands --------------------------------------------------------------------------

    def _run(self, *argv: str) -> Result:
        result = self.runner.run(argv)
        if result.returncode != 0:
            logger.warning(
                "%s: exit status %s: %s",
                shlex.join(argv),
                result.returncode,
                first_error(result.stderr + result.stdout),
            )
        return result

    def _must(self, *argv: str) -> Result:
        result = self._run(*argv)
        if result.returncode != 0:
            raise HostError(f"{' '.join(argv[:3])}: {first_error(result.stderr + result.stdout)}")
        return result

    # -- read-only views -------------------------------------------------------------------

    def applied(self) -> Applied:
        """The confirmed ruleset and our netplan file, as they are on the host."""
        return Applied(_read(self.ruleset_file), _read(self.netplan_file))

    def default_gateways(self) -> list[str]:
        """The gateways of the host's default routes (IPv4 and IPv6), read-only."""
        gateways: list[str] = []
        for family in ("-4", "-6"):
            result = self._run(self.tools.ip, "-j", family, "route", "show", "default")
            try:
                routes = json.loads(result.stdout) if result.returncode == 0 else []
            except ValueError:
                routes = []
            for route in routes if isinstance(routes, list) else []:
                gateway = route.get("gateway") if isinstance(route, dict) else None
                if isinstance(gateway, str) and gateway not in gateways:
                    gateways.append(gateway)
        return gateways

    def is_applied(self, artefacts: ArtefactsLike) -> bool:
        """Whether these artefacts are what is applied (files only: runs no command)."""
        return (
            not self.armed_file.exists()
            and _read(self.ruleset_file) == artefacts.nftables
            and self._netplan_matches(artefacts.netplan)
        )

    def _netplan_matches(self, netplan: str | None) -> bool:
        if netplan is None:
            return not self.netplan_file.exists()
        try:
            return (
                self.netplan_file.read_bytes() == netplan.encode()
                and self.netplan_file.stat().st_mode & 0o777 == 0o600
            )
        except OSError:
            return False

    def rejected(self) -> RejectedRecord | None:
        """The artefacts that failed last, if any."""
        try:
            data = json.loads(self.rejected_file.read_text())
            return RejectedRecord(
                str(data["fingerprint"]), str(data["stage"]), str(data["reason"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def diff(self, artefacts: ArtefactsLike) -> str:
        """A unified diff from what is applied to these artefacts ("" when they are equal)."""
        now = self.applied()
        parts: list[str] = []
        for name, old, new in [
            ("ruleset.nft", now.nftables, artefacts.nftables),
            (NETPLAN_FILE_NAME, now.netplan, artefacts.netplan),
        ]:
            parts += difflib.unified_diff(
                (old or "").splitlines(keepends=True),
                (new or "").splitlines(keepends=True),
                f"applied/{name}" if old is not None else "/dev/null",
                f"wanted/{name}" if new is not None else "/dev/null",
            )
        return "".join(parts)

    def _list_table(self, *flags: str) -> str | None:
        """`nft FLAGS list table` of our table; None when the table does not exist."""
        result = self._run(self.tools.nft, *flags, "list", "table", TABLE_FAMILY, TABLE_NAME)
        if result.returncode == 0:
            return result.stdout
        if "No such file or directory" in result.stderr:
            return None
        raise HostError(f"nft list table: {first_error(result.stderr + result.stdout)}")

    def drift(self) -> str | None:
        """Why the live table differs from the last confirmed apply; None when it does not.

        One read-only command (`nft -s list table`, stateless: counter values left out).
        Nothing applied yet (no record) is never drift.
        """
        recorded = _read(self.live_file)
        if recorded is None:
            return None
        live = _normalise(self._list_table("-s"))
        if live == recorded:
            return None
        if not live:
            return f"table {TABLE_FAMILY} {TABLE_NAME} is missing"
        if not recorded:
            return f"table {TABLE_FAMILY} {TABLE_NAME} exists but enforcement is off"
        return f"table {TABLE_FAMILY} {TABLE_NAME} differs from the applied ruleset"

    def repair_drift(self, targets: Sequence[ProbeTarget] = ()) -> str | None:
        """If the live table drifted, reload what was confirmed last; return why (or None).

        Reloads the recorded ruleset (and our netplan file as it is), not newer wanted
        artefacts, so a change rejected earlier is not retried behind the operator's back.
        Goes through `apply(force=True)`: validated, dead-man armed, probed, rolled back.
        """
        reason = self.drift()
        if reason is None:
            return None
        recorded = self.applied()
        if recorded.nftables is None:
            return None
        wanted = _Artefacts(recorded.nftables, recorded.netplan)
        self._apply(wanted, targets, force=True, repair=True)
        return reason

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets and bytes of each named counter (and of each commented rule's counter)."""
        result = self._run(self.tools.nft, "-j", "list", "table", TABLE_FAMILY, TABLE_NAME)
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                return {}
            raise HostError(f"nft -j list table: {first_error(result.stderr + result.stdout)}")
        try:
            items: object = json.loads(result.stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as e:
            raise HostError(f"nft -j list table: unreadable output: {e}") from e
        return _counters(items)

    # -- validate --------------------------------------------------------------------------

    def validate(self, artefacts: ArtefactsLike) -> None:
        """Check the artefacts with the real tools; changes nothing on the host.

        Raises InvalidArtefactsError with the tool's first error line.
        """
        foreign = _foreign_statements(artefacts.nftables)
        if foreign:
            raise InvalidArtefactsError(
                f"the ruleset reaches beyond table {TABLE_FAMILY} {TABLE_NAME}: {foreign[0]}",
                stage="validate-nftables",
            )
        with tempfile.TemporaryDirectory(prefix="network-isolation-check-") as tmp:
            ruleset = Path(tmp) / "ruleset.nft"
            ruleset.write_text(artefacts.nftables)
            result = self._run(self.tools.nft, "-c", "-f", str(ruleset))
            if result.returncode != 0:
                why = first_error(result.stderr + result.stdout, strip=[f"{tmp}/"])
                raise InvalidArtefactsError(
                    f"nftables ruleset rejected: {why}", stage="validate-nftables"
                )
        if artefacts.netplan is None:
            return
        problems = _routing_problems(artefacts.netplan)
        if problems:
            raise InvalidArtefactsError(
                f"netplan policy routing: {'; '.join(problems)}", stage="validate-routing"
            )
        with tempfile.TemporaryDirectory(prefix="network-isolation-netplan-") as tmp:
            self._stage_netplan(Path(tmp), artefacts.netplan)
            result = self._run(self.tools.netplan, "generate", "--root-dir", tmp)
            if result.returncode != 0:
                why = first_error(result.stderr + result.stdout, strip=[tmp])
                raise InvalidArtefactsError(f"netplan rejected: {why}", stage="validate-netplan")

    def _foreign_netplan_files(self) -> list[Path]:
        """The host's netplan files (lib, etc, run) other than ours, in netplan's order."""
        found: list[Path] = []
        for directory in NETPLAN_DIRS:
            source = self.root / directory
            for path in sorted(source.glob("*.yaml")) if source.is_dir() else []:
                if path.is_file() and path != self.netplan_file:
                    found.append(path)
        return found

    def interface_kinds(self) -> dict[str, InterfaceKind]:
        """Which netplan section (ethernets, vlans, bonds, bridges) defines each interface.

        Our netplan file must name each interface in the section MAAS used, else netplan
        refuses it ("changes device type"). Unreadable files are skipped: netplan's own
        validation of our file will then say what is wrong.
        """
        kinds: dict[str, InterfaceKind] = {}
        for path in self._foreign_netplan_files():
            try:
                network = (yaml.safe_load(path.read_text()) or {}).get("network") or {}
            except (OSError, yaml.YAMLError, AttributeError) as e:
                logger.warning("cannot read %s: %s", path, e)
                continue
            for kind in get_args(InterfaceKind):
                section = network.get(kind) if isinstance(network, dict) else None
                for name in section if isinstance(section, dict) else ():
                    if isinstance(name, str):
                        kinds[name] = kind
        return kinds

    def _stage_netplan(self, tmp: Path, netplan: str) -> None:
        """The host's netplan files (lib, etc, run) under tmp, with ours replaced by `netplan`."""
        for directory in NETPLAN_DIRS:
            (tmp / directory).mkdir(parents=True, exist_ok=True)
        for path in self._foreign_netplan_files():
            shutil.copy2(path, tmp / path.relative_to(self.root))
        ours = tmp / "etc/netplan" / NETPLAN_FILE_NAME
        ours.write_text(netplan)
        ours.chmod(0o600)

    # -- apply -----------------------------------------------------------------------------

    def apply(
        self,
        artefacts: ArtefactsLike,
        targets: Sequence[ProbeTarget] = (),
        *,
        force: bool = False,
    ) -> ApplyResult:
        """Make the artefacts the running state, or leave the previous one running.

        No-op (no write, no command) when they are already applied, unless `force` (the
        `reapply` action: also retries rejected artefacts). Raises `ApplyError`:
        `InvalidArtefactsError` (nothing changed), `RejectedError` (failed before, not tried
        again until the artefacts change), `RolledBackError` (applied, failed, previous state
        restored). `targets` must stay reachable: those that answer before the change must
        answer after it. A success forgets an earlier rejection.
        """
        return self._apply(artefacts, targets, force=force, repair=False)

    def _apply(
        self,
        artefacts: ArtefactsLike,
        targets: Sequence[ProbeTarget],
        *,
        force: bool,
        repair: bool,
    ) -> ApplyResult:
        recovered = self._recover_unconfirmed()
        if not force and not recovered and self.is_applied(artefacts):
            self._ensure_persistence()
            return ApplyResult(changed=False)
        wanted = fingerprint(artefacts)
        rejected = self.rejected()
        if not force and rejected and rejected.fingerprint == wanted:
            raise RejectedError(
                f"not retrying the change that failed at {rejected.stage}: {rejected.reason}",
                stage="rejected",
            )
        self.validate(artefacts)
        reachable, skipped = self._baseline(targets)
        netplan_changes = not self._netplan_matches(artefacts.netplan)
        self._arm(wanted, netplan_changes)
        progress = _Progress()
        try:
            self._change(artefacts, netplan_changes, progress)
            failures = self.probe(reachable, self.probe_budget) if reachable else {}
            if failures:
                lost = ", ".join(f"{t} ({why})" for t, why in failures.items())
                raise RolledBackError(f"unreachable after applying: {lost}", stage="probe")
        except Exception as e:
            error = e if isinstance(e, ApplyError) else RolledBackError(str(e), stage="apply")
            self._roll_back(progress, netplan_changes)
            self._reject(wanted, error)
            outcome = "previous state restored"
            if progress.errors:
                outcome = (
                    f"rollback failed ({'; '.join(progress.errors)}): the rollback timer "
                    f"retries it within {self.rollback_after} s"
                )
            raise RolledBackError(f"{error}; {outcome}", stage=error.stage) from e
        self._confirm()
        self._persist(forget_rejection=not repair)
        what = "ruleset and netplan" if netplan_changes else "ruleset"
        return ApplyResult(True, netplan_changes, f"applied {what}", tuple(skipped))

    def _baseline(self, targets: Sequence[ProbeTarget]) -> tuple[list[ProbeTarget], list[str]]:
        """Targets that answer before the change: only those are held against it."""
        if not targets:
            return [], []
        before = self.probe(targets, self.baseline_budget)
        for target, why in before.items():
            logger.warning(
                "not probing %s after the apply: unreachable before it (%s)", target, why
            )
        return [t for t in targets if t not in before], [str(t) for t in before]

    def _change(self, artefacts: ArtefactsLike, netplan_changes: bool, progress: _Progress):
        write_atomically(self.pending_file, artefacts.nftables, 0o600)
        result = self._run(self.tools.nft, "-f", str(self.pending_file))
        if result.returncode != 0:
            why = first_error(result.stderr + result.stdout, strip=[f"{self.state}/"])
            raise ApplyError(f"nft -f failed: {why}", stage="load")
        progress.loaded = True
        if not netplan_changes:
            return
        progress.netplan_written = True
        if artefacts.netplan is None:
            self.netplan_file.unlink(missing_ok=True)
        else:
            write_atomically(self.netplan_file, artefacts.netplan, 0o600)
        result = self._run(self.tools.netplan, "apply")
        if result.returncode != 0:
            why = first_error(result.stderr + result.stdout)
            raise ApplyError(f"netplan apply failed: {why}", stage="netplan-apply")

    # -- confirm or roll back --------------------------------------------------------------

    def rollback_command(self) -> list[str]:
        """What the dead-man timer runs: restores the state from before the unconfirmed apply."""
        return [self.tools.sh, str(self.rollback_script)]

    def _arm(self, wanted: str, netplan_changes: bool) -> None:
        """Snapshot the previous state and start the dead-man timer, before changing anything."""
        shutil.rmtree(self.rollback_dir, ignore_errors=True)
        self.rollback_dir.mkdir(parents=True)
        previous = _read(self.ruleset_file)
        write_atomically(self.rollback_dir / "ruleset.nft", previous or REMOVAL_RULESET, 0o600)
        if self.netplan_file.exists():
            shutil.copy2(self.netplan_file, self.rollback_dir / "netplan.yaml")
        reason = f"the apply was not confirmed within {self.rollback_after} s"
        rejected = {"fingerprint": wanted, "stage": "confirm", "reason": reason}
        write_atomically(self.rollback_dir / "rejected.json", json.dumps(rejected) + "\n", 0o600)
        if netplan_changes:
            (self.rollback_dir / "netplan-changes").touch()
        script = self._rollback_script(wanted, netplan_changes)
        write_atomically(self.rollback_script, script, 0o700)
        write_atomically(self.armed_file, wanted + "\n", 0o600)
        argv = [
            self.tools.systemd_run,
            f"--unit={ROLLBACK_UNIT}",
            f"--on-active={self.rollback_after}",
            "--timer-property=AccuracySec=1s",
            "--collect",
            "--quiet",
            "--description=network-isolation: restore the state before an unconfirmed apply",
            *self.rollback_command(),
        ]
        result = self._run(*argv)
        if result.returncode != 0:
            # A leftover timer of a killed hook holds the name: stop it and try once more.
            self._disarm_timer()
            result = self._run(*argv)
        if result.returncode != 0:
            self.armed_file.unlink(missing_ok=True)
            self._clean_rollback()
            why = first_error(result.stderr + result.stdout)
            raise ApplyError(f"cannot arm the rollback timer, not applying: {why}", stage="arm")

    def _rollback_script(self, wanted: str, netplan_changes: bool) -> str:
        q = shlex.quote
        armed, fired = q(str(self.armed_file)), q(str(self.state / "fired"))
        snapshot = self.rollback_dir
        lines = [
            "#!/bin/sh",
            "# network-isolation dead-man: armed before an apply, cancelled when it is",
            "# confirmed. Whoever takes the marker first wins: the charm (confirm) or this.",
            "set -u",
            f"mv {armed} {fired} 2>/dev/null || exit 0",
            "status=0",
            f"{q(self.tools.nft)} -f {q(str(snapshot / 'ruleset.nft'))} || status=1",
        ]
        if netplan_changes:
            ours, tmp = q(str(self.netplan_file)), q(f"{self.netplan_file}.rollback")
            if (self.rollback_dir / "netplan.yaml").exists():
                saved = q(str(snapshot / "netplan.yaml"))
                lines.append(
                    f"cp -p {saved} {tmp} && chmod 0600 {tmp} && mv -f {tmp} {ours} || status=1"
                )
            else:
                lines.append(f"rm -f {ours} || status=1")
            lines.append(f"{q(self.tools.netplan)} apply || status=1")
        rejected = q(str(snapshot / "rejected.json"))
        # Keep the reason of a failure the charm already recorded for these artefacts.
        lines += [
            f"grep -qs {wanted} {q(str(self.rejected_file))} || "
            f"mv -f {rejected} {q(str(self.rejected_file))}",
            f"rm -f {fired} {q(str(self.pending_file))}",
            'exit "$status"',
        ]
        return "\n".join(lines) + "\n"

    def _disarm_timer(self) -> None:
        self._run(self.tools.systemctl, "stop", f"{ROLLBACK_UNIT}.timer")
        self._run(
            self.tools.systemctl,
            "reset-failed",
            f"{ROLLBACK_UNIT}.timer",
            f"{ROLLBACK_UNIT}.service",
        )

    def _claim(self) -> bool:
        """Take the marker; False if the dead-man took it first (it restores, not us)."""
        try:
            self.armed_file.unlink()
        except FileNotFoundError:
            return False
        self._run(self.tools.systemctl, "stop", f"{ROLLBACK_UNIT}.timer")
        return True

    def _roll_back(self, progress: _Progress, netplan_changes: bool) -> None:
        """Undo what the apply did; disarm the dead-man only if everything was restored."""
        if progress.loaded:
            result = self._run(self.tools.nft, "-f", str(self.rollback_dir / "ruleset.nft"))
            if result.returncode != 0:
                progress.errors.append(f"nft -f: {first_error(result.stderr)}")
        if progress.netplan_written and netplan_changes:
            self._restore_netplan(progress)
        self.pending_file.unlink(missing_ok=True)
        if progress.errors:
            logger.error(
                "rollback incomplete, the dead-man timer stays armed: %s", progress.errors
            )
            return
        self._claim()
        self._clean_rollback()

    def _restore_netplan(self, progress: _Progress) -> None:
        saved = self.rollback_dir / "netplan.yaml"
        if saved.exists():
            write_atomically(self.netplan_file, saved.read_bytes(), 0o600)
        else:
            self.netplan_file.unlink(missing_ok=True)
        result = self._run(self.tools.netplan, "apply")
        if result.returncode != 0:
            progress.errors.append(f"netplan apply: {first_error(result.stderr)}")

    def _recover_unconfirmed(self) -> bool:
        """An apply that never confirmed (its hook died): restore its snapshot now."""
        if not self.armed_file.exists():
            return False
        if not (self.rollback_dir / "ruleset.nft").exists():
            logger.warning("an unconfirmed apply left no snapshot: disarming only")
            self._claim()
            return False
        logger.warning("an earlier apply was not confirmed: restoring the state before it")
        netplan_changes = (self.rollback_dir / "netplan-changes").exists()
        saved = _read(self.rollback_dir / "rejected.json")
        progress = _Progress(loaded=True, netplan_written=netplan_changes)
        self._roll_back(progress, netplan_changes)
        if progress.errors:
            raise HostError(f"cannot restore after an unconfirmed apply: {progress.errors}")
        known = self.rejected()
        if saved and not (known and known.fingerprint in saved):
            write_atomically(self.rejected_file, saved, 0o600)
        return True

    def _reject(self, wanted: str, error: ApplyError) -> None:
        record = {"fingerprint": wanted, "stage": error.stage, "reason": str(error)[:300]}
        write_atomically(self.rejected_file, json.dumps(record) + "\n", 0o600)

    def _confirm(self) -> None:
        if not self._claim():
            self.pending_file.unlink(missing_ok=True)
            raise RolledBackError(
                f"the rollback timer fired before the apply was confirmed (after "
                f"{self.rollback_after} s); the previous state was restored",
                stage="confirm",
            )

    def _clean_rollback(self) -> None:
        shutil.rmtree(self.rollback_dir, ignore_errors=True)
        self.rollback_script.unlink(missing_ok=True)

    # -- persistence -----------------------------------------------------------------------

    def _persist(self, *, forget_rejection: bool) -> None:
        """Make the confirmed ruleset the boot ruleset and record it for drift checks."""
        os.replace(self.pending_file, self.ruleset_file)
        write_atomically(self.live_file, _normalise(self._list_table("-s")), 0o600)
        if forget_rejection:  # a new change worked: the inputs moved on
            self.rejected_file.unlink(missing_ok=True)
        self._clean_rollback()
        self._ensure_persistence()

    def unit_text(self) -> str:
        """Our boot unit: loads the confirmed ruleset before any network is configured."""
        return f"""\
# Written by the network-isolation charm; removed when the charm leaves the machine.
[Unit]
Description=network-isolation: load the nftables table {TABLE_FAMILY} {TABLE_NAME}
# Like nftables.service: no default dependencies, so it can run before network-pre.target,
# which every network manager (systemd-networkd, netplan's) waits for: no interface is up
# before our rules are loaded.
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target
# The distribution's nftables.service loads /etc/nftables.conf, whose stock version starts
# with `flush ruleset`: run after it, or it would wipe our table (ordering only: not pulled in).
After=nftables.service
# The ruleset lives under /var/lib, which may be a file system of its own.
RequiresMountsFor={self.state}
ConditionPathExists={self.ruleset_file}

[Service]
Type=oneshot
RemainAfterExit=yes
# Replaces only our table, in one transaction; other tables are left alone. No ExecStop:
# stopping the unit must never open the firewall.
ExecStart={self.tools.nft} -f {self.ruleset_file}

[Install]
# sysinit.target, as nftables.service: every boot target (rescue included) pulls it in, early.
WantedBy={UNIT_WANTED_BY}
"""

    def boot_command(self) -> list[str]:
        """What the boot unit runs (its ExecStart)."""
        return [self.tools.nft, "-f", str(self.ruleset_file)]

    def _ensure_persistence(self) -> None:
        """Our unit file written and enabled; checks files only when it already is."""
        written = _read(self.unit_file) != self.unit_text()
        if written:
            write_atomically(self.unit_file, self.unit_text(), 0o644)
            self._must(self.tools.systemctl, "daemon-reload")
        if written or not os.path.lexists(self.unit_link):
            self._must(self.tools.systemctl, "enable", UNIT_NAME)

    # -- removal ---------------------------------------------------------------------------

    def remove(self) -> None:
        """Remove our table, netplan file, unit and state: the host is as it was before us.

        Every step is tried; HostError lists those that failed.
        """
        errors: list[str] = []
        if self.armed_file.exists():
            self._claim()
        with tempfile.NamedTemporaryFile(
            "w", prefix="network-isolation-remove-", suffix=".nft"
        ) as f:
            f.write(REMOVAL_RULESET)
            f.flush()
            result = self._run(self.tools.nft, "-f", f.name)
            if result.returncode != 0:
                errors.append(f"nft -f: {first_error(result.stderr)}")
        if self.netplan_file.exists():
            self.netplan_file.unlink()
            result = self._run(self.tools.netplan, "apply")
            if result.returncode != 0:
                errors.append(f"netplan apply: {first_error(result.stderr)}")
        if self.unit_file.exists() or self.unit_link.is_symlink():
            result = self._run(self.tools.systemctl, "disable", UNIT_NAME)
            if result.returncode != 0:
                errors.append(f"systemctl disable: {first_error(result.stderr)}")
            self.unit_file.unlink(missing_ok=True)
            self._run(self.tools.systemctl, "daemon-reload")
        self._remove_state()
        if errors:
            raise HostError("removal incomplete: " + "; ".join(errors))

    def _remove_state(self) -> None:
        self._clean_rollback()
        for path in (
            self.ruleset_file,
            self.live_file,
            self.rejected_file,
            self.pending_file,
            self.armed_file,
            self.state / "fired",
        ):
            path.unlink(missing_ok=True)
        # The registry's directory goes too once it is empty (the last unit has left).
        for directory in (self.state / "units", self.state):
            with contextlib.suppress(OSError):
                directory.rmdir()

    # -- prerequisites ---------------------------------------------------------------------

    def install_prerequisites(self) -> bool:
        """Install nftables when `nft` is missing; True if something was installed."""
        if Path(self.tools.nft).exists():
            return False
        self.installer(["nftables"])
        if not Path(self.tools.nft).exists():
            raise HostError(f"nftables installed but {self.tools.nft} is still missing")
        return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _normalise(listing: str | None) -> str:
    """A table listing without blank lines or trailing spaces ("" when there is no table)."""
    if listing is None:
        return ""
    return "".join(line.rstrip() + "\n" for line in listing.splitlines() if line.strip())


def _counters(items: object) -> dict[str, dict[str, int]]:
    """Named counter objects, and anonymous counters of commented rules (summed per comment)."""
    counters: dict[str, dict[str, int]] = {}
    for item in [_mapping(i) for i in items] if isinstance(items, list) else []:
        named = _mapping(item.get("counter"))
        if "name" in named:
            counters[str(named["name"])] = _packets_bytes(named)
            continue
        rule = _mapping(item.get("rule"))
        comment = rule.get("comment")
        expressions = rule.get("expr")
        if not comment or not isinstance(expressions, list):
            continue
        for expression in [_mapping(e) for e in expressions]:
            if "counter" in expression and isinstance(expression["counter"], dict):
                seen = _packets_bytes(_mapping(expression["counter"]))
                total = counters.setdefault(str(comment), {"packets": 0, "bytes": 0})
                total["packets"] += seen["packets"]
                total["bytes"] += seen["bytes"]
    return counters


def _packets_bytes(counter: dict[str, object]) -> dict[str, int]:
    packets, size = counter.get("packets", 0), counter.get("bytes", 0)
    return {
        "packets": packets if isinstance(packets, int) else 0,
        "bytes": size if isinstance(size, int) else 0,
    }
