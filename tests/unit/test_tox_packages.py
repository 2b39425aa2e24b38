"""tools/tox.py asks apt only for names that exist, and only for what the environments run.

Every package name it may ask for is checked against a recorded snapshot of both archives,
`recorded/apt-packages.json` (Debian 12 read with apt-cache; Ubuntu 24.04 from
packages.ubuntu.com, its archive being out of this machine's reach: see the file's `about` and
`refresh`), and against the live Debian archive when this machine is Debian 12 with its package
lists (`apt-cache show`, read only).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((Path(__file__).parent / "recorded" / "apt-packages.json").read_text())
ARCHIVES = {"debian": "debian-12", "ubuntu": "ubuntu-24.04"}


def _load_tox_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tox_script", ROOT / "tools" / "tox.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOX = _load_tox_script()
DEFAULTS = TOX.default_envs()


@pytest.mark.parametrize("distro", sorted(ARCHIVES))
def test_every_name_asked_for_is_a_real_package_of_the_archive(distro: str) -> None:
    archive = SNAPSHOT[ARCHIVES[distro]]
    asked = TOX.apt_names(distro)
    assert asked <= set(archive["packages"]), asked - set(archive["packages"])
    assert not asked & set(archive["not_installable"])


def test_the_names_asked_for_on_both_are_the_same_but_for_the_distribution_tools() -> None:
    debian, ubuntu = TOX.apt_names("debian"), TOX.apt_names("ubuntu")
    assert debian - ubuntu == set(TOX.DISTRIBUTION_TOOLS["debian"].values())
    assert ubuntu <= debian


def test_what_ubuntu_lacks_is_recorded_with_the_reason() -> None:
    lacking = SNAPSHOT["ubuntu-24.04"]["not_installable"]
    for package in TOX.DISTRIBUTION_TOOLS["debian"].values():
        assert package in lacking and lacking[package]["why"]


def _debian_12_with_lists() -> bool:
    os_release = Path("/etc/os-release")
    if not shutil.which("apt-cache") or not os_release.exists():
        return False
    if "VERSION_CODENAME=bookworm" not in os_release.read_text():
        return False
    done = subprocess.run(
        ["apt-cache", "policy", "nftables"], capture_output=True, text=True, check=False
    )
    return "Candidate: (none)" not in done.stdout and "Candidate:" in done.stdout


@pytest.mark.skipif(not _debian_12_with_lists(), reason="not Debian 12 with apt package lists")
@pytest.mark.parametrize("package", sorted(TOX.apt_names("debian")))
def test_each_debian_name_is_in_this_machines_archive(package: str) -> None:
    done = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", package],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"Package: {package}\n" in done.stdout  # a real package, not a virtual one
    assert "\nVersion: " in done.stdout


@pytest.mark.parametrize(
    ("argv", "envs"),
    [
        (["-e", "plan"], ["plan"]),
        (["-e", "format,lint"], ["format", "lint"]),
        (["-eunit"], ["unit"]),
        (["--env=functional", "--", "-k", "x"], ["functional"]),
        (["exec", "-e", "unit", "--", "python", "tools/regen_dumps.py"], ["unit"]),
        ([], DEFAULTS),
        (["-p"], DEFAULTS),
        (["run"], DEFAULTS),
        (["list"], []),
        (["--version"], []),
        (["-e", "plan", "--", "-e", "functional"], ["plan"]),
    ],
)
def test_the_environments_a_command_line_runs(argv: list[str], envs: list[str]) -> None:
    assert TOX.requested_envs(argv, DEFAULTS) == envs


def test_the_default_run_is_tox_ini_s_env_list() -> None:
    assert set(DEFAULTS) == {"lint", "integration", "unit", "functional"}


@pytest.mark.parametrize("distro", sorted(ARCHIVES))
@pytest.mark.parametrize("env", ["plan", "format", "lint", "integration"])
def test_the_light_environments_need_no_package(env: str, distro: str) -> None:
    assert TOX.packages_for([env], distro) == {}


@pytest.mark.parametrize("distro", sorted(ARCHIVES))
def test_unit_needs_the_render_tools_only(distro: str) -> None:
    assert set(TOX.packages_for(["unit"], distro).values()) == {"nftables", "netplan.io"}


def test_functional_and_the_default_run_get_every_tool() -> None:
    debian_only = set(TOX.DISTRIBUTION_TOOLS["debian"].values())
    everything = set(TOX.FUNCTIONAL_TOOLS.values()) | debian_only
    assert set(TOX.packages_for(["functional"], "debian").values()) == everything
    assert set(TOX.packages_for(DEFAULTS, "debian").values()) == everything
    assert "chromium" not in TOX.packages_for(DEFAULTS, "ubuntu").values()


@pytest.mark.parametrize(
    ("text", "distro"),
    [
        ("ID=debian\nVERSION_CODENAME=bookworm\n", "debian"),
        ("ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n", "ubuntu"),
        ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', "ubuntu"),
        ("ID=fedora\n", "fedora"),
    ],
)
def test_the_distribution_comes_from_os_release(text: str, distro: str, tmp_path: Path) -> None:
    (tmp_path / "os-release").write_text(text)
    assert TOX.distribution(str(tmp_path / "os-release")) == distro
