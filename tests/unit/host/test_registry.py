"""The per-machine registry through which co-located units agree on their roles."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from network_isolation import host
from network_isolation.host import MachineRegistry, state_dir, system, write_atomically

OLD = 1_000_000_000  # a file time far in the past, to see whether a file was rewritten


def entry_files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def test_record_and_read_back(tmp_path: Path):
    registry = MachineRegistry(tmp_path / "units")
    registry.record("app/0", frozenset({"compute"}))
    registry.record("app/1", frozenset({"storage", "control"}))
    assert registry.entries() == {
        "app/0": frozenset({"compute"}),
        "app/1": frozenset({"storage", "control"}),
    }
    assert registry.roles_except("app/0") == frozenset({"storage", "control"})
    assert registry.roles_except("app/1") == frozenset({"compute"})
    assert registry.roles_except("app/2") == frozenset({"compute", "storage", "control"})


def test_the_other_units_principals_are_their_applications(tmp_path: Path):
    registry = MachineRegistry(tmp_path)
    registry.record("app/0", frozenset({"storage"}), principal="microceph/2")
    registry.record("app/1", frozenset({"storage"}), principal="cinder-volume/0")
    registry.record("app/2", frozenset({"juju-controller"}))  # no principal recorded
    assert registry.principals_except("app/0") == frozenset({"cinder-volume"})
    assert registry.principals_except("app/1") == frozenset({"microceph"})
    assert registry.principals_except("app/9") == frozenset({"microceph", "cinder-volume"})


def test_unit_with_no_role_is_recorded(tmp_path: Path):
    registry = MachineRegistry(tmp_path)
    registry.record("app/0", frozenset())
    assert registry.entries() == {"app/0": frozenset()}


def test_record_is_a_no_op_when_unchanged(tmp_path: Path):
    registry = MachineRegistry(tmp_path)
    registry.record("app/0", frozenset({"compute", "storage"}))
    (path,) = entry_files(tmp_path)
    os.utime(path, (OLD, OLD))
    inode = path.stat().st_ino
    registry.record("app/0", frozenset({"storage", "compute"}))
    assert path.stat().st_mtime == OLD
    assert path.stat().st_ino == inode


def test_record_rewrites_when_changed(tmp_path: Path):
    registry = MachineRegistry(tmp_path)
    registry.record("app/0", frozenset({"compute"}))
    (path,) = entry_files(tmp_path)
    os.utime(path, (OLD, OLD))
    registry.record("app/0", frozenset({"compute", "storage"}))
    assert path.stat().st_mtime != OLD
    assert registry.entries() == {"app/0": frozenset({"compute", "storage"})}


def test_record_replaces_the_file_atomically(tmp_path: Path):
    registry = MachineRegistry(tmp_path)
    registry.record("app/0", frozenset({"compute"}))
    (path,) = entry_files(tmp_path)
    before = path.stat().st_ino
    registry.record("app/0", frozenset({"storage"}))
    # A new file renamed over the old one, never the old one rewritten in place.
    assert path.stat().st_ino != before
    assert entry_files(tmp_path) == [path]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    registry = MachineRegistry(tmp_path)
    registry.record("app/0", frozenset({"compute"}))
    (path,) = entry_files(tmp_path)
    before = path.read_text()

    def no_rename(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(system.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        registry.record("app/0", frozenset({"storage"}))
    assert path.read_text() == before
    assert entry_files(tmp_path) == [path]


def test_write_atomically_creates_the_directory_and_sets_the_mode(tmp_path: Path):
    path = tmp_path / "a" / "b" / "file"
    write_atomically(path, "hello\n", mode=0o600)
    assert path.read_text() == "hello\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_forget(tmp_path: Path):
    registry = MachineRegistry(tmp_path)
    registry.record("app/0", frozenset({"compute"}))
    registry.record("app/1", frozenset({"storage"}))
    registry.forget("app/1")
    assert registry.entries() == {"app/0": frozenset({"compute"})}
    assert len(entry_files(tmp_path)) == 1
    registry.forget("app/1")  # already gone: no error
    registry.forget("never/9")
    assert registry.entries() == {"app/0": frozenset({"compute"})}


def test_units_of_different_applications_do_not_collide(tmp_path: Path):
    registry = MachineRegistry(tmp_path)
    registry.record("network-isolation/0", frozenset({"compute"}))
    registry.record("other-isolation/0", frozenset({"storage"}))
    assert len(registry.entries()) == 2


def test_missing_directory_has_no_entries(tmp_path: Path):
    registry = MachineRegistry(tmp_path / "not-yet")
    assert registry.entries() == {}
    assert registry.roles_except("app/0") == frozenset()
    registry.forget("app/0")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        json.dumps({"roles": ["compute"]}),
        json.dumps({"unit": "x/9"}),
        json.dumps({"unit": 9, "roles": ["compute"]}),
        json.dumps({"unit": "x/9", "roles": [1, 2]}),
        json.dumps({"unit": "x/9", "roles": None}),
        json.dumps({"unit": "x/9", "roles": 5}),
        json.dumps(["x/9", ["compute"]]),
        json.dumps("x/9"),
    ],
)
def test_malformed_entries_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
):
    registry = MachineRegistry(tmp_path)
    registry.record("app/0", frozenset({"compute"}))
    (tmp_path / "x-9.json").write_text(content)
    with caplog.at_level(logging.WARNING, logger=host.__name__):
        assert registry.entries() == {"app/0": frozenset({"compute"})}
    assert any("x-9.json" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"unit": "x/9", "roles": "compute"}),
        json.dumps({"unit": "x/9", "roles": {"compute": 1}}),
    ],
    ids=["roles-string", "roles-mapping"],
)
def test_roles_that_are_not_a_list_are_skipped(tmp_path: Path, content: str):
    registry = MachineRegistry(tmp_path)
    (tmp_path / "x-9.json").write_text(content)
    assert registry.entries() == {}


def test_unreadable_entry_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    registry = MachineRegistry(tmp_path)
    registry.record("app/0", frozenset({"compute"}))
    (tmp_path / "x-9.json").mkdir()  # a directory where a file should be: read fails
    with caplog.at_level(logging.WARNING, logger=host.__name__):
        assert registry.entries() == {"app/0": frozenset({"compute"})}


def test_state_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("NETWORK_ISOLATION_STATE_DIR", str(tmp_path))
    assert state_dir() == tmp_path
    monkeypatch.setenv("NETWORK_ISOLATION_STATE_DIR", "")
    assert state_dir() == host.DEFAULT_STATE_DIR
    monkeypatch.delenv("NETWORK_ISOLATION_STATE_DIR")
    assert state_dir() == host.DEFAULT_STATE_DIR


def test_entries_of_units_no_longer_on_the_machine_are_ignored(tmp_path: Path):
    """A unit removed with --force (or whose remove hook failed) leaves its entry behind."""
    agents = tmp_path / "agents"
    for unit in ("unit-network-isolation-0", "unit-nova-0", "unit-network-isolation-2"):
        (agents / unit).mkdir(parents=True)
    registry = MachineRegistry(tmp_path / "units", agents)
    registry.record("network-isolation/0", frozenset({"compute"}), principal="nova/0")
    registry.record("network-isolation/1", frozenset({"storage"}), principal="ceph/0")  # gone
    registry.record(
        "network-isolation/2", frozenset({"control"}), principal="k8s/0"
    )  # principal gone
    registry.record("network-isolation/3", frozenset({"control"}))  # gone, no principal known
    assert registry.entries() == {"network-isolation/0": frozenset({"compute"})}
    assert registry.roles_except("network-isolation/0") == frozenset()
    # without Juju's agents directory nothing can be told: every entry counts
    assert len(MachineRegistry(tmp_path / "units", tmp_path / "none").entries()) == 4
