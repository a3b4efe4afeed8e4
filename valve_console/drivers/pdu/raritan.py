"""Raritan PX2/PX3 (PDU2-MIB, enterprise 13742). Tables are indexed ``<pduId>.<outlet>``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .base import PortState
from .snmp import SnmpConfig, SnmpPDU, same_column

PX2 = "1.3.6.1.4.1.13742.6"


class RaritanConfig(SnmpConfig):
    pdu_id: int = Field(default=1, ge=1, le=255, description="PDU id in a daisy chain (1 = the unit addressed)")


class RaritanPX2PDU(SnmpPDU):
    name: ClassVar[str] = "raritan_px2"
    model: ClassVar[str] = "Raritan PX2/PX3"
    config_model = RaritanConfig
    labels = PX2 + ".3.5.3.1.3.{pdu_id}"  # outletName
    count = PX2 + ".3.2.2.1.4.{pdu_id}"  # outletCount
    status = PX2 + ".4.1.2.1.3.{pdu_id}"  # outletSwitchingState: on 7, off 8
    states = {7: PortState.ON, 8: PortState.OFF}
    commands = same_column(PX2 + ".4.1.2.1.2.{pdu_id}", on=1, off=0, reboot=2)  # switchingOperation
