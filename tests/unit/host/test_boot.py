"""Boot persistence: our systemd unit.

Driven through the fake machine of `host_fakes`; expected values are written out here,
never taken from the code.
"""

from __future__ import annotations

import configparser
import os
import shlex
from pathlib import Path

import pytest
from host_fakes import NFT, SYSTEMCTL, A, FakeMachine

from network_isolation.host import Host, HostError


def test_the_boot_unit_loads_our_ruleset_before_the_network(host: Host, root: Path):
    host.apply(A)
    text = (root / "etc/systemd/system/network-isolation.service").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(text)
    assert unit["Unit"]["DefaultDependencies"] == "no"
    assert unit["Unit"]["Wants"] == "network-pre.target"
    assert "network-pre.target" in unit["Unit"]["Before"].split()
    assert unit["Unit"]["After"] == "nftables.service"
    assert unit["Service"]["Type"] == "oneshot"
    state = f"{root}/var/lib/network-isolation"
    assert unit["Service"]["ExecStart"] == (
        f"/bin/sh -c '[ ! -e {state}/rollback.sh ] || /bin/sh {state}/rollback.sh boot;"
        f" [ ! -e {state}/ruleset.nft ] || exec {NFT} -f {state}/ruleset.nft'"
    )
    assert shlex.split(unit["Service"]["ExecStart"]) == host.boot_command()
    assert "ExecStop" not in unit["Service"]
    assert unit["Install"]["WantedBy"] == "sysinit.target"
    link = root / "etc/systemd/system/sysinit.target.wants/network-isolation.service"
    assert os.readlink(link) == "/etc/systemd/system/network-isolation.service"
    assert (root / "etc/nftables.conf").read_text() == "flush ruleset\n"


def test_a_disabled_unit_is_enabled_again_without_reapplying(
    host: Host, machine: FakeMachine, root: Path
):
    host.apply(A)
    (root / "etc/systemd/system/sysinit.target.wants/network-isolation.service").unlink()
    machine.calls.clear()
    assert not host.apply(A).changed
    assert machine.commands() == [f"{SYSTEMCTL} enable network-isolation.service"]


def test_systemctl_failures_on_persistence_are_host_errors(host: Host, machine: FakeMachine):
    machine.fail(SYSTEMCTL, "daemon-reload", stderr="Failed to reload daemon: Access denied")
    with pytest.raises(HostError, match="systemctl daemon-reload: Failed to reload daemon"):
        host.apply(A)
