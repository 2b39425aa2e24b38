"""Plans as people and tools read them: JSON documents and text tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .model import NETWORKS
from .planner import Isolation, MachinePlan


def isolation_dict(isolation: Isolation) -> dict[str, Any]:
    """The degree and its domains, each a list of network names."""
    return {
        "level": isolation.level.value,
        "domains": [[n.value for n in domain] for domain in isolation.domains],
    }


def machine_dict(plan: MachinePlan, warnings: Sequence[str] = ()) -> dict[str, Any]:
    """One machine's plan as plain JSON-able data, with its principals' warnings."""
    return {
        "roles": list(plan.roles),
        "role_table": plan.config.role_table,
        "warnings": list(warnings),
        "status": plan.status,
        "message": plan.message,
        "problems": list(plan.problems),
        "enforcement": plan.config.enforcement,
        "unrouted-interfaces": list(plan.unrouted_interfaces),
        "networks": {
            net.value: {
                "access": plan.networks[net].access,
                "space": plan.networks[net].space,
                "subnets": [str(s) for s in plan.networks[net].subnets],
                "interfaces": list(plan.networks[net].interfaces),
                "addresses": [str(a) for a in plan.networks[net].addresses],
            }
            for net in NETWORKS
        },
    }


def cloud_dict(
    isolation: Isolation,
    plans: Mapping[str, MachinePlan],
    warnings: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """A whole cloud's plans, machine by machine."""
    warnings = warnings or {}
    return {
        "isolation": isolation_dict(isolation),
        "machines": {
            name: machine_dict(plan, warnings.get(name, ())) for name, plan in plans.items()
        },
    }


def machine_text(plan: MachinePlan, warnings: Sequence[str] = ()) -> str:
    """A table of networks x (access, space, interfaces, addresses) and a one-line verdict."""
    rows = [("network", "access", "space", "interface", "address")]
    for net in NETWORKS:
        item = plan.networks[net]
        rows.append(
            (
                net.value,
                "allow" if item.access else "deny",
                item.space or ",".join(str(s) for s in item.subnets) or "-",
                ",".join(item.interfaces) or "-",
                ",".join(str(a) for a in item.addresses) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    roles = ", ".join(plan.roles) or "no role"
    lines = [f"{plan.machine} ({roles}; role table {plan.config.role_table})"]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if plan.unrouted_interfaces and plan.config.manage_routing:
        lines.append(
            f"  policy routing leaves {', '.join(plan.unrouted_interfaces)} alone: the host's"
            " netplan files do not define it"
        )
    lines.append(f"  => {plan.status}: {plan.message}")
    lines += [f"     - {p}" for p in plan.problems[1:]]
    lines += [f"  warning: {w}" for w in warnings]
    return "\n".join(lines)


def cloud_text(
    isolation: Isolation,
    plans: Mapping[str, MachinePlan],
    warnings: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The cloud's isolation degree and role table, then each machine's table."""
    warnings = warnings or {}
    domains = "; ".join(",".join(n.value for n in d) for d in isolation.domains)
    head = f"isolation: {isolation.level} ({len(isolation.domains)} domains: {domains})"
    tables = sorted({p.config.role_table for p in plans.values()})
    head += "".join(f"\nrole table: {t}" for t in tables)
    tables = [machine_text(plan, warnings.get(name, ())) for name, plan in plans.items()]
    return "\n\n".join([head, *tables]) + "\n"
