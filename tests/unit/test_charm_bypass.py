"""BPF programs that see a space interface's packets before netfilter: status and show-plan."""

from __future__ import annotations

import json

import ops
import pytest
from fake_host import FakeHost
from ops import testing

from network_isolation.bypass import Bypass
from tests.charm_context import context

CILIUM = Bypass("enp2s0", "tcx ingress", "cil_from_netdev", 812)
ELSEWHERE = Bypass("lxdbr0", "xdp", "xdp_lb", 9, "driver")  # not a space interface
SPACE_NICS = ("enp1s0", "enp2s0", "enp3s0", "enp4s0", "enp5s0", "enp6s0")


@pytest.fixture
def control(make_networks, distinct_layout) -> testing.State:
    relation = testing.SubordinateRelation("control-node", remote_app_name="k8s")
    return testing.State(networks=make_networks(distinct_layout), relations=[relation])


def asked(fake_host: type[FakeHost]) -> list[tuple[str, ...]]:
    return [args for name, args in fake_host.calls if name == "packet_bypasses"]


def test_update_status_names_the_interface_and_the_program_and_stays_active(
    control: testing.State, fake_host: type[FakeHost]
):
    fake_host.bypasses = [CILIUM, ELSEWHERE]
    ctx = context()
    out = ctx.run(ctx.on.update_status(), control)
    assert isinstance(out.unit_status, ops.ActiveStatus), out.unit_status
    assert "BPF before netfilter" in out.unit_status.message
    assert "enp2s0: tcx ingress cil_from_netdev" in out.unit_status.message
    assert "lxdbr0" not in out.unit_status.message
    assert asked(fake_host) == [SPACE_NICS]


def test_the_warning_outlives_the_hook_that_found_it_and_goes_when_the_program_does(
    control: testing.State, fake_host: type[FakeHost]
):
    fake_host.bypasses = [CILIUM]
    ctx = context()
    out = ctx.run(ctx.on.update_status(), control)
    fake_host.calls.clear()
    out = ctx.run(ctx.on.config_changed(), out)
    assert "cil_from_netdev" in out.unit_status.message
    assert asked(fake_host) == []  # only update-status and show-plan look

    fake_host.bypasses = []
    out = ctx.run(ctx.on.update_status(), out)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "BPF" not in out.unit_status.message


def test_no_program_no_warning(control: testing.State, fake_host: type[FakeHost]):
    ctx = context()
    out = ctx.run(ctx.on.update_status(), control)
    assert isinstance(out.unit_status, ops.ActiveStatus)
    assert "BPF" not in out.unit_status.message


def test_show_plan_lists_the_programs_as_text_and_json(
    control: testing.State, fake_host: type[FakeHost]
):
    fake_host.bypasses = [CILIUM, ELSEWHERE]
    ctx = context()
    ctx.run(ctx.on.action("show-plan", params={"format": "text"}), control)
    assert ctx.action_results is not None
    assert ctx.action_results["bypasses"] == "enp2s0: tcx ingress program cil_from_netdev id 812"

    ctx.run(ctx.on.action("show-plan", params={"format": "json"}), control)
    assert ctx.action_results is not None
    assert json.loads(ctx.action_results["bypasses"]) == [
        {
            "interface": "enp2s0",
            "hook": "tcx ingress",
            "program": "cil_from_netdev",
            "program_id": 812,
            "mode": "",
        }
    ]

    fake_host.bypasses = []
    ctx.run(ctx.on.action("show-plan", params={"format": "text"}), control)
    assert ctx.action_results is not None
    assert ctx.action_results["bypasses"] == "none found on the space interfaces"
