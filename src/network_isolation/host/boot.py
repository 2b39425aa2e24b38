"""Boot persistence: our systemd unit loads the confirmed ruleset before any network is up."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from .nftables import TABLE_FAMILY, TABLE_NAME
from .system import System, first_error, read_text, write_atomically

UNIT_NAME = "network-isolation.service"
UNIT_WANTED_BY = "sysinit.target"


class BootUnit:
    """Our unit file `/etc/systemd/system/network-isolation.service`, enabled."""

    def __init__(self, system: System, state: Path, ruleset_file: Path, rollback_script: Path):
        self.system = system
        self.state = state
        self.ruleset_file = ruleset_file
        self.rollback_script = rollback_script
        self.unit_file = system.at(Path("/etc/systemd/system") / UNIT_NAME)
        self.unit_link = system.at(
            Path("/etc/systemd/system") / f"{UNIT_WANTED_BY}.wants" / UNIT_NAME
        )

    def text(self) -> str:
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
ConditionPathExists=|{self.ruleset_file}
ConditionPathExists=|{self.rollback_script}

[Service]
Type=oneshot
RemainAfterExit=yes
# An apply that a reboot interrupted (the dead-man's timer does not survive it) is undone
# first: its snapshot is restored, the netplan file included. Then the confirmed ruleset
# replaces only our table, in one transaction; other tables are left alone. No ExecStop:
# stopping the unit must never open the firewall.
ExecStart={shlex.join(self.command())}

[Install]
# sysinit.target, as nftables.service: every boot target (rescue included) pulls it in, early.
WantedBy={UNIT_WANTED_BY}
"""

    def command(self) -> list[str]:
        """What the boot unit runs (its ExecStart)."""
        q, tools = shlex.quote, self.system.tools
        script, ruleset = q(str(self.rollback_script)), q(str(self.ruleset_file))
        return [
            tools.sh,
            "-c",
            f"[ ! -e {script} ] || {q(tools.sh)} {script} boot;"
            f" [ ! -e {ruleset} ] || exec {q(tools.nft)} -f {ruleset}",
        ]

    def ensure(self) -> None:
        """Our unit file written and enabled; checks files only when it already is."""
        text = self.text()
        written = read_text(self.unit_file) != text
        if written:
            write_atomically(self.unit_file, text, 0o644)
            self.system.must(self.system.tools.systemctl, "daemon-reload")
        if written or not os.path.lexists(self.unit_link):
            self.system.must(self.system.tools.systemctl, "enable", UNIT_NAME)

    def remove(self) -> list[str]:
        """Disable and delete our unit; what went wrong, if anything."""
        if not (self.unit_file.exists() or self.unit_link.is_symlink()):
            return []
        errors: list[str] = []
        result = self.system.run(self.system.tools.systemctl, "disable", UNIT_NAME)
        if result.returncode != 0:
            errors.append(f"systemctl disable: {first_error(result.stderr)}")
        self.unit_file.unlink(missing_ok=True)
        self.system.run(self.system.tools.systemctl, "daemon-reload")
        return errors
