"""The charm's per-hook state (src/state.py): read once per hook, and the outcome's status."""

from __future__ import annotations

import dataclasses
from typing import Any

import ops
import pytest
from ops import testing

import charm
import state as state_module
from cluster import Woken
from outcome import Outcome
from state import HookState
from tests.charm_context import context


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, bool], HookState]]:
    """Every state the charm reads, with what it asked for."""
    seen: list[tuple[dict[str, bool], HookState]] = []
    original = state_module.read_state

    def counted(*args: Any, **asked: bool) -> HookState:
        read = original(*args, **asked)
        seen.append((asked, read))
        return read

    monkeypatch.setattr(charm, "read_state", counted)
    return seen


def hook_state(make_networks, distinct_layout, **config: str | bool) -> testing.State:
    return testing.State(
        networks=make_networks(distinct_layout),
        relations=[testing.SubordinateRelation("compute-node", remote_app_name="hypervisor")],
        config=dict(config),
    )


def run(event: str, st: testing.State) -> testing.State:
    ctx = context()
    return ctx.run(getattr(ctx.on, event)(), st)


@pytest.mark.parametrize("event", ["config_changed", "update_status", "start"])
def test_every_hook_reads_its_state_once(reads, make_networks, distinct_layout, event: str):
    run(event, hook_state(make_networks, distinct_layout))
    assert len(reads) == 1
    asked, read = reads[0]
    reconciles = event != "start"
    assert asked.get("artefacts", False) == reconciles
    assert asked.get("woken", Woken()) == Woken(), "no peer woke it: the leader reads none"
    assert (read.artefacts is not None) == reconciles
    assert read.plan.roles == ("compute",)


def test_a_hook_that_only_reports_does_not_read_the_principals_ports(
    reads, make_networks, distinct_layout
):
    run("start", hook_state(make_networks, distinct_layout, **{"strict-ports": True}))
    [(_, read)] = reads
    assert read.own_ports is None and read.declared is None and read.artefacts is None


def test_the_status_puts_the_plan_first_and_the_inputs_problems_before_the_hooks_warnings(
    reads, make_networks, distinct_layout
):
    run("config_changed", hook_state(make_networks, distinct_layout))
    [(_, read)] = reads
    assert isinstance(read.plan.message, str) and read.plan.status == "active"
    noted = dataclasses.replace(read, problems=("ignored data from ni/3",))
    outcome = Outcome(warnings=["drift repaired"])
    assert outcome.status(noted) == ops.ActiveStatus(
        f"{read.plan.message}; ignored data from ni/3"
    )
    assert Outcome(blocked="apply failed").status(noted) == ops.BlockedStatus("apply failed")
    assert Outcome(waiting="turn 2/3").status(read) == ops.WaitingStatus("turn 2/3")
    blocked_plan = dataclasses.replace(
        read, plan=read.plan.model_copy(update={"status": "blocked", "message": "no role"})
    )
    assert Outcome(blocked="apply failed", warnings=["w"]).status(
        blocked_plan
    ) == ops.BlockedStatus("no role; w")
