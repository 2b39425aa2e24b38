"""The real systemd-networkd in a throwaway network and mount namespace, driven by `Host`.

`run(scenario, root)` starts `python -m tests.functional.networkd_bed SCENARIO ROOT` under
`unshare -n -m -p`: a network namespace of its own (a veth pair: `eth1`, configured by networkd
from a MAAS-like netplan file, and `peer1`, which networkd leaves alone, like Cilium's
`cilium_host`, Docker's or LXD's bridges and OVN's `br-ex`), a tmpfs on /run, sysfs read-only
(networkd does not wait for udev), a private D-Bus system bus, and `/lib/systemd/systemd-networkd`
itself. The scenario prints what it saw as JSON; the test asserts on it.

Nothing the bed starts outlives it. The bus and networkd are stopped, and waited for, when the
scenario ends, fails or never gets going; and the bed runs in a pid namespace of its own, whose
init (this module, pid 1 there) reaps the daemons and, on exit, takes everything still in the
namespace with it: the kernel kills it. `unshare --kill-child` does the same when the test gives
up on the bed: its timeout kills unshare, unshare's death kills init.

Real: systemd-networkd, networkctl, D-Bus, `netplan generate`, `ip`, `nft`, `Host`.
Replaced (systemd does not run in the namespace), by the small scripts below:
- `netplan apply`: does for networkd what netplan's own apply does (netplan_cli
  `commands/apply.py`): generate, install the generated .network files, `networkctl reload`,
  then `networkctl reconfigure` every link networkd manages;
- `systemctl`: `restart`/`try-restart systemd-networkd.service` stops the namespace's networkd
  and starts it again with the networkd.conf drop-ins the host root holds (networkd reads
  networkd.conf only at start); every other call (the boot unit, the dead-man timer) succeeds
  and does nothing;
- `systemd-run` (the dead-man timer): succeeds and does nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

NETWORKD = Path("/lib/systemd/systemd-networkd")
NEEDED = {
    "systemd-networkd": str(NETWORKD),
    "networkctl": "/usr/bin/networkctl",
    "dbus-daemon": "/usr/bin/dbus-daemon",
    "netplan": "/usr/sbin/netplan",
    "unshare": "/usr/bin/unshare",
}
NIC, BYSTANDER = "eth1", "peer1"
NIC_ADDRESS = "10.20.0.11"
# What other software installs: Cilium-like rules (`ip rule add` leaves protocol unset),
# one marked static, and routes on a link networkd does not manage.
FOREIGN_RULES = [
    ("from", "192.0.2.0/24", "table", "2004", "priority", "9"),
    ("fwmark", "0x200/0xf00", "table", "2005", "priority", "10", "protocol", "static"),
]
FOREIGN_ROUTES = [
    ("198.51.100.0/24", "dev", BYSTANDER, "table", "2004"),
    ("203.0.113.0/24", "dev", BYSTANDER, "protocol", "boot"),
    ("198.51.101.0/24", "via", "10.20.0.1", "dev", NIC, "protocol", "static"),
]
MAAS_NETPLAN = f"""\
network:
  version: 2
  ethernets:
    {NIC}:
      match: {{name: {NIC}}}
      set-name: {NIC}
      addresses: [{NIC_ADDRESS}/24]
"""

BUS_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def missing() -> str | None:
    """What this bed needs and this machine lacks (None: it can run)."""
    if os.geteuid() != 0:
        return "the networkd bed needs root (unshare -n -m -p)"
    absent = [name for name, path in NEEDED.items() if not Path(path).exists()]
    return f"the networkd bed needs {', '.join(absent)}" if absent else None


def run(
    scenario: str, root: Path, scenarios: str = "tests.functional.networkd_bed"
) -> dict[str, object]:
    """Run a scenario in a fresh namespace; what it observed, or an error with networkd's log.

    `scenarios`: the module whose `SCENARIOS` hold it (this one's, or a test module's).
    """
    src = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src / "src"), str(src)])}
    code = (
        "import importlib, sys\n"
        "from tests.functional import networkd_bed as bed\n"
        f"bed.SCENARIOS.update(importlib.import_module({scenarios!r}).SCENARIOS)\n"
        "bed.main(*sys.argv[1:])\n"
    )
    # A pid namespace too: when its init exits or unshare dies, the kernel kills what is left.
    argv = [
        "unshare",
        "-n",
        "-m",
        "-p",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "private",
    ]
    argv += [sys.executable, "-c", code, scenario, str(root)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)
    log = (root / "bed" / "networkd.log").read_text() if (root / "bed").exists() else ""
    if done.returncode != 0:
        raise AssertionError(
            f"scenario {scenario} failed ({done.returncode}):\n{done.stderr[-4000:]}\n"
            f"networkd log (tail):\n{log[-3000:]}"
        )
    return json.loads(done.stdout)


# ---------------------------------------------------------------------------------------------
# Inside the namespace.


def sh(*argv: str) -> str:
    """Run a command; its output (raises with stderr when it fails)."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def rules() -> list[str]:
    """Routing-policy rules other than the kernel's three defaults, both families."""
    found: list[str] = []
    for family in ("-4", "-6"):
        for line in sh("ip", family, "rule", "show").splitlines():
            priority = line.split(":", 1)[0]
            if priority not in ("0", "32766", "32767"):
                found.append(f"{family} {line.strip()}")
    return sorted(found)


def routes() -> list[str]:
    """Every IPv4 route in every table but the local one."""
    lines = sh("ip", "-4", "route", "show", "table", "all").splitlines()
    return sorted(line.strip() for line in lines if "table local" not in line)


def settle(timeout: float = 10.0) -> None:
    """Wait until rules and routes have stopped changing (networkd works asynchronously)."""
    deadline, last, stable = time.monotonic() + timeout, None, 0
    while time.monotonic() < deadline and stable < 4:
        now = (rules(), routes())
        stable = stable + 1 if now == last else 0
        last = now
        time.sleep(0.25)


def stop_process(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, SIGKILL after `timeout`; return once it has gone (init reaps it: not our child)."""
    deadline, sig = time.monotonic() + timeout, signal.SIGTERM
    while True:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        sig = signal.SIGKILL if time.monotonic() >= deadline else 0
        time.sleep(0.05)


@dataclass
class Bed:
    """The namespace's moving parts: the host root, the helper scripts, the private bus."""

    root: Path
    bus: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def dir(self) -> Path:
        return self.root / "bed"

    def script(self, name: str, body: str) -> Path:
        path = self.dir / name
        path.write_text("#!/bin/sh\nset -u\n" + body)
        path.chmod(0o755)
        return path

    def prepare(self) -> None:
        """Mounts, links, the private bus, the wrapper scripts and networkd itself."""
        self.dir.mkdir(parents=True)
        sh("mount", "-t", "tmpfs", "tmpfs", "/run")
        sh("mount", "-t", "sysfs", "-o", "ro", "sysfs", "/sys")
        for path in ("systemd/network", "dbus", "systemd/netif/links", "systemd/netif/leases"):
            Path("/run", path).mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/systemd/netif", "systemd-network", "systemd-network")
        for sub in ("links", "leases"):
            shutil.chown(f"/run/systemd/netif/{sub}", "systemd-network", "systemd-network")
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", NIC, "type", "veth", "peer", "name", BYSTANDER)
        sh("ip", "link", "set", BYSTANDER, "up")
        self._start_bus()
        netplan_dir = self.root / "etc/netplan"
        netplan_dir.mkdir(parents=True)
        (netplan_dir / "50-cloud-init.yaml").write_text(MAAS_NETPLAN)
        (netplan_dir / "50-cloud-init.yaml").chmod(0o600)
        self._write_scripts()
        sh(str(self.dir / "netplan"), "apply")

    def _start_bus(self) -> None:
        """The system bus networkctl talks to, as our child: `--fork` would hide it from stop."""
        (self.dir / "bus.conf").write_text(BUS_CONFIG)
        config = f"--config-file={self.dir / 'bus.conf'}"
        argv = [NEEDED["dbus-daemon"], config, "--nofork", "--nopidfile", "--print-address"]
        self.bus = subprocess.Popen(argv, stdout=subprocess.PIPE)
        assert self.bus.stdout is not None
        if not self.bus.stdout.readline():  # the address, once it listens
            raise RuntimeError(f"dbus-daemon exited {self.bus.wait()} before listening")

    def _write_scripts(self) -> None:
        d, root = self.dir, self.root
        self.script(
            "networkd-restart",
            f"""\
if [ -f {d}/networkd.pid ]; then
    pid=$(cat {d}/networkd.pid); kill "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
fi
rm -rf /run/systemd/networkd.conf.d && mkdir -p /run/systemd/networkd.conf.d
for f in {root}/etc/systemd/networkd.conf.d/*.conf; do
    [ -e "$f" ] && cp "$f" /run/systemd/networkd.conf.d/
done
SYSTEMD_LOG_LEVEL=debug {NETWORKD} >>{d}/networkd.log 2>&1 &
echo $! > {d}/networkd.pid
i=0
until networkctl list --no-pager >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.05; i=$((i+1)); done
""",
        )
        self.script(
            "netplan",
            f"""\
[ "${{1:-}}" = apply ] || exec {NEEDED["netplan"]} "$@"
{NEEDED["netplan"]} generate --root-dir {root} || exit 1
rm -f /run/systemd/network/10-netplan-*
cp {root}/run/systemd/network/10-netplan-* /run/systemd/network/ 2>/dev/null
[ -f {d}/networkd.pid ] || exec {d}/networkd-restart
networkctl reload || exec {d}/networkd-restart
links=$(networkctl list --no-legend --no-pager \
    | awk '$NF != "unmanaged" && $NF != "linger" {{print $1}}')
[ -z "$links" ] || networkctl reconfigure $links || exec {d}/networkd-restart
""",
        )
        self.script(
            "systemctl",
            f"""\
case "$*" in
    *systemd-networkd*) case "$1" in restart|try-restart|start) exec {d}/networkd-restart;; esac;;
esac
exit 0
""",
        )
        self.script("systemd-run", "exit 0\n")

    def add_foreign(self) -> None:
        """What Kubernetes, a VPN or an operator adds with `ip`: networkd did not configure it."""
        for rule in FOREIGN_RULES:
            sh("ip", "rule", "add", *rule)
        for route in FOREIGN_ROUTES:
            sh("ip", "route", "add", *route)

    def stop(self) -> None:
        """Stop networkd and the bus and wait for them, whatever prepare got to start."""
        pid_file = self.dir / "networkd.pid"
        if pid_file.exists():
            stop_process(int(pid_file.read_text()))
        if self.bus is not None:
            self.bus.terminate()
            try:
                self.bus.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.bus.kill()
                self.bus.wait()
            if self.bus.stdout is not None:
                self.bus.stdout.close()


def snapshot(bed: Bed) -> dict[str, object]:
    settle()
    dropins = bed.root / "etc/systemd/networkd.conf.d"
    return {
        "rules": rules(),
        "routes": routes(),
        "dropins": sorted(p.name for p in dropins.glob("*.conf")) if dropins.exists() else [],
    }


def plain_netplan_apply(bed: Bed) -> dict[str, object]:
    """Control: someone else's `netplan apply` of a changed file, networkd's defaults."""
    seen: dict[str, object] = {"before": snapshot(bed)}
    extra = bed.root / "etc/netplan/60-operator.yaml"
    extra.write_text(
        f"network:\n  version: 2\n  ethernets:\n    {NIC}:\n      routing-policy:\n"
        f"        - from: {NIC_ADDRESS}\n          table: 150\n          priority: 30000\n"
    )
    extra.chmod(0o600)
    sh(str(bed.dir / "netplan"), "apply")
    seen["after"] = snapshot(bed)
    return seen


def ours(priority: int, subnet: str) -> str:
    """A netplan file of ours: a table for eth1's address, a route to another rack."""
    return f"""\
network:
  version: 2
  ethernets:
    {NIC}:
      routes:
        - {{to: "{subnet}", via: "10.20.0.1", table: 101}}
        - {{to: "10.20.0.0/24", scope: link, table: 101}}
      routing-policy:
        - {{from: "{NIC_ADDRESS}", table: 101, priority: {priority}}}
"""


@dataclass(frozen=True)
class Artefacts:
    nftables: str
    netplan: str | None


RULESET = """\
table inet network_isolation
delete table inet network_isolation
table inet network_isolation {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tct state established,related accept
\t}
}
"""


def charm_apply_and_remove(bed: Bed) -> dict[str, object]:
    """Our apply, a restart of networkd (an upgrade), a change of our file, our removal."""
    from network_isolation.host import Host, SubprocessRunner, Tools

    tools = Tools(
        netplan=str(bed.dir / "netplan"),
        systemctl=str(bed.dir / "systemctl"),
        systemd_run=str(bed.dir / "systemd-run"),
    )
    host = Host(bed.root, SubprocessRunner(), probe=lambda targets, budget: {}, tools=tools)
    seen: dict[str, object] = {"before": snapshot(bed)}
    host.apply(Artefacts(RULESET, ours(5000, "10.30.0.0/24")))
    seen["applied"] = snapshot(bed)
    sh(str(bed.dir / "networkd-restart"))
    seen["networkd restarted"] = snapshot(bed)
    host.apply(Artefacts(RULESET, ours(5001, "10.31.0.0/24")))
    seen["changed"] = snapshot(bed)
    host.remove()
    seen["removed"] = snapshot(bed)
    return seen


SCENARIOS: dict[str, Callable[[Bed], dict[str, object]]] = {
    "plain-netplan-apply": plain_netplan_apply,
    "charm-apply-and-remove": charm_apply_and_remove,
}


def main(scenario: str, root: str) -> None:
    """Prepare the bed, run the scenario, print what it saw; stop the bed in any case.

    As pid 1 of the bed's pid namespace, through `init`: pid 1 must reap, or a stopped networkd
    stays a zombie that `networkd-restart` waits for forever.
    """
    if os.getpid() == 1:
        init(lambda: main(scenario, root))
    bed = Bed(Path(root))
    try:
        bed.prepare()
        settle()
        bed.add_foreign()
        seen = SCENARIOS[scenario](bed)
    finally:
        bed.stop()
    print(json.dumps(seen, indent=1))


def init(work: Callable[[], None]) -> NoReturn:
    """Be the pid namespace's init: run work in a child, reap every orphan, exit with its status.

    networkd is reparented here when the script that started it exits; reaping it lets a stop
    see it go. When init exits the kernel kills whatever is left in the namespace.
    """
    child = os.fork()
    if child == 0:
        code = 0
        try:
            work()
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    while True:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main(*sys.argv[1:])
