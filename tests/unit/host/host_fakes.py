"""The fake machine and probe the host tests run against, and the artefacts they apply.

The fake runner stands for the machine: it records every command, keeps the "kernel" state of
our table (the last ruleset loaded with `nft -f`), and makes `systemctl enable` create the
symlink systemd would, where the unit's `WantedBy=` says. Expected values are written out here,
never taken from the code.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from network_isolation.host import ProbeTarget, Result, gateway_target
from network_isolation.observed import HISTORY_FILE

NFT, NETPLAN, SYSTEMCTL, SYSTEMD_RUN, IP = (
    "/usr/sbin/nft",
    "/usr/sbin/netplan",
    "/usr/bin/systemctl",
    "/usr/bin/systemd-run",
    "/sbin/ip",
)
RESTART_NETWORKD = f"{SYSTEMCTL} try-restart systemd-networkd.service"
REMOVAL = "table inet network_isolation\ndelete table inet network_isolation\n"


def ruleset(port: int) -> str:
    return (
        "table inet network_isolation\n"
        "delete table inet network_isolation\n"
        "table inet network_isolation {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    tcp dport {port} drop\n"
        "  }\n"
        "}\n"
    )


def netplan(table: int) -> str:
    return (
        "network:\n"
        "  version: 2\n"
        "  ethernets:\n"
        "    enp2s0:\n"
        "      routing-policy:\n"
        f"        - {{from: 10.20.0.0/24, table: {table}, priority: {table}}}\n"
    )


@dataclass(frozen=True)
class Art:
    nftables: str
    netplan: str | None


A = Art(ruleset(1001), netplan(101))
B = Art(ruleset(1002), netplan(102))
C = Art(ruleset(1003), netplan(103))
OFF = Art(REMOVAL, None)
CONTROLLER = ProbeTarget("10.10.0.2", 17070, label="juju controller")
GATEWAY = gateway_target("10.10.0.1")


class Killed(BaseException):
    """The hook process dies (SIGKILL): no Python cleanup runs."""


class FakeMachine:
    """The runner: records commands and plays nft, netplan, systemctl and systemd-run."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[list[str]] = []
        self.table: str | None = None  # the ruleset our table holds in the "kernel"
        self.failures: list[tuple[tuple[str, ...], Result]] = []
        self.staged: list[str] = []  # files netplan generate saw
        self.json_listing = ""

    def fail(self, *prefix: str, stderr: str = "Error: injected", times: int = 1) -> None:
        for _ in range(times):
            self.failures.append((prefix, Result(1, "", stderr)))

    def _injected(self, argv: list[str]) -> Result | None:
        for i, (prefix, result) in enumerate(self.failures):
            if tuple(argv[: len(prefix)]) == prefix:
                del self.failures[i]
                return Result(result.returncode, "", result.stderr.replace("{arg}", argv[-1]))
        if argv[:2] == [SYSTEMCTL, "is-active"]:
            return Result(3)  # no dead-man service runs unless a test says so
        return None

    def run(self, argv: Sequence[str]) -> Result:
        argv = list(argv)
        self.calls.append(argv)
        injected = self._injected(argv)
        if injected:
            return injected
        if argv[:2] == [NFT, "-f"]:
            text = Path(argv[2]).read_text()
            self.table = None if text == REMOVAL else text
        elif argv[:2] == [NFT, "-s"]:
            if self.table is None:
                return Result(1, "", "Error: No such file or directory\nlist table inet x\n")
            return Result(0, self.table)
        elif argv[:2] == [NFT, "-j"]:
            if self.table is None:
                return Result(1, "", "Error: No such file or directory")
            return Result(0, self.json_listing)
        elif argv[:2] == [NETPLAN, "generate"]:
            staged = Path(argv[3])
            self.staged = sorted(str(p.relative_to(staged)) for p in staged.rglob("*.yaml"))
        elif argv[:2] == [SYSTEMCTL, "enable"]:
            link = self._wants_link(argv[-1])
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(f"/etc/systemd/system/{argv[-1]}")
        elif argv[:2] == [SYSTEMCTL, "disable"]:
            self._wants_link(argv[-1]).unlink(missing_ok=True)
        return Result(0)

    def _wants_link(self, unit: str) -> Path:
        """Where `systemctl enable` links a unit: the `.wants` of its `WantedBy=`."""
        text = (self.root / "etc/systemd/system" / unit).read_text()
        wanted_by = next(line for line in text.splitlines() if line.startswith("WantedBy="))
        target = wanted_by.removeprefix("WantedBy=")
        return self.root / "etc/systemd/system" / f"{target}.wants" / unit

    def commands(self) -> list[str]:
        """The calls, with the test's root shown as ROOT and temporary paths as TMP."""
        out: list[str] = []
        for argv in self.calls:
            line = " ".join(argv).replace(str(self.root), "ROOT")
            out.append(" ".join("TMP" if w.startswith("/tmp/") else w for w in line.split()))
        return out


class FakeProbe:
    """Answers from a queue: each call pops the failures to report (default: all reachable)."""

    def __init__(self) -> None:
        self.answers: list[Mapping[ProbeTarget, str] | BaseException] = []
        self.calls: list[tuple[list[ProbeTarget], float]] = []
        self.side_effect: Callable[[], None] | None = None

    def __call__(self, targets: Sequence[ProbeTarget], budget: float) -> Mapping[ProbeTarget, str]:
        self.calls.append((list(targets), budget))
        if self.side_effect and len(self.calls) == 2:
            self.side_effect()
        answer = self.answers.pop(0) if self.answers else {}
        if isinstance(answer, BaseException):
            raise answer
        return {t: why for t, why in answer.items() if t in targets}


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every file, link and directory under root with its content, mode and mtime.

    Except the apply history (counters the exporter reports, checked on their own).
    """
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        if path.name == HISTORY_FILE:
            continue
        info = path.lstat()
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = ("link", os.readlink(path), info.st_mtime_ns)
        elif path.is_dir():
            found[key] = ("dir", stat.S_IMODE(info.st_mode), info.st_mtime_ns)
        else:
            found[key] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode), info.st_mtime_ns)
    return found


def files(root: Path) -> dict[str, bytes]:
    return {k: v[1] for k, v in tree(root).items() if v[0] == "file"}  # type: ignore[misc]


STATE = "ROOT/var/lib/network-isolation"
ARM = (
    f"{SYSTEMD_RUN} --unit=network-isolation-rollback --on-active=120 "
    "--timer-property=AccuracySec=1s --collect --quiet "
    "--description=network-isolation: restore the state before an unconfirmed apply "
    f"/bin/sh {STATE}/rollback.sh"
)


class RouteRunner:
    """Answers `ip -j route show default` per family, as iproute2 prints it."""

    def __init__(self, v4: str, v6: str, v6_rc: int = 0):
        self.answers = {"-4": Result(0, v4), "-6": Result(v6_rc, v6)}
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> Result:
        self.calls.append(list(argv))
        return self.answers[argv[2]]
