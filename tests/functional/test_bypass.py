"""Host.packet_bypasses finds real XDP and tc BPF programs attached in a network namespace.

The programs (`bpf/pass.s`, assembled into `bpf/pass.o`) let every packet through; they are
attached with the real `ip` and `tc`, and read back with the real `ip`, `tc` and `bpftool`:

- `xdp0`: XDP in the veth driver; `xdpg0`: XDP in generic mode;
- `tcin0`: an eBPF direct-action filter on clsact ingress (how Cilium attaches with tc);
- `cbpf0`: a classic BPF ingress filter;
- `tcout0`: an egress filter only, which runs after netfilter: not a bypass;
- `plain0`: nothing.

Not covered here: tcx attachments (Cilium on kernels 6.6+), which iproute2 6.1 cannot attach
and bpftool 7.1 cannot list; their parsing is unit-tested on bpftool's documented output.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from network_isolation.host import Host, SubprocessRunner, Tools

from .conftest import need
from .netns import in_netns, sh

NS = f"ni-bpf-{os.getpid()}"
PROGRAMS = Path(__file__).parent / "bpf" / "pass.o"
INTERFACES = ["xdp0", "xdpg0", "tcin0", "cbpf0", "tcout0", "plain0"]
EXPECTED = {
    ("xdp0", "xdp", "xdp_pass", "driver"),
    ("xdpg0", "xdp", "xdp_pass", "generic"),
    ("tcin0", "tc ingress", "cls", ""),
    ("cbpf0", "tc ingress", "classic BPF", ""),
}


def ns(*argv: str) -> None:
    sh("ip", "netns", "exec", NS, *argv)


@pytest.fixture(scope="module")
def bed() -> Iterator[str]:
    if os.geteuid() != 0:
        need("attaching BPF programs needs root")
    for tool in ("ip", "tc", "bpftool"):
        if not shutil.which(tool):
            need(
                f"{tool} is missing: install iproute2 and, on Debian, bpftool (on Ubuntu the"
                " running kernel's linux-tools-$(uname -r))"
            )
    sh("ip", "netns", "add", NS)
    try:
        for name in INTERFACES:
            ns("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
            ns("ip", "link", "set", name, "up")
            ns("ip", "link", "set", f"{name}p", "up")
        ns("ip", "link", "set", "dev", "xdp0", "xdpdrv", "obj", str(PROGRAMS), "sec", "xdp")
        ns("ip", "link", "set", "dev", "xdpg0", "xdpgeneric", "obj", str(PROGRAMS), "sec", "xdp")
        for name in ("tcin0", "cbpf0", "tcout0"):
            ns("tc", "qdisc", "add", "dev", name, "clsact")
        ns("tc", "filter", "add", "dev", "tcin0", "ingress", "bpf", "da", "obj", str(PROGRAMS),
           "sec", "tc")  # fmt: skip
        ns("tc", "filter", "add", "dev", "cbpf0", "ingress", "bpf", "bytecode",
           "1,6 0 0 4294967295,")  # fmt: skip
        ns("tc", "filter", "add", "dev", "tcout0", "egress", "bpf", "da", "obj", str(PROGRAMS),
           "sec", "tc")  # fmt: skip
        yield NS
    finally:
        sh("ip", "netns", "delete", NS, check=False)


def found(host: Host, interfaces: list[str]) -> set[tuple[str, str, str, str]]:
    bypasses = in_netns(NS, lambda: host.packet_bypasses(interfaces))
    return {(b.interface, b.hook, b.program, b.mode) for b in bypasses}


def test_every_attached_ingress_program_is_found_and_nothing_else(bed: str, tmp_path: Path):
    host = Host(tmp_path, SubprocessRunner())
    assert found(host, INTERFACES) == EXPECTED


def test_without_bpftool_ip_and_tc_find_the_same(bed: str, tmp_path: Path):
    host = Host(tmp_path, SubprocessRunner(), tools=Tools(bpftool=str(tmp_path / "no-bpftool")))
    assert found(host, INTERFACES) == EXPECTED


def test_only_the_interfaces_asked_about_are_reported(bed: str, tmp_path: Path):
    host = Host(tmp_path, SubprocessRunner())
    assert found(host, ["tcin0", "plain0", "absent0"]) == {("tcin0", "tc ingress", "cls", "")}
    assert found(host, []) == set()


def test_bpftool_alone_sees_the_xdp_and_ingress_programs(bed: str, tmp_path: Path):
    # ip and tc made to fail: what remains is bpftool's view (it names the object, not the
    # program, for tc filters, and cannot name a classic filter).
    broken = str(tmp_path / "missing")
    host = Host(tmp_path, SubprocessRunner(), tools=Tools(ip=broken, tc=broken))
    assert {(i, h) for i, h, _, _ in found(host, INTERFACES)} == {
        (i, h) for i, h, _, _ in EXPECTED
    }
