"""CyberPower PDUs (CPS-MIB, enterprise 3808).

* ``cyberpower_pdu41004``: the ``ePDU`` tree (PDU41004 and relatives) — command column 1 on,
  2 off, 3 reboot; status column on 1, off 2.
* ``cyberpower_pdu15swhviec12atnet``: the RMCARD205 ``ePDU2`` tree — control **2 on, 3 off,
  4 reboot**; status on 1, off 2, reboot 3.

``cyberpower_pdu41004`` reads power from the ePDU outlet status table (Metered-by-Outlet models, PDU71xxx
and PDU81xxx): load (0.1 A), active power (W), energy (0.1 kWh); no PDU total. Other models have no rows
there and read as not metered. The RMCARD205 driver does not meter (no verified OIDs).
"""

from __future__ import annotations

from typing import ClassVar

from .base import PortState
from .snmp import Meter, MeteredSnmpPDU, Metering, SnmpPDU, same_column

EPDU = "1.3.6.1.4.1.3808.1.1.3"
EPDU2 = "1.3.6.1.4.1.3808.1.1.5"


class CyberPower41004PDU(MeteredSnmpPDU):
    name: ClassVar[str] = "cyberpower_pdu41004"
    model: ClassVar[str] = "CyberPower ePDU"
    labels = f"{EPDU}.3.3.1.1.2"  # ePDUOutletControlOutletName
    count = f"{EPDU}.1.8.0"  # ePDUIdentDeviceNumOutlets
    status = f"{EPDU}.3.5.1.1.4"  # ePDUOutletStatusOutletState
    states = {1: PortState.ON, 2: PortState.OFF}
    commands = same_column(f"{EPDU}.3.3.1.1.4", on=1, off=2, reboot=3)  # ePDUOutletControlOutletCommand
    metering = Metering(outlets={
        "amps": Meter(f"{EPDU}.3.5.1.1.7", 0.1),  # ePDUOutletStatusLoad, 0.1 A
        "watts": Meter(f"{EPDU}.3.5.1.1.8"),  # ePDUOutletStatusActivePower, W
        "energy_wh": Meter(f"{EPDU}.3.5.1.1.13", 100.0),  # ePDUOutletStatusEnergy, 0.1 kWh
    })


class CyberPowerRmcard205PDU(SnmpPDU):
    name: ClassVar[str] = "cyberpower_pdu15swhviec12atnet"
    model: ClassVar[str] = "CyberPower RMCARD205 (ePDU2)"
    labels = f"{EPDU2}.6.3.1.2"
    status = f"{EPDU2}.6.3.1.3"
    states = {1: PortState.ON, 2: PortState.OFF, 3: PortState.REBOOT}
    commands = same_column(f"{EPDU2}.6.5.1.3", on=2, off=3, reboot=4)
