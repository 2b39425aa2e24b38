"""Everything this charm does to the host it runs on; nothing else touches the host.

- `Host` (`host`): the one entry point. It validates, applies (idempotent, atomic, confirmed
  or rolled back), persists across reboots, audits (counters, drift) and removes the artefacts
  rendered for the machine, each step done by the module that owns it:
  - `nftables`: our table (check, load, list, drift, counters, removal);
  - `netplan`: our netplan file (policy-routing checks, `netplan generate` over the host's
    files, write and apply, restore, removal);
  - `networkd`: the systemd-networkd drop-in that keeps other software's routing-policy rules
    and routes through our `netplan apply`, and the clean-up of our own stale ones;
  - `guard`: baseline and confirm probes, the dead-man timer and its rollback script, the
    rejected fingerprints;
  - `boot`: the systemd unit that loads the confirmed ruleset at boot;
  - `exporter`: the metrics exporter's systemd unit, and the plan summary and apply history
    it reads;
  - `metrics`: the exporter itself, the small service that unit runs
    (`python3 -m network_isolation.host.metrics`);
  - `removal`: the host as it was before this charm.
- `registry`: the state directory, and the per-machine registry of this charm's co-located
  units, through which units that share a machine agree on one plan.
- `probes`: the default gateways and the TCP probe of the targets (`reachability`).
- `bypasses`: BPF programs (XDP, tc/tcx ingress) that see an interface's packets before
  netfilter, read with `ip`, `tc` and `bpftool` (parsed by `network_isolation.bypass`).
- `system` and `outcomes`: the boundary (runner, tools, files under a root) and what comes
  back (results, records, errors).

`Host` reaches the machine only through an injected boundary: `root`, under which every file
path lives (`/` in production, a temporary directory in tests), a command `Runner` (binaries
called by absolute path) and a `Probe` of connectivity. Tests replace all three.
"""

from ..reachability import ProbeTarget, controller_targets, gateway_target
from .boot import UNIT_NAME, UNIT_WANTED_BY
from .exporter import EXPORTER_UNIT_NAME, ExporterSpec, exporter_unit_text
from .guard import ROLLBACK_UNIT
from .host import Host
from .netplan import NETPLAN_DIRS, NETPLAN_FILE_NAME
from .nftables import REMOVAL_RULESET, TABLE_FAMILY, TABLE_NAME
from .outcomes import (
    Applied,
    ApplyError,
    ApplyResult,
    ArtefactsLike,
    HostError,
    InvalidArtefactsError,
    PortInUseError,
    RejectedError,
    RejectedRecord,
    RolledBackError,
    fingerprint,
)
from .probes import Probe, tcp_probe
from .registry import DEFAULT_STATE_DIR, STATE_DIR_ENV, MachineRegistry, UnitEntry, state_dir
from .system import (
    Result,
    Runner,
    SubprocessRunner,
    Tools,
    apt_install,
    first_error,
    write_atomically,
)

__all__ = [
    "DEFAULT_STATE_DIR",
    "EXPORTER_UNIT_NAME",
    "NETPLAN_DIRS",
    "NETPLAN_FILE_NAME",
    "REMOVAL_RULESET",
    "ROLLBACK_UNIT",
    "STATE_DIR_ENV",
    "TABLE_FAMILY",
    "TABLE_NAME",
    "UNIT_NAME",
    "UNIT_WANTED_BY",
    "Applied",
    "ApplyError",
    "ApplyResult",
    "ArtefactsLike",
    "ExporterSpec",
    "Host",
    "HostError",
    "InvalidArtefactsError",
    "MachineRegistry",
    "PortInUseError",
    "Probe",
    "ProbeTarget",
    "RejectedError",
    "RejectedRecord",
    "Result",
    "RolledBackError",
    "Runner",
    "SubprocessRunner",
    "Tools",
    "UnitEntry",
    "apt_install",
    "controller_targets",
    "exporter_unit_text",
    "fingerprint",
    "first_error",
    "gateway_target",
    "state_dir",
    "tcp_probe",
    "write_atomically",
]
