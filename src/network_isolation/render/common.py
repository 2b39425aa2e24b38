"""What both artefacts share: the error, the generated file's header, names of networks.

Also the one check of interface names, which both files write.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..base import Enforcement
from ..model import NETWORKS, Network
from ..planner import MachinePlan

# What nft and the kernel accept as an interface name, without quoting trouble.
INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]{1,15}$")


class RenderError(ValueError):
    """A plan that cannot be turned into valid, meaningful artefacts."""


def network_names(networks: Iterable[Network]) -> str:
    """Networks as people read them, in the fixed order: `internal+public`."""
    return "+".join(n.value for n in sorted(set(networks), key=NETWORKS.index))


def file_header(plan: MachinePlan, what: str, enforcement: Enforcement | None) -> list[str]:
    """The generated file's comment header, naming the form of the ruleset (`enforcement`).

    The netplan one leaves the form out (None), since it does not change routing, so that
    switching forms does not rewrite the file (and run `netplan apply`).
    """
    mode = f"; enforcement: {enforcement}" if enforcement is not None else ""
    lines = [
        f"network-isolation: {what} of machine '{plan.machine}'.",
        "Generated from the machine's plan by the network-isolation charm: do not edit,",
        "every reconcile overwrites it.",
        f"roles: {', '.join(plan.roles) or 'none'}; isolation: {plan.isolation.level}{mode}",
    ]
    if plan.status != "active":
        lines.append(f"WARNING: the plan is {plan.status}: {plan.message}")
    return lines


def comment_line(text: object) -> str:
    """Any text as one line of a comment: newlines and runs of blanks become one space.

    Every text a template writes after `#` goes through it (the templates' `comment`
    filter): a name from a plan or a topology must never start a line of its own.
    """
    return " ".join(str(text).split())


def check_interface_name(name: str) -> str:
    """An interface name safe to write into nft and netplan files."""
    if not INTERFACE_NAME.match(name):
        raise RenderError(f"'{name}' is not a valid interface name (at most 15 characters)")
    return name
