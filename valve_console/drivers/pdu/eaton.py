"""Eaton ePDU (EATON-EPDU-MIB, enterprise 534). Tables are indexed ``<unit>.<outlet>``.

Eaton has one command column per action; writing 0 (a delay in seconds) acts at once.

Power: outletCurrent (mA), outletVoltage (mV), outletWatts (W), outletWh (Wh) at ``<strapping>.<outlet>``
(the config's ``unit``); the total is inputTotalWatts/inputTotalWh of input 1. Advanced Monitored and
Managed models meter outlets; Switched, Monitored and Inline ones only the input (outlets: not metered).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .base import PortState
from .snmp import Meter, MeteredSnmpPDU, Metering, SnmpConfig

EPDU = "1.3.6.1.4.1.534.6.6.7"


class EatonConfig(SnmpConfig):
    unit: int = Field(default=0, ge=0, le=255, description="unit in a daisy chain (0 = the unit addressed)")


class EatonEPDU(MeteredSnmpPDU):
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
    metering = Metering(
        outlets={
            "amps": Meter(EPDU + ".6.4.1.3.{unit}", 0.001),  # outletCurrent, mA
            "volts": Meter(EPDU + ".6.3.1.2.{unit}", 0.001),  # outletVoltage, mV
            "watts": Meter(EPDU + ".6.5.1.3.{unit}"),  # outletWatts, W
            "energy_wh": Meter(EPDU + ".6.5.1.4.{unit}"),  # outletWh, Wh
        },
        totals={
            "watts": Meter(EPDU + ".3.5.1.4.{unit}.1"),  # inputTotalWatts, input 1, W
            "energy_wh": Meter(EPDU + ".3.5.1.5.{unit}.1"),  # inputTotalWh, input 1, Wh
        },
    )
