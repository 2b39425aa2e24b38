"""Keep other software's routing when our netplan file makes systemd-networkd reconfigure links.

`netplan apply` runs `networkctl reload` and `networkctl reconfigure` on every link networkd
manages. Each reconfigured link then drops "foreign" configuration, what networkd did not set up
itself: every routing-policy rule on the host whose protocol is not `kernel` (systemd
`manager_drop_foreign_routing_policy_rules`), and the routes through that link whose protocol is
not `kernel`. That is Kubernetes' and VPNs' rules and an operator's routes. networkd reads
`ManageForeignRoutingPolicyRules=` and `ManageForeignRoutes=` only when it starts (`networkctl
reload` re-reads .network and .netdev files, not networkd.conf: systemd 252 and 255), so our
drop-in turning both off is followed by a restart of networkd, once, when it is written, and
once more when it is deleted with our netplan file: from then on networkd manages foreign
rules and routes as it did before us. A restart is what systemd's `RestartKillSignal=SIGUSR2`
in networkd's unit is for: networkd keeps its DHCP leases and addresses across it, and its
start drops nothing foreign (only a later reconfigure does).

With it, networkd also forgets the rules and routes of ours that it configured before a restart
(an upgrade restarts it): `stale_routing` lists those our previous file had and the next one
does not, for the host to delete itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from .system import System, as_mapping, first_error, read_text, write_atomically

NETWORKD_UNIT = "systemd-networkd.service"
DROPIN = Path("/etc/systemd/networkd.conf.d/90-network-isolation.conf")
DROPIN_TEXT = """\
# Written by the network-isolation charm; removed when the charm leaves the machine.
# Its netplan file makes systemd-networkd reconfigure links, which by default deletes the
# routing-policy rules and routes networkd did not configure (Kubernetes', VPNs', an
# operator's). Leave them alone.
[Network]
ManageForeignRoutingPolicyRules=no
ManageForeignRoutes=no
"""


@dataclass(frozen=True, order=True)
class RoutingEntry:
    """One rule or route our netplan file asks for, as `ip` can delete it."""

    kind: str  # "rule" or "route"
    family: str  # "-4" or "-6"
    selector: tuple[str, ...]

    def delete_argv(self, ip: str) -> list[str]:
        """The `ip` command that deletes exactly this entry."""
        return [ip, self.family, self.kind, "del", *self.selector]


def _family(*addresses: object) -> str:
    return "-6" if any(":" in str(a) for a in addresses if a) else "-4"


def _devices(netplan: str | None) -> Iterator[dict[str, object]]:
    """Every device's settings in a netplan file, whatever its section."""
    try:
        doc: object = yaml.safe_load(netplan or "")
    except yaml.YAMLError:
        return
    for section in as_mapping(as_mapping(doc).get("network")).values():
        yield from (as_mapping(device) for device in as_mapping(section).values())


def _items(device: dict[str, object], key: str, *required: str) -> Iterator[dict[str, object]]:
    """The entries of a device's list `key` that have every `required` key."""
    entries = device.get(key)
    for entry in [as_mapping(e) for e in entries] if isinstance(entries, list) else []:
        if all(name in entry for name in required):
            yield entry


def routing_entries(netplan: str | None) -> set[RoutingEntry]:
    """The rules and table routes a netplan file of ours defines (unreadable: none)."""
    entries: set[RoutingEntry] = set()
    for device in _devices(netplan):
        for rule in _items(device, "routing-policy", "priority", "table"):
            selector: tuple[str, ...] = ("priority", str(rule["priority"]))
            for key in ("from", "to"):
                if rule.get(key):
                    selector += (key, str(rule[key]))
            selector += ("table", str(rule["table"]))
            entries.add(RoutingEntry("rule", _family(rule.get("from"), rule.get("to")), selector))
        for route in _items(device, "routes", "to", "table"):
            selector = (str(route["to"]),)
            if route.get("via"):
                selector += ("via", str(route["via"]))
            selector += ("table", str(route["table"]))
            entries.add(RoutingEntry("route", _family(route["to"]), selector))
    return entries


def stale_routing(previous: str | None, wanted: str | None) -> list[RoutingEntry]:
    """What the previous file of ours defined and the wanted one does not, rules first."""
    gone = routing_entries(previous) - routing_entries(wanted)
    return sorted(gone, key=lambda e: (e.kind != "rule", e))


class Networkd:
    """Our networkd drop-in, and the clean-up after each `netplan apply` of ours."""

    def __init__(self, system: System):
        self.system = system
        self.dropin = system.at(DROPIN)

    def prepare(self) -> str | None:
        """The drop-in in place, networkd restarted if it was not; None, or why not."""
        if read_text(self.dropin) == DROPIN_TEXT:
            return None
        write_atomically(self.dropin, DROPIN_TEXT, 0o644)
        result = self.system.run(self.system.tools.systemctl, "try-restart", NETWORKD_UNIT)
        if result.returncode != 0:
            return f"cannot restart systemd-networkd: {first_error(result.stderr)}"
        return None

    def tidy(self, previous: str | None, wanted: str | None) -> None:
        """Delete our stale rules and routes (gone already: fine)."""
        for entry in stale_routing(previous, wanted):
            self.system.runner.run(entry.delete_argv(self.system.tools.ip))

    def release(self) -> str | None:
        """The drop-in gone and networkd restarted to drop its settings; None, or why not.

        No drop-in: nothing to do, no command.
        """
        if not self.dropin.exists():
            return None
        self.dropin.unlink()
        with contextlib.suppress(OSError):
            self.dropin.parent.rmdir()
        result = self.system.run(self.system.tools.systemctl, "try-restart", NETWORKD_UNIT)
        if result.returncode != 0:
            return (
                f"cannot restart systemd-networkd: {first_error(result.stderr)}; it keeps other"
                " software's rules and routes until it restarts"
            )
        return None
