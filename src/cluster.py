"""Juju glue for the `cluster` peer relation: publish this machine, share the cloud view.

Each unit writes one record in its own databag; only the leader reads them all and writes the
aggregate to the application databag. A non-leader therefore makes the same few hook-tool
calls per hook however many peers there are.
"""

from __future__ import annotations

import logging

import ops

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

logger = logging.getLogger(__name__)

PEER_ENDPOINT = "cluster"


class Cluster:
    """This unit's side of the peer relation."""

    def __init__(self, charm: ops.CharmBase, min_prefix: dict[int, int], warnings: list[str]):
        self._charm = charm
        self._min_prefix = min_prefix
        self.warnings = warnings

    @property
    def _relation(self) -> ops.Relation | None:
        return self._charm.model.get_relation(PEER_ENDPOINT)

    def publish(self, record: MachineRecord) -> None:
        """Write this unit's record; unchanged data is not written again."""
        relation = self._relation
        if relation is None:
            return
        _set_if_changed(relation.data[self._charm.unit], UNIT_KEY, dump(record))
        if self._charm.unit.is_leader():
            self._aggregate(relation, record)

    def _aggregate(self, relation: ops.Relation, own: MachineRecord) -> None:
        records = {self._charm.unit.name: own}
        for unit in relation.units:
            try:
                record = parse_record(relation.data[unit].get(UNIT_KEY), self._min_prefix)
            except PeerError as e:
                self._warn(f"ignored data from {unit.name}: {e}")
                continue
            if record is not None:
                records[unit.name] = record
        _set_if_changed(relation.data[self._charm.app], CLOUD_KEY, dump(aggregate(records)))

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


def _set_if_changed(bag: ops.RelationDataContent, key: str, value: str) -> None:
    if bag.get(key) != value:
        bag[key] = value
