#!/usr/bin/env python3
"""Regenerate the golden files of the render tests (tests/unit/dumps/).

    python tools/regen_dumps.py          # rewrite dumps/ from the current code and templates
    python tools/regen_dumps.py --check  # exit 1 and list what differs, write nothing

Run it with the unit environment's interpreter (it needs pydantic, jinja2 and PyYAML), e.g.
`tox exec -e unit -- python tools/regen_dumps.py`. Review the diff before committing: every
change to a golden file is a change to what lands on the hosts.

The cases are defined in tests/unit/goldens.py: both example topologies, every
combination of the guide's roles, a partly isolated cloud on VLANs/bonds/bridges, the audit,
off and no-routing variants, and strict-ports (both examples, and a variant with extra-ports).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# tests/unit: the golden cases import the helpers beside them as the unit tests do.
for entry in (ROOT / "src", ROOT / "tests" / "unit", ROOT):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from tests.unit.goldens import DUMPS, golden_files, stored_files  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or check) every golden file; remove the ones no case produces any more."""
    parser = argparse.ArgumentParser(description="Regenerate the render golden files.")
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    expected = golden_files()
    stored = stored_files()
    changed = sorted(p for p, text in expected.items() if stored.get(p) != text)
    stale = sorted(set(stored) - set(expected))
    if args.check:
        for path in changed:
            print(f"differs: {path}")
        for path in stale:
            print(f"stale: {path}")
        return 1 if changed or stale else 0
    for path in changed:
        target = DUMPS / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(expected[path])
    for path in stale:
        (DUMPS / path).unlink()
    for directory in sorted(DUMPS.rglob("*"), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    print(f"{len(expected)} golden files, {len(changed)} written, {len(stale)} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
