"""The session check of tests/conftest.py: a test session that leaves something behind fails.

Each test runs a small pytest session of its own with that conftest, whose tests leave (or do
not leave) processes and namespaces behind, and reads its exit status and report. Every process
they start names a marker of the test on its command line; whatever is left is stopped after.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
REPORT = "left behind by this test session"


@pytest.fixture
def marker() -> Iterator[str]:
    """A sleep length unique to this test, on every command line it starts; stopped after."""
    marker = f"600.{secrets.randbelow(10**6):06d}"
    yield marker
    for entry in os.listdir("/proc"):
        try:
            command = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        if entry.isdigit() and marker.encode() in command:
            os.kill(int(entry), signal.SIGKILL)


def session(directory: Path, tests: str) -> subprocess.CompletedProcess[str]:
    """Run a pytest session of `tests` with the project's check; its status and output."""
    directory.mkdir()
    shutil.copy(CONFTEST, directory / "conftest.py")
    (directory / "test_inner.py").write_text(tests)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no"]
    argv += ["--rootdir", str(directory), "--basetemp", str(directory / "tmp"), str(directory)]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run(argv, cwd=directory, capture_output=True, text=True, env=env, timeout=60)


def reported(output: str) -> list[str]:
    """The lines of the check's report."""
    lines = output.splitlines()
    start = next((n for n, line in enumerate(lines) if REPORT in line), None)
    if start is None:
        return []
    kinds = ("process ", "network namespace ", "mount ")
    return [line for line in lines[start + 1 :] if line.startswith(kinds)]


def test_a_clean_session_passes_even_when_teardown_is_still_finishing(tmp_path: Path, marker: str):
    done = session(
        tmp_path / "s",
        f"""\
import subprocess

def test_waits_for_its_child():
    subprocess.run(["sleep", "0.01"], check=True)

def test_leaves_a_child_that_exits_within_the_grace():
    subprocess.Popen(["sh", "-c", "sleep 0.5; : {marker}"])
""",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert REPORT not in done.stdout


def test_processes_left_behind_fail_the_session(tmp_path: Path, marker: str):
    directory = tmp_path / "s"
    # There before the session started: never the session's, whatever its command line says.
    script = 'sleep "$0"; : "$1"'
    before = subprocess.Popen(["sh", "-c", script, marker, str(directory / "tmp")])
    time.sleep(0.1)
    done = session(
        directory,
        f"""\
import subprocess

def test_child():
    subprocess.Popen(["sleep", "{marker}"])

def test_daemon_that_forked_away_from_pytest():
    subprocess.run(["sh", "-c", "sleep {marker} >/dev/null 2>&1 &"], check=True)

def test_clean_environment_naming_the_temporary_directory(tmp_path):
    script = "sh -c 'sleep {marker}; : ' " + str(tmp_path) + " >/dev/null 2>&1 &"
    subprocess.run(["env", "-i", "sh", "-c", script], check=True)

def test_someone_elses():
    # no mark of the session, no word of its directories: started by anything on the machine
    script = "sleep {marker} >/dev/null 2>&1 &"
    subprocess.run(["env", "-i", "setsid", "sh", "-c", script], check=True)
""",
    )
    before.kill()
    before.wait()
    lines = reported(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "4 passed" in done.stdout
    children = [line for line in lines if line.endswith(f": sleep {marker}")]
    named = [line for line in lines if "test_clean_environment_namin" in line]
    # the child, the daemon, and the sleep the clean-environment shell started
    assert len(children) == 3, lines
    assert len(named) == 1, lines
    assert len(lines) == 4, lines
    assert all(line.startswith("process ") for line in lines)
    assert not [line for line in lines if line.startswith(f"process {before.pid} ")]


def test_a_namespace_and_a_mount_left_behind_fail_the_session(tmp_path: Path):
    ip, mount = shutil.which("ip"), shutil.which("mount")
    if os.geteuid() != 0 or ip is None or mount is None:
        pytest.skip("`ip netns add` and `mount` need root, iproute2 and util-linux")
    name = f"ni-leak-check-{secrets.token_hex(4)}"
    directory = tmp_path / "s"
    try:
        done = session(
            directory,
            f"""\
import subprocess

def test_creates_and_deletes():
    subprocess.run(["{ip}", "netns", "add", "{name}-kept"], check=True)
    subprocess.run(["{ip}", "netns", "delete", "{name}-kept"], check=True)

def test_creates(tmp_path):
    subprocess.run(["{ip}", "netns", "add", "{name}"], check=True)
    subprocess.run(["{mount}", "-t", "tmpfs", "leak-check", str(tmp_path)], check=True)
""",
        )
    finally:
        subprocess.run([ip, "netns", "delete", name], capture_output=True, check=False)
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if line.split()[4].startswith(f"{directory}/"):
                subprocess.run(["umount", line.split()[4]], check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert reported(done.stdout) == [
        f"network namespace {name} (ip netns delete {name})",
        f"mount {directory}/tmp/test_creates0 (tmpfs from leak-check)",
    ]
