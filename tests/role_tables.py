"""The role tables the tests check the charm against, written out by hand from their sources.

Never imported from the charm: the unit tests and the packet oracle both compare what the charm
does with these.
"""

from __future__ import annotations

# The "Node roles" table of Canonical's "Network traffic isolation with MAAS" page (the guide):
# node role -> cloud networks it needs.
GUIDE_ROLE_TABLE: dict[str, frozenset[str]] = {
    "juju-controller": frozenset({"management"}),
    "control": frozenset({"management", "internal", "public", "storage"}),
    "compute": frozenset({"management", "internal", "data", "storage"}),
    "storage": frozenset({"management", "storage", "storage-cluster"}),
}

# Sunbeam's own table, ROLE_NETWORK_MAPPING in canonical/snap-openstack
# (sunbeam-python/sunbeam/provider/maas/deployment.py); its `region_controller` spelt with a dash.
SUNBEAM_ROLE_TABLE: dict[str, frozenset[str]] = {
    "control": frozenset({"data", "internal", "management", "public", "storage"}),
    "region-controller": frozenset({"internal", "management", "public"}),
    "compute": frozenset({"data", "internal", "management", "storage"}),
    "storage": frozenset({"internal", "management", "storage", "storage-cluster"}),
    "network": frozenset({"internal", "management", "data"}),
    "juju-controller": frozenset({"management"}),
    "sunbeam": frozenset({"management"}),
}
