#!/usr/bin/env python3
"""Juju glue: read the hook's state, apply its artefacts via Host, report the outcome."""

from __future__ import annotations

import json
import logging
import os
import sys

import ops
from network_isolation_interface import NetworkIsolationRequirer

from cluster import NO_PEER, Cluster, FoldStore, Woken, woken_by
from cos_agent import CosAgent, scrape_target
from network_isolation import bypass
from network_isolation.canary import Snapshot, summarise
from network_isolation.config import ConfigError
from network_isolation.first_deployment import FormDecision, confirmed, first_deployment_form
from network_isolation.host import (
    ApplyError,
    ExporterSpec,
    Host,
    HostError,
    MachineRegistry,
    ProbeTarget,
    controller_targets,
    fingerprint,
    gateway_target,
    state_dir,
)
from network_isolation.model import Network
from network_isolation.observed import PlanSummary
from network_isolation.planner import MachinePlan
from network_isolation.render import Artefacts, counter_kinds
from network_isolation.report import machine_dict, machine_text
from network_isolation.report_html import cloud_html
from network_isolation.rollout import Roll, UnitReport, may_apply, waiting_message
from state import (
    ROLE_ENDPOINTS,
    HookState,
    Outcome,
    Sources,
    artefacts_as,
    plan_as,
    read_state,
    related_roles,
)

logger = logging.getLogger(__name__)


class NetworkIsolationCharm(ops.CharmBase):
    """Subordinate that derives a machine's network access from its node roles."""

    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(bypass_warning="")  # kept between update-status hooks
        self.registry = MachineRegistry(state_dir() / "units")
        self.host = Host(state=state_dir())
        self.service_ports = NetworkIsolationRequirer(self, endpoint="service-ports")
        self.cos_agent = CosAgent(self)
        self.sources = Sources(self.service_ports, self.registry, self.host, FoldStore(self))
        self.outcome = Outcome()
        self._state: HookState | None = None  # read once per hook, by its first reader
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
        self._reconcile(event)
        if self._state is not None:
            self._packet_bypasses(self._state)
        if self.outcome.blocked or self.outcome.waiting:
            return
        try:
            repaired = self.host.repair_drift(self._probe_targets())
        except (ApplyError, HostError) as e:
            self.outcome.blocked = f"drift repair failed: {e}"
            return
        if repaired:
            self.outcome.warnings.append(f"drift repaired: {repaired}")

    def _reconcile(self, event: ops.EventBase, *, force: bool = False) -> None:
        """Plan this machine, render its artefacts and apply them when its wave is open.

        A machine that has never enforced loads the audit form at once and the enforcing form
        when its wave opens (see `first_deployment`); otherwise a unit waits for a wave that
        holds it, applies (or finds nothing to do) and reports once on the rollout.
        """
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
        cluster = self._cluster(state)
        cluster.share(state.record, state.cloud if state.aggregated else None)
        cluster.decide(self._ruleset_config(), state.cloud, state.config.schedule)
        roll, own = cluster.roll(), cluster.own_report()
        turn = roll is not None and roll.generation != "" and may_apply(self.unit.name, roll, own)
        form = self._form(state, roll, own)
        self.outcome.held_back = form.message or None
        artefacts = artefacts_as(state, form.enforcement)
        self._observe(plan_as(state, form.enforcement), artefacts)  # the form it loads
        if artefacts is None or (not force and self.host.is_applied(artefacts)):
            if turn and roll is not None:
                outcome = "applied" if artefacts is not None else "blocked"
                self._report(cluster, state, roll, UnitReport(outcome=outcome))
            return
        if not (force or form.held_back or roll is None or may_apply(self.unit.name, roll, own)):
            self.outcome.waiting = waiting_message(self.unit.name, roll)
            return
        try:
            if roll is not None:
                self._note_first_enforcement(form, cluster.now())
            result = self.host.apply(artefacts, self._probe_targets(state), force=force)
        except (ApplyError, HostError) as e:
            self.outcome.blocked = f"apply failed: {e}"
            stage = e.stage if isinstance(e, ApplyError) else "host"
            report = UnitReport(outcome="failed", error=f"{stage}: {e}"[:200])
        else:
            logger.info("%s", result.message)
            report = UnitReport(outcome="applied")
        if turn and roll is not None:
            self._report(cluster, state, roll, report)

    def _form(self, state: HookState, roll: Roll | None, own: UnitReport) -> FormDecision:
        """Which form of the ruleset this machine loads: audit until it may first enforce.

        A first enforcement that the roll has gone past is confirmed here, once.
        """
        never = self.host.never_enforced()
        units = (self.unit.name, *sorted(set(self.registry.entries()) - {self.unit.name}))
        if (
            never
            and roll is not None
            and state.artefacts is not None
            and self.host.is_applied(state.artefacts)
            and confirmed(units, roll, own.generation == roll.generation)
        ):
            self.host.confirm_enforcement()
            never = False
        return first_deployment_form(
            units, roll, configured=state.config.enforcement, enforced=not never
        )

    def _note_first_enforcement(self, form: FormDecision, now: float) -> None:
        """On a machine that never enforced: when its audit form loads, or the enforcing one.

        Called before the apply, so that the table of a first enforcement has its record.
        """
        if not self.host.never_enforced():
            return
        if form.enforcement == "audit":
            self.host.begin_audit(now)
        elif form.enforcement == "enforce":
            self.host.before_enforcing(now)

    def _report(self, cluster: Cluster, state: HookState, roll: Roll, report: UnitReport) -> None:
        """Report this unit's outcome of the roll; a leader takes its own into account at once.

        A first deployment's canary reports once it has enforced for `rolling-canary-window`,
        with its drop counters, which the leader judges before the next wave (a roll of one
        wave has no next wave to protect).
        """
        canary = roll.wave_of(self.unit.name) == 1 < len(roll.waves)
        if report.outcome == "applied" and canary and state.config.enforcement == "enforce":
            due = self._with_counters(cluster, state, report)
            if due is None:
                return  # the canary's window is still open
            report = due
        cluster.report(report.model_copy(update={"generation": roll.generation}))
        cluster.decide(self._ruleset_config(), state.cloud, state.config.schedule)

    def _with_counters(
        self, cluster: Cluster, state: HookState, report: UnitReport
    ) -> UnitReport | None:
        """The canary's report with its counters; None while its window is still open.

        A unit whose enforcement is not a first one reports as it is.
        """
        record = self.host.first_enforcement()
        if record is None or record.enforcing_since is None:
            return report
        seconds = cluster.now() - record.enforcing_since
        window = state.config.rolling_canary_window
        if seconds < window:
            self.outcome.held_back = f"canary: enforcing, its counters judged after {window} s"
            return None
        try:
            enforcing = Snapshot.of(self.host.counters(), seconds)
        except HostError as e:
            return UnitReport(outcome="failed", error=f"counters: cannot read them: {e}"[:200])
        audit = Snapshot(record.audit_packets, record.audit_seconds)
        summary = summarise(counter_kinds(state.plan), audit, enforcing)
        return report.model_copy(update={"counters": summary})

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
        if self.outcome.blocked:
            event.fail(self.outcome.blocked)
        elif self.outcome.waiting:
            event.fail(self.outcome.waiting)
        else:
            event.set_results({"result": "applied"})

    # Reading and host-facing steps

    def _read(self, woken: Woken = NO_PEER, **asked: bool) -> HookState:
        """The hook's state (see `read_state`); a render error blocks the hook."""
        self._state = read_state(self, self.sources, woken=woken, **asked)
        if self._state.render_error:
            self.outcome.blocked = self._state.render_error
        return self._state

    def _observe(self, plan: MachinePlan, artefacts: Artefacts | None) -> None:
        """The exporter's service and inputs, and what a related COS agent scrapes and loads.

        One unit per machine (the first registered) runs the exporter and publishes its scrape
        job, so that it is scraped once. It starts with the first active plan (a unit with no
        role yet runs nothing on the host); a blocked plan leaves it as it is. A failure here
        never holds back the isolation.
        """
        summary = PlanSummary.of(plan, fingerprint(artefacts) if artefacts else "")
        owner = min(self.registry.entries(), default=self.unit.name) == self.unit.name
        addresses = plan.networks[Network.MANAGEMENT].addresses
        spec = None
        if owner and plan.config.metrics_port and addresses:
            spec = ExporterSpec(
                address=str(addresses[0].ip),
                port=plan.config.metrics_port,
                python=sys.executable,
                pythonpath=tuple(p for p in sys.path if p.startswith(str(self.charm_dir))),
                state_dir=state_dir(),
            )
        if owner and plan.status == "active":
            try:
                self.host.ensure_exporter(spec)
            except HostError as e:
                self.outcome.warnings.append(f"metrics exporter: {e}")
        self.host.record_plan(summary)
        self.cos_agent.publish(scrape_target(spec.address, spec.port) if spec else None)

    def _packet_bypasses(self, state: HookState) -> list[bypass.Bypass]:
        """BPF programs on the space interfaces that netfilter comes after; kept for status."""
        found = self.host.packet_bypasses(state.plan.space_interfaces)
        self._stored.bypass_warning = bypass.warning(found) or ""
        return found

    def _cluster(self, state: HookState) -> Cluster:
        """This hook's side of the peer relation."""
        return Cluster(self, state.config.peer_min_prefix, state.own_subnets, self.sources.fold)

    def _ruleset_config(self) -> str:
        """The options that decide rulesets (not the rolling apply's own), for the rollout."""
        options = {k: v for k, v in self.config.items() if not k.startswith("rolling-")}
        return json.dumps(options, sort_keys=True, default=str)

    def _probe_targets(self, state: HookState | None = None) -> list[ProbeTarget]:
        """What must stay reachable after an apply: controllers, gateways and neighbours.

        Neighbours: a few machines on each network this machine may use, as the leader shares
        them (only addresses inside that network's subnets here). Read only when applying:
        an unchanged hook runs no command on the host.
        """
        targets = controller_targets(os.environ.get("JUJU_API_ADDRESSES"))
        targets += [gateway_target(g) for g in self.host.default_gateways()]
        if state is None:
            return targets
        own = {a.ip for network in state.plan.networks.values() for a in network.addresses}
        return targets + [
            ProbeTarget(str(address), 22, refused_ok=True, label=f"{net} neighbour")
            for net, network in state.plan.networks.items()
            if network.access
            for address in state.cloud.neighbours_of(net)
            if address not in own and any(address in s for s in network.subnets)
        ]


if __name__ == "__main__":  # pragma: nocover
    ops.main(NetworkIsolationCharm)
