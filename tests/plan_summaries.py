"""Plan summaries as the exporter reads them, built by hand for the unit and functional tests.

A test that needs a `PlanSummary` names only the fields it is about: the rest are those of an
active plan of maximum isolation, enforced, without strict-ports.
"""

from __future__ import annotations

from collections.abc import Mapping

from network_isolation.observed import PlanSummary


def plan_summary(
    *,
    status: str = "active",
    enforcement: str = "enforce",
    isolation: str = "maximum",
    domains: int = 6,
    strict_ports: bool = False,
    networks: Mapping[str, bool] | None = None,
    wanted: str = "",
) -> PlanSummary:
    """A machine's plan summary; `networks`: network name -> may the machine use it."""
    return PlanSummary(
        status=status,
        enforcement=enforcement,
        isolation=isolation,
        domains=domains,
        strict_ports=strict_ports,
        networks=dict(networks or {}),
        wanted=wanted,
    )
