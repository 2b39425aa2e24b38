#!/usr/bin/env python3
"""Run tox on a machine that has nothing but python3.

Installs what the tox environments asked for need and cannot install themselves, then runs tox
with the given arguments:

- tox and tox-uv, in a virtual environment of their own (`.venv-tox/`), with python3-venv from
  apt first where python3 cannot make a venv with pip;
- as root, only the Debian/Ubuntu packages of the environments that run: none for `plan`,
  `format`, `lint` and `integration`; `nft` and `netplan` for `unit` and `bench`; everything the
  functional tests drive for real for `functional` and for a run of every environment.

`python3 tools/tox.py -e plan` shows the plan of the example cloud; `python3 tools/tox.py`
runs every test.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOX_VENV = ROOT / ".venv-tox"
TOX_REQUIREMENTS = ["tox>=4.21,<5", "tox-uv>=1.20,<2"]

# command -> package, the same name on Debian 12 and Ubuntu 24.04 (tests/unit/test_tox_packages.py
# checks each name against both archives)
RENDER_TOOLS = {
    "nft": "nftables",  # checks and loads every rendered ruleset
    "netplan": "netplan.io",  # checks every rendered netplan file
}
FUNCTIONAL_TOOLS = {
    **RENDER_TOOLS,
    "ip": "iproute2",
    "iperf3": "iperf3",
    "socat": "socat",
    "networkctl": "systemd",  # with systemd-networkd, run in a namespace by the tests
    "dbus-daemon": "dbus-daemon",  # the private system bus networkctl talks over
    "promtool": "prometheus",  # checks and unit-tests the alert rules; a real Prometheus
}
# command -> package, where a distribution's archive has it as a real package. Ubuntu 24.04 has
# neither: `chromium` there is a virtual package whose provider installs a snap (snapd needed),
# and `bpftool` a virtual one whose provider's wrapper needs the running kernel's linux-tools.
# Without them the browser test and the bpftool checks skip, saying how to get them.
DISTRIBUTION_TOOLS: dict[str, dict[str, str]] = {
    "debian": {
        "bpftool": "bpftool",  # lists XDP and tc programs for the bypass detection
        "chromium": "chromium",  # loads the HTML plan headless
    },
    "ubuntu": {},
}
VENV_PACKAGE = "python3-venv"  # pip for venvs, shipped apart on Debian and Ubuntu
# What each tox environment needs from the distribution; environments not named need nothing.
ENV_TOOLS: dict[str, dict[str, str]] = {
    "unit": RENDER_TOOLS,
    "bench": {**RENDER_TOOLS, "ip": "iproute2"},
    "functional": FUNCTIONAL_TOOLS,
}
FUNCTIONAL_ENVS = ("functional",)  # the ones that also get DISTRIBUTION_TOOLS
# tox subcommands that run environments; any other (list, config, ...) runs none
RUN_COMMANDS = ("run", "r", "run-parallel", "p", "exec", "e", "devenv", "d")


def _say(message: str) -> None:
    print(f"tools/tox.py: {message}", file=sys.stderr, flush=True)


def distribution(os_release: str = "/etc/os-release") -> str:
    """`debian` or `ubuntu` (by ID, then ID_LIKE), or the ID of another distribution."""
    fields: dict[str, str] = {}
    try:
        for line in Path(os_release).read_text().splitlines():
            key, _, value = line.partition("=")
            fields[key] = value.strip().strip('"')
    except OSError:
        return ""
    for name in [fields.get("ID", ""), *fields.get("ID_LIKE", "").split()]:
        if name in DISTRIBUTION_TOOLS:
            return name
    return fields.get("ID", "")


def default_envs(tox_ini: Path = ROOT / "tox.ini") -> list[str]:
    """The environments `tox` runs without -e: tox.ini's env_list."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(tox_ini)
    listed = parser.get("tox", "env_list", fallback="")
    return [name.strip() for name in listed.replace("\n", ",").split(",") if name.strip()]


def requested_envs(argv: Sequence[str], defaults: Sequence[str]) -> list[str]:
    """The environments a tox command line runs (-e/--env, ALL, or tox.ini's env_list)."""
    args = list(argv[: argv.index("--")] if "--" in argv else argv)
    if {"-h", "--help", "--version"} & set(args):
        return []
    named: list[str] = []
    for index, arg in enumerate(args):
        value = None
        if arg in ("-e", "--env") and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--env="):
            value = arg.removeprefix("--env=")
        elif arg.startswith("-e") and len(arg) > 2:
            value = arg[2:]
        if value is not None:
            named += [name.strip() for name in value.split(",") if name.strip()]
    if "ALL" in named:
        return sorted({*defaults, *ENV_TOOLS, *(n for n in named if n != "ALL")})
    if named:
        return named
    subcommand = next((arg for arg in args if not arg.startswith("-")), None)
    if subcommand is not None and subcommand not in RUN_COMMANDS:
        return []
    return list(defaults)


def packages_for(envs: Iterable[str], distro: str) -> dict[str, str]:
    """What the environments drive on this distribution, as command -> package."""
    tools: dict[str, str] = {}
    for env in envs:
        tools |= ENV_TOOLS.get(env, {})
        if env in FUNCTIONAL_ENVS:
            tools |= DISTRIBUTION_TOOLS.get(distro, {})
    return tools


def apt_names(distro: str) -> set[str]:
    """Every package name this script may ask apt for on the distribution."""
    names = {VENV_PACKAGE}
    for tools in (*ENV_TOOLS.values(), DISTRIBUTION_TOOLS.get(distro, {})):
        names |= set(tools.values())
    return names


def _have_tool(command: str) -> bool:
    return any(
        Path(d, command).exists() for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    ) or bool(shutil.which(command))


def _apt_install(packages: list[str], why: str) -> None:
    if not packages:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _say(f"missing {', '.join(packages)}: install them (as root) for {why}")
        return
    _say(f"installing {', '.join(packages)} for {why}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
    )


def _ensure_system_packages(envs: list[str]) -> None:
    tools = packages_for(envs, distribution())
    missing = sorted({pkg for cmd, pkg in tools.items() if not _have_tool(cmd)})
    _apt_install(missing, f"tox -e {','.join(envs)}")


def _create_venv() -> None:
    """A venv with pip; Debian and Ubuntu ship pip for venvs separately, in python3-venv."""
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(TOX_VENV)
    except (subprocess.CalledProcessError, OSError):
        _say(f"python3 cannot create a venv with pip; installing {VENV_PACKAGE}")
        _apt_install([VENV_PACKAGE], "the virtual environment of tox")
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(TOX_VENV)
        except (subprocess.CalledProcessError, OSError) as e:
            _say(f"cannot create {TOX_VENV.name} ({e}): install {VENV_PACKAGE} as root")
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
    """Install what the requested environments lack, then hand over to tox."""
    argv = sys.argv[1:]
    _ensure_system_packages(requested_envs(argv, default_envs()))
    tox = _ensure_tox()
    os.chdir(ROOT)
    os.execv(str(tox), [str(tox), *argv])


if __name__ == "__main__":
    sys.exit(main())
