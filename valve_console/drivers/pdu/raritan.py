"""Raritan PX2/PX3 (PDU2-MIB, enterprise 13742). Tables are indexed ``<pduId>.<outlet>``.

Power comes from the generic sensor tables: ``measurementsOutletSensorValue.<pduId>.<outlet>.<sensorType>``
scaled by 10^-``outletSensorDecimalDigits`` of the same row, skipped where ``measurementsOutletSensorIsAvailable``
is false (both read with the first reading, kept 10 minutes), and the PDU's total from inlet 1
(``measurementsInletSensorValue``). An outlet without a sensor has no row: it reads as not metered.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .base import PortState
from .snmp import Meter, MeteredSnmpPDU, Metering, SnmpConfig, same_column

PX2 = "1.3.6.1.4.1.13742.6"
# sensorType: rmsCurrent 1, rmsVoltage 4, activePower 5, activeEnergy 8
SENSORS = {"amps": ".1", "volts": ".4", "watts": ".5", "energy_wh": ".8"}
OUTLET_VALUE = PX2 + ".5.4.3.1.4.{pdu_id}"  # measurementsOutletSensorValue
OUTLET_DIGITS = PX2 + ".3.5.4.1.7.{pdu_id}"  # outletSensorDecimalDigits
OUTLET_AVAILABLE = PX2 + ".5.4.3.1.2.{pdu_id}"  # measurementsOutletSensorIsAvailable: 1 true, 2 false
INLET_VALUE = PX2 + ".5.2.3.1.4.{pdu_id}.1"  # measurementsInletSensorValue, inlet 1
INLET_DIGITS = PX2 + ".3.3.4.1.7.{pdu_id}.1"  # inletSensorDecimalDigits, inlet 1


class RaritanConfig(SnmpConfig):
    pdu_id: int = Field(default=1, ge=1, le=255, description="PDU id in a daisy chain (1 = the unit addressed)")


class RaritanPX2PDU(MeteredSnmpPDU):
    name: ClassVar[str] = "raritan_px2"
    model: ClassVar[str] = "Raritan PX2/PX3"
    config_model = RaritanConfig
    labels = PX2 + ".3.5.3.1.3.{pdu_id}"  # outletName
    count = PX2 + ".3.2.2.1.4.{pdu_id}"  # outletCount
    status = PX2 + ".4.1.2.1.3.{pdu_id}"  # outletSwitchingState: on 7, off 8
    states = {7: PortState.ON, 8: PortState.OFF}
    commands = same_column(PX2 + ".4.1.2.1.2.{pdu_id}", on=1, off=0, reboot=2)  # switchingOperation
    metering = Metering(
        outlets={name: Meter(OUTLET_VALUE, suffix=s, digits=OUTLET_DIGITS, available=OUTLET_AVAILABLE)
                 for name, s in SENSORS.items()},
        totals={name: Meter(INLET_VALUE, suffix=SENSORS[name], digits=INLET_DIGITS) for name in ("watts", "energy_wh")},
    )
