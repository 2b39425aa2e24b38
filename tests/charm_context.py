"""The charm under ops.testing: one way to make its Context, for the unit and functional tests.

Every charm test runs the same charm class on a machine of its choosing; the unit tests' machine
is "7" unless a test says otherwise. Only what a test varies is a keyword.
"""

from __future__ import annotations

from pathlib import Path

from ops import testing

from charm import NetworkIsolationCharm

MACHINE = "7"

CharmContext = testing.Context[NetworkIsolationCharm]


def context(
    unit_id: int = 0,
    *,
    machine_id: str = MACHINE,
    app_name: str | None = None,
    principal_unit: str | None = None,
    charm_root: Path | None = None,
) -> CharmContext:
    """A Context of the charm for unit `unit_id` on machine `machine_id`."""
    return testing.Context(
        NetworkIsolationCharm,
        unit_id=unit_id,
        machine_id=machine_id,
        app_name=app_name,
        principal_unit=principal_unit,
        charm_root=charm_root,
    )


def compute_principal() -> testing.SubordinateRelation:
    """The relation to a compute node's principal, as Sunbeam deploys it."""
    return testing.SubordinateRelation("compute-node", remote_app_name="openstack-hypervisor")
