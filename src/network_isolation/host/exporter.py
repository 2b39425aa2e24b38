"""The metrics exporter on the machine: its systemd unit, and the state files it reads.

- `network-isolation-exporter.service` runs `python3 -m network_isolation.host.metrics` with the
  charm's own interpreter and code, on the management address only; it may do nothing but
  read (CAP_NET_ADMIN for nft's netlink listing, a read-only file system).
- `plan-summary.json`: what the exporter reports of the plan (mode, isolation, access, the
  fingerprint of the artefacts it renders), written by the charm after each reconcile;
- `history.json`: the apply history (last confirmed apply, rollbacks), kept by `Host`;
- `exporter-started.json`: what the running exporter was started with (its unit's text and
  its code, as hashes), so that a change of either restarts it and nothing else does.

A hook whose inputs did not change runs no command here: the unit file is written (then
`daemon-reload`) only when its text changed, the service restarted only when its unit or its
code changed, and enabled only when it is not.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import IPAddress
from ..observed import HISTORY_FILE, PLAN_SUMMARY_FILE, ApplyHistory, PlanSummary, load_record
from .outcomes import HostError, PortInUseError
from .system import System, first_error, read_text, write_atomically

EXPORTER_UNIT_NAME = "network-isolation-exporter.service"
EXPORTER_WANTED_BY = "multi-user.target"
EXPORTER_PACKAGE = "network_isolation"  # the package whose module the service runs
STARTED_FILE = "exporter-started.json"
TCP_LISTEN = "0A"  # a listening socket's state in /proc/net/tcp and tcp6


@dataclass(frozen=True)
class ExporterSpec:
    """How the exporter runs on this machine."""

    address: str  # the management address it listens on
    port: int
    python: str  # the charm's interpreter
    pythonpath: tuple[str, ...]  # the charm's code and libraries
    state_dir: Path

    def command(self) -> list[str]:
        """The service's command line."""
        return [
            self.python,
            "-m",
            "network_isolation.host.metrics",
            "--address",
            self.address,
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
        ]


def exporter_unit_text(spec: ExporterSpec) -> str:
    """The unit file's content (a change of any part of the spec changes it).

    A directory the charm's `sys.path` holds twice is written once, so the text does not
    depend on how often the charm's start-up named it.
    """
    pythonpath = ":".join(dict.fromkeys(spec.pythonpath))
    return f"""\
# Written by the network-isolation charm; removed when the charm leaves the machine.
[Unit]
Description=network-isolation: Prometheus exporter of the isolation table
# The management address may come up after boot: the service retries until it can bind.
After=network-online.target network-isolation.service
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
Environment={shlex.quote(f"PYTHONPATH={pythonpath}")}
ExecStart={shlex.join(spec.command())}
Restart=always
RestartSec=10
# It only reads: our table (nft's netlink listing needs CAP_NET_ADMIN) and the state files.
CapabilityBoundingSet=CAP_NET_ADMIN
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX
MemoryMax=128M

[Install]
WantedBy={EXPORTER_WANTED_BY}
"""


def code_fingerprint(system: System, pythonpath: Sequence[str]) -> str:
    """A hash of the code the service would run: its package's sources, its distributions.

    The package is `network_isolation` as the first directory of `pythonpath` holding it
    (the exporter imports much of it); the distributions are the names and versions of the
    `*.dist-info` directories beside it (an upgraded pydantic counts). Files only.
    """
    digest = hashlib.sha256()
    directories = [system.at(Path(entry)) for entry in dict.fromkeys(pythonpath)]
    packages = [d / EXPORTER_PACKAGE for d in directories if (d / EXPORTER_PACKAGE).is_dir()]
    for package in packages[:1]:  # the one Python imports
        for source in sorted(package.rglob("*.py")):
            digest.update(f"{source.relative_to(package)}\0".encode())
            digest.update(source.read_bytes() + b"\0")
    for directory in directories:
        for dist in sorted(directory.glob("*.dist-info")):
            digest.update(f"{dist.name}\0".encode())
    return digest.hexdigest()


def _address(hexadecimal: str) -> IPAddress:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in the host's byte order."""
    raw = b"".join(
        int(hexadecimal[i : i + 8], 16).to_bytes(4, sys.byteorder)
        for i in range(0, len(hexadecimal), 8)
    )
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def tcp_listeners(system: System) -> Iterator[tuple[IPAddress, int]]:
    """The (address, port) of every listening TCP socket in this network namespace (files)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (read_text(system.at(Path(table))) or "").splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != TCP_LISTEN:
                continue
            address, _, port = fields[1].partition(":")
            try:
                yield _address(address), int(port, 16)
            except ValueError:
                continue


def listening_on(unit_text: str | None) -> tuple[str, int] | None:
    """Where an exporter unit's service listens (--address, --port); None if unreadable."""
    for line in (unit_text or "").splitlines():
        if not line.startswith("ExecStart="):
            continue
        argv = shlex.split(line.removeprefix("ExecStart="))
        try:
            return argv[argv.index("--address") + 1], int(argv[argv.index("--port") + 1])
        except (ValueError, IndexError):
            return None
    return None


class Exporter:
    """The exporter's unit (written, enabled, restarted, removed) and the files it reads."""

    def __init__(self, system: System, state: Path):
        self.system = system
        self.unit_file = system.at(Path("/etc/systemd/system") / EXPORTER_UNIT_NAME)
        self.unit_link = system.at(
            Path("/etc/systemd/system") / f"{EXPORTER_WANTED_BY}.wants" / EXPORTER_UNIT_NAME
        )
        self.plan_summary_file = state / PLAN_SUMMARY_FILE
        self.history_file = state / HISTORY_FILE
        self.started_file = state / STARTED_FILE

    def history(self) -> ApplyHistory:
        """What applies have done on this machine (zeros before the first)."""
        return load_record(ApplyHistory, read_text(self.history_file)) or ApplyHistory()

    def note(self, change: Callable[[ApplyHistory], ApplyHistory]) -> None:
        """Update the apply history."""
        write_atomically(self.history_file, change(self.history()).model_dump_json() + "\n")

    def record_plan(self, summary: PlanSummary) -> None:
        """What the exporter reports of the plan, written when it changed.

        Only while the exporter is installed: the file is there for the exporter alone.
        """
        content = summary.model_dump_json() + "\n"
        if self.unit_file.exists() and read_text(self.plan_summary_file) != content:
            write_atomically(self.plan_summary_file, content)

    def ensure(self, spec: ExporterSpec | None) -> bool:
        """The service as `spec` says (None: removed); True if something changed.

        Reads files only, and runs no command, when the unit is written as `spec` says,
        enabled, and started with the code there now. Otherwise only what changed is done:
        the unit written and `daemon-reload`, `enable` (`--now` when nothing else starts
        it), `restart` when its unit or its code changed. PortInUseError, before any change,
        when another process listens where it would.
        """
        if spec is None:
            existed = self.unit_file.exists() or self.unit_link.is_symlink()
            errors = self.remove_unit()
            if errors:
                raise HostError("; ".join(errors))
            return existed
        installed = read_text(self.unit_file)
        text = exporter_unit_text(spec)
        wanted = {
            "unit": hashlib.sha256(text.encode()).hexdigest(),
            "code": code_fingerprint(self.system, spec.pythonpath),
        }
        started = self._started()
        # systemd has the unit as it is on disk once reloaded after a start with it: a reload
        # that failed after the file was written is retried by the next hook
        reload = installed != text or started.get("unit") != wanted["unit"]
        restart = started != wanted
        enable = not os.path.lexists(self.unit_link)
        if not (restart or enable):
            return False
        if restart:
            self.check_port(spec, listening_on(installed))
        systemctl = self.system.tools.systemctl
        if installed != text:
            write_atomically(self.unit_file, text, 0o644)
        if reload:
            self.system.must(systemctl, "daemon-reload")
        if enable:
            self.system.must(
                systemctl, "enable", *([] if restart else ["--now"]), EXPORTER_UNIT_NAME
            )
        if restart:
            self.system.must(systemctl, "restart", EXPORTER_UNIT_NAME)
            write_atomically(self.started_file, json.dumps(wanted) + "\n", 0o644)
        return True

    def _started(self) -> dict[str, str]:
        """The hashes of the unit and code the service was last started with ({}: unknown)."""
        try:
            recorded = json.loads(read_text(self.started_file) or "{}")
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}

    def check_port(self, spec: ExporterSpec, ours: tuple[str, int] | None) -> None:
        """PortInUseError if another process listens on the port at the exporter's address.

        A listener on the wildcard address (0.0.0.0, ::) or on the same address is in the
        way. The one on exactly the address and port the installed unit listens on is the
        exporter's own: the exporter binds one address, and no other process can hold an
        address and port it holds. Read from /proc/net/tcp and tcp6: no command.
        """
        wanted = ipaddress.ip_address(spec.address)
        for address, port in tcp_listeners(self.system):
            if port != spec.port or ours == (str(address), port):
                continue
            # a wildcard IPv6 socket takes IPv4 connections too (unless IPV6_V6ONLY)
            wildcard = address.is_unspecified and address.version in (wanted.version, 6)
            if wildcard or address == wanted:
                raise PortInUseError(
                    f"metrics-port {spec.port} is in use by another process on {address}"
                )

    def remove_unit(self) -> list[str]:
        """Stop, disable and delete the service; what went wrong, if anything."""
        if not self.unit_file.exists() and not self.unit_link.is_symlink():
            return []
        systemctl = self.system.tools.systemctl
        result = self.system.run(systemctl, "disable", "--now", EXPORTER_UNIT_NAME)
        self.unit_file.unlink(missing_ok=True)
        self.started_file.unlink(missing_ok=True)
        self.system.run(systemctl, "daemon-reload")
        if result.returncode != 0:
            return [f"systemctl disable --now: {first_error(result.stderr + result.stdout)}"]
        return []

    def remove(self) -> list[str]:
        """The service and the files it reads gone; what went wrong, if anything."""
        errors = self.remove_unit()
        for path in (self.plan_summary_file, self.history_file):
            path.unlink(missing_ok=True)
        return errors
