"""The real `nft` in throwaway network namespaces: check, load and count a rendered ruleset.

Everything here runs in a fresh network namespace (`unshare -n` as root, else `unshare -rn`)
that disappears with the command: this machine's own ruleset and network are never touched.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tools_available import find_tool, require_tool, unavailable

from network_isolation.render import TABLE_FAMILY, TABLE_NAME


@functools.cache
def _netns_prefix() -> tuple[str, ...] | None:
    unshare = find_tool("unshare")
    if unshare is None:
        return None
    # As root, a plain new network namespace: nft can then size its netlink socket for big
    # batches (in a user namespace, sets of ~10,000 subnets fail with "Message too long").
    candidates = [(unshare, "-n"), (unshare, "-rn")] if os.geteuid() == 0 else [(unshare, "-rn")]
    for prefix in candidates:
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return prefix
    return None


def netns_prefix() -> tuple[str, ...]:
    """How to run a command in a new, empty network namespace (or skip/fail)."""
    require_tool("unshare")
    require_tool("nft")
    prefix = _netns_prefix()
    if prefix is None:
        unavailable("cannot create a network namespace here (`unshare -rn` and `unshare -n` fail)")
    return prefix


def run_in_netns(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a fresh network namespace that disappears with it."""
    return subprocess.run(
        [*netns_prefix(), "sh", "-euc", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def nft_exercise(ruleset: str, off: str | None = None, interfaces: Iterable[str] = ()) -> None:
    """Check and load a ruleset for real in a fresh namespace, where another table exists.

    `nft -c -f`, then `nft -f` twice (the second load replaces an existing table), then the
    `off` ruleset removes our table and only ours; loading `off` again works without it.
    """
    nft = require_tool("nft")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "nftables.conf")
        path.write_text(ruleset)
        lines = [
            f"{nft} add table inet other",
            f"{nft} 'add chain inet other input {{ type filter hook input priority 0; }}'",
        ]
        for n, name in enumerate(sorted(set(interfaces))):
            lines.append(f"ip link add '{name}' type veth peer name nip{n}")
        lines += [f"{nft} -c -f {path}", f"{nft} -f {path}", f"{nft} -f {path}"]
        if f"table {TABLE_FAMILY} {TABLE_NAME} {{" in ruleset:
            lines.append(f"{nft} list table {TABLE_FAMILY} {TABLE_NAME} >/dev/null")
        else:  # the `off` ruleset: nothing of ours remains
            lines.append(f"! {nft} list table {TABLE_FAMILY} {TABLE_NAME} 2>/dev/null")
        if off is not None:
            off_path = Path(tmp, "off.conf")
            off_path.write_text(off)
            lines += [
                f"{nft} -f {off_path}",
                f"! {nft} list table {TABLE_FAMILY} {TABLE_NAME} 2>/dev/null",
                f"{nft} -f {off_path}",
            ]
        lines.append(f"{nft} list table inet other >/dev/null")
        result = run_in_netns("\n".join(lines))
    assert result.returncode == 0, f"nft refused the ruleset:\n{result.stderr}\n{ruleset}"


def nft_rule_count(ruleset: str) -> int:
    """The number of rules the kernel holds in our table after loading the ruleset."""
    nft = require_tool("nft")
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write(ruleset)
        f.flush()
        result = run_in_netns(
            f"{nft} -f {f.name}\n{nft} -j list table {TABLE_FAMILY} {TABLE_NAME}"
        )
    if "Message too long" in result.stderr and "-rn" in netns_prefix():
        unavailable(
            "nft cannot size its netlink socket for this batch in a user namespace"
            " (`unshare -rn`): run the tests as root"
        )
    assert result.returncode == 0, result.stderr
    return sum(1 for item in json.loads(result.stdout)["nftables"] if "rule" in item)
