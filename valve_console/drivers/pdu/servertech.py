"""Server Technology Sentry3 (Sentry3-MIB, enterprise 1718). Tables are indexed ``<tower>.<infeed>.<outlet>``.

One driver entry covers one infeed of one tower; its port ids are the outlet numbers on it.

Power: the outlet table's current (0.01 A), voltage (0.1 V), power (W) and energy (Wh) columns, -1 where the
model does not meter; the total is the infeed's power (W) and energy (0.1 kWh). Sentry4 (PRO1/PRO2) units
have another MIB and no driver here yet.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .base import PortState
from .snmp import Meter, MeteredSnmpPDU, Metering, SnmpConfig, same_column

OUTLET = "1.3.6.1.4.1.1718.3.2.3.1"
INFEED = "1.3.6.1.4.1.1718.3.2.2.1"


class SentryConfig(SnmpConfig):
    tower: int = Field(default=1, ge=1, le=255, description="tower (1 = master)")
    infeed: int = Field(default=1, ge=1, le=255, description="infeed of that tower (1 = A)")


class Sentry3PDU(MeteredSnmpPDU):
    name: ClassVar[str] = "servertech_sentry3"
    model: ClassVar[str] = "Server Technology Sentry3"
    config_model = SentryConfig
    labels = OUTLET + ".3.{tower}.{infeed}"  # outletName
    status = OUTLET + ".5.{tower}.{infeed}"  # outletStatus
    # off 0, on 1, offWait 2, onWait 3, offError 4, onError 5, noComm 6, reading 7, offFuse 8, onFuse 9
    states = {0: PortState.OFF, 1: PortState.ON, 4: PortState.OFF, 5: PortState.ON, 8: PortState.OFF, 9: PortState.ON}
    commands = same_column(OUTLET + ".11.{tower}.{infeed}", on=1, off=2, reboot=3)  # outletControlAction
    metering = Metering(
        outlets={
            "amps": Meter(OUTLET + ".7.{tower}.{infeed}", 0.01),  # outletLoadValue, 0.01 A
            "volts": Meter(OUTLET + ".13.{tower}.{infeed}", 0.1),  # outletVoltage, 0.1 V
            "watts": Meter(OUTLET + ".14.{tower}.{infeed}"),  # outletPower, W
            "energy_wh": Meter(OUTLET + ".18.{tower}.{infeed}"),  # outletEnergy, Wh
        },
        totals={
            "watts": Meter(INFEED + ".12.{tower}.{infeed}"),  # infeedPower, W
            "energy_wh": Meter(INFEED + ".16.{tower}.{infeed}", 100.0),  # infeedEnergy, 0.1 kWh
        },
    )
