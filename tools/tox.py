#!/usr/bin/env python3
"""Run tox on a machine that has nothing but python3.

Installs what the project's tox environments need and cannot install themselves, then runs
tox with the given arguments:

- tox and tox-uv, in a virtual environment of their own (`.venv-tox/`);
- as root, the Debian/Ubuntu packages the functional tests drive for real (nftables,
  netplan.io, iproute2, iperf3, socat, systemd, dbus-daemon, bpftool, prometheus for
  promtool, chromium), and python3-venv where python3 cannot make a venv with pip.

`python3 tools/tox.py -e plan` shows the plan of the example cloud; `python3 tools/tox.py`
runs every test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOX_VENV = ROOT / ".venv-tox"
TOX_REQUIREMENTS = ["tox>=4.21,<5", "tox-uv>=1.20,<2"]
# command -> Debian package that provides it
SYSTEM_TOOLS = {
    "nft": "nftables",
    "netplan": "netplan.io",
    "ip": "iproute2",
    "iperf3": "iperf3",
    "socat": "socat",
    "networkctl": "systemd",  # with systemd-networkd, run in a namespace by the tests
    "dbus-daemon": "dbus-daemon",  # the private system bus networkctl talks over
    "bpftool": "bpftool",  # lists XDP and tc programs for the bypass detection
    "promtool": "prometheus",  # checks and unit-tests the alert rules
    "chromium": "chromium",  # loads the HTML plan headless
}


def _say(message: str) -> None:
    print(f"tools/tox.py: {message}", file=sys.stderr, flush=True)


def _have_tool(command: str) -> bool:
    return any(
        Path(d, command).exists() for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    ) or bool(shutil.which(command))


def _apt_install(packages: list[str]) -> None:
    if not packages:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _say(f"missing {', '.join(packages)}: install them (as root) for the functional tests")
        return
    _say(f"installing {', '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
    )


def _ensure_system_packages() -> None:
    _apt_install(sorted({pkg for cmd, pkg in SYSTEM_TOOLS.items() if not _have_tool(cmd)}))


def _create_venv() -> None:
    """A venv with pip; Debian and Ubuntu ship pip for venvs separately, in python3-venv."""
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(TOX_VENV)
    except (subprocess.CalledProcessError, OSError):
        _say("python3 cannot create a venv with pip; installing python3-venv")
        _apt_install(["python3-venv"])
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(TOX_VENV)
        except (subprocess.CalledProcessError, OSError) as e:
            _say(f"cannot create {TOX_VENV.name} ({e}): install python3-venv as root")
            raise SystemExit(2) from None


def _ensure_tox() -> Path:
    tox = TOX_VENV / "bin" / "tox"
    if tox.exists():
        return tox
    _say(f"creating {TOX_VENV.name} with {' '.join(TOX_REQUIREMENTS)}")
    _create_venv()
    pip = [str(TOX_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *TOX_REQUIREMENTS], check=True)
    return tox


def main() -> int:
    """Install what is missing, then hand over to tox."""
    _ensure_system_packages()
    tox = _ensure_tox()
    os.chdir(ROOT)
    os.execv(str(tox), [str(tox), *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
