"""The exporter's systemd unit: what runs `python3 -m network_isolation.exporter`, and how.

Pure text: `Host` writes, enables, restarts and removes the unit. The service runs the charm's
own interpreter and code (the paths of the unit that wrote it), listens on the management
address only, and may do nothing but read: it needs CAP_NET_ADMIN for nft's netlink listing,
and the file system is read-only to it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

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
            "network_isolation.exporter",
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
