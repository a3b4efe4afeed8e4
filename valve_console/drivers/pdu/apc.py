"""APC PowerNet-MIB PDUs (enterprise 318), one driver per MIB generation.

The three trees number outlet states differently, so each has its own table:

* ``apc_masterswitch``: MasterSwitch/AP79xx ``sPDUOutletCtl`` — read and written on one column,
  on 1, off 2, reboot 3 (4 reads "unknown").
* ``apc_rpdu``: Switched Rack PDU ``rPDU`` — command column (1 on, 2 off, 3 reboot), status column
  on 1, off 2.
* ``apc_rpdu2``: Rack PDU 2G ``rPDU2`` — status **off 1, on 2**; command 1 on, 2 off, 3 reboot.
"""

from __future__ import annotations

from typing import ClassVar

from .base import PortState
from .snmp import SnmpPDU, same_column

SPDU = "1.3.6.1.4.1.318.1.1.4"
RPDU = "1.3.6.1.4.1.318.1.1.12"
RPDU2 = "1.3.6.1.4.1.318.1.1.26"


class ApcMasterSwitchPDU(SnmpPDU):
    name: ClassVar[str] = "apc_masterswitch"
    model: ClassVar[str] = "APC MasterSwitch (sPDU)"
    labels = f"{SPDU}.4.2.1.4"  # sPDUOutletCtlName
    count = f"{SPDU}.4.1.0"  # sPDUOutletControlTableSize
    status = f"{SPDU}.4.2.1.3"  # sPDUOutletCtl
    states = {1: PortState.ON, 2: PortState.OFF, 3: PortState.REBOOT, 4: PortState.UNKNOWN}
    commands = same_column(status, on=1, off=2, reboot=3)


class ApcRackPDU(SnmpPDU):
    name: ClassVar[str] = "apc_rpdu"
    model: ClassVar[str] = "APC Switched Rack PDU (rPDU)"
    labels = f"{RPDU}.3.3.1.1.2"  # rPDUOutletControlOutletName
    count = f"{RPDU}.3.1.3.0"  # rPDUOutletDevNumCntrlOutlets
    status = f"{RPDU}.3.5.1.1.4"  # rPDUOutletStatusOutletState
    states = {1: PortState.ON, 2: PortState.OFF}
    commands = same_column(f"{RPDU}.3.3.1.1.4", on=1, off=2, reboot=3)  # rPDUOutletControlOutletCommand


class ApcRackPDU2(SnmpPDU):
    name: ClassVar[str] = "apc_rpdu2"
    model: ClassVar[str] = "APC Rack PDU 2G (rPDU2)"
    labels = f"{RPDU2}.9.2.3.1.3"  # rPDU2OutletSwitchedStatusName
    count = f"{RPDU2}.4.2.1.5.1"  # rPDU2DevicePropertiesNumSwitchedOutlets (host unit)
    status = f"{RPDU2}.9.2.3.1.5"  # rPDU2OutletSwitchedStatusState
    states = {1: PortState.OFF, 2: PortState.ON}
    commands = same_column(f"{RPDU2}.9.2.4.1.5", on=1, off=2, reboot=3)  # rPDU2OutletSwitchedControlCommand
