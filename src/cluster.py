"""Juju glue for the `cluster` peer relation: publish this machine, share the cloud view.

Each unit writes one record in its own databag; only the leader reads them all and writes the
aggregate to the application databag. A non-leader therefore makes the same few hook-tool
calls per hook however many peers there are.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, TypeVar

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


class CloudReading(NamedTuple):
    """The cloud-wide view as this hook found it, and the untrusted data it ignored."""

    view: CloudView
    problems: tuple[str, ...]
    aggregated: bool  # folded by this leader from every record: it publishes the view


class Cluster:
    """This unit's side of the peer relation."""

    def __init__(self, charm: ops.CharmBase, min_prefix: dict[int, int]):
        self._charm = charm
        self._min_prefix = min_prefix

    @property
    def _relation(self) -> ops.Relation | None:
        return self._charm.model.get_relation(PEER_ENDPOINT)

    def read(self, record: MachineRecord, *, lead: bool = True) -> CloudReading:
        """The cloud-wide view: the leader (when `lead`) folds every record into a new one.

        The leader is the only unit that reads every peer's databag; everyone else reads the one
        aggregate, so a non-leader's cost per hook does not grow with the cloud.
        """
        relation = self._relation
        if relation is None:
            return CloudReading(CloudView(), (), aggregated=False)
        problems: list[str] = []
        if lead and self._charm.unit.is_leader():
            records = {self._charm.unit.name: record}
            for unit in relation.units:
                try:
                    parsed = parse_record(relation.data[unit].get(UNIT_KEY), self._min_prefix)
                except PeerError as e:
                    problems.append(_warn(f"ignored data from {unit.name}: {e}"))
                    continue
                if parsed is not None:
                    records[unit.name] = parsed
            return CloudReading(aggregate(records), tuple(problems), aggregated=True)
        try:
            view = parse_cloud_view(
                relation.data[self._charm.app].get(CLOUD_KEY), self._min_prefix
            )
        except PeerError as e:
            problems.append(_warn(f"ignored the shared cloud view: {e}"))
            view = CloudView()
        return CloudReading(view, tuple(problems), aggregated=False)

    def share(self, record: MachineRecord, view: CloudView | None = None) -> None:
        """Publish this unit's record, and the `view` this leader has just aggregated, if any."""
        relation = self._relation
        if relation is None:
            return
        _set_if_changed(relation.data[self._charm.unit], UNIT_KEY, dump(record))
        if view is not None:
            _set_if_changed(relation.data[self._charm.app], CLOUD_KEY, dump(view))

    def report(self, roll: UnitRoll, *, lead: bool = True) -> None:
        """Publish this unit's apply state; the leader (when `lead`) hands out the next turn."""
        relation = self._relation
        if relation is None:
            return
        _set_if_changed(relation.data[self._charm.unit], ROLL_KEY, dump(roll))
        if not (lead and self._charm.unit.is_leader()):
            return
        rolls = {self._charm.unit.name: roll}
        for unit in relation.units:
            rolls[unit.name] = _parse_roll(relation.data[unit].get(ROLL_KEY), UnitRoll)
        app_bag = relation.data[self._charm.app]
        decision = decide(rolls, _parse_roll(app_bag.get(ROLL_KEY), Roll))
        _set_if_changed(app_bag, ROLL_KEY, dump(decision))

    def roll(self) -> Roll | None:
        """The leader's apply-turn decision; None when there is no peer relation."""
        relation = self._relation
        if relation is None:
            return None
        return _parse_roll(relation.data[self._charm.app].get(ROLL_KEY), Roll)


def _warn(message: str) -> str:
    logger.warning(message)
    return message


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
