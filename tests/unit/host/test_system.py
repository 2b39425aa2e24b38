"""The boundary: atomic writes, the subprocess runner, apt.

Expected values are written out here, never taken from the code.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from network_isolation import host as host_module
from network_isolation.host import HostError, Result, write_atomically


def test_write_atomically_bytes_and_mode(tmp_path: Path):
    path = tmp_path / "a/b.yaml"
    write_atomically(path, b"x\r\ny\n", 0o600)
    assert path.read_bytes() == b"x\r\ny\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["b.yaml"]


# -- the production runner and installer --------------------------------------------------------


def test_subprocess_runner(tmp_path: Path):
    runner = host_module.SubprocessRunner(timeout=0.5)
    done = runner.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert done == Result(3, "out\n", "err\n")
    assert runner.run([str(tmp_path / "missing")]).returncode == 127
    slow = runner.run(["/bin/sleep", "5"])
    assert slow.returncode == 124 and "timed out" in slow.stderr


def test_apt_install_reports_failures(monkeypatch: pytest.MonkeyPatch):
    apt = pytest.importorskip("charmlibs.apt")
    asked: list[object] = []

    def add_package(names: object) -> None:
        asked.append(names)
        raise apt.PackageError("Failed to install packages: nftables")

    monkeypatch.setattr(apt, "add_package", add_package)
    with pytest.raises(HostError, match="cannot install nftables: Failed to install"):
        host_module.apt_install(["nftables"])
    assert asked == [["nftables"]]
