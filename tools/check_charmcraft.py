#!/usr/bin/env python3
"""Validate charmcraft.yaml with charmcraft's own project model, without packing.

`charmcraft pack` only runs on the charm's own Ubuntu base; its pydantic model checks the
same schema anywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def main(path: str) -> int:
    """Exit 0 when charmcraft accepts the file, else print why and exit 1."""
    from charmcraft import parts
    from charmcraft.models.project import CharmcraftProject

    parts.setup_parts()
    data = yaml.safe_load(Path(path).read_text())
    try:
        project = CharmcraftProject.unmarshal(data)
    except Exception as e:  # charmcraft raises several error types; all mean "invalid"
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    print(f"{path}: valid {project.type} '{project.name}'")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "charmcraft.yaml"))
