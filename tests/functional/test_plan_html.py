"""`plan --format html` in a real headless Chromium: the page loads clean and shows the grid."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from .browser import Browser, chromium
from .conftest import MAAS, ROOT, SINGLE, need

ALLOWED_RGB = (0xC8, 0xE6, 0xC9)
DENIED_RGB = (0xFF, 0xCD, 0xD2)
SHARED_RGB = (0xEC, 0xEF, 0xF1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = chromium()
    if binary is None:
        need(
            "no headless Chromium: on Debian 12 `apt-get install chromium`; Ubuntu 24.04 has"
            " Chromium only as a snap (`snap install chromium`); then"
            " `tox -e functional -- tests/functional/test_plan_html.py`"
        )
        raise AssertionError  # unreachable: need() skips or fails
    with Browser(binary) as page:
        yield page


def plan_html(topology: Path, out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-m", "network_isolation.cli", str(topology), "--format", "html"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    out.write_text(proc.stdout)
    return out


def plan_json(topology: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-m", "network_isolation.cli", str(topology), "--format", "json"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    return json.loads(proc.stdout)


def pixels(png: bytes, rgb: tuple[int, int, int]) -> int:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height) or []
    return sum(count for count, colour in colours if colour == rgb)


def grid_cells(page: Browser) -> dict[str, dict[str, str]]:
    """Each machine's cell class per network, as the browser laid the grid out."""
    return page.evaluate(
        """Object.fromEntries([...document.querySelectorAll('#grid tr.machine-row')].map(
            r => [r.id.replace('machine-', ''), Object.fromEntries(
                [...r.querySelectorAll('td[data-network]')].map(
                    c => [c.dataset.network, c.className]))]))"""
    )


@pytest.mark.parametrize("topology", [MAAS, SINGLE], ids=["microstack-maas", "single-space"])
def test_plan_page_loads_clean_and_shows_the_grid(
    browser: Browser, tmp_path: Path, topology: Path
) -> None:
    page = plan_html(topology, tmp_path / f"{topology.stem}.html")
    browser.problems.clear()
    browser.open(page)
    assert browser.problems == []
    plan = plan_json(topology)
    cells = grid_cells(browser)
    assert set(cells) == set(plan["machines"])
    for machine, item in plan["machines"].items():
        for network, view in item["networks"].items():
            expected = "allowed" if view["access"] else "denied"
            assert cells[machine][network].startswith(expected), (machine, network)
    assert (
        browser.evaluate("document.getElementById('isolation-level').textContent")
        == (plan["isolation"]["level"])
    )
    # the grid is on screen: its cells' colours fill a good part of the screenshot
    top = browser.evaluate("document.getElementById('grid').getBoundingClientRect().top")
    assert 0 < top < browser.height / 2
    png = browser.screenshot()
    (tmp_path / f"{topology.stem}.png").write_bytes(png)
    print(f"screenshot: {tmp_path / f'{topology.stem}.png'}")
    assert pixels(png, ALLOWED_RGB) > 20_000
    states = {state for row in cells.values() for state in row.values()}
    if "denied" in states:
        assert pixels(png, DENIED_RGB) > 20_000
    if "denied-shared" in states:
        assert pixels(png, SHARED_RGB) > 20_000


def test_ruleset_is_one_click_away(browser: Browser, tmp_path: Path) -> None:
    browser.open(plan_html(MAAS, tmp_path / "maas.html"))
    hidden = browser.evaluate(
        "document.querySelector('#machine-compute-1 + tr.detail details').open"
    )
    assert hidden is False
    browser.evaluate(
        "document.querySelector('#machine-compute-1 + tr.detail details > summary').click()"
    )
    browser.evaluate(
        "document.querySelector('#machine-compute-1 + tr.detail details details > summary')"
        ".click()"
    )
    text = browser.evaluate(
        "document.querySelector('#machine-compute-1 + tr.detail details details pre').innerText"
    )
    assert "table inet network_isolation {" in text
    assert "compute-1" in text


def test_blocked_machine_shows_as_blocked(browser: Browser, tmp_path: Path) -> None:
    data = yaml.safe_load(MAAS.read_text())
    del data["machines"]["compute-1"]["interfaces"]["enp5s0"]  # compute needs data
    topology = tmp_path / "blocked.yaml"
    topology.write_text(yaml.safe_dump(data))
    browser.problems.clear()
    browser.open(plan_html(topology, tmp_path / "blocked.html"))
    assert browser.problems == []
    assert grid_cells(browser)["compute-1"]["data"] == "blocked"
    assert "blocked" in browser.evaluate("document.getElementById('machine-compute-1').className")


def test_console_errors_are_caught(browser: Browser, tmp_path: Path) -> None:
    """The check above can fail: a page that loads something external is reported."""
    page = tmp_path / "bad.html"
    page.write_text(
        (ROOT / "templates" / "plan.html.j2").read_text().split("<body>")[0]
        + '<body><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script></body>'
    )
    browser.problems.clear()
    browser.open(page)
    assert browser.problems, "a blocked image and an inline script must be reported"
