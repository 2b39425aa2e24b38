"""Our nftables table: check, load, list, drift, counters and removal.

The ruleset replaces our table, and nothing else, in one `nft -f` transaction; the confirmed
ruleset is kept for the boot unit, and a listing of the live table for drift checks.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .outcomes import ApplyError, HostError, InvalidArtefactsError
from .system import System, as_mapping, first_error, read_text, write_atomically

# The same names as render.TABLE_FAMILY and render.TABLE_NAME (a unit test checks it): the host
# package must not depend on the renderer to remove what it applied.
TABLE_FAMILY, TABLE_NAME = "inet", "network_isolation"
# Replaces our table with nothing, whether or not it exists (nft 1.0.6 has no `destroy`).
REMOVAL_RULESET = f"table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"

_OUR_STATEMENT = re.compile(
    r"^(?:(?:add|create|delete|flush|insert|replace|reset)\s+)?"
    r"(?:table|chain|rule|set|map|element|counter|quota|limit|flowtable)\s+"
    rf"{TABLE_FAMILY}\s+{TABLE_NAME}(?:\s|$)"
)


def _code(ruleset: str) -> str:
    """The batch without comments, and with every quoted string emptied (`""`)."""
    out: list[str] = []
    quoted = comment = False
    for char in ruleset.replace("\\\n", " "):
        if comment:
            comment = char != "\n"
        elif quoted:
            quoted = char != '"'
        else:
            comment = char == "#"
            quoted = char == '"'
        if not comment and (not quoted or char == '"'):
            out.append(char)
    return "".join(out)


def _top_level(ruleset: str) -> tuple[list[str], bool]:
    """The batch's top-level statements as nft reads them, and whether it has an `include`.

    Comments and quoted strings are skipped; a block (`{ ... }`) is one statement with its
    opening line; a newline or a `;` outside any block ends a statement, whatever the
    indentation.
    """
    code = _code(ruleset)
    statements: list[str] = []
    current: list[str] = []
    depth = 0
    for char in code:
        if char in "{}":
            if depth == 0 and char == "{":
                current.append(" {")
            depth = depth + 1 if char == "{" else max(depth - 1, 0)
        elif depth == 0 and char in "\n;":
            statements.append("".join(current).strip())
            current = []
        elif depth == 0:
            current.append(char)
    statements.append("".join(current).strip())
    has_include = re.search(r"(?:^|[\s;{}])include\b", code) is not None
    return [s for s in statements if s], has_include


def _foreign_statements(ruleset: str) -> list[str]:
    """Top-level statements that name anything but our table.

    `flush ruleset`, another table, an `include` (anywhere): the ruleset must replace our
    table and nothing else.
    """
    statements, has_include = _top_level(ruleset)
    foreign = [" ".join(s.split()) for s in statements if not _OUR_STATEMENT.match(s)]
    return foreign + (["include"] if has_include else [])


class Table:
    """Our table `inet network_isolation` in the kernel, and its files in the state directory.

    - `ruleset.nft`: the confirmed ruleset, the one the boot unit loads (0600);
    - `live.nft`: `nft -s list table` right after the last confirmed apply, for drift checks;
    - `pending.nft`: during an apply only, the ruleset being loaded.
    """

    def __init__(self, system: System, state: Path):
        self.system = system
        self.state = state
        self.ruleset_file = state / "ruleset.nft"
        self.live_file = state / "live.nft"
        self.pending_file = state / "pending.nft"

    def confirmed(self) -> str | None:
        """The ruleset of the last confirmed apply; None when there is none."""
        return read_text(self.ruleset_file)

    def check(self, ruleset: str) -> None:
        """Our table and nothing else, accepted by `nft -c`; InvalidArtefactsError if not."""
        foreign = _foreign_statements(ruleset)
        if foreign:
            raise InvalidArtefactsError(
                f"the ruleset reaches beyond table {TABLE_FAMILY} {TABLE_NAME}: {foreign[0]}",
                stage="validate-nftables",
            )
        with tempfile.TemporaryDirectory(prefix="network-isolation-check-") as tmp:
            path = Path(tmp) / "ruleset.nft"
            path.write_text(ruleset)
            result = self.system.run(self.system.tools.nft, "-c", "-f", str(path))
            if result.returncode != 0:
                why = first_error(result.stderr + result.stdout, strip=[f"{tmp}/"])
                raise InvalidArtefactsError(
                    f"nftables ruleset rejected: {why}", stage="validate-nftables"
                )

    def stage(self, ruleset: str) -> None:
        """Write the ruleset an apply is about to load (`pending.nft`)."""
        write_atomically(self.pending_file, ruleset, 0o600)

    def load(self) -> None:
        """Replace our table in one transaction, from `pending.nft`; ApplyError if refused."""
        result = self.system.run(self.system.tools.nft, "-f", str(self.pending_file))
        if result.returncode != 0:
            why = first_error(result.stderr + result.stdout, strip=[f"{self.state}/"])
            raise ApplyError(f"nft -f failed: {why}", stage="load")

    def restore(self, snapshot: Path) -> str | None:
        """Load a saved ruleset back; what went wrong, or None."""
        result = self.system.run(self.system.tools.nft, "-f", str(snapshot))
        if result.returncode != 0:
            return f"nft -f: {first_error(result.stderr)}"
        return None

    def commit(self) -> None:
        """Make the pending ruleset the confirmed one and record the live table for drift."""
        os.replace(self.pending_file, self.ruleset_file)
        write_atomically(self.live_file, _normalise(self._list("-s")), 0o600)

    def _list(self, *flags: str) -> str | None:
        """`nft FLAGS list table` of our table; None when the table does not exist."""
        tools = self.system.tools
        result = self.system.run(tools.nft, *flags, "list", "table", TABLE_FAMILY, TABLE_NAME)
        if result.returncode == 0:
            return result.stdout
        if "No such file or directory" in result.stderr:
            return None
        raise HostError(f"nft list table: {first_error(result.stderr + result.stdout)}")

    def drift(self) -> str | None:
        """Why the live table differs from the last confirmed apply; None when it does not.

        One read-only command (`nft -s list table`, stateless: counter values left out).
        Nothing applied yet (no record) is never drift.
        """
        recorded = read_text(self.live_file)
        if recorded is None:
            return None
        live = _normalise(self._list("-s"))
        if live == recorded:
            return None
        if not live:
            return f"table {TABLE_FAMILY} {TABLE_NAME} is missing"
        if not recorded:
            return f"table {TABLE_FAMILY} {TABLE_NAME} exists but enforcement is off"
        return f"table {TABLE_FAMILY} {TABLE_NAME} differs from the applied ruleset"

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets and bytes of each named counter (and of each commented rule's counter)."""
        tools = self.system.tools
        result = self.system.run(tools.nft, "-j", "list", "table", TABLE_FAMILY, TABLE_NAME)
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                return {}
            raise HostError(f"nft -j list table: {first_error(result.stderr + result.stdout)}")
        try:
            items: object = json.loads(result.stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as e:
            raise HostError(f"nft -j list table: unreadable output: {e}") from e
        return counters_of(items)

    def remove(self) -> list[str]:
        """Delete our table from the kernel; what went wrong, if anything."""
        with tempfile.NamedTemporaryFile(
            "w", prefix="network-isolation-remove-", suffix=".nft"
        ) as f:
            f.write(REMOVAL_RULESET)
            f.flush()
            result = self.system.run(self.system.tools.nft, "-f", f.name)
            if result.returncode != 0:
                return [f"nft -f: {first_error(result.stderr)}"]
        return []


def _normalise(listing: str | None) -> str:
    """A table listing without blank lines or trailing spaces ("" when there is no table)."""
    if listing is None:
        return ""
    return "".join(line.rstrip() + "\n" for line in listing.splitlines() if line.strip())


def counters_of(items: object) -> dict[str, dict[str, int]]:
    """Named counter objects, and anonymous counters of commented rules (summed per comment).

    `items` is the `nftables` list of `nft -j` output (the host's, the benchmark's, the tests').
    """
    counters: dict[str, dict[str, int]] = {}
    for item in [as_mapping(i) for i in items] if isinstance(items, list) else []:
        named = as_mapping(item.get("counter"))
        if "name" in named:
            counters[str(named["name"])] = _packets_bytes(named)
            continue
        rule = as_mapping(item.get("rule"))
        comment = rule.get("comment")
        expressions = rule.get("expr")
        if not comment or not isinstance(expressions, list):
            continue
        for expression in [as_mapping(e) for e in expressions]:
            if "counter" in expression and isinstance(expression["counter"], dict):
                seen = _packets_bytes(as_mapping(expression["counter"]))
                total = counters.setdefault(str(comment), {"packets": 0, "bytes": 0})
                total["packets"] += seen["packets"]
                total["bytes"] += seen["bytes"]
    return counters


def _packets_bytes(counter: dict[str, object]) -> dict[str, int]:
    packets, size = counter.get("packets", 0), counter.get("bytes", 0)
    return {
        "packets": packets if isinstance(packets, int) else 0,
        "bytes": size if isinstance(size, int) else 0,
    }
