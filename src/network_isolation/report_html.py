"""The plan of a cloud as one self-contained HTML page: machines by networks, at a glance.

Built from the same plans (and rendered artefacts) as the text and JSON reports: a grid of
machines by cloud networks, each cell allowed, denied or blocked, with the space, subnets,
interfaces and addresses on hover; the degree of isolation and its domains; and each
machine's ruleset and netplan file one click away. No scripts and no external assets: the
page carries its own style and a Content-Security-Policy that forbids loading anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import jinja2

from .model import NETWORK_TRAFFIC, NETWORKS, Network
from .planner import Isolation, MachinePlan
from .render import Artefacts, templates_dir

HTML_TEMPLATE = "plan.html.j2"


@dataclass(frozen=True)
class Cell:
    """One machine on one network: its state (a CSS class), a label and the details."""

    state: str  # allowed, blocked, denied, denied-nic, denied-shared
    label: str
    note: str  # the first address, or the space
    details: str


@dataclass(frozen=True)
class Row:
    """One machine: roles, verdict, a cell per network and its artefacts."""

    machine: str
    roles: str
    status: str
    message: str
    problems: tuple[str, ...]
    cells: tuple[Cell, ...]
    nftables: str | None
    netplan: str | None


def cell(plan: MachinePlan, network: Network) -> Cell:
    """Allowed, blocked (allowed, but no address there), or denied.

    Denied comes in three kinds: plain (the machine is not on the network), with a NIC of
    its own that the firewall drops, or sharing a space with an allowed network (the same
    subnets: the firewall cannot tell them apart, so nothing is dropped).
    """
    item = plan.networks[network]
    details = "\n".join(
        [
            f"{network.value}: {NETWORK_TRAFFIC[network].traffic_type}",
            f"space: {item.space or '-'}",
            f"subnets: {', '.join(str(s) for s in item.subnets) or '-'}",
            f"interfaces: {', '.join(item.interfaces) or '-'}",
            f"addresses: {', '.join(str(a) for a in item.addresses) or '-'}",
        ]
    )
    note = str(item.addresses[0]) if item.addresses else (item.space or "")
    if item.access and not item.addresses:
        return Cell("blocked", "blocked: no address", note, details)
    if item.access:
        return Cell("allowed", ", ".join(item.interfaces) or "allowed", note, details)
    if plan.domain_of(network).allowed:
        return Cell("denied-shared", "denied, shares a space", note, details)
    dropped = [i for i in item.interfaces if i in plan.denied_interfaces]
    if dropped:
        return Cell("denied-nic", f"denied: {', '.join(dropped)} dropped", note, details)
    return Cell("denied", "denied", note, details)


def row(plan: MachinePlan, artefacts: Artefacts | None) -> Row:
    """A machine's row; artefacts are None when its plan is blocked (nothing is rendered)."""
    return Row(
        machine=plan.machine,
        roles=", ".join(plan.roles) or "no role",
        status=plan.status,
        message=plan.message,
        problems=plan.problems,
        cells=tuple(cell(plan, net) for net in NETWORKS),
        nftables=artefacts.nftables if artefacts else None,
        netplan=artefacts.netplan if artefacts else None,
    )


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def cloud_html(
    title: str,
    isolation: Isolation,
    plans: Mapping[str, MachinePlan],
    artefacts: Mapping[str, Artefacts | None],
) -> str:
    """The page: every machine's row, the isolation degree and the domains."""
    rows = [row(plan, artefacts.get(name)) for name, plan in plans.items()]
    return (
        _environment()
        .get_template(HTML_TEMPLATE)
        .render(
            title=title,
            level=isolation.level.value,
            domains=[[n.value for n in domain] for domain in isolation.domains],
            networks=[n.value for n in NETWORKS],
            traffic={n.value: NETWORK_TRAFFIC[n].traffic_type for n in NETWORKS},
            rows=rows,
            blocked=sum(1 for r in rows if r.status == "blocked"),
        )
    )
