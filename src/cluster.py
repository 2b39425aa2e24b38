"""Juju glue for the `cluster` peer relation: publish this machine, share the cloud view.

Each unit writes one record in its own databag; only the leader reads them all and writes the
aggregate to the application databag. A non-leader therefore makes the same few hook-tool
calls per hook however many peers there are.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import ops
import pydantic

from network_isolation.peers import (
    CLOUD_KEY,
    UNIT_KEY,
    CloudView,
    MachineRecord,
    PeerError,
    aggregate,
    dump,
    parse_cloud_view,
    parse_record,
)
from network_isolation.rollout import Roll, UnitRoll, decide

logger = logging.getLogger(__name__)
T = TypeVar("T", Roll, UnitRoll)

PEER_ENDPOINT = "cluster"
ROLL_KEY = "roll"


class Cluster:
    """This unit's side of the peer relation."""

    def __init__(self, charm: ops.CharmBase, min_prefix: dict[int, int], warnings: list[str]):
        self._charm = charm
        self._min_prefix = min_prefix
        self.warnings = warnings

    @property
    def _relation(self) -> ops.Relation | None:
        return self._charm.model.get_relation(PEER_ENDPOINT)

    def publish(self, record: MachineRecord, roll: UnitRoll) -> None:
        """Write this unit's record and apply state; the leader also aggregates and decides."""
        relation = self._relation
        if relation is None:
            return
        bag = relation.data[self._charm.unit]
        _set_if_changed(bag, UNIT_KEY, dump(record))
        _set_if_changed(bag, ROLL_KEY, dump(roll))
        if self._charm.unit.is_leader():
            self._lead(relation, record, roll)

    def _lead(self, relation: ops.Relation, own: MachineRecord, own_roll: UnitRoll) -> None:
        """Fold every unit's record into the cloud view and hand out the apply turn."""
        records = {self._charm.unit.name: own}
        rolls = {self._charm.unit.name: own_roll}
        for unit in relation.units:
            bag = relation.data[unit]
            try:
                record = parse_record(bag.get(UNIT_KEY), self._min_prefix)
            except PeerError as e:
                self._warn(f"ignored data from {unit.name}: {e}")
                continue
            if record is not None:
                records[unit.name] = record
            rolls[unit.name] = _parse_roll(bag.get(ROLL_KEY), UnitRoll)
        app_bag = relation.data[self._charm.app]
        _set_if_changed(app_bag, CLOUD_KEY, dump(aggregate(records)))
        roll = decide(rolls, _parse_roll(app_bag.get(ROLL_KEY), Roll))
        _set_if_changed(app_bag, ROLL_KEY, dump(roll))

    def roll(self) -> Roll | None:
        """The leader's apply-turn decision; None when there is no peer relation."""
        relation = self._relation
        if relation is None:
            return None
        return _parse_roll(relation.data[self._charm.app].get(ROLL_KEY), Roll)

    def view(self) -> CloudView:
        """The cloud-wide view the leader published (empty before there is one)."""
        relation = self._relation
        if relation is None:
            return CloudView()
        try:
            return parse_cloud_view(
                relation.data[self._charm.app].get(CLOUD_KEY), self._min_prefix
            )
        except PeerError as e:
            self._warn(f"ignored the shared cloud view: {e}")
            return CloudView()

    def _warn(self, message: str) -> None:
        logger.warning(message)
        self.warnings.append(message)


def _parse_roll(raw: str | None, model: type[T]) -> T:
    """Roll state from a databag; what cannot be read counts as empty (untrusted data)."""
    try:
        return model.model_validate_json(raw) if raw else model()
    except pydantic.ValidationError:
        logger.warning("ignored unreadable apply-turn data: %r", raw)
        return model()


def _set_if_changed(bag: ops.RelationDataContent, key: str, value: str) -> None:
    if bag.get(key) != value:
        bag[key] = value
