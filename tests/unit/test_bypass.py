"""The parser of what takes packets off an interface before netfilter, on recorded tool output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from network_isolation.bypass import (
    Bypass,
    BypassParseError,
    describe,
    from_bpftool_net,
    from_ip_link,
    from_tc_filters,
    merge,
    warning,
)
from network_isolation.host import Host, Result, Tools

RECORDED = Path(__file__).parent / "recorded" / "bpf"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def test_ip_link_finds_xdp_in_driver_and_generic_mode():
    found = from_ip_link(recorded("ip-link.json"))
    assert [(b.interface, b.hook, b.program, b.mode) for b in found] == [
        ("v1", "xdp", "xdp_pass", "driver"),
        ("v3", "xdp", "xdp_pass", "generic"),
    ]
    assert all(isinstance(b.program_id, int) for b in found)


def test_tc_finds_ebpf_and_classic_ingress_filters():
    found = from_tc_filters("v0", recorded("tc-ingress-v0.json"))
    assert sorted((b.program, b.program_id is None) for b in found) == [
        ("classic BPF", True),
        ("cls", False),
    ]
    assert {b.hook for b in found} == {"tc ingress"}


def test_tc_on_an_interface_with_egress_filters_only_finds_nothing():
    assert from_tc_filters("v2", recorded("tc-ingress-v2.json")) == []
    assert from_tc_filters("v2", "") == []


def test_bpftool_lists_xdp_and_ingress_but_not_egress():
    found = from_bpftool_net(recorded("bpftool.json"))
    assert sorted((b.interface, b.hook) for b in found) == [
        ("v0", "tc ingress"),
        ("v0", "tc ingress"),
        ("v1", "xdp"),
        ("v3", "xdp"),
    ]


def test_bpftool_tcx_attachments():
    # The shape bpftool 7.3+ prints for tcx (written from its source, net.c: tcx programs are
    # listed under "tc" with kind "tcx/ingress" and "prog_id"); not recorded here, where
    # bpftool 7.1 predates tcx.
    doc = [
        {
            "xdp": [],
            "tc": [
                {"devname": "enp2s0", "ifindex": 3, "kind": "tcx/ingress",
                 "name": "cil_from_netdev", "prog_id": 812, "prog_flags": [], "link_ids": []},
                {"devname": "enp2s0", "ifindex": 3, "kind": "tcx/egress",
                 "name": "cil_to_netdev", "prog_id": 813, "prog_flags": [], "link_ids": []},
            ],
            "flow_dissector": [],
            "netfilter": [],
        }
    ]  # fmt: skip
    assert from_bpftool_net(json.dumps(doc)) == [
        Bypass("enp2s0", "tcx ingress", "cil_from_netdev", 812)
    ]


def test_merge_keeps_one_entry_per_attachment_and_the_first_wording():
    tc = from_tc_filters("v0", recorded("tc-ingress-v0.json"))
    merged = merge(
        from_ip_link(recorded("ip-link.json")),
        tc,
        from_bpftool_net(recorded("bpftool.json")),
    )
    assert len(merged) == 4
    # tc names the program ("cls"); bpftool only the object file section ("prog.o:[tc]").
    assert {b.program for b in merged if b.interface == "v0"} == {"cls", "classic BPF"}


def test_merge_keeps_only_the_interfaces_asked_for():
    merged = merge(from_bpftool_net(recorded("bpftool.json")), interfaces=["v1", "enp9s0"])
    assert [b.interface for b in merged] == ["v1"]


def test_warning_names_each_interface_and_what_was_found():
    tc = from_tc_filters("v0", recorded("tc-ingress-v0.json"))
    text = warning(merge(from_ip_link(recorded("ip-link.json")), tc))
    assert text is not None
    assert "v0: tc ingress classic BPF, tc ingress cls" in text
    assert "v1: xdp xdp_pass" in text
    assert "v3: xdp xdp_pass" in text
    assert warning([]) is None


@pytest.mark.parametrize("text", ["{", '{"xdp": []}', "not json"])
def test_garbage_is_a_clear_error(text: str):
    with pytest.raises(BypassParseError):
        from_bpftool_net(text)


def test_str_and_dict_name_the_program():
    bypass = Bypass("enp2s0", "xdp", "xdp_lb", 7, "driver")
    assert str(bypass) == "enp2s0: xdp (driver) program xdp_lb id 7"
    assert bypass.as_dict()["program_id"] == 7


class RecordedMachine:
    """A runner answering with the recorded outputs; bpftool prints garbage."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> Result:
        self.calls.append(list(argv))
        if argv[0].endswith("ip"):
            return Result(0, recorded("ip-link.json"))
        if argv[0].endswith("tc"):
            name = argv[argv.index("dev") + 1]
            path = RECORDED / f"tc-ingress-{name}.json"
            return Result(0, path.read_text()) if path.exists() else Result(1, "", "no dev")
        return Result(0, "Error: garbage")


def test_host_reads_each_tool_once_and_skips_what_it_cannot_read(tmp_path: Path):
    bpftool = tmp_path / "bpftool"
    bpftool.touch()
    machine = RecordedMachine()
    host = Host(tmp_path, machine, tools=Tools(bpftool=str(bpftool)))
    found = host.packet_bypasses(["v0", "v1", "v9"])
    assert [(b.interface, b.program) for b in found] == [
        ("v0", "classic BPF"),
        ("v0", "cls"),
        ("v1", "xdp_pass"),
    ]
    assert [c[0] for c in machine.calls] == ["/sbin/ip", *["/sbin/tc"] * 3, str(bpftool)]
    assert host.packet_bypasses([]) == []


def test_describe_lists_one_program_a_line_or_says_there_is_none():
    found = from_ip_link(recorded("ip-link.json"))
    assert describe(found).splitlines() == [str(b) for b in sorted(found)]
    assert describe([]) == "none found on the space interfaces"
