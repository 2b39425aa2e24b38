"""Our netplan file: check (policy routing, `netplan generate`), write, apply, restore, remove."""

from __future__ import annotations

import ipaddress
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import yaml

from ..base import InterfaceKind, IPAddress
from .networkd import Networkd
from .outcomes import ApplyError, InvalidArtefactsError
from .system import System, as_mapping, first_error, read_text, write_atomically

logger = logging.getLogger(__name__)

# The same name as render.NETPLAN_FILE_NAME (a unit test checks it): the host package must not
# depend on the renderer to remove what it applied.
NETPLAN_FILE_NAME = "90-network-isolation.yaml"
NETPLAN_DIRS = ("lib/netplan", "etc/netplan", "run/netplan")


def _routing_problems(netplan: str) -> list[str]:
    """Policy-routing mistakes that netplan accepts silently.

    A rule without a table (useless), table 0 (silently dropped), two rules with one priority.
    """
    try:
        doc: object = yaml.safe_load(netplan)
    except yaml.YAMLError as e:
        return [str(e).splitlines()[0]]
    network = as_mapping(as_mapping(doc).get("network"))
    problems: list[str] = []
    seen: dict[object, str] = {}
    for kind, devices in network.items():
        for name, device in as_mapping(devices).items():
            rules = as_mapping(device).get("routing-policy")
            for rule in [as_mapping(r) for r in rules] if isinstance(rules, list) else []:
                where = f"{kind}.{name}"
                table = rule.get("table")
                if not isinstance(table, int) or isinstance(table, bool) or table <= 0:
                    problems.append(f"{where}: a routing-policy rule needs a table (not 0)")
                priority = rule.get("priority")
                if priority is not None and priority in seen:
                    problems.append(
                        f"{where}: priority {priority} is also used in {seen[priority]}"
                    )
                elif priority is not None:
                    seen[priority] = where
    return problems


class NetplanFile:
    """Our file `/etc/netplan/90-network-isolation.yaml` (0600), beside the host's own."""

    def __init__(self, system: System):
        self.system = system
        self.path = system.at(Path("/etc/netplan") / NETPLAN_FILE_NAME)
        self.networkd = Networkd(system)

    def read(self) -> str | None:
        """Our file's content; None when there is no file of ours."""
        return read_text(self.path)

    def matches(self, netplan: str | None) -> bool:
        """Whether our file is this content with mode 0600 (or absent, for None)."""
        if netplan is None:
            return not self.path.exists()
        try:
            return (
                self.path.read_bytes() == netplan.encode()
                and self.path.stat().st_mode & 0o777 == 0o600
            )
        except OSError:
            return False

    def check(self, netplan: str) -> None:
        """Our policy-routing checks, then `netplan generate` over the host's files and this.

        Raises InvalidArtefactsError with the first problem or netplan's first error line.
        """
        problems = _routing_problems(netplan)
        if problems:
            raise InvalidArtefactsError(
                f"netplan policy routing: {'; '.join(problems)}", stage="validate-routing"
            )
        with tempfile.TemporaryDirectory(prefix="network-isolation-netplan-") as tmp:
            self._stage(Path(tmp), netplan)
            result = self.system.run(self.system.tools.netplan, "generate", "--root-dir", tmp)
            if result.returncode != 0:
                why = first_error(result.stderr + result.stdout, strip=[tmp])
                raise InvalidArtefactsError(f"netplan rejected: {why}", stage="validate-netplan")

    def _foreign_files(self) -> list[Path]:
        """The host's netplan files (lib, etc, run) other than ours, in netplan's order."""
        found: list[Path] = []
        for directory in NETPLAN_DIRS:
            source = self.system.root / directory
            for path in sorted(source.glob("*.yaml")) if source.is_dir() else []:
                if path.is_file() and path != self.path:
                    found.append(path)
        return found

    def _definitions(self) -> Iterator[tuple[InterfaceKind, str, dict[str, object]]]:
        """Every interface the host's netplan files define: (section, name, definition).

        Unreadable files are skipped: netplan's own validation of our file will then say
        what is wrong.
        """
        for path in self._foreign_files():
            try:
                network = as_mapping(as_mapping(yaml.safe_load(path.read_text())).get("network"))
            except (OSError, yaml.YAMLError) as e:
                logger.warning("cannot read %s: %s", path, e)
                continue
            for kind in get_args(InterfaceKind):
                for name, definition in as_mapping(network.get(kind)).items():
                    yield kind, name, as_mapping(definition)

    def interface_kinds(self) -> dict[str, InterfaceKind]:
        """Which netplan section (ethernets, vlans, bonds, bridges) defines each interface.

        Our netplan file must name each interface in the section MAAS used, else netplan
        refuses it ("changes device type").
        """
        return {name: kind for kind, name, _ in self._definitions()}

    def interface_gateways(self) -> dict[str, tuple[IPAddress, ...]]:
        """The gateways the host's netplan files give each interface (routes' `via`).

        `gateway4` and `gateway6` (deprecated spellings) count too. What is not an address
        is skipped.
        """
        found: dict[str, dict[IPAddress, None]] = {}
        for _, name, definition in self._definitions():
            routes = definition.get("routes")
            vias = [as_mapping(r).get("via") for r in routes] if isinstance(routes, list) else []
            vias += [definition.get("gateway4"), definition.get("gateway6")]
            for via in vias:
                try:
                    address = ipaddress.ip_address(str(via))
                except ValueError:
                    continue
                found.setdefault(name, {})[address] = None
        return {name: tuple(addresses) for name, addresses in found.items()}

    def _stage(self, tmp: Path, netplan: str) -> None:
        """The host's netplan files (lib, etc, run) under tmp, with ours replaced by `netplan`."""
        for directory in NETPLAN_DIRS:
            (tmp / directory).mkdir(parents=True, exist_ok=True)
        for path in self._foreign_files():
            shutil.copy2(path, tmp / path.relative_to(self.system.root))
        ours = tmp / "etc/netplan" / NETPLAN_FILE_NAME
        ours.write_text(netplan)
        ours.chmod(0o600)

    def install(self, netplan: str | None) -> None:
        """Write (or, for None, delete) our file and `netplan apply`; ApplyError if it fails."""
        why = self._replace(netplan)
        if why:
            raise ApplyError(f"netplan apply failed: {why}", stage="netplan-apply")
        self._release_if_unused(netplan)

    def restore(self, saved: Path) -> str | None:
        """Put back a saved copy of our file (none saved: no file) and apply; what went wrong."""
        netplan = read_text(saved)
        why = self._replace(netplan)
        if why:
            return f"netplan apply: {why}"
        self._release_if_unused(netplan)
        return None

    def remove(self) -> list[str]:
        """Delete our file, `netplan apply`, then hand networkd its defaults back.

        What went wrong, if anything. A failed apply keeps the drop-in: a retry of the
        removal applies with it again.
        """
        if self.path.exists():
            why = self._replace(None)
            if why:
                return [f"netplan apply: {why}"]
        why = self.networkd.release()
        return [why] if why else []

    def _release_if_unused(self, netplan: str | None) -> None:
        """No file of ours any more: no drop-in either (a failure is only logged)."""
        why = self.networkd.release() if netplan is None else None
        if why:
            logger.warning("%s", why)

    def _replace(self, netplan: str | None) -> str | None:
        """Our file becomes `netplan` (None: no file) and is applied; None, or why not.

        `networkd` keeps other software's rules and routes through the apply and deletes the
        stale ones of ours after it.
        """
        previous = self.read()
        if netplan is None:
            self.path.unlink(missing_ok=True)
        else:
            write_atomically(self.path, netplan, 0o600)
        why = self.networkd.prepare()
        if why:
            return why
        result = self.system.run(self.system.tools.netplan, "apply")
        if result.returncode != 0:
            return first_error(result.stderr + result.stdout)
        self.networkd.tidy(previous, netplan)
        return None
