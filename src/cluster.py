"""Juju glue for the `cluster` peer relation: records, the cloud view and the rolling apply.

Each unit writes its record and, once per rollout, its report in its own databag. Only the
leader reads peers' databags, and only the one unit whose change woke it: what it has learnt
(the accepted records and the reports) it keeps between hooks in leader-local state, and
re-reads everyone only when it must (elected, upgraded, or its checks changed). It writes the
view and the roll to the application databag, which every unit reads with one call.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

import ops
import pydantic

from network_isolation.base import IPNetwork
from network_isolation.config import CharmConfig
from network_isolation.model import Network
from network_isolation.peers import (
    CLOUD_KEY,
    UNIT_KEY,
    CloudView,
    MachineRecord,
    PeerError,
    admit,
    dump,
    parse_cloud_view,
    parse_record,
    teach,
)
from network_isolation.rollout import (
    Member,
    Roll,
    RollInputs,
    Schedule,
    UnitReport,
    generation,
    named,
    step,
    unit_order,
)

logger = logging.getLogger(__name__)
T = TypeVar("T", Roll, UnitReport)

PEER_ENDPOINT = "cluster"
ROLL_KEY = "roll"
REPORT_KEY = "report"
MAX_REPORT_BYTES = 4096  # a canary's report carries its drop counters (18 at most, ~2.5 KB)
MAX_CHANGES = 16  # the times of a unit's latest record changes that the leader keeps
CHURN = 3  # record changes during one roll that the leader names in its status
MAX_PARSED_RECORDS = 20_000  # a hook lives in one process: every peer's record fits
clock: Callable[[], float] = time.time  # the wall clock that times waves out


class Woken(NamedTuple):
    """What a hook asks of the leader: read every peer again, or the one peer that changed."""

    reread: bool = False
    peer: str | None = None


NO_PEER = Woken()


def woken_by(event: ops.EventBase) -> Woken:
    """Elected or upgraded: read every peer; a peer's relation event: read that one."""
    if isinstance(event, (ops.LeaderElectedEvent, ops.UpgradeCharmEvent)):
        return Woken(reread=True)
    if isinstance(event, ops.RelationEvent) and event.relation.name == PEER_ENDPOINT:
        return Woken(peer=event.unit.name if event.unit is not None else None)
    return Woken()


class Fold(pydantic.BaseModel):
    """What the leader has learnt from its peers, kept between its hooks.

    `checks` digests what the checks depend on (prefix limits, own subnets): when it changes,
    every record is read and judged again.
    """

    checks: str = ""
    records: dict[str, str] = {}
    refused: dict[str, str] = {}
    reports: dict[str, str] = {}
    changed: dict[str, list[float]] = {}  # when a unit's record changed lately (its last few)
    first_roll_since: float = 0.0  # when the first roll began to wait for every unit
    update_status: list[float] = []  # when this leader last ran update-status

    def keep_report(self, unit: str, report: str | None) -> None:
        """A unit's report as its databag holds it; one too large to be honest is not read."""
        if report and len(report) <= MAX_REPORT_BYTES:
            self.reports[unit] = report

    def note_change(self, unit: str) -> None:
        """A unit's record changed now: keep the time, with its last few."""
        self.changed[unit] = [*self.changed.get(unit, []), clock()][-MAX_CHANGES:]

    def hook_interval(self) -> float:
        """How often update-status runs, from this leader's last ones; unknown is endless.

        Until this leader has seen two, a canary's wave does not time out: its next hook may
        be a whole interval away, and Juju does not tell a charm the interval.
        """
        times = self.update_status
        gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
        return max(gaps) if gaps else math.inf

    def forget(self, unit: str) -> None:
        """Drop what is known of a unit (it departed, or is read again)."""
        for known in (self.records, self.refused, self.reports, self.changed):
            known.pop(unit, None)


class FoldStore(ops.Object):
    """The leader's fold in the unit's local state (one per charm instance)."""

    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase):
        super().__init__(charm, "cluster-fold")
        self._stored.set_default(fold="")

    def load(self) -> Fold:
        """The fold as the last hook left it; empty when unreadable."""
        try:
            return Fold.model_validate_json(self._stored.fold or "{}")
        except pydantic.ValidationError:
            return Fold()

    def save(self, fold: Fold) -> None:
        """Keep the fold for the next hook."""
        self._stored.fold = fold.model_dump_json()


class CloudReading(NamedTuple):
    """The cloud-wide view as this hook found it, and the untrusted data it refused."""

    view: CloudView
    problems: tuple[str, ...]
    aggregated: bool  # folded by this leader: it publishes the view
    notes: tuple[str, ...] = ()  # what the leader has not taught yet, for show-plan


class Cluster:
    """This unit's side of the peer relation, for one hook: built once, read, then published.

    A hook reads the cloud view (`read`) and the roll it acts on (`next_roll`), decides, acts,
    and then writes everything it has to say at once (`publish`): its record, a leader's view
    and roll, and its report.
    """

    def __init__(self, charm: ops.CharmBase, store: FoldStore):
        self._charm = charm
        self._store = store
        self._stepping: tuple[RollInputs, dict[str, Member], Schedule] | None = None  # leader
        self.warnings: list[str] = []  # a leader's: units whose records keep changing

    @property
    def _relation(self) -> ops.Relation | None:
        return self._charm.model.get_relation(PEER_ENDPOINT)

    @property
    def _leads(self) -> bool:
        return self._charm.unit.is_leader()

    def read(
        self,
        record: MachineRecord,
        own: Mapping[Network, tuple[IPNetwork, ...]],
        config: CharmConfig,
        woken: Woken = NO_PEER,
    ) -> CloudReading:
        """The cloud-wide view: the leader folds what woke it into what it knew; others read it.

        The leader reads at most the one peer whose change woke it (every peer when `woken`
        says so, or when its checks changed: the prefix limits and this machine's `own`
        subnets); everyone else reads the one aggregate. The leader teaches only what
        `peers.aggregate` allows, and names what it leaves out.
        """
        min_prefix = config.peer_min_prefix
        relation = self._relation
        if relation is None:
            return CloudReading(CloudView(), (), aggregated=False)
        if self._leads:
            fold = self._fold(relation, record, own, min_prefix, woken)
            refused = [f"refused the record of {u}: {r}" for u, r in fold.refused.items()]
            records = {u: _record(r) for u, r in fold.records.items()}
            taught = teach(records, config.network_cidrs, config.client_cidrs)
            problems = (*refused, *taught.left_out)
            return CloudReading(taught.view, problems, aggregated=True, notes=taught.unconfirmed)
        try:
            view = parse_cloud_view(relation.data[self._charm.app].get(CLOUD_KEY), min_prefix)
        except PeerError as e:
            return CloudReading(
                CloudView(), (_warn(f"ignored the shared cloud view: {e}"),), False
            )
        return CloudReading(view, (), aggregated=False)

    def _fold(
        self,
        relation: ops.Relation,
        record: MachineRecord,
        own: Mapping[Network, tuple[IPNetwork, ...]],
        min_prefix: dict[int, int],
        woken: Woken,
    ) -> Fold:
        fold = self._store.load()
        me = self._charm.unit.name
        present = {u.name for u in relation.units}
        own_text = {str(net): [str(s) for s in subnets] for net, subnets in own.items()}
        checks = generation(json.dumps([min_prefix, own_text], sort_keys=True))
        if fold.checks != checks or woken.reread:
            fold = Fold(checks=checks, records={me: dump(record)})
            for name in sorted(present, key=unit_order):
                self._learn(fold, relation, name, own, min_prefix)
        elif woken.peer in present:
            self._learn(fold, relation, woken.peer, own, min_prefix)
        for gone in {*fold.records, *fold.refused, *fold.reports, *fold.changed} - present - {me}:
            fold.forget(gone)
        if fold.records.get(me, dump(record)) != dump(record):
            fold.note_change(me)
        fold.records[me] = dump(record)
        self._store.save(fold)
        return fold

    def _learn(
        self,
        fold: Fold,
        relation: ops.Relation,
        name: str,
        own: Mapping[Network, tuple[IPNetwork, ...]],
        min_prefix: dict[int, int],
    ) -> None:
        """Read one peer's databag: its record (judged against the others) and its report."""
        bag = relation.data[self._charm.model.get_unit(name)]
        before, changed = fold.records.get(name), fold.changed.get(name)
        fold.forget(name)
        fold.keep_report(name, bag.get(REPORT_KEY))
        try:
            record = parse_record(bag.get(UNIT_KEY), min_prefix)
            if record is None:
                return
            others = (_record(r) for r in fold.records.values())
            admit(record, others, own)
        except PeerError as e:
            _warn(f"refused the record of {name}: {e}")
            fold.refused[name] = str(e)[:200]
            return
        fold.records[name] = dump(record)
        if changed:
            fold.changed[name] = changed
        if before is not None and before != fold.records[name]:
            fold.note_change(name)

    def next_roll(
        self,
        inputs: str,
        options: str,
        view: CloudView,
        schedule: Schedule,
        *,
        resume: bool = False,
    ) -> Roll | None:
        """The roll this hook acts on; None when there is no peer relation (a lone unit).

        The leader steps the roll from what it has folded (published by `publish`): `inputs`
        digests the config that decides rulesets (with the view's subnets and the units, it
        names the rollout), `options` the `rolling-*` options, which take effect on the roll
        in progress; `resume` (the `resume-rollout` action) starts the rollout again. Every
        other unit reads the roll the leader published.
        """
        relation = self._relation
        if relation is None:
            return None
        app_bag = relation.data[self._charm.app]
        previous = _parse(app_bag.get(ROLL_KEY), Roll)
        if not self._leads:
            return previous
        fold = self._store.load()
        if own_report := relation.data[self._charm.unit].get(REPORT_KEY):
            fold.reports[self._charm.unit.name] = own_report
        records = {u: _record(r) for u, r in fold.records.items()}
        members = {u: Member(u, r.machine, frozenset(r.roles)) for u, r in records.items()}
        unheard = {u.name for u in relation.units} - {*fold.records, *fold.refused}
        # a unit whose principal has not joined yet has no role: its kind is still unknown
        roleless = {u for u, r in records.items() if not r.roles}
        resumed = previous.resumed + resume
        kinds = json.dumps({u: sorted(m.roles) for u, m in members.items()}, sort_keys=True)
        gen = RollInputs(
            config=generation(inputs, f"resumed={resumed}"),
            # what decides rulesets, and the kinds of machine the waves are planned by
            view=generation(dump(CloudView(subnets=view.subnets)), kinds),
            members=generation(*sorted(records, key=unit_order)),
            changed_by=tuple(_changed_since(fold, previous.started_at)),
            absent=tuple(sorted(unheard, key=unit_order)),
            options=options,
            resumed=resumed,
        )
        now = clock()
        if (unheard or roleless) and not previous.generation:
            # The first roll (a first deployment) waits for every unit that has joined, for a
            # wave timeout at most: a canary chosen among the first few would not be the one
            # the whole cloud needs, and a unit that never publishes must not hold the cloud.
            fold.first_roll_since = fold.first_roll_since or now
            if now - fold.first_roll_since <= schedule.timeout:
                self._store.save(fold)
                self.warnings = [_waiting_for(unheard | roleless)]
                return previous
        self._store.save(fold)
        timing = schedule.with_timing(schedule.canary_window, fold.hook_interval())
        self._stepping = (gen, members, timing)
        roll = self._step(fold, previous)
        self.warnings = [
            f"{unit} rewrote its record {len(times)} times during this roll"
            for unit in _changed_since(fold, roll.started_at)
            if len(times := [t for t in fold.changed[unit] if t >= roll.started_at]) >= CHURN
        ]
        if roll.deferred:
            self.warnings.insert(0, roll.deferred)
        if roll.left_out:
            self.warnings.insert(0, f"rolling apply goes on without {named(roll.left_out)}")
        return roll

    def settle_report(self, peer: str, config: CharmConfig, inputs: str, options: str) -> bool:
        """As leader, woken by one peer: fold its report alone, if its record is unchanged.

        True when the roll it then steps to is the one already published: nothing the leader
        decides or publishes changes, and its hook can end here (the report is kept for the
        next step). False when the hook must run in full: a record that is new, changed or
        refused, or a roll that moves (a wave opens, a halt, a timeout).
        """
        relation = self._relation
        if relation is None or not self._leads:
            return False
        fold = self._store.load()
        bag = relation.data[self._charm.model.get_unit(peer)]
        try:
            record = parse_record(bag.get(UNIT_KEY), config.peer_min_prefix)
        except PeerError:
            return False
        if record is None or fold.records.get(peer) != dump(record):
            return False
        fold.keep_report(peer, bag.get(REPORT_KEY))
        self._store.save(fold)
        records = {u: _record(r) for u, r in fold.records.items()}
        view = teach(records, config.network_cidrs, config.client_cidrs).view
        previous = _parse(relation.data[self._charm.app].get(ROLL_KEY), Roll)
        roll = self.next_roll(inputs, options, view, config.schedule)
        self._stepping = None  # nothing to publish from here
        return roll == previous

    def published_roll(self) -> Roll | None:
        """The roll in the application databag (this hook's, once published); None if alone."""
        relation = self._relation
        if relation is None:
            return None
        return _parse(relation.data[self._charm.app].get(ROLL_KEY), Roll)

    def shared_digest(self) -> str:
        """A digest of the leader's shared data (the cloud view and the roll): one read."""
        relation = self._relation
        if relation is None:
            return ""
        bag = relation.data[self._charm.app]
        return generation(bag.get(CLOUD_KEY, ""), bag.get(ROLL_KEY, ""))

    def known_reports(self) -> dict[str, UnitReport]:
        """As leader: the reports it has read from its peers (and its own)."""
        return {u: _parse(raw, UnitReport) for u, raw in self._store.load().reports.items()}

    def note_update_status(self) -> None:
        """As leader: when update-status ran, so that the canary's wave waits for its cadence."""
        if not self._leads or self._relation is None:
            return
        fold = self._store.load()
        fold.update_status = [*fold.update_status, clock()][-3:]
        self._store.save(fold)

    def _step(self, fold: Fold, previous: Roll) -> Roll:
        """The leader's next roll from `previous` and the reports it has folded."""
        assert self._stepping is not None
        gen, members, schedule = self._stepping
        reports = {u: _parse(raw, UnitReport) for u, raw in fold.reports.items()}
        roll = step(previous, gen, members, reports, clock(), schedule)
        if roll.halted and roll.halted != previous.halted:
            logger.error("rolling apply halted: %s", roll.halted)
        return roll

    def now(self) -> float:
        """The wall clock that times waves out, and a canary's window."""
        return clock()

    def own_report(self) -> UnitReport:
        """What this unit last reported on a rollout."""
        relation = self._relation
        if relation is None:
            return UnitReport()
        return _parse(relation.data[self._charm.unit].get(REPORT_KEY), UnitReport)

    def publish(
        self,
        record: MachineRecord,
        view: CloudView | None,
        roll: Roll | None,
        report: UnitReport | None,
    ) -> None:
        """Write what this hook has to say: its record, a leader's `view` and roll, its report.

        Each is written only when it changed. A leader takes its own report into account at
        once: the roll it publishes is stepped again with it.
        """
        relation = self._relation
        if relation is None:
            return
        unit_bag = relation.data[self._charm.unit]
        _set_if_changed(unit_bag, UNIT_KEY, dump(record))
        if view is not None:
            _set_if_changed(relation.data[self._charm.app], CLOUD_KEY, dump(view))
        if report is not None:
            _set_if_changed(unit_bag, REPORT_KEY, dump(report))
        if self._stepping is None or roll is None:
            return
        if report is not None:
            fold = self._store.load()
            fold.reports[self._charm.unit.name] = dump(report)
            self._store.save(fold)
            roll = self._step(fold, roll)
        _set_if_changed(relation.data[self._charm.app], ROLL_KEY, dump(roll))


def _waiting_for(unheard: set[str]) -> str:
    return (
        f"first roll waits for a record with roles from {named(sorted(unheard, key=unit_order))}"
    )


@functools.lru_cache(maxsize=MAX_PARSED_RECORDS)
def _record(raw: str) -> MachineRecord:
    """An accepted record from its canonical JSON, parsed once however often it is judged.

    Re-reading every peer judges each record against all accepted before it: parsing them again
    each time made that quadratic in JSON parsing. Records are frozen, so sharing one is safe.
    """
    return MachineRecord.model_validate_json(raw)


def _changed_since(fold: Fold, since: float) -> list[str]:
    """Units whose records changed at or after `since`, the latest first."""
    recent = {u: max(times) for u, times in fold.changed.items() if max(times) >= since}
    return sorted(recent, key=lambda u: (-recent[u], unit_order(u)))


def _warn(message: str) -> str:
    logger.warning(message)
    return message


def _parse(raw: str | None, model: type[T]) -> T:
    """Roll state from a databag; what cannot be read counts as empty (untrusted data)."""
    try:
        return model.model_validate_json(raw) if raw else model()
    except pydantic.ValidationError:
        logger.warning("ignored unreadable rolling-apply data: %r", (raw or "")[:100])
        return model()


def _set_if_changed(bag: ops.RelationDataContent, key: str, value: str) -> None:
    if bag.get(key) != value:
        bag[key] = value
