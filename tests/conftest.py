"""Every test session leaves this machine as it found it: a leak fails the run.

The functional tests start daemons (`dbus-daemon`, `systemd-networkd`, Prometheus, Chromium, the
exporter, `iperf3`, `socat`), create network namespaces and mount file systems; the unit tests
run `nft` in throwaway namespaces. What one of them forgets outlives the run, holds namespaces,
ports and memory, and can change what the next run sees. So the state of the machine is recorded
when the session starts and compared when it finishes (after every fixture's teardown, with a
short grace for teardowns still finishing), and anything the session left behind is listed and
turns the exit status red:

- a process: a live descendant of pytest, or a process started during the session that carries
  the session's mark in its environment (so a daemon that forked itself away from pytest's tree
  is still found), names the session's temporary directory on its command line, or runs in a
  network namespace the session left behind;
- a network namespace (`ip netns list`) that did not exist at the start;
- a mount in pytest's mount namespace that did not exist at the start.

Other software on the machine is never blamed: only what appeared during the session counts, and
what another test session made (a namespace named after another pytest's pid, a mount in another
session's temporary directory, a process without this session's mark) is left to that session's
own check. Everything is read from /proc and /run/netns, so the check needs no privilege beyond
reading its own processes, and costs a few milliseconds when nothing leaked.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Inherited by every process the tests start; its value names this session only.
SESSION_MARK = "LEAK_CHECK_SESSION"
# How long teardown may still be finishing (a daemon exiting after SIGTERM) before it is a leak.
GRACE_SECONDS = 2.0
POLL_SECONDS = 0.1
NETNS_DIR = Path("/run/netns")
PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    """One process as /proc/PID/stat shows it."""

    pid: int
    ppid: int
    state: str
    # Clock ticks after boot: with the pid, it names one process even when pids are reused.
    started: int

    @property
    def identity(self) -> tuple[int, int]:
        return self.pid, self.started

    @property
    def alive(self) -> bool:
        """Running or sleeping: a zombie has exited and only waits for its parent to reap it."""
        return self.state not in ("Z", "X", "x")


def processes() -> dict[int, Process]:
    """Every process of this pid namespace, by pid."""
    found: dict[int, Process] = {}
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        try:
            stat = (PROC / entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # The command name, in parentheses, may itself hold spaces and parentheses.
        rest = stat[stat.rindex(")") + 2 :].split()
        found[int(entry)] = Process(int(entry), int(rest[1]), rest[0], int(rest[19]))
    return found


def command_line(pid: int) -> str:
    """A process's command line, its arguments joined by spaces ("" once it has gone)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def environment(pid: int) -> list[bytes]:
    """A process's initial environment, as NAME=value entries (empty if unreadable)."""
    try:
        return (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's process
        return []


def network_namespace(path: Path) -> int | None:
    """The inode that names a network namespace (of /proc/PID/ns/net or a /run/netns entry)."""
    try:
        return path.stat().st_ino
    except OSError:
        return None


def descendants(table: dict[int, Process], root: int) -> set[int]:
    """The pids of every child, grandchild, ... of root."""
    children: dict[int, list[int]] = {}
    for process in table.values():
        children.setdefault(process.ppid, []).append(process.pid)
    found: set[int] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def named_namespaces() -> set[str]:
    """The network namespaces `ip netns list` shows."""
    try:
        return set(os.listdir(NETNS_DIR))
    except OSError:
        return set()


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    point: str
    source: str
    fstype: str


def unescape(text: str) -> str:
    """Undo mountinfo's octal escapes (a space in a mount point is written as one)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mounts() -> dict[int, Mount]:
    """The mounts of pytest's mount namespace, by mount id."""
    found: dict[int, Mount] = {}
    for line in (PROC / "self" / "mountinfo").read_text().splitlines():
        fields = line.split()
        after = fields.index("-")  # optional fields end at a lone "-"
        mount = Mount(int(fields[0]), unescape(fields[4]), fields[after + 2], fields[after + 1])
        found[mount.mount_id] = mount
    return found


def under(path: str, directory: Path) -> bool:
    return path == str(directory) or path.startswith(f"{directory}/")


@dataclass
class LeakCheck:
    """What existed when the session started, and what the session left behind."""

    mark: str
    processes: frozenset[tuple[int, int]]
    namespaces: frozenset[str]
    mounts: frozenset[int]
    basetemp: Path | None = None
    found: list[str] = field(default_factory=list)

    @classmethod
    def start(cls) -> LeakCheck:
        """Record the machine as the session found it, and mark what the session will start."""
        mark = f"{os.getpid()}-{secrets.token_hex(8)}"
        os.environ[SESSION_MARK] = mark
        return cls(
            mark=mark,
            processes=frozenset(p.identity for p in processes().values()),
            namespaces=frozenset(named_namespaces()),
            mounts=frozenset(mounts()),
        )

    def other_sessions(self, table: dict[int, Process]) -> set[int]:
        """Pids of the other pytest processes running now (they name namespaces after them)."""
        me = os.getpid()
        return {pid for pid in table if pid != me and "pytest" in command_line(pid)}

    def our_namespaces(self, table: dict[int, Process]) -> list[str]:
        """New namespaces, less those named after another running test session's pid."""
        others = {str(pid) for pid in self.other_sessions(table)}
        me = str(os.getpid())
        ours: list[str] = []
        for name in sorted(named_namespaces() - self.namespaces):
            numbers = set(re.findall(r"\d+", name))
            if me in numbers or not numbers & others:
                ours.append(name)
        return ours

    def ours(
        self, process: Process, descendant: bool, namespaces: set[int], names: list[str]
    ) -> bool:
        """Whether a process that appeared during the session was started by it."""
        if descendant:
            return True
        if f"{SESSION_MARK}={self.mark}".encode() in environment(process.pid):
            return True
        command = command_line(process.pid)
        if self.basetemp is not None and str(self.basetemp) in command:
            return True
        if any(name in command for name in names):
            return True
        return network_namespace(PROC / str(process.pid) / "ns" / "net") in namespaces

    def leaks(self) -> list[str]:
        """One line per process, namespace and mount the session left behind."""
        me = os.getpid()
        table = processes()
        mine = descendants(table, me)
        names = self.our_namespaces(table)
        inodes = {network_namespace(NETNS_DIR / name) for name in names}
        namespaces = {inode for inode in inodes if inode is not None}
        new = {
            p.pid: p
            for p in table.values()
            if p.pid != me and p.alive and p.identity not in self.processes
        }
        left = {pid for pid, p in new.items() if self.ours(p, pid in mine, namespaces, names)}
        for pid in list(left):  # and what they started, whatever its environment
            left |= descendants(table, pid) & new.keys()
        found = [
            f"process {pid} (parent {table[pid].ppid}): {command_line(pid) or '?'}"
            for pid in sorted(left)
        ]
        found += [f"network namespace {name} (ip netns delete {name})" for name in names]
        found += [f"mount {m.point} ({m.fstype} from {m.source})" for m in self.new_mounts(table)]
        return found

    def new_mounts(self, table: dict[int, Process]) -> Iterator[Mount]:
        """Mounts made during the session, less `ip netns`'s own and other sessions'."""
        others = {str(pid) for pid in self.other_sessions(table)}
        tmp_root = self.basetemp.parent if self.basetemp is not None else None
        for mount in sorted(mounts().values(), key=lambda m: m.mount_id):
            if mount.mount_id in self.mounts or under(mount.point, NETNS_DIR):
                continue  # a namespace is reported as one; /run/netns itself is ip's to keep
            if tmp_root is not None and self.basetemp is not None:
                if under(mount.point, tmp_root) and not under(mount.point, self.basetemp):
                    continue  # in another session's temporary directory
            if others & set(re.findall(r"\d+", mount.point)):
                continue  # named after another session's pid, as its namespaces are
            yield mount

    def settle(self, grace: float = GRACE_SECONDS) -> list[str]:
        """The leaks still there after teardowns have had `grace` seconds to finish."""
        deadline = time.monotonic() + grace
        while True:
            found = self.leaks()
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(POLL_SECONDS)


CHECK: LeakCheck | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before any test (or collection) has started anything."""
    global CHECK
    CHECK = LeakCheck.start()


@pytest.fixture(scope="session", autouse=True)
def _session_temporary_directory(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Processes naming this directory on their command line are the session's."""
    if CHECK is not None:
        CHECK.basetemp = tmp_path_factory.getbasetemp().resolve()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if it left anything behind (after every fixture has been torn down)."""
    if CHECK is None:
        return
    CHECK.found = CHECK.settle()
    if CHECK.found and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What was left behind, one line each, above the final count."""
    if CHECK is not None and CHECK.found:
        terminalreporter.section("left behind by this test session", red=True, bold=True)
        for line in CHECK.found:
            terminalreporter.line(line, red=True)
