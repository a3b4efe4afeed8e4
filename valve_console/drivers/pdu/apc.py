"""APC PowerNet-MIB PDUs (enterprise 318), one driver per MIB generation.

The three trees number outlet states differently, so each has its own table:

* ``apc_masterswitch``: MasterSwitch/AP79xx ``sPDUOutletCtl`` — read and written on one column,
  on 1, off 2, reboot 3 (4 reads "unknown").
* ``apc_rpdu``: Switched Rack PDU ``rPDU`` — command column (1 on, 2 off, 3 reboot), status column
  on 1, off 2.
* ``apc_rpdu2``: Rack PDU 2G ``rPDU2`` — status **off 1, on 2**; command 1 on, 2 off, 3 reboot.

All three read power from the rPDU2 tree, which AOS 6 firmware serves beside the older ones (AP79xx
included): per outlet from ``rPDU2OutletMeteredStatusTable`` (Metered-by-Outlet models, AP86xx; its rows
are mapped to outlet numbers through column .4, on the host unit, Module column .2 = 1), the PDU's total
from ``rPDU2DeviceStatusPower``/``Energy`` of the host unit. A model without outlet meters has no rows
there; one without a total reads -1 (AP79xx): both read as not metered.
"""

from __future__ import annotations

from typing import ClassVar

from .base import PortState
from .snmp import Meter, MeteredSnmpPDU, Metering, same_column

SPDU = "1.3.6.1.4.1.318.1.1.4"
RPDU = "1.3.6.1.4.1.318.1.1.12"
RPDU2 = "1.3.6.1.4.1.318.1.1.26"

METERED = f"{RPDU2}.9.4.3.1"  # rPDU2OutletMeteredStatusEntry
RPDU2_METERING = Metering(
    outlets={
        "watts": Meter(f"{METERED}.7"),  # rPDU2OutletMeteredStatusPower, W (not verified on hardware: see docs)
        "amps": Meter(f"{METERED}.6", 0.1),  # rPDU2OutletMeteredStatusCurrent, 0.1 A
        "energy_wh": Meter(f"{METERED}.11", 100.0),  # rPDU2OutletMeteredStatusEnergy, 0.1 kWh
    },
    totals={
        "watts": Meter(f"{RPDU2}.4.3.1.5.1", 10.0),  # rPDU2DeviceStatusPower (host unit), 0.01 kW; -1 unsupported
        "energy_wh": Meter(f"{RPDU2}.4.3.1.9.1", 100.0),  # rPDU2DeviceStatusEnergy, 0.1 kWh; -1 unsupported
    },
    numbers=f"{METERED}.4",  # rPDU2OutletMeteredStatusNumber
    modules=f"{METERED}.2",  # rPDU2OutletMeteredStatusModule
    module="1",
)


class ApcMasterSwitchPDU(MeteredSnmpPDU):
    name: ClassVar[str] = "apc_masterswitch"
    model: ClassVar[str] = "APC MasterSwitch (sPDU)"
    labels = f"{SPDU}.4.2.1.4"  # sPDUOutletCtlName
    count = f"{SPDU}.4.1.0"  # sPDUOutletControlTableSize
    status = f"{SPDU}.4.2.1.3"  # sPDUOutletCtl
    states = {1: PortState.ON, 2: PortState.OFF, 3: PortState.REBOOT, 4: PortState.UNKNOWN}
    commands = same_column(status, on=1, off=2, reboot=3)
    metering = RPDU2_METERING


class ApcRackPDU(MeteredSnmpPDU):
    name: ClassVar[str] = "apc_rpdu"
    model: ClassVar[str] = "APC Switched Rack PDU (rPDU)"
    labels = f"{RPDU}.3.3.1.1.2"  # rPDUOutletControlOutletName
    count = f"{RPDU}.3.1.3.0"  # rPDUOutletDevNumCntrlOutlets
    status = f"{RPDU}.3.5.1.1.4"  # rPDUOutletStatusOutletState
    states = {1: PortState.ON, 2: PortState.OFF}
    commands = same_column(f"{RPDU}.3.3.1.1.4", on=1, off=2, reboot=3)  # rPDUOutletControlOutletCommand
    metering = RPDU2_METERING


class ApcRackPDU2(MeteredSnmpPDU):
    name: ClassVar[str] = "apc_rpdu2"
    model: ClassVar[str] = "APC Rack PDU 2G (rPDU2)"
    labels = f"{RPDU2}.9.2.3.1.3"  # rPDU2OutletSwitchedStatusName
    count = f"{RPDU2}.4.2.1.5.1"  # rPDU2DevicePropertiesNumSwitchedOutlets (host unit)
    status = f"{RPDU2}.9.2.3.1.5"  # rPDU2OutletSwitchedStatusState
    states = {1: PortState.OFF, 2: PortState.ON}
    commands = same_column(f"{RPDU2}.9.2.4.1.5", on=1, off=2, reboot=3)  # rPDU2OutletSwitchedControlCommand
    metering = RPDU2_METERING
