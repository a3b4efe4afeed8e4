"""Eaton ePDU (EATON-EPDU-MIB, enterprise 534). Tables are indexed ``<unit>.<outlet>``.

Eaton has one command column per action; writing 0 (a delay in seconds) acts at once.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .base import PortState
from .snmp import SnmpConfig, SnmpPDU

EPDU = "1.3.6.1.4.1.534.6.6.7"


class EatonConfig(SnmpConfig):
    unit: int = Field(default=0, ge=0, le=255, description="unit in a daisy chain (0 = the unit addressed)")


class EatonEPDU(SnmpPDU):
    name: ClassVar[str] = "eaton_epdu"
    model: ClassVar[str] = "Eaton ePDU"
    config_model = EatonConfig
    labels = EPDU + ".6.1.1.3.{unit}"  # outletName
    count = EPDU + ".1.2.1.22.{unit}"  # outletCount
    status = EPDU + ".6.6.1.2.{unit}"  # outletControlStatus: off 0, on 1, pendingOff 2, pendingOn 3
    states = {0: PortState.OFF, 1: PortState.ON}
    commands = {
        PortState.OFF: (EPDU + ".6.6.1.3.{unit}", 0),  # outletControlOffCmd
        PortState.ON: (EPDU + ".6.6.1.4.{unit}", 0),  # outletControlOnCmd
        PortState.REBOOT: (EPDU + ".6.6.1.5.{unit}", 0),  # outletControlRebootCmd
    }
