"""Fixtures of the host tests: a machine's files under a temporary root, the fakes, a Host."""

from __future__ import annotations

from pathlib import Path

import pytest
from host_fakes import FakeMachine, FakeProbe

from network_isolation.host import Host


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A machine's files: netplan files of others (lib, etc, run), a stock nftables.conf."""
    root = tmp_path / "root"
    for path, content in {
        "etc/netplan/50-cloud-init.yaml": "network: {version: 2}\n",
        "lib/netplan/00-lib.yaml": "network: {version: 2}\n",
        "run/netplan/10-run.yaml": "network: {version: 2}\n",
        "lib/netplan/generate": "\x7fELF not yaml",
        "etc/nftables.conf": "flush ruleset\n",
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
        (root / path).chmod(0o600)
    return root


@pytest.fixture
def machine(root: Path) -> FakeMachine:
    return FakeMachine(root)


@pytest.fixture
def probe() -> FakeProbe:
    return FakeProbe()


@pytest.fixture
def host(root: Path, machine: FakeMachine, probe: FakeProbe) -> Host:
    return Host(root, machine, probe=probe, rollback_after=120)
