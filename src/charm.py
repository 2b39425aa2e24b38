#!/usr/bin/env python3
"""Juju glue: read the hook's state, apply its artefacts via Host, report the outcome."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

import ops
from network_isolation_interface import NetworkIsolationRequirer

from cluster import NO_PEER, PEER_ENDPOINT, Cluster, FoldStore, Woken, woken_by
from cos_agent import CosAgent, scrape_target
from network_isolation import bypass
from network_isolation.base import Enforcement
from network_isolation.config import ConfigError
from network_isolation.host import (
    ApplyError,
    ExporterSpec,
    Host,
    HostError,
    MachineRegistry,
    PortInUseError,
    ProbeTarget,
    controller_targets,
    fingerprint,
    gateway_target,
    state_dir,
)
from network_isolation.model import Network
from network_isolation.observed import PlanSummary
from network_isolation.peers import dump
from network_isolation.render import Artefacts, render
from network_isolation.report import machine_dict, machine_text
from network_isolation.report_html import cloud_html
from network_isolation.rollout import Roll, UnitReport, generation
from network_isolation.rollout_report import rollout_status, rollout_summary, rollout_text
from network_isolation.turn import HookFacts, Turn, decide, forms_to_render
from outcome import STATUS_CLASSES, Outcome
from state import ROLE_ENDPOINTS, HookState, Sources, read_config, read_state, related_roles

logger = logging.getLogger(__name__)


class NetworkIsolationCharm(ops.CharmBase):
    """Subordinate that derives a machine's network access from its node roles."""

    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        # kept between hooks: the last BPF warning (update-status), and what a non-leader's last
        # full reconcile rested on besides its own inputs (see `_quiet`)
        self._stored.set_default(bypass_warning="", settled="")
        self.registry = MachineRegistry(state_dir() / "units")
        self.host = Host(state=state_dir())
        self.service_ports = NetworkIsolationRequirer(self, endpoint="service-ports")
        self.cos_agent = CosAgent(self)
        self.sources = Sources(self.service_ports, self.registry, self.host)
        self.cluster = Cluster(self, FoldStore(self))  # this hook's side of the peer relation
        self.outcome = Outcome()
        self._state: HookState | None = None  # read once per hook, by its first reader
        self._applied: str | None = None  # what this hook's apply did, if it applied
        self._quiet_hook = False  # this hook returned early: nothing it reads changed
        reconcile_on = [
            self.on.config_changed,
            self.on.upgrade_charm,
            self.on.leader_elected,
            self.on.cluster_relation_joined,
            self.on.cluster_relation_changed,
            self.on.cluster_relation_departed,
        ]
        for endpoint in ROLE_ENDPOINTS:
            reconcile_on += [
                self.on[endpoint].relation_joined,
                self.on[endpoint].relation_changed,
                self.on[endpoint].relation_departed,
                self.on[endpoint].relation_broken,
            ]
        reconcile_on.append(self.service_ports.on.ports_changed)
        reconcile_on += [
            self.on["cos-agent"].relation_joined,
            self.on["cos-agent"].relation_changed,
        ]
        for event in reconcile_on:
            framework.observe(event, self._reconcile)
        framework.observe(self.on.install, self._on_install)
        framework.observe(self.on.update_status, self._on_update_status)
        framework.observe(self.on.remove, self._on_remove)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)
        framework.observe(self.on.show_plan_action, self._on_show_plan)
        framework.observe(self.on.show_counters_action, self._on_show_counters)
        framework.observe(self.on.reapply_action, self._on_reapply)
        framework.observe(self.on.resume_rollout_action, self._on_resume_rollout)
        framework.observe(self.on.rollout_status_action, self._on_rollout_status)
        framework.observe(self.on.collect_app_status, self._on_collect_app_status)

    # Events

    def _on_install(self, event: ops.InstallEvent) -> None:
        try:
            self.host.install_prerequisites()
        except HostError as e:
            self.outcome.blocked = f"cannot install nftables: {e}"
            return
        self._reconcile(event)

    def _on_update_status(self, event: ops.UpdateStatusEvent) -> None:
        """Reconcile, look for BPF before netfilter, then repair drift of our table."""
        self.cluster.note_update_status()
        self._reconcile(event)
        if self._state is not None:
            self._packet_bypasses(self._state)
        if self.outcome.blocked or self.outcome.waiting:
            return
        controllers = controller_targets(os.environ.get("JUJU_API_ADDRESSES"))
        try:
            repaired = self.host.repair_drift(self._with_gateways(controllers))
        except (ApplyError, HostError) as e:
            self.outcome.blocked = f"drift repair failed: {e}"
            return
        if repaired:
            self.outcome.warnings.append(f"drift repaired: {repaired}")

    def _reconcile(
        self, event: ops.EventBase, *, force: bool = False, resume: bool = False
    ) -> None:
        """Read the hook's inputs once, decide this unit's turn once, act, publish once.

        A machine that has never enforced loads the audit form at once and the enforcing form
        when its wave opens; otherwise a unit waits for a wave that holds it, applies (or finds
        nothing to do) and reports once on the rollout (`network_isolation.turn` decides).
        """
        if self._quiet(event):
            return
        self._stored.settled = ""
        try:
            # before anything, even a wait for this unit's wave: an unconfirmed change is live
            self.host.recover_unconfirmed()
        except HostError as e:
            self.outcome.blocked = f"cannot restore an unconfirmed apply: {e}"
            return
        try:
            state = self._read(woken=woken_by(event), declarations=True, artefacts=True)
        except ConfigError:
            self.registry.record(self.unit.name, related_roles(self))
            return  # reported by collect-status; nothing on the host is changed
        self.registry.record(
            self.unit.name, state.roles, state.own_ports, os.environ.get("JUJU_PRINCIPAL_UNIT")
        )
        roll = self.cluster.next_roll(
            self._ruleset_config(),
            self._rolling_config(),
            state.cloud,
            state.config.schedule,
            resume=resume,
        )
        self.outcome.warnings += self.cluster.warnings
        never_enforced = self.host.never_enforced()
        forms = self._forms(state, roll, never_enforced)
        turn = decide(
            HookFacts(
                unit=self.unit.name,
                plan=state.plan,
                cloud=state.cloud,
                roll=roll,
                own_report=self.cluster.own_report(),
                colocated=tuple(self.registry.entries()),
                enforced=not never_enforced,
                rendered=bool(forms),
                applied=frozenset(form for form, a in forms.items() if self.host.is_applied(a)),
                first_enforcement=self.host.first_enforcement(),
                now=self.cluster.now(),
                api_addresses=os.environ.get("JUJU_API_ADDRESSES"),
                force=force,
                record=generation(dump(state.record)),
                leader=self.unit.is_leader(),
            )
        )
        report = self._act(turn, state, forms.get(turn.form), force=force)
        self.cluster.publish(state.record, state.cloud if state.aggregated else None, roll, report)
        changed = turn.apply or turn.confirm or report is not None
        if not (changed or turn.timed or self.outcome.blocked):
            # a hook that changed nothing: the same inputs would decide the same again
            self._stored.settled = self._settled_on()

    def _quiet(self, event: ops.EventBase) -> bool:
        """A hook woken by a peer's change that cannot change what this unit does.

        A non-leader reads no peer's databag: only the leader's (the view and the roll), this
        machine's registry and the host's record of what is applied. The leader folds the
        one peer that woke it. When those are as this unit's last full hook left them (and
        that hook changed nothing, and did not wait for the clock), and, on the leader, the
        peer only reported and the roll does not move, the hook returns after those few reads
        and keeps its status. Anything else runs the hook in full.
        """
        if not (
            isinstance(event, ops.RelationChangedEvent)
            and event.relation.name == PEER_ENDPOINT
            and self._stored.settled
            and self._settled_on() == self._stored.settled
        ):
            return False
        if self.unit.is_leader():
            try:
                config = read_config(self)
            except ConfigError:
                return False
            if event.unit is None or not self.cluster.settle_report(
                event.unit.name, config, self._ruleset_config(), self._rolling_config()
            ):
                return False
        self._quiet_hook = True
        return True

    def _settled_on(self) -> str:
        """A digest of what a non-leader's decision rests on besides its own inputs."""
        applied = self.host.applied()
        record = self.host.first_enforcement()
        return generation(
            self.cluster.shared_digest(),
            json.dumps(sorted((u, sorted(r)) for u, r in self.registry.entries().items())),
            fingerprint(applied) if applied.nftables is not None else "",
            record.model_dump_json() if record else "",
        )

    def _forms(
        self, state: HookState, roll: Roll | None, never_enforced: bool
    ) -> dict[Enforcement, Artefacts]:
        """The artefacts of every form this hook may load; none when the plan is not rendered."""
        if state.artefacts is None:
            return {}
        wanted = forms_to_render(state.plan, roll, never_enforced)
        return {
            form: state.artefacts
            if form == state.config.enforcement
            else render(state.plan, state.ports, form)
            for form in wanted
        }

    def _act(
        self, turn: Turn, state: HookState, artefacts: Artefacts | None, *, force: bool
    ) -> UnitReport | None:
        """Do on the host what the turn says; the report it leaves due on the roll, if any."""
        if turn.confirm:
            self.host.confirm_enforcement()
        self.outcome.held_back = turn.held_back or None
        self.outcome.waiting = turn.waiting or None
        self.outcome.blocked = self.outcome.blocked or turn.blocked or None
        self._observe(state, turn, artefacts)
        if not turn.apply or artefacts is None:
            return self._with_counters(turn, state)
        try:
            if turn.note == "audit":
                self.host.begin_audit(self.cluster.now())
            elif turn.note == "enforcing":
                self.host.before_enforcing(self.cluster.now())
            targets = self._with_gateways(turn.probe_targets)
            result = self.host.apply(artefacts, targets, force=force)
        except (ApplyError, HostError) as e:
            self.outcome.blocked = f"apply failed: {e}"
            stage = e.stage if isinstance(e, ApplyError) else "host"
            return turn.failed(f"{stage}: {e}")
        logger.info("%s", result.message)
        self._applied = f"{result.message} ({turn.form} form)"
        return self._with_counters(turn, state)

    def _with_counters(self, turn: Turn, state: HookState) -> UnitReport | None:
        """The turn's report, with a canary's drop counters when they are due."""
        if turn.report is None or turn.canary is None:
            return turn.report
        try:
            counters = self.host.counters()
        except HostError as e:
            return turn.failed(f"counters: cannot read them: {e}")
        summary = turn.canary.summary(state.plan, counters)
        return turn.report.model_copy(update={"counters": summary})

    def _on_remove(self, _: ops.RemoveEvent) -> None:
        """Leave the host as it was when the last unit of this charm on it goes."""
        self.registry.forget(self.unit.name)
        if self.registry.entries():
            return
        try:
            self.host.remove()
        except HostError as e:
            logger.error("removal left something behind: %s", e)

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        if self._quiet_hook:
            return  # nothing changed: the status stays as the last full hook set it
        try:
            state = self._state or self._read()
        except ConfigError as e:
            event.add_status(ops.BlockedStatus(str(e)))
            return
        if self._stored.bypass_warning:
            self.outcome.warnings.insert(0, self._stored.bypass_warning)
        event.add_status(self.outcome.status(state))

    def _on_show_plan(self, event: ops.ActionEvent) -> None:
        try:
            state = self._read(artefacts=True)
        except ConfigError as e:
            event.fail(str(e))
            return
        results: dict[str, str] = {}
        plan, artefacts = state.plan, state.artefacts
        found = self._packet_bypasses(state)
        if event.params.get("format") == "json":
            results["plan"] = json.dumps(
                machine_dict(plan, state.principal_warnings), sort_keys=True
            )
            results["bypasses"] = json.dumps([b.as_dict() for b in found])
        elif event.params.get("format") == "html":
            page = {plan.machine: plan}
            results["plan"] = cloud_html(
                plan.machine, plan.isolation, page, {plan.machine: artefacts}
            )
            results["bypasses"] = bypass.describe(found)
        else:
            results["plan"] = machine_text(plan, state.principal_warnings)
            results["bypasses"] = bypass.describe(found)
        peer_data = [*state.problems, *state.notes]
        results["peer-data"] = "\n".join(peer_data) or "(nothing refused or left out)"
        if artefacts is not None:
            results["nftables"] = artefacts.nftables
            results["netplan"] = artefacts.netplan or "(none: no policy routing to render)"
            results["diff"] = self.host.diff(artefacts) or "(none: this plan is what is applied)"
        event.set_results(results)

    def _on_show_counters(self, event: ops.ActionEvent) -> None:
        try:
            counters = self.host.counters()
        except HostError as e:
            event.fail(f"cannot read the counters: {e}")
            return
        event.set_results({"counters": json.dumps(counters, sort_keys=True)})

    def _on_reapply(self, event: ops.ActionEvent) -> None:
        """Re-render and apply even if nothing changed (drift repair, rejected retry)."""
        self._reconcile(event, force=True)
        if self._applied is not None:
            event.set_results({"result": "applied", "message": self._applied})
            return
        event.fail(f"nothing applied: {self._why_not_applied()}")

    def _why_not_applied(self) -> str:
        """Why this hook applied nothing: the config, the plan, the apply, or the roll."""
        try:
            state = self._state or self._read()
        except ConfigError as e:
            return str(e)
        if state.plan.status == "blocked":
            return state.plan.message
        return self.outcome.blocked or self.outcome.waiting or "the plan was not rendered"

    def _on_resume_rollout(self, event: ops.ActionEvent) -> None:
        """As leader: start a halted rollout again, once its cause is fixed."""
        if not self.unit.is_leader():
            event.fail("run it on the leader: juju run network-isolation/leader resume-rollout")
            return
        before = self.cluster.published_roll()
        if before is None:
            event.fail("no peer relation: there is no rollout to resume")
            return
        self._reconcile(event, resume=True)
        after = self.cluster.published_roll() or before
        event.set_results(
            {
                "result": "resumed" if after.generation != before.generation else "unchanged",
                "was-halted": before.halted or "(not halted)",
                "rollout": json.dumps(rollout_summary(after), sort_keys=True),
            }
        )

    def _on_rollout_status(self, event: ops.ActionEvent) -> None:
        """The roll as the leader sees it: waves, their units' reports, who is missing."""
        roll = self.cluster.published_roll()
        if roll is None:
            event.fail("no peer relation: this unit is alone, nothing rolls")
            return
        reports = self.cluster.known_reports() if self.unit.is_leader() else None
        summary = rollout_summary(roll, reports)
        event.set_results(
            {"rollout": json.dumps(summary, sort_keys=True), "text": rollout_text(summary)}
        )

    def _on_collect_app_status(self, event: ops.CollectStatusEvent) -> None:
        """The application's status, from the leader: the roll, and who holds or left it."""
        roll = self.cluster.published_roll()
        if roll is None:
            return
        kind, message = rollout_status(roll)
        event.add_status(STATUS_CLASSES[kind](message))

    # Reading and host-facing steps

    def _read(self, woken: Woken = NO_PEER, **asked: bool) -> HookState:
        """The hook's state (see `read_state`); a render error blocks the hook."""
        self._state = read_state(self, self.sources, self.cluster, woken=woken, **asked)
        if self._state.render_error:
            self.outcome.blocked = self._state.render_error
        return self._state

    def _observe(self, state: HookState, turn: Turn, artefacts: Artefacts | None) -> None:
        """The exporter's service and inputs, and what a related COS agent scrapes and loads.

        One unit per machine (`turn.owns_exporter`) runs the exporter and publishes its scrape
        job, so that it is scraped once. It starts with the first active plan (a unit with no
        role yet runs nothing on the host); a blocked plan leaves it as it is. A failure here
        never holds back the isolation.
        """
        plan = state.plan
        summary = PlanSummary.of(plan, fingerprint(artefacts) if artefacts else "", turn.form)
        addresses = plan.networks[Network.MANAGEMENT].addresses
        spec = None
        if turn.owns_exporter and plan.config.metrics_port and addresses:
            spec = ExporterSpec(
                address=str(addresses[0].ip),
                port=plan.config.metrics_port,
                python=sys.executable,
                pythonpath=tuple(p for p in sys.path if p.startswith(str(self.charm_dir))),
                state_dir=state_dir(),
            )
        if turn.owns_exporter and plan.status == "active":
            try:
                self.host.ensure_exporter(spec)
            except PortInUseError as e:
                self.outcome.blocked = str(e)  # the operator picks another metrics-port
            except HostError as e:
                self.outcome.warnings.append(f"metrics exporter: {e}")
        self.host.record_plan(summary)
        self.cos_agent.publish(scrape_target(spec.address, spec.port) if spec else None)

    def _packet_bypasses(self, state: HookState) -> list[bypass.Bypass]:
        """BPF programs on the space interfaces that netfilter comes after; kept for status."""
        found = self.host.packet_bypasses(state.plan.space_interfaces)
        self._stored.bypass_warning = bypass.warning(found) or ""
        return found

    def _rolling_config(self) -> str:
        """The rolling apply's own options: a change of them takes effect on the roll at once."""
        options = {k: v for k, v in self.config.items() if k.startswith("rolling-")}
        return generation(json.dumps(options, sort_keys=True, default=str))

    def _ruleset_config(self) -> str:
        """The options that decide rulesets (not the rolling apply's own), for the rollout."""
        options = {k: v for k, v in self.config.items() if not k.startswith("rolling-")}
        return json.dumps(options, sort_keys=True, default=str)

    def _with_gateways(self, targets: Sequence[ProbeTarget]) -> list[ProbeTarget]:
        """What must stay reachable: `targets`, and the host's default gateways.

        The gateways are read (a command) only here, when applying or repairing: an unchanged
        hook runs no command on the host.
        """
        return [*targets, *map(gateway_target, self.host.default_gateways())]


if __name__ == "__main__":  # pragma: nocover
    ops.main(NetworkIsolationCharm)
