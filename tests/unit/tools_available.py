"""Which of the real tools the render tests drive (nft, netplan, unshare) this machine has.

A test that needs a missing tool is skipped with the Debian package to install, or fails under
`CI=true`, where nothing may be skipped. The sbin directories count even when they are not on
PATH.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

# command -> the Debian package that provides it
TOOL_PACKAGES = {"nft": "nftables", "netplan": "netplan.io", "unshare": "util-linux"}
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def find_tool(command: str) -> str | None:
    """The tool's path; sbin directories count even when they are not on PATH."""
    for directory in SBIN:
        path = Path(directory, command)
        if path.exists():
            return str(path)
    return shutil.which(command)


def unavailable(message: str) -> NoReturn:
    """Skip the test for what this machine lacks, or fail it under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def missing_tool(command: str) -> NoReturn:
    """Skip (or fail under CI=true) naming the Debian package that provides the tool."""
    unavailable(
        f"'{command}' is not installed: install the Debian package"
        f" '{TOOL_PACKAGES.get(command, command)}' (apt-get install"
        f" {TOOL_PACKAGES.get(command, command)})"
    )


def require_tool(command: str) -> str:
    """The tool's path, or skip/fail the test."""
    path = find_tool(command)
    if path is None:
        missing_tool(command)
    return path
