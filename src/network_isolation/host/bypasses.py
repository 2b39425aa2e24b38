"""A read-only look for BPF programs that take packets off an interface before netfilter."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from .. import bypass
from .system import System

logger = logging.getLogger(__name__)


def packet_bypasses(system: System, interfaces: Iterable[str]) -> list[bypass.Bypass]:
    """XDP and tc/tcx ingress programs on these interfaces, from `ip`, `tc` and `bpftool`.

    bpftool is asked only when installed. A tool that fails or prints something unreadable is
    logged and skipped: what the others found is still reported.
    """
    names = sorted(set(interfaces))
    if not names:
        return []
    tools = system.tools
    reports: list[list[bypass.Bypass]] = []

    def read(parse: Callable[[str], list[bypass.Bypass]], *argv: str) -> None:
        result = system.run(*argv)
        try:
            if result.returncode == 0:
                reports.append(parse(result.stdout))
        except bypass.BypassParseError as e:
            logger.warning("ignoring %s: %s", argv[0], e)

    read(bypass.from_ip_link, tools.ip, "-details", "-json", "link", "show")
    for name in names:
        parse_tc = functools.partial(bypass.from_tc_filters, name)
        read(parse_tc, tools.tc, "-json", "filter", "show", "dev", name, "ingress")
    if Path(tools.bpftool).exists():
        read(bypass.from_bpftool_net, tools.bpftool, "--json", "net", "show")
    return bypass.merge(*reports, interfaces=names)
