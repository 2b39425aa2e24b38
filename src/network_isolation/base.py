"""The types every part of the charm shares: addresses, interface kinds, forms, model bases.

Defined once here so that the planner, the renderer, the rollout and the host side speak of
the same things by the same names.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The netplan section an interface is described in.
InterfaceKind = Literal["ethernets", "vlans", "bonds", "bridges"]
# The form of a machine's ruleset: drops enforced, drops only counted and logged, or no table.
Enforcement = Literal["enforce", "audit", "off"]


class Frozen(BaseModel):
    """A value this charm computes: immutable, and no field it does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Received(BaseModel):
    """A value read from another unit or a state file: immutable, unknown fields ignored.

    A newer unit (or charm revision) may add fields; an older reader keeps what it knows.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")
