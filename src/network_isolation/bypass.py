"""Programs that can take packets off an interface before netfilter sees them.

An XDP program runs in the driver, before the kernel's stack; a tc ingress BPF program (Cilium's
`cil_from_netdev`, attached with tc or, on newer kernels, tcx) runs before the prerouting hook.
Either may redirect a packet straight to a pod or drop it: what it redirects never reaches our
rules. This module only reads what the tools print (`ip -details -json link show`,
`tc -json filter show dev IF ingress`, `bpftool --json net show`); the host module runs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

XDP_MODES = {1: "driver", 2: "generic", 3: "offload", 4: "multi"}
INGRESS_KINDS = ("clsact/ingress", "ingress", "tcx/ingress")


class BypassParseError(ValueError):
    """A tool printed something that is not the JSON it documents."""


@dataclass(frozen=True, order=True)
class Bypass:
    """One program on one interface that sees packets before netfilter does."""

    interface: str
    hook: str  # "xdp", "tc ingress" or "tcx ingress"
    program: str  # the program's name, or "classic BPF"
    program_id: int | None = None
    mode: str = ""  # XDP: driver, generic, offload

    def key(self) -> tuple[str, str, int | None]:
        """What identifies the attachment whichever tool reported it."""
        return (self.interface, self.hook, self.program_id)

    def __str__(self) -> str:
        hook = f"{self.hook} ({self.mode})" if self.mode else self.hook
        ident = f" id {self.program_id}" if self.program_id is not None else ""
        return f"{self.interface}: {hook} program {self.program}{ident}"

    def as_dict(self) -> dict[str, object]:
        """Plain data for JSON output."""
        return {
            "interface": self.interface,
            "hook": self.hook,
            "program": self.program,
            "program_id": self.program_id,
            "mode": self.mode,
        }


def _load(text: str, tool: str) -> list[dict[str, object]]:
    """The list of objects a tool's `-json` output holds ([] for no output at all)."""
    if not text.strip():
        return []
    try:
        doc: object = json.loads(text)
    except ValueError as e:
        raise BypassParseError(f"{tool}: not JSON: {e}") from e
    if not isinstance(doc, list):
        raise BypassParseError(f"{tool}: expected a JSON list, got {type(doc).__name__}")
    return [item for item in doc if isinstance(item, dict)]


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _xdp_programs(xdp: Mapping[str, object]) -> list[tuple[Mapping[str, object], int | None]]:
    """(program, mode) pairs: one per attached program, several in multi-program mode."""
    attached = xdp.get("attached")
    if isinstance(attached, list) and attached:
        return [
            (_mapping(_mapping(a).get("prog")), _int(_mapping(a).get("mode"))) for a in attached
        ]
    return [(_mapping(xdp.get("prog")), _int(xdp.get("mode")))]


def from_ip_link(text: str) -> list[Bypass]:
    """XDP programs in `ip -details -json link show` output."""
    found: list[Bypass] = []
    for link in _load(text, "ip link"):
        xdp = _mapping(link.get("xdp"))
        name = link.get("ifname")
        if not xdp or not isinstance(name, str):
            continue
        for prog, mode in _xdp_programs(xdp):
            found.append(
                Bypass(
                    interface=name,
                    hook="xdp",
                    program=str(prog.get("name") or "unnamed"),
                    program_id=_int(prog.get("id")),
                    mode=XDP_MODES.get(mode or 0, ""),
                )
            )
    return found


def from_tc_filters(interface: str, text: str) -> list[Bypass]:
    """BPF classifiers in `tc -json filter show dev IF ingress` output.

    tc prints one bare line per filter priority and one with the filter's options; only the
    second names the program. Classic BPF (`bytecode`) counts too: it can drop as well.
    """
    found: list[Bypass] = []
    for item in _load(text, "tc filter"):
        options = _mapping(item.get("options"))
        if item.get("kind") != "bpf" or not options:
            continue
        prog = _mapping(options.get("prog"))
        if prog:
            name = str(prog.get("name") or options.get("bpf_name") or "unnamed")
            found.append(Bypass(interface, "tc ingress", name, _int(prog.get("id"))))
        else:
            found.append(Bypass(interface, "tc ingress", "classic BPF"))
    return found


def from_bpftool_net(text: str) -> list[Bypass]:
    """XDP and tc/tcx ingress programs in `bpftool --json net show` output.

    bpftool 7.3 and later also list tcx attachments (kernels 6.6+), which neither `ip` nor
    `tc` show. Egress programs run after netfilter's output hooks and are not listed.
    """
    found: list[Bypass] = []
    for section in _load(text, "bpftool net"):
        for entry in [_mapping(e) for e in _list(section.get("xdp"))]:
            name = entry.get("devname")
            if isinstance(name, str):
                program_id = _int(entry.get("id")) or _int(entry.get("prog_id"))
                program = str(entry.get("name") or "unnamed")
                found.append(
                    Bypass(name, "xdp", program, program_id, str(entry.get("mode") or ""))
                )
        for key in ("tc", "tcx"):
            for entry in [_mapping(e) for e in _list(section.get(key))]:
                name, kind = entry.get("devname"), entry.get("kind")
                if not isinstance(name, str) or kind not in INGRESS_KINDS:
                    continue
                hook = "tcx ingress" if kind == "tcx/ingress" else "tc ingress"
                program_id = _int(entry.get("id")) or _int(entry.get("prog_id"))
                program = str(entry.get("name") or ("classic BPF" if program_id is None else ""))
                found.append(Bypass(name, hook, program or "unnamed", program_id))
    return found


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def merge(*reports: Iterable[Bypass], interfaces: Iterable[str] | None = None) -> list[Bypass]:
    """One entry per attachment, the first report's wording kept; only `interfaces` if given.

    `ip` and `tc` name the program itself, bpftool sometimes the object file: pass them first.
    """
    wanted = None if interfaces is None else set(interfaces)
    merged: dict[tuple[str, str, int | None], Bypass] = {}
    for report in reports:
        for bypass in report:
            if wanted is None or bypass.interface in wanted:
                merged.setdefault(bypass.key(), bypass)
    return sorted(merged.values())


def warning(bypasses: Iterable[Bypass]) -> str | None:
    """One status line naming each interface and what sits on it (None when nothing does)."""
    by_interface: dict[str, list[str]] = {}
    for bypass in sorted(bypasses):
        what = f"{bypass.hook} {bypass.program}"
        by_interface.setdefault(bypass.interface, []).append(what)
    if not by_interface:
        return None
    found = "; ".join(f"{name}: {', '.join(what)}" for name, what in by_interface.items())
    return f"BPF before netfilter, traffic it redirects is not filtered ({found})"


def describe(bypasses: Iterable[Bypass]) -> str:
    """One line per program, for people; a line saying so when there is none."""
    lines = [str(b) for b in sorted(bypasses)]
    return "\n".join(lines) if lines else "none found on the space interfaces"
