"""Render a machine's plan into the two artefacts that enforce it on the host.

- An nftables ruleset (`nft -f`): one table of our own, `inet network_isolation`, replaced
  atomically as a whole; no other table is touched.
- A netplan file (`/etc/netplan/90-network-isolation.yaml`): per allowed network and interface,
  a routing table and policy rules so replies leave by the interface the request came in on.

All decisions are taken in pure Python, into small "views" (sets, rules, counters, routes);
the jinja2 templates only lay them out. The modules: `nft` (the nftables data model: sets,
rules, sections, chains and their text), `firewall` (which rules in which order, in which
chain) with `network_rules` (each network's rules), `routing` (policy routing), `subnets`
(subnet arithmetic) and `common` (the error and the files' header). This module finds the
templates and renders both artefacts: the charm's (or the repository's) top-level `templates/`
directory, or, in an installed wheel, the copy packaged as `network_isolation/render/templates`.
Nothing here touches the host.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jinja2
from pydantic import BaseModel, ConfigDict

from ..base import Enforcement
from ..planner import MachinePlan
from ..ports import MachinePorts
from .common import RenderError, comment_line
from .firewall import FirewallView, firewall_view
from .network_rules import counter_kinds, strict_ports
from .nft import TABLE_FAMILY, TABLE_NAME
from .routing import (
    NETPLAN_FILE_NAME,
    PolicyRule,
    Route,
    RoutedInterface,
    RoutingView,
    check_policy_routing,
    routing_view,
)
from .subnets import exclude, normalize

__all__ = [
    "NETPLAN_FILE_NAME",
    "NETPLAN_TEMPLATE",
    "NFTABLES_TEMPLATE",
    "TABLE_FAMILY",
    "TABLE_NAME",
    "TEMPLATE_DIRS",
    "Artefacts",
    "FirewallView",
    "PolicyRule",
    "RenderError",
    "Route",
    "RoutedInterface",
    "RoutingView",
    "check_policy_routing",
    "counter_kinds",
    "exclude",
    "firewall_view",
    "normalize",
    "render",
    "render_netplan",
    "render_nftables",
    "routing_view",
    "strict_ports",
    "templates_dir",
]

# Where the templates are: the charm's (or repository's) top-level `templates/` first, then the
# copy an installed wheel carries inside this package (hatch `force-include`).
TEMPLATE_DIRS: tuple[Path, ...] = (
    Path(__file__).resolve().parents[3] / "templates",
    Path(__file__).resolve().parent / "templates",
)
NFTABLES_TEMPLATE = "nftables.conf.j2"
NETPLAN_TEMPLATE = "netplan.yaml.j2"


class Artefacts(BaseModel):
    """What enforces a plan on its host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nftables: str
    """Full content of a file for `nft -f`: replaces our table (or removes it)."""
    netplan: str | None
    """Content of NETPLAN_FILE_NAME, or None when there is nothing to route."""


def templates_dir() -> Path:
    """The first of TEMPLATE_DIRS that holds our templates."""
    for directory in TEMPLATE_DIRS:
        if (directory / NFTABLES_TEMPLATE).is_file() and (directory / NETPLAN_TEMPLATE).is_file():
            return directory
    raise RenderError(
        f"templates not found: none of {', '.join(str(d) for d in TEMPLATE_DIRS)} holds"
        f" {NFTABLES_TEMPLATE} and {NETPLAN_TEMPLATE}"
    )


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["q"] = json.dumps  # a JSON string is a valid double-quoted YAML scalar
    env.filters["comment"] = comment_line
    return env


def render_nftables(view: FirewallView) -> str:
    """The `nft -f` file of a firewall view."""
    return _environment().get_template(NFTABLES_TEMPLATE).render(view=view)


def render_netplan(view: RoutingView) -> str:
    """The netplan file of a routing view."""
    return _environment().get_template(NETPLAN_TEMPLATE).render(view=view)


def render(
    plan: MachinePlan,
    ports: MachinePorts | None = None,
    enforcement: Enforcement | None = None,
) -> Artefacts:
    """Both artefacts of a plan, its ruleset in one form (`enforcement`; None: the configured).

    A first deployment loads the audit form before the configured one; routing is the same in
    every form. `ports` matters only with `strict-ports`: the ports each allowed network
    accepts, as `ports.machine_ports(plan, declared)` gives them (the catalogue, `extra-ports`
    and what the principals declared). Without it, `machine_ports(plan)`: no declarations.
    """
    routing = routing_view(plan)
    return Artefacts(
        nftables=render_nftables(firewall_view(plan, ports, enforcement)),
        netplan=render_netplan(routing) if routing else None,
    )
