"""The charm as `charmcraft pack` lays it out, and a machine to run its hooks on.

`build_charm` follows charmcraft 4's uv plugin and the `dump` part of charmcraft.yaml, step by
step (charmcraft/parts/plugins/_uv.py and craft_parts/plugins/uv_plugin.py):

- the part's build directory is a copy of the project (pyproject.toml, uv.lock, `src/` and the
  interface package `interface/`, a path dependency); `uv venv --relocatable` with the system's
  python3 into `venv/`, then `uv sync --no-dev --no-editable --reinstall --no-install-project`
  with the plugin's environment (frozen: the versions uv.lock pins): `venv/` holds the
  dependencies of pyproject.toml, the interface package among them, and not the project;
- `src/` copied beside it (and `lib/`, which the plugin copies when a charm has one); the
  venv's `bin/` emptied but for `activate`;
- `templates/` from the dump part;
- `metadata.yaml`, `config.yaml` and `actions.yaml` generated from the unified charmcraft.yaml
  by charmcraft's own models, and `dispatch` from charmcraft's own template.

`Machine` is compute-1 (the namespace `MACHINE_NS` of machine.py) with a private mount namespace
of its own: overlays over `/etc`, `/var`, `/run` and `/usr`, whose upper directories live in the
test's temporary directory, so whatever the charm writes anywhere there lands in them and this
machine's files are never touched; MAAS's netplan file for compute-1 in `/etc/netplan`; the
host's system commands replaced by boundary.py. Hooks run there through `dispatch`, with the
environment Juju gives them and the hook tools of boundary.py first on PATH.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from charmcraft import parts
from charmcraft.dispatch import DISPATCH_SCRIPT_TEMPLATE
from charmcraft.models.metadata import CharmMetadata
from charmcraft.models.project import CharmcraftProject
from uv import find_uv_bin

from .boundary import CALLS_FILE, HOST_TOOLS, STATE_FILE
from .conftest import ROOT
from .machine import (
    CONTROLLER_ADDRESS,
    CONTROLLER_PORT,
    IP,
    MACHINE,
    MACHINE_ID,
    MACHINE_NS,
    cloud_init,
)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APP = "network-isolation"
UNIT = f"{APP}/0"
# The host commands the charm calls (absolute paths, as on Ubuntu) and the overlaid trees.
HOST_PATHS = {
    "nft": "/usr/sbin/nft",
    "netplan": "/usr/sbin/netplan",
    "systemctl": "/usr/bin/systemctl",
    "systemd-run": "/usr/bin/systemd-run",
    "ip": "/usr/sbin/ip",
    "tc": "/usr/sbin/tc",
    "bpftool": "/usr/sbin/bpftool",
}
OVERLAID = ("etc", "var", "run", "usr")
# Every hook tool Juju provides a machine charm: the ones boundary.py does not answer are
# recorded as unanswered, so a charm that starts calling one shows up.
JUJU_HOOK_TOOLS = (
    "action-fail action-get action-log action-set application-version-set close-port "
    "config-get credential-get goal-state is-leader juju-log juju-reboot network-get "
    "open-port opened-ports relation-get relation-ids relation-list relation-model-get "
    "relation-set resource-get secret-add secret-get secret-grant secret-ids secret-info-get "
    "secret-remove secret-revoke secret-set state-delete state-get state-set status-get "
    "status-set storage-add storage-get storage-list"
).split()


# -- the charm directory -----------------------------------------------------------------------


def _uv(*args: str, cwd: Path, **env: str) -> None:
    base = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root")}
    for name in ("UV_CACHE_DIR", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "SSL_CERT_FILE"):
        if name in os.environ:
            base[name] = os.environ[name]
    done = subprocess.run(
        [find_uv_bin(), *args], cwd=cwd, env={**base, **env}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"uv {' '.join(args)}: {done.stderr.strip()}")


def _metadata_files(prime: Path) -> None:
    """metadata.yaml, config.yaml, actions.yaml as charmcraft's PackageService writes them."""
    parts.setup_parts()
    with warnings.catch_warnings():
        # charmcraft's own validator reads its deprecated `charmhub` field: not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        project: Any = CharmcraftProject.unmarshal(
            yaml.safe_load((ROOT / "charmcraft.yaml").read_text())
        )
    metadata = CharmMetadata.from_charm(project).marshal()
    (prime / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=True))
    marshalled = project.marshal()
    for key in ("config", "actions"):
        if marshalled.get(key):
            (prime / f"{key}.yaml").write_text(yaml.safe_dump(marshalled[key], sort_keys=True))


def build_charm(prime: Path, *, pyproject: str | None = None, templates: bool = True) -> Path:
    """The primed charm directory, built as charmcraft 4 builds it (see the module's doc).

    With `pyproject`, the project's dependencies are changed and locked again (`uv lock`), as a
    developer does after editing them.
    """
    build = prime.parent / f"{prime.name}-build"
    build.mkdir(parents=True)
    (build / "pyproject.toml").write_text(pyproject or (ROOT / "pyproject.toml").read_text())
    for name in ("README.md", "uv.lock"):
        shutil.copy2(ROOT / name, build / name)
    trees = [tree for tree in ("src", "lib", "interface") if (ROOT / tree).is_dir()]
    for tree in trees:
        shutil.copytree(
            ROOT / tree, build / tree, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    venv = prime / "venv"
    python = os.path.realpath(shutil.which("python3", path=SYSTEM_PATH) or "python3")
    if pyproject is not None:
        _uv("lock", cwd=build)
    _uv("venv", "--relocatable", "--allow-existing", "--python", python, str(venv), cwd=build)
    _uv(
        *("sync", "--no-dev", "--no-editable", "--reinstall", "--no-install-project"),
        cwd=build,
        VIRTUAL_ENV=str(venv),
        UV_PROJECT_ENVIRONMENT=str(venv),
        UV_FROZEN="true",
        UV_COMPILE_BYTECODE="1",
        UV_PYTHON_DOWNLOADS="never",
        UV_PYTHON="python3",
        UV_PYTHON_PREFERENCE="only-system",
    )
    for tree in ("src", "lib"):
        if (build / tree).is_dir():
            shutil.copytree(build / tree, prime / tree, symlinks=True)
    for entry in (venv / "bin").iterdir():
        if entry.name != "activate":
            entry.unlink()
    if (venv / "lib64").is_symlink():
        (venv / "lib64").unlink()
    if templates:
        shutil.copytree(ROOT / "templates", prime / "templates")
    _metadata_files(prime)
    (prime / "dispatch").write_text(DISPATCH_SCRIPT_TEMPLATE.format(entrypoint="src/charm.py"))
    (prime / "dispatch").chmod(0o755)
    return prime


def copy_charm(charm: Path, to: Path, *, leave_out: str = "") -> Path:
    """A copy to deploy, hard-linked, without `leave_out` (ops keeps state in the charm dir)."""
    shutil.copytree(
        charm,
        to,
        symlinks=True,
        copy_function=os.link,
        ignore=lambda d, names: [n for n in names if d == str(charm) and n == leave_out],
    )
    return to


# -- the machine -------------------------------------------------------------------------------


def network_get(found: list[tuple[str, Any]]) -> dict[str, Any]:
    """What `network-get BINDING --format=json` prints for (interface, address) pairs."""
    nics = sorted({nic for nic, _ in found})
    return {
        "bind-addresses": [
            {
                "mac-address": "",
                "interface-name": nic,
                "addresses": [
                    {"hostname": "", "value": str(a.ip), "cidr": str(a.network)}
                    for n, a in found
                    if n == nic
                ],
            }
            for nic in nics
        ],
        "egress-subnets": sorted({str(a.network) for _, a in found}),
        "ingress-addresses": [str(a.ip) for _, a in found],
    }


@dataclasses.dataclass
class Hook:
    """One dispatch: its exit status, output, every tool call, the unit's status after."""

    name: str
    returncode: int
    stderr: str
    calls: list[dict[str, Any]]
    status: dict[str, str]
    action: dict[str, Any] | None
    seconds: float

    def host_calls(self) -> list[list[str]]:
        return [[c["tool"], *c["args"]] for c in self.calls if c["tool"] in HOST_TOOLS]

    def unanswered(self) -> list[list[str]]:
        """Calls the stand-in could not answer: unknown hook tools, refused host commands."""
        return [[c["tool"], *c["args"]] for c in self.calls if not c["answered"]]

    def logged(self) -> list[str]:
        return [c["args"][-1] for c in self.calls if c["tool"] == "juju-log"]


class Machine:
    """compute-1 with the packed charm on it: a private mount namespace in MACHINE_NS."""

    def __init__(self, bed: Path, charm: Path, model: dict[str, Any]):
        self.bed, self.charm = bed, charm
        self.upper, self.real_usr = bed / "upper", bed / "real-usr"
        self.bin = bed / "bin"
        for directory in (self.upper, self.real_usr, self.bin, bed / "work"):
            directory.mkdir(parents=True)
        real = {
            name: str(self.real_usr / Path(os.path.realpath(path)).relative_to("/usr"))
            for name, path in HOST_PATHS.items()
            if name in ("nft", "netplan", "ip", "tc", "bpftool")
        }
        self.state = {**model, "host": {"real": real}}
        self.save()
        (bed / CALLS_FILE).touch()
        launcher = bed / "boundary"
        launcher.write_text(
            f"#!{sys.executable} -IS\nimport sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from tests.functional.boundary import main\n"
            f"sys.exit(main(sys.argv, {str(bed)!r}))\n"
        )
        launcher.chmod(0o755)
        for tool in JUJU_HOOK_TOOLS:
            (self.bin / tool).symlink_to(launcher)
        (bed / "50-cloud-init.yaml").write_text(cloud_init(MACHINE))
        self.holder: subprocess.Popen[bytes] | None = None
        self.hooks: list[Hook] = []

    def save(self) -> None:
        (self.bed / STATE_FILE).write_text(json.dumps(self.state, indent=1, sort_keys=True))

    def load(self) -> dict[str, Any]:
        self.state = json.loads((self.bed / STATE_FILE).read_text())
        return self.state

    def _nsenter(self) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n"]

    def start(self) -> None:
        """The namespace's holder, then the overlays and the replaced commands inside it."""
        hold = "unshare --mount --propagation private sleep infinity".split()
        self.holder = subprocess.Popen([IP, "netns", "exec", MACHINE_NS, *hold])
        comm = Path(f"/proc/{self.holder.pid}/comm")
        deadline = time.monotonic() + 5
        while comm.read_text().strip() != "sleep":
            if time.monotonic() > deadline:
                raise RuntimeError("the namespace's holder did not start: ip netns exec, unshare")
            time.sleep(0.01)
        overlays = "".join(
            f'mkdir -p "$B/upper/{d}" "$B/work/{d}"\n'
            f'mount -t overlay overlay -o "lowerdir=/{d},upperdir=$B/upper/{d},'
            f'workdir=$B/work/{d}" /{d}\n'
            for d in OVERLAID
        )
        tools = "".join(f'ln -sfn "$B/boundary" {path}\n' for path in HOST_PATHS.values())
        script = (
            'set -eu\nB="$1"\n'
            'mount --bind /usr "$B/real-usr"\nmount -o remount,bind,ro "$B/real-usr"\n'
            f"{overlays}{tools}"
            "rm -rf /etc/netplan\nmkdir -m 755 /etc/netplan\n"
            'install -m 600 "$B/50-cloud-init.yaml" /etc/netplan/50-cloud-init.yaml\n'
        )
        subprocess.run([*self._nsenter(), "sh", "-c", script, "sh", str(self.bed)], check=True)
        self.baseline = self.written()

    def stop(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()

    def written(self) -> dict[str, str]:
        """Everything in the overlays' upper directories: what was written under / there.

        Directories that also exist on this machine are left out (an overlay copies a
        directory up when something is written in it, and it stays when that is removed).
        """
        found: dict[str, str] = {}
        for path in sorted(self.upper.rglob("*")):
            where = "/" + str(path.relative_to(self.upper))
            if path.is_symlink():
                found[where] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                if not Path(where).is_dir():
                    found[where] = "new directory"
            elif path.is_file():
                found[where] = path.read_text(errors="replace")
            else:
                found[where] = "removed"  # an overlay's whiteout
        return found

    def dispatch(
        self,
        hook: str,
        *,
        relation: dict[str, Any] | None = None,
        remote_unit: str = "",
        action: str = "",
        **params: Any,
    ) -> Hook:
        """Run `dispatch` as Juju runs a hook (or an action), in the machine's namespaces."""
        env = {
            "PATH": f"{self.bin}:{SYSTEM_PATH}",
            "LANG": "C.UTF-8",
            "CHARM_DIR": str(self.charm),
            "JUJU_CHARM_DIR": str(self.charm),
            "JUJU_DISPATCH_PATH": f"actions/{action}" if action else f"hooks/{hook}",
            "JUJU_HOOK_NAME": "" if action else hook,
            "JUJU_UNIT_NAME": UNIT,
            "JUJU_PRINCIPAL_UNIT": "openstack-hypervisor/0",
            "JUJU_MODEL_NAME": "openstack-machines",
            "JUJU_MODEL_UUID": "1f6b4c2e-3f5a-4b7e-9d1c-2a8e5f0b7c31",
            "JUJU_MACHINE_ID": MACHINE_ID,
            "JUJU_AVAILABILITY_ZONE": "rack1",
            "JUJU_VERSION": "3.6.11",
            "JUJU_API_ADDRESSES": f"{CONTROLLER_ADDRESS}:{CONTROLLER_PORT}",
            "JUJU_CONTEXT_ID": f"{UNIT}-{hook or action}-{time.monotonic_ns()}",
        }
        if relation is not None:
            env |= {
                "JUJU_RELATION": relation["endpoint"],
                "JUJU_RELATION_ID": f"{relation['endpoint']}:{relation['id']}",
                "JUJU_REMOTE_APP": relation["remote_app"],
                "JUJU_REMOTE_UNIT": remote_unit,
            }
        if action:
            env |= {"JUJU_ACTION_NAME": action, "JUJU_ACTION_UUID": "7"}
            self.state["action"] = {
                "name": action, "params": params, "results": {}, "failed": None, "log": []
            }  # fmt: skip
            self.save()
        calls_before = len((self.bed / CALLS_FILE).read_text().splitlines())
        began = time.monotonic()
        done = subprocess.run(
            [*self._nsenter(), f"--wd={self.charm}", "env", "-i",
             *(f"{k}={v}" for k, v in env.items()), str(self.charm / "dispatch")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        lines = (self.bed / CALLS_FILE).read_text().splitlines()[calls_before:]
        state = self.load()
        self.hooks.append(
            Hook(
                name=action or hook,
                returncode=done.returncode,
                stderr=done.stderr,
                calls=[json.loads(line) for line in lines],
                status=state["status"].get("unit", {}),
                action=state.pop("action", None) if action else None,
                seconds=time.monotonic() - began,
            )
        )
        return self.hooks[-1]


@contextlib.contextmanager
def machine(bed: Path, charm: Path, model: dict[str, Any]) -> Iterator[Machine]:
    """A started Machine, stopped again at the end."""
    started = Machine(bed, charm, model)
    try:
        started.start()
        yield started
    finally:
        started.stop()
