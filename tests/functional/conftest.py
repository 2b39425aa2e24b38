"""Fixtures of the functional tests: prerequisites, rendered rulesets, and the matrix report.

A missing prerequisite skips the test with what to install; under CI (`CI=true`) it fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .matrix import SUMMARIES, Matrix
from .testbed import missing_prerequisites

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MAAS = EXAMPLES / "microstack-maas.yaml"
SINGLE = EXAMPLES / "single-space.yaml"


def in_ci() -> bool:
    """Whether this run is CI's, where nothing may be skipped."""
    return os.environ.get("CI", "").lower() == "true"


def need(message: str) -> None:
    """Skip (or fail, in CI) because something the test needs is missing."""
    if in_ci():
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def need_tool(command: str, package: str) -> str:
    """The path of a command the test drives; skip (fail in CI) naming its package if missing."""
    found = shutil.which(command)
    if found is None:
        need(f"{command} is missing: install the Debian package {package}")
        raise AssertionError  # unreachable: need() skips or fails
    return found


@pytest.fixture(scope="session")
def prerequisites() -> None:
    """nft, ip and a way to make namespaces (unshare without root, or root)."""
    problem = missing_prerequisites()
    if problem:
        need(problem)


def render_available() -> bool:
    """Whether the renderer (src/network_isolation/render.py) exists yet."""
    return importlib.util.find_spec("network_isolation.render") is not None


def render_dir(topology: Path, out: Path) -> Path:
    """Run `plan TOPOLOGY --render-dir OUT`, the code path the charm's artefacts come from."""
    if not render_available():
        need("src/network_isolation/render.py is missing: nothing to load into the bed yet")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "network_isolation.cli", str(topology), "--render-dir", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if "--render-dir" in proc.stderr and proc.returncode == 2:
        need(f"the plan command has no --render-dir yet: {proc.stderr.strip()}")
    machines = yaml.safe_load(topology.read_text()).get("machines", {})
    missing = [m for m in machines if not (out / m / "nftables.conf").is_file()]
    if proc.returncode not in (0, 1) or missing:
        pytest.fail(
            f"{' '.join(argv)} exited {proc.returncode} without rendering"
            f" {', '.join(missing) or 'every machine'}:\n{proc.stderr}"
        )
    return out


def variant(
    topology: Path, out: Path, *, machines: Iterable[str] | None = None, **config: str | bool
) -> Path:
    """A copy of a topology file with some config options set (e.g. enforcement=audit).

    With `machines`, only those machines of it, in that order.
    """
    data: dict[str, Any] = yaml.safe_load(topology.read_text())
    if machines is not None:
        data["machines"] = {name: data["machines"][name] for name in machines}
    data.setdefault("config", {}).update(config)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory, prerequisites: None) -> Callable[..., Path]:
    """Rendered rulesets of a topology (optionally with config overrides), cached per run."""
    cache: dict[tuple[Path, tuple[tuple[str, str], ...]], Path] = {}

    def get(topology: Path, **config: str) -> Path:
        key = (topology, tuple(sorted(config.items())))
        if key not in cache:
            base = tmp_path_factory.mktemp(re.sub(r"\W", "-", topology.stem))
            source = variant(topology, base / topology.name, **config) if config else topology
            cache[key] = render_dir(source, base / "render")
        return cache[key]

    return get


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Matrix], None]:
    """Print a matrix (pytest shows it on failure), keep it in a file, note its size."""
    directory = tmp_path_factory.mktemp("matrix")

    def show(matrix: Matrix) -> None:
        text = matrix.table()
        print(text)
        path = directory / (re.sub(r"[^\w.-]+", "_", matrix.title) + ".txt")
        path.write_text(text + "\n")
        SUMMARIES.append(f"{matrix.summary()}\n    full matrix: {path}")

    return show


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The size of every matrix checked, for the README."""
    if SUMMARIES:
        terminalreporter.section("network isolation matrices")
        for line in SUMMARIES:
            terminalreporter.write_line(line)
