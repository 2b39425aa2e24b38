"""The boundary to the machine: files under a root, commands by absolute path, their output.

Every module of the host package reaches the machine only through a `System`: tests replace
its root (a temporary directory) and its runner.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .outcomes import HostError

logger = logging.getLogger(__name__)


def write_atomically(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write via a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(path: Path) -> str | None:
    """A file's text; None when it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def first_error(output: str, *, strip: Iterable[str] = ()) -> str:
    """The first meaningful line of a tool's output: an error line rather than a warning."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for prefix in strip:
        lines = [line.replace(prefix, "") for line in lines]
    useful = [line for line in lines if "WARNING" not in line]
    errors = [line for line in useful if "error" in line.lower()]
    return (errors or useful or ["no output"])[0][:300]


def as_mapping(value: object) -> dict[str, object]:
    """A YAML/JSON mapping with string keys, or {} for anything else."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType]


@dataclass(frozen=True)
class Result:
    """What a command did: exit status and output."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


class Runner(Protocol):
    """Runs one command (an argv with an absolute binary path) to completion."""

    def run(self, argv: Sequence[str]) -> Result:
        """Run argv; never raises for a non-zero exit status."""
        ...


class SubprocessRunner:
    """The production runner: subprocess, C locale, bounded time."""

    def __init__(self, timeout: float = 120.0):
        self.timeout = timeout

    def run(self, argv: Sequence[str]) -> Result:
        """Run argv; a missing binary or a timeout is a failed result, not an exception."""
        env = {**os.environ, "LC_ALL": "C"}
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: timed out after {self.timeout:g} s")
        except OSError as e:
            return Result(127, "", f"{argv[0]}: {e}")
        return Result(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the binaries `Host` calls."""

    nft: str = "/usr/sbin/nft"
    netplan: str = "/usr/sbin/netplan"
    systemctl: str = "/usr/bin/systemctl"
    systemd_run: str = "/usr/bin/systemd-run"
    sh: str = "/bin/sh"
    ip: str = "/sbin/ip"
    tc: str = "/sbin/tc"
    bpftool: str = "/usr/sbin/bpftool"


@dataclass(frozen=True)
class System:
    """The machine as the host modules see it: a root for paths, a runner, the tools."""

    root: Path
    runner: Runner
    tools: Tools

    def at(self, path: Path) -> Path:
        """An absolute path of the machine, under the root."""
        return self.root / path.relative_to("/")

    def run(self, *argv: str) -> Result:
        """Run a command; a failure is logged and returned, not raised."""
        result = self.runner.run(argv)
        if result.returncode != 0:
            logger.warning(
                "%s: exit status %s: %s",
                shlex.join(argv),
                result.returncode,
                first_error(result.stderr + result.stdout),
            )
        return result

    def must(self, *argv: str) -> Result:
        """Run a command that must succeed; HostError with its first error line if not."""
        result = self.run(*argv)
        if result.returncode != 0:
            raise HostError(f"{' '.join(argv[:3])}: {first_error(result.stderr + result.stdout)}")
        return result


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages with charmlibs-apt (imported here: only install needs it)."""
    from charmlibs import apt

    try:
        apt.add_package(list(packages))
    except (apt.PackageError, apt.PackageNotFoundError) as e:
        raise HostError(f"cannot install {', '.join(packages)}: {e}") from e
