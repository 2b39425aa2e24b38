"""Benchmark the charm against the number of peers: reconcile cost, rules, nft and packets.

`tox -e bench` (`python -m tools.bench`) runs the full benchmark (a few minutes on two cores);
`tox -e bench -- --quick` a short one. It is a measurement, not a test: it prints what it
measured and whether each target is met, and exits 0 either way. It exits 1 when a measurement
could not run (a missing tool, no root), except with --quick.

What it measures, for N peers in the `cluster` peer relation, one module each:

- `hooks`: the reconcile time of a `config-changed` hook under ops.testing (median of several
  runs), leader and non-leader, on unchanged inputs (the no-op) and on a changed config, with
  the host faked at its boundary (tests/unit/fake_host.py), as the unit tests do; the hook-tool
  calls per hook, counted on ops.testing's model backend (ops caches is-leader for the 30 s
  leadership lease, so only the first is-leader of a hook is counted); the writes of the
  unchanged-input hook: databag writes (relation-set), host applies and host file writes;
- `ruleset`: the rules and set elements of the rendered nftables table, and the time of
  `nft -f` loading it into a fresh network namespace, and of loading it again with one more
  rack's subnets (the update);
- `packets`: the packet path between two network namespaces (needs root, iperf3 and nft): new
  TCP connections per second and TCP throughput through no ruleset, a conntrack-only ruleset,
  the rendered table (its enforcing form, from a peer it accepts: the run fails if any drop
  counter moves) and a naive one-rule-per-peer ruleset, all measured side by side.

`cloud` builds the measured cloud, `report` prints the tables and the targets, `run` is the
command line. Everything runs in namespaces this process creates (named after its pid) and
deletes; the machine's own network and ruleset are never touched.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "tests" / "unit", ROOT / "interface" / "src", ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from .cloud import (  # noqa: E402
    RACK_SIZE,
    cloud_view,
    machine_address,
    machine_record,
    peer_databag,
    rack_subnet,
    role_of,
)
from .hooks import Harness, HookToolCounter, load_fake_host  # noqa: E402
from .report import Results, report  # noqa: E402
from .ruleset import count_elements, count_rules, naive_ruleset  # noqa: E402
from .run import main, reconcile  # noqa: E402

__all__ = [
    "RACK_SIZE",
    "Harness",
    "HookToolCounter",
    "Results",
    "cloud_view",
    "count_elements",
    "count_rules",
    "load_fake_host",
    "machine_address",
    "machine_record",
    "main",
    "naive_ruleset",
    "peer_databag",
    "rack_subnet",
    "reconcile",
    "report",
    "role_of",
]
