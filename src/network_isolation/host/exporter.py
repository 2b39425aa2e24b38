"""The metrics exporter on the machine: its systemd unit, and the state files it reads.

- `network-isolation-exporter.service` runs `python3 -m network_isolation.host.metrics` with the
  charm's own interpreter and code, on the management address only; it may do nothing but
  read (CAP_NET_ADMIN for nft's netlink listing, a read-only file system).
- `plan-summary.json`: what the exporter reports of the plan (mode, isolation, access, the
  fingerprint of the artefacts it renders), written by the charm after each reconcile;
- `history.json`: the apply history (last confirmed apply, rollbacks), kept by `Host`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..observed import HISTORY_FILE, PLAN_SUMMARY_FILE, ApplyHistory, PlanSummary, load_record
from .outcomes import HostError
from .system import System, first_error, read_text, write_atomically

EXPORTER_UNIT_NAME = "network-isolation-exporter.service"
EXPORTER_WANTED_BY = "multi-user.target"


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
    """The unit file's content (a change of any part of the spec changes it)."""
    pythonpath = ":".join(spec.pythonpath)
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

        Checks files only when the unit is already written and enabled.
        """
        if spec is None:
            existed = self.unit_file.exists() or self.unit_link.is_symlink()
            errors = self.remove_unit()
            if errors:
                raise HostError("; ".join(errors))
            return existed
        text = exporter_unit_text(spec)
        if read_text(self.unit_file) == text and os.path.lexists(self.unit_link):
            return False
        write_atomically(self.unit_file, text, 0o644)
        systemctl = self.system.tools.systemctl
        self.system.must(systemctl, "daemon-reload")
        self.system.must(systemctl, "enable", EXPORTER_UNIT_NAME)
        self.system.must(systemctl, "restart", EXPORTER_UNIT_NAME)
        return True

    def remove_unit(self) -> list[str]:
        """Stop, disable and delete the service; what went wrong, if anything."""
        if not self.unit_file.exists() and not self.unit_link.is_symlink():
            return []
        systemctl = self.system.tools.systemctl
        result = self.system.run(systemctl, "disable", "--now", EXPORTER_UNIT_NAME)
        self.unit_file.unlink(missing_ok=True)
        self.system.run(systemctl, "daemon-reload")
        if result.returncode != 0:
            return [f"systemctl disable --now: {first_error(result.stderr + result.stdout)}"]
        return []

    def remove(self) -> list[str]:
        """The service and the files it reads gone; what went wrong, if anything."""
        errors = self.remove_unit()
        self.plan_summary_file.unlink(missing_ok=True)
        self.history_file.unlink(missing_ok=True)
        return errors
